//! Hostile HTTP clients against the real binary (issue 10, gateway findings 1–5 and 7): each
//! test repeats the attack that was measured and asserts the limit that now holds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::process::{write_config, Process};

/// Opens a connection to the gateway and sends `bytes`.
fn connect(gw: &Process, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", gw.http_port)).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// Reads until the peer closes (or resets) the connection; `None` if it is still open after
/// `within`. Returns what was read.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// The head of a signed-looking webhook that announces `length` bytes of body.
fn webhook_head(length: usize) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: stall\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// A signed push: its status and how long the answer took.
fn timed_push(http: &str, delivery: &str, sha: &str) -> (u16, Duration) {
    let body = push_of(sha, "master");
    let started = Instant::now();
    let url = format!("{http}/webhook");
    let (status, _) = orcastrate_testkit::http::webhook(
        &url,
        SECRET,
        "push",
        delivery,
        "application/json",
        &body,
    );
    (status, started.elapsed())
}

/// A process's resident memory in KiB (`VmRSS` or `VmHWM` of /proc/PID/status).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

// Issue 10, finding 1: 64 connections announcing 1 MB and stalling held every webhook permit
// before their bodies arrived, so a valid signed push waited for the whole 100 s.
#[test]
fn stalled_bodies_do_not_delay_a_signed_push() {
    let dir = tempfile::tempdir().unwrap();
    // Long body deadline: the stalled connections stay open for the whole test.
    let config = write_config(dir.path(), "[http]\nbody_timeout_s = 120\n");
    let gw = Process::start(&config);
    let stalled: Vec<TcpStream> = (0..128)
        .map(|_| {
            let mut head = webhook_head(1_000_000).into_bytes();
            head.extend_from_slice(&[b'{'; 1000]);
            connect(&gw, &head)
        })
        .collect();
    // Let the gateway take in every stalled request before the real one.
    std::thread::sleep(Duration::from_millis(500));
    for n in 0..3 {
        let (status, took) = timed_push(&gw.http, &format!("fast-{n}"), &sha(100 + n));
        assert_eq!(status, 202);
        assert!(
            took < Duration::from_secs(1),
            "a signed push took {took:?} while 128 connections stalled mid-body"
        );
    }
    drop(stalled);
}

// Finding 1's memory side: bodies are buffered against one budget as their bytes arrive, so
// 40 senders that each send 1 MiB of a 5 MiB body and stall hold at most the budget, and
// those past it are told to retry instead of growing the heap.
#[test]
fn stalled_bodies_share_a_bounded_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[http]\nbody_buffer_bytes = 8388608\nbody_timeout_s = 2\nbody_min_bytes_per_s = 1048576\n",
    );
    let gw = Process::start(&config);
    let pid = gw.child.id();
    let before = memory_kib(pid, "VmRSS");
    let senders: Vec<_> = (0..40)
        .map(|_| {
            let mut s = connect(&gw, webhook_head(5 * 1024 * 1024).as_bytes());
            std::thread::spawn(move || {
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(&vec![b' '; 1024 * 1024]);
                closed_within(&mut s, Duration::from_secs(30))
            })
        })
        .collect();
    let answers: Vec<String> = senders
        .into_iter()
        .map(|t| t.join().unwrap().expect("a stalled body was closed"))
        .collect();
    let peak = memory_kib(pid, "VmHWM");
    // Stated bound: the 8 MiB budget (twice that while a buffer grows) plus slack, where
    // 40 MiB arrived.
    assert!(
        peak < before + 32 * 1024,
        "RSS {before} KiB before, peak {peak} KiB"
    );
    let busy = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .count();
    let slow = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 408"))
        .count();
    assert_eq!(busy + slow, 40, "{answers:?}");
    assert!(busy > 0 && slow > 0, "{busy} busy, {slow} too slow");
    // Their budget is back: a signed push goes through.
    assert_eq!(timed_push(&gw.http, "after", &sha(9)).0, 202);
}

