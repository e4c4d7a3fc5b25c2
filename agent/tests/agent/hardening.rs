//! The attacks of issue 10 against the agent, repeated against the real binary: credentials
//! in `git_url` (finding 8), a git server that accepts and never answers (finding 10), and
//! a flood of forged orders (finding 11); and one of what held: a full disk during install.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orcastrate_broker::{AgentState, OrderKind, OrderSigner, Topics};
use orcastrate_testkit::logs;

use crate::common::*;

const OK_INSTALL: &str = "true\n";

/// The secret part of the `git_url` of these tests.
const GIT_SECRET: &str = "ghp_s3cretT0kenInTheUrl";

/// A "dumb HTTP" git server for the files under `dir` that, like GitHub, asks for
/// credentials (401) and serves only requests carrying `user:password`; records the
/// `Authorization` headers it saw.
fn dumb_http_git(dir: &Path, user: &str, password: &str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dir = dir.to_path_buf();
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (dir, expected, record) = (dir.clone(), expected.clone(), record.clone());
            std::thread::spawn(move || serve_one(stream, &dir, &expected, &record));
        }
    });
    (port, seen)
}

fn serve_one(mut stream: TcpStream, dir: &Path, expected: &str, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    let _ = reader.read_line(&mut request);
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                auth = Some(value.trim().to_owned());
            }
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    let file: PathBuf = dir.join(path.trim_start_matches('/'));
    let answer = |stream: &mut TcpStream, head: &str, body: &[u8]| {
        let _ = write!(
            stream,
            "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
    };
    if let Some(a) = &auth {
        seen.lock().unwrap().push(a.clone());
    }
    if auth.as_deref() != Some(expected) {
        answer(
            &mut stream,
            "401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"",
            b"",
        );
    } else if path.contains("..") || !file.is_file() {
        answer(&mut stream, "404 Not Found", b"");
    } else {
        answer(&mut stream, "200 OK", &std::fs::read(&file).unwrap());
    }
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Finding 8: a token in `git_url` is used to fetch, but never shows on the bus (log lines
/// and statuses, as a real subscriber sees them), in the status `error`, in the agent's
/// files or in its own log; its log files are mode 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_git_url_never_leaves_the_agent() {
    let mut w = World::new().await;
    let (port, auth) = dumb_http_git(w.dir.path(), "deploy", GIT_SECRET);
    let url = format!("http://deploy:{GIT_SECRET}@127.0.0.1:{port}/origin.git");
    w.write_config(&Options {
        git_url: Some(url),
        extra_tables: "[git]\nfetch_attempts = 2\n".into(),
        ..Options::default()
    });
    let watcher = watcher(w.bus.port);
    let a = w.commit("v1", OK_INSTALL);
    git(&w.origin.bare, &["update-server-info"]);
    let s1 = w.order(&a, OrderKind::Push).await;
    let n = w.start_agent();
    let out = w.bus.wait_outcome(s1).await;
    assert_eq!(out.state, AgentState::Healthy, "{out:?}");
    w.wait_app("v1");
    assert!(
        auth.lock().unwrap().iter().any(|a| a
            == &format!(
                "Basic {}",
                base64(format!("deploy:{GIT_SECRET}").as_bytes())
            )),
        "the credentials of git_url were not used"
    );

    // A commit the server lacks: git's errors and the agent's own name the URL.
    let missing = "0123456789abcdef".repeat(3)[..40].to_owned();
    let s2 = w.order(&missing, OrderKind::Manual).await;
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::Failed, "{out:?}");
    let error = out.error.unwrap();
    assert!(error.contains("http://***@127.0.0.1"), "{error}");
    assert!(!error.contains(GIT_SECRET), "{error}");
    w.wait_app("v1");

    // The bus, as a subscriber saw it: the URL went out, redacted.
    let bus = eventually(WAIT, "the failure on the watcher", || {
        let text = watcher.text();
        text.contains("\"failed\"").then_some(text)
    });
    assert!(bus.contains("http://***@127.0.0.1"), "{bus}");
    assert!(
        !bus.contains(GIT_SECRET),
        "the token went out on the bus:\n{bus}"
    );
    assert!(!bus.contains("deploy:"), "{bus}");

    // The agent's files and its own log.
    for (path, content) in files_under(&w.root) {
        let text = String::from_utf8_lossy(&content);
        assert!(
            !text.contains(GIT_SECRET),
            "the token is in {}",
            path.display()
        );
    }
    let own = w.agent_log(n);
    assert!(own.contains("***@127.0.0.1"), "{own}");
    assert!(
        !own.contains(GIT_SECRET),
        "the token is in the agent's log:\n{own}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.root.join("logs")), 0o700);
    assert_eq!(mode(&w.root.join("logs/app")), 0o700);
    let logs: Vec<PathBuf> = ["logs", "logs/app"]
        .iter()
        .flat_map(|d| std::fs::read_dir(w.root.join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert!(
        logs.iter()
            .any(|p| p.parent().is_some_and(|d| d.ends_with("logs/app"))),
        "{logs:?}"
    );
    assert!(logs.len() >= 2, "{logs:?}");
    for log in logs {
        assert_eq!(mode(&log), 0o600, "{}", log.display());
    }
    assert_eq!(mode(&w.root.join("state.json")), 0o600);
}

/// Accepts connections and never answers them (kept open until the test ends).
fn tarpit() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// Finding 10: a git server that accepts and never answers (over http:// and git://) turns
/// into a retried, then `failed`, deploy within the configured deadline, the old release
/// serving all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpit_git_server_fails_the_deploy_after_retries() {
    let mut w = World::with(Options {
        on_shutdown: Some("keep".into()),
        ..Options::default()
    })
    .await;
    let (_, _, n) = w.start_healthy_on_v1(OK_INSTALL).await;
    let pid = w.wait_app("v1");
    let b = w.commit("v2", OK_INSTALL);
    let port = tarpit();
    let mut last = n;
    let mut urls = vec![
        format!("http://127.0.0.1:{port}/web.git"),
        format!("git://127.0.0.1:{port}/web.git"),
    ];
    if std::process::Command::new("ssh").arg("-V").output().is_ok() {
        urls.push(format!("ssh://git@127.0.0.1:{port}/web.git"));
    }
    for url in urls {
        assert_eq!(w.terminate(last), Some(0));
        w.write_config(&Options {
            on_shutdown: Some("keep".into()),
            git_url: Some(url.clone()),
            extra_tables: "[git]\nfetch_timeout_s = 2\nfetch_attempts = 2\n".into(),
            ..Options::default()
        });
        last = w.start_agent();
        let began = Instant::now();
        let seq = w.order(&b, OrderKind::Push).await;
        let out = w.bus.wait_outcome(seq).await;
        let took = began.elapsed();
        assert_eq!(out.state, AgentState::Failed, "{url}: {out:?}");
        let error = out.error.unwrap_or_default();
        assert!(error.contains("2 attempts failed"), "{url}: {error}");
        assert!(
            error.contains("did not finish within 2 s"),
            "{url}: {error}"
        );
        // Two tries of 2 s and a 1 s wait; without a deadline git waits for minutes.
        assert!(took < Duration::from_secs(40), "{url}: took {took:?}");
        assert!(
            w.bus.statuses().iter().any(|s| s.seq == Some(seq)
                && s.state == AgentState::Deploying
                && s.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("fetch: retrying (2/2): "))),
            "{url}: no retrying status"
        );
        // The old release served throughout, and no git process was left behind: the
        // housekeeping git runs after the outcome end on their own within seconds, a fetch
        // left hanging on the tarpit never would.
        assert_eq!(w.wait_app("v1"), pid);
        eventually(Duration::from_secs(10), "no git process left", || {
            let left = w.processes_in_root();
            (!left.iter().any(|(_, cmd)| cmd.contains("git"))).then_some(())
        });
    }
}

/// Finding 10's stall timeouts, each ending a fetch from a server that accepts and never
/// answers long before the overall deadline (`fetch_timeout_s = 120`, beyond the wait for
/// the outcome): git's HTTP low-speed limit (with `http.lowSpeedTime` at 2 s in git's
/// config, as a user may set it: the agent keeps the user's value and adds the limit,
/// which git leaves off by default) and ssh's `ConnectTimeout` and keep-alives (15 s and
/// 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_stall_timeouts_end_a_fetch_before_the_deadline() {
    let keep = || Options {
        on_shutdown: Some("keep".into()),
        ..Options::default()
    };
    let mut w = World::with(keep()).await;
    let (_, _, n) = w.start_healthy_on_v1(OK_INSTALL).await;
    let pid = w.wait_app("v1");
    let b = w.commit("v2", OK_INSTALL);
    let port = tarpit();
    let mut cases = vec![(format!("http://127.0.0.1:{port}/web.git"), "too slow")];
    if std::process::Command::new("ssh").arg("-V").output().is_ok() {
        cases.push((
            format!("ssh://git@127.0.0.1:{port}/web.git"),
            "Could not read from remote repository",
        ));
    }
    let mut last = n;
    for (url, said) in cases {
        assert_eq!(w.terminate(last), Some(0));
        w.write_config(&Options {
            git_url: Some(url.clone()),
            extra_tables: "[git]\nfetch_timeout_s = 120\nfetch_attempts = 1\n".into(),
            ..keep()
        });
        last = w.start_agent_with(
            &[],
            &[
                ("GIT_CONFIG_COUNT", "1"),
                ("GIT_CONFIG_KEY_0", "http.lowSpeedTime"),
                ("GIT_CONFIG_VALUE_0", "2"),
            ],
        );
        let seq = w.order(&b, OrderKind::Push).await;
        let out = w.bus.wait_outcome(seq).await;
        assert_eq!(out.state, AgentState::Failed, "{url}: {out:?}");
        let error = out.error.unwrap_or_default();
        assert!(error.contains(said), "{url}: {error}");
        assert!(!error.contains("did not finish within"), "{url}: {error}");
        assert_eq!(w.wait_app("v1"), pid);
    }
}