// Issue 10, finding 4: idle, partial-header, kept-alive and partial-body connections were all
// kept for 330 s and more.
#[test]
fn idle_and_slow_connections_are_closed_after_the_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[http]\nheader_timeout_s = 1\nbody_timeout_s = 1\nbody_min_bytes_per_s = 1000\n",
    );
    let gw = Process::start(&config);
    // Closed at about 1 s (a body of 10 bytes earns 10 ms); 8 s is generous.
    let within = Duration::from_secs(8);

    let mut idle = connect(&gw, b"");
    let mut partial_head = connect(&gw, b"POST /webhook HTTP/1.1\r\nHost: gw\r\n");
    let mut partial_body = connect(&gw, format!("{}0123456789", webhook_head(1000)).as_bytes());
    let mut kept_alive = connect(&gw, b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n");
    // A head sent a byte at a time: each byte is progress, but the head's deadline holds.
    let mut drip = connect(&gw, b"G");
    let dripper = {
        let mut s = drip.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(200));
                if s.write_all(b"X").is_err() {
                    return;
                }
            }
        })
    };

    let started = Instant::now();
    assert!(
        closed_within(&mut idle, within).is_some(),
        "idle stayed open"
    );
    assert!(
        closed_within(&mut partial_head, within).is_some(),
        "partial head stayed open"
    );
    let answer = closed_within(&mut partial_body, within).expect("partial body stayed open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout_s"), "{answer}");
    let answer = closed_within(&mut kept_alive, within).expect("kept-alive stayed open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed_within(&mut drip, within).is_some(),
        "a head dripping a byte at a time stayed open"
    );
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
    dripper.join().unwrap();
    // A head over 64 KiB is refused before it grows further.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let mut big = connect(&gw, big.as_bytes());
    let answer = closed_within(&mut big, within).expect("a huge head stayed open");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // The gateway still serves.
    assert_eq!(timed_push(&gw.http, "after", &sha(7)).0, 202);
}

// The same limits on the HTTPS listener: a connection that never handshakes, and one that
// handshakes and then sends nothing, are closed after header_timeout_s.
#[test]
fn idle_tls_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = make_certificates(dir.path());
    let config = write_config(
        dir.path(),
        &format!("[http]\nheader_timeout_s = 1\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
    );
    let gw = Process::spawn(&config, Stdio::null());
    let mut no_handshake = connect(&gw, b"");
    assert!(
        closed_within(&mut no_handshake, Duration::from_secs(8)).is_some(),
        "a TCP connection without a TLS handshake stayed open"
    );
    // openssl s_client handshakes, then keeps stdin open and sends nothing.
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.http_port))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(8),
        "s_client to be disconnected",
        || client.try_wait().unwrap(),
    );
}

// Issue 10, finding 4 (second half): HTTP connections shared the descriptor limit with the
// broker; at about 20,000 of them MQTT logins and /healthz timed out. With 150 descriptors,
// 130 and more HTTP connections must leave the broker able to log a client in.
#[test]
fn http_connections_leave_descriptors_for_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    // Idle connections stay longer than the MQTT login waits (5 s).
    let config = write_config(dir.path(), "[http]\nheader_timeout_s = 30\n");
    let log = dir.path().join("gateway.log");
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let gw = Process::spawn_via(&["prlimit", "--nofile=150:150"], &config, stderr);
    // Without the cap they would take every descriptor (the gateway itself uses about 40);
    // with it, 16 are served and the others wait in the listen backlog (128).
    let held: Vec<TcpStream> = (0..150)
        .filter_map(|_| {
            let addr = ([127, 0, 0, 1], gw.http_port).into();
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
        })
        .collect();
    assert!(held.len() > 130, "only {} connections opened", held.len());
    Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2")
        .expect("an MQTT login while HTTP holds every connection it may");
    // Nothing spins meanwhile (the broker's accept loop took 39 s of CPU in 25 s when the
    // descriptors ran out): an idle gateway uses a few hundredths of a second in 3 s.
    let cpu = || orcastrate_testkit::procs::cpu_seconds(gw.child.id()).unwrap();
    let before = cpu();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu() - before;
    assert!(
        used < 1.0,
        "{used:.2} s of CPU in 3 s while the connections wait"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("max_connections lowered") && text.contains("LimitNOFILE"),
        "{text}"
    );
    // Once they go, HTTP serves again (while they stay, the accept backlog drains at
    // max_connections per header_timeout_s: a per-client cap would be the next step).
    drop(held);
    eventually(Duration::from_secs(20), "/healthz to answer 200", || {
        ureq::get(format!("{}/healthz", gw.http)).call().ok()
    });
}