/// Finding 11: thousands of forged orders from a client with a token cost a handful of log
/// lines (with a count), and the true order still deploys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_orders_is_logged_in_a_few_lines() {
    const FORGED: u64 = 5_000;
    let mut w = World::new().await;
    let a = w.commit("v1", OK_INSTALL);
    let b = w.commit("v2", OK_INSTALL);
    let s1 = w.order(&a, OrderKind::Push).await;
    let n = w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);

    let attacker = watcher(w.bus.port);
    let desired = Topics::default().desired(REPO, ENV);
    // Two forgeries, signed once (signing is slow in a debug build) and sent with ever
    // new seqs: signed by a key the agent does not know, and the gateway's key id with a
    // signature over other fields (which costs the agent a verification).
    let mut unknown_key = w.bus.order(10_000_000, &b, OrderKind::Manual);
    OrderSigner::generate().sign(&mut unknown_key);
    let mut bad_signature = w.bus.order(10_000_000, &b, OrderKind::Manual);
    bad_signature.sha = a.clone();
    let began = Instant::now();
    for i in 0..FORGED {
        let mut order = if i % 10 == 0 {
            bad_signature.clone()
        } else {
            unknown_key.clone()
        };
        order.seq = 10_000_000 + i;
        attacker
            .client
            .publish(
                &desired,
                rumqttc::QoS::AtMostOnce,
                false,
                serde_json::to_vec(&order).unwrap(),
            )
            .unwrap();
    }
    // Wait until the agent has refused all it got (the counts stop growing; the last ones
    // are written a window after the burst).
    let mut last = (0, Instant::now());
    let (warn_lines, refusals) = eventually(WAIT * 2, "the refusals to settle", || {
        let (lines, refusals) = logs::tally(&w.agent_log(n), "WARN", "refused");
        if refusals == 0 || refusals != last.0 {
            last = (refusals, Instant::now());
            return None;
        }
        (last.1.elapsed() > Duration::from_millis(2_500)).then_some((lines, refusals))
    });
    let burst = began.elapsed();
    // The true order, once the flood is through: still deployed. (Sent during the flood,
    // the broker may drop it with the flood for a subscriber that fell behind, as it drops
    // any QoS 0 backlog; the gateway's re-publishing is not part of this test.)
    let s2 = w.order(&b, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s2).await.state, AgentState::Healthy);
    w.wait_app("v2");
    // Two kinds of forgery, each one line as it starts and one a second after.
    let bound = 2 * (2 + burst.as_secs());
    assert!(
        (warn_lines.len() as u64) <= bound,
        "{} WARN lines for {refusals} refused orders in {burst:?} (bound {bound}):\n{}",
        warn_lines.len(),
        warn_lines.join("\n")
    );
    let log = w.agent_log(n);
    assert!(
        log.contains("unknown key id") && log.contains("does not verify"),
        "{log}"
    );
    // The broker drops QoS 0 messages for a subscriber that falls behind (more of them on a
    // busy machine), but a flood arrived: far more refusals than lines.
    assert!(
        (200..=FORGED).contains(&refusals),
        "{refusals} of {FORGED} refused:\n{}",
        warn_lines.join("\n")
    );
    let seqs: Vec<Option<u64>> = w.bus.statuses().iter().map(|s| s.seq).collect();
    assert!(!seqs.iter().any(|s| s.is_some_and(|s| s >= 10_000_000)));
}