// Issue 10, finding 3: admin routes buffered 2 MB bodies before checking the token; 300 of
// them took the gateway from 38 to 631 MB.
#[test]
fn unauthenticated_admin_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Process::start(&config);
    let pid = gw.child.id();
    let before = memory_kib(pid, "VmRSS");
    let body = vec![b'x'; 2 * 1024 * 1024];
    let head = format!(
        "POST /api/v1/deploy HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Authorization: Bearer wrong-token-0123456789\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(300));
    let clients: Vec<_> = (0..300)
        .map(|_| {
            let (head, body, barrier) = (head.clone(), body.clone(), barrier.clone());
            let port = gw.http_port;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                barrier.wait();
                s.write_all(head.as_bytes()).unwrap();
                // The answer comes before any of the body is sent: the token is checked first.
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut answer = [0u8; 12];
                s.read_exact(&mut answer).unwrap();
                let _ = s.write_all(&body);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    // Wrong tokens past the per-address burst are not even checked (429).
    for c in clients {
        let answer = c.join().unwrap();
        assert!(
            answer == "HTTP/1.1 401" || answer == "HTTP/1.1 429",
            "{answer}"
        );
    }
    let (after, peak) = (memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM"));
    eprintln!("RSS {before} KiB before, {after} KiB after, peak {peak} KiB");
    // Stated bound: 300 refused 2 MB bodies (600 MB sent) add less than 64 MiB at the peak.
    assert!(
        peak < before + 64 * 1024 && after < before + 64 * 1024,
        "RSS {before} KiB before, {after} KiB after, peak {peak} KiB"
    );

    // With the token (once this address is no longer throttled), a body over the admin cap
    // (64 KiB) is refused too.
    let big = json!({ "repo": REPO, "env": ENV, "sha": "x".repeat(100 * 1024) });
    let status = orcastrate_testkit::eventually(
        Duration::from_secs(20),
        "the token to be checked again",
        || {
            let (status, _) = orcastrate_testkit::http::post_bearer(
                &format!("{}/api/v1/deploy", gw.http),
                ADMIN,
                &big,
            );
            (status != 429).then_some(status)
        },
    );
    assert_eq!(status, 413);
}

// Issue 10, finding 5: SIGTERM waited about 44 s for three slowloris connections.
#[test]
fn sigterm_with_slowloris_connections_exits_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[http]\nshutdown_timeout_s = 2\nheader_timeout_s = 120\nbody_timeout_s = 120\n",
    );
    let mut gw = Process::start(&config);
    let slowloris: Vec<_> = (0..3)
        .map(|_| {
            let mut s = connect(&gw, b"POST /webhook HTTP/1.1\r\nHost: gw\r\n");
            std::thread::spawn(move || {
                for n in 0..600 {
                    std::thread::sleep(Duration::from_millis(100));
                    if s.write_all(format!("X-{n}: y\r\n").as_bytes()).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    // A webhook in flight when the signal comes: half its body now, the rest after.
    let body = push_of(&sha(5), "master");
    let sig = orcastrate_gateway::github::sign(SECRET, &body);
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: in-flight\r\n\
         X-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = connect(&gw, &[head.as_bytes(), first].concat());
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    gw.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    in_flight.write_all(rest).unwrap();
    let answer = closed_within(&mut in_flight, Duration::from_secs(10))
        .expect("the in-flight webhook was answered and its connection closed");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    let status = eventually(Duration::from_secs(20), "the gateway to exit", || {
        gw.child.try_wait().unwrap()
    });
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    // Deadline 2 s; without it the slowloris connections kept it up for 120 s.
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    for s in slowloris {
        s.join().unwrap();
    }
    // The webhook answered during shutdown is in the ledger.
    let ledger = rusqlite::Connection::open(dir.path().join("data/ledger.db")).unwrap();
    let n: i64 = ledger
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE id = 'in-flight' AND outcome = 'accepted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

/// `orcastrate_health_checks_total` from /metrics.
fn health_checks(http: &str) -> u64 {
    let text = metrics_of(http);
    text.lines()
        .find_map(|l| l.strip_prefix("orcastrate_health_checks_total "))
        .unwrap_or_else(|| panic!("no health_checks_total in {text}"))
        .trim()
        .parse()
        .unwrap()
}

// Issue 10, finding 7: each /healthz did a real MQTT login; 940 a second slowed agents' logins
// from 1 ms to 138 ms.
#[test]
fn a_healthz_flood_logs_in_at_most_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Process::start(&config);
    let before = health_checks(&gw.http);
    let started = Instant::now();
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let http = gw.http.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                for _ in 0..150 {
                    let r = agent.get(format!("{http}/healthz")).call().unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for f in floods {
        f.join().unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let ran = health_checks(&gw.http) - before;
    assert!(
        (ran as f64) <= seconds.ceil() + 1.0,
        "{ran} health checks (MQTT logins) for 600 /healthz in {seconds:.1} s"
    );
}

/// A config for an external engine that is not there, with the hooks on `hooks_port`.
fn external_config(dir: &Path, hooks_port: u16, extra: &str) -> std::path::PathBuf {
    let text = config_text(&dir.join("data"), 1, SECRET, "").replace(
        "[mqtt]\nlisten = \"127.0.0.1:1\"",
        &format!(
            "[mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"gw\"\n\
                 password = \"gw-password\"\nhooks_listen = \"127.0.0.1:{hooks_port}\"\n{extra}"
        ),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn hook(base: &str, path: &str, token: Option<&str>, body: serde_json::Value) -> (u16, String) {
    let mut req = ureq::post(format!("{base}{path}"))
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(token) = token {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let mut r = req.send_json(body).unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

// Issue 10, finding 2: the engine hooks were a token oracle on the public port, mounted even
// in embedded mode, unthrottled, with one INFO line per guess.
#[test]
fn the_engine_hooks_are_404_in_embedded_mode() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Process::start(&config);
    let login = json!({ "clientid": "", "username": "web-1", "password": "token-web-1" });
    assert_eq!(hook(&gw.http, "/api/v1/mqtt/auth", None, login).0, 404);
    let acl = json!({ "username": "web-1", "topic": "orcastrate/#", "action": "subscribe" });
    assert_eq!(hook(&gw.http, "/api/v1/mqtt/acl", None, acl).0, 404);
}

#[test]
fn the_engine_hooks_are_on_their_own_listener_and_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let hooks_port = free_port();
    let token = "hooks-token-0123456789";
    let config = external_config(
        dir.path(),
        hooks_port,
        &format!("hooks_token = \"{token}\"\n"),
    );
    let log = dir.path().join("gateway.log");
    let gw = Process::spawn(&config, Stdio::from(std::fs::File::create(&log).unwrap()));
    let hooks = format!("http://127.0.0.1:{hooks_port}");
    eventually(Duration::from_secs(20), "the hooks listener", || {
        TcpStream::connect(("127.0.0.1", hooks_port)).ok()
    });
    let login = |password: &str, peerhost: &str| {
        let body = json!({ "clientid": "", "username": "web-1", "password": password, "peerhost": peerhost });
        let (code, text) = hook(&hooks, "/api/v1/mqtt/auth", Some(token), body);
        assert_eq!(code, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["result"].as_str().unwrap().to_owned()
    };

    // Not on the public port, and not without the token.
    let right = json!({ "clientid": "", "username": "web-1", "password": "token-web-1" });
    assert_eq!(
        hook(&gw.http, "/api/v1/mqtt/auth", Some(token), right.clone()).0,
        404
    );
    let (code, text) = hook(&hooks, "/api/v1/mqtt/auth", None, right.clone());
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("hooks_token"), "{text}");

    assert_eq!(login("token-web-1", "10.0.0.1"), "allow");
    // 200 guesses from one source: after the burst, even the right token is denied (the
    // guesses go unchecked), while another source still logs in.
    for n in 0..200 {
        assert_eq!(login(&format!("guess-{n}"), "10.0.0.1"), "deny");
    }
    assert_eq!(login("token-web-1", "10.0.0.1"), "deny", "throttled");
    assert_eq!(login("token-web-1", "10.0.0.2"), "allow");

    // The hooks token cannot be guessed at HTTP speed either: past a burst of wrong ones
    // the caller gets 429, whatever token it sends, on both hooks.
    let acl = json!({ "username": "web-1", "topic": "orcastrate/#", "action": "subscribe" });
    let mut codes = Vec::new();
    for n in 0..30 {
        codes.push(
            hook(
                &hooks,
                "/api/v1/mqtt/acl",
                Some(&format!("guess-{n}")),
                acl.clone(),
            )
            .0,
        );
    }
    assert_eq!(codes[0], 401, "{codes:?}");
    assert_eq!(codes[29], 429, "{codes:?}");
    let (code, text) = hook(&hooks, "/api/v1/mqtt/auth", Some(token), right);
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("hooks_token"), "{text}");

    // One summary line for the burst, not one line per guess; and no line per request
    // (the probe saw one INFO line per guess): the whole log is about a dozen lines.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.matches("engine logins refused").count();
    assert!((1..=2).contains(&lines), "{lines} refusal lines:\n{text}");
    let total = text.lines().count();
    assert!(total < 60, "{total} lines for 204 hook requests:\n{text}");
}