/// A small tmpfs (root only), unmounted when dropped: a disk that fills up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when this machine refuses the mount (root in a container without
    /// `CAP_SYS_ADMIN`).
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        ok.then_some(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Issue 10, what held: the agent's root on a 16 MiB disk that an install fills up. The
/// deploy fails with the install's error, the old release keeps serving, the agent's state
/// stays readable, and once there is room again the next order deploys. A disk found full
/// before the fetch fails the deploy the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_install_fails_the_deploy_and_the_old_release_serves() {
    if !crate::secrets::is_root() {
        eprintln!("skipped: mounting a small disk needs root (CI runs as root)");
        return;
    }
    // Dropped after the world, whose processes (cwd on the disk) are stopped first.
    let Some(disk) = SmallDisk::mount(16) else {
        eprintln!("skipped: this machine refuses `mount -t tmpfs` even to root");
        return;
    };
    let mut w = World::new().await;
    w.root = disk.path().join("root");
    w.write_config(&Options::default());
    let (a, s1, n) = w.start_healthy_on_v1(OK_INSTALL).await;
    let pid = w.wait_app("v1");
    let current = w.current();

    // The install fills the disk, then keeps writing output while it is full.
    let b = w.commit(
        "v2",
        "dd if=/dev/zero of=filler bs=1M count=64; echo disk is full; sleep 1; echo still full; exit 1\n",
    );
    let s2 = w.order(&b, OrderKind::Push).await;
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::Failed, "{out:?}\n{}", w.agent_log(n));
    assert!(
        out.error
            .as_deref()
            .unwrap_or_default()
            .contains("exit code 1"),
        "{out:?}"
    );
    assert_eq!(out.running_sha.as_deref(), Some(a.as_str()));
    assert!(
        w.bus
            .logs()
            .iter()
            .any(|l| l.seq == Some(s2) && l.line.contains("No space left on device")),
        "{:?}",
        w.bus.logs()
    );
    assert_eq!(w.wait_app("v1"), pid);
    assert_eq!(w.current(), current);
    assert!(w.state_json()["pending"].is_null());

    // A disk already full when an order comes: the deploy fails, nothing else changes.
    let filler = disk.path().join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let c = w.commit("v3", OK_INSTALL);
    let s3 = w.order(&c, OrderKind::Push).await;
    let out = w.bus.wait_outcome(s3).await;
    assert_eq!(out.state, AgentState::Failed, "{out:?}\n{}", w.agent_log(n));
    assert_eq!(out.running_sha.as_deref(), Some(a.as_str()));
    assert_eq!(w.wait_app("v1"), pid);
    assert_eq!(w.current(), current);

    // Room again: the next order deploys, and the agent never restarted.
    std::fs::remove_file(&filler).unwrap();
    let s4 = w.order(&c, OrderKind::Push).await;
    w.until_healthy(n, s4).await;
    w.wait_app("v3");
    assert!(w.state_json()["pending"].is_null());
    assert!(s1 < s4);
    drop(w);
    drop(disk);
}
