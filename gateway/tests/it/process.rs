//! The real binary: start-up errors, SIGHUP reload, SIGTERM, public-key and the operator CLI.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_orcastrate-gateway");

/// The real gateway binary on free loopback ports.
pub struct Process {
    pub child: Child,
    pub http: String,
    pub http_port: u16,
    pub mqtt_port: u16,
}

impl Process {
    /// Starts `serve --config config` and waits until `/healthz` answers 200.
    pub fn start(config: &Path) -> Self {
        Self::start_logging(config, None)
    }

    /// As [`Process::start`], its log (stderr) into `log` when given.
    pub fn start_logging(config: &Path, log: Option<&Path>) -> Self {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let gw = Self::spawn(config, stderr);
        let http = gw.http.clone();
        eventually(
            Duration::from_secs(20),
            "the gateway to answer /healthz",
            || ureq::get(format!("{http}/healthz")).call().ok().map(drop),
        );
        gw
    }

    /// Starts `serve --config config` with stderr going to `stderr`, and waits until the
    /// HTTP port answers anything.
    pub fn spawn(config: &Path, stderr: Stdio) -> Self {
        Self::spawn_via(&[], config, stderr)
    }

    /// As [`Process::spawn`], run through `wrapper` (a command that execs its arguments,
    /// such as `prlimit --nofile=400:400`).
    pub fn spawn_via(wrapper: &[&str], config: &Path, stderr: Stdio) -> Self {
        let http_port = free_port();
        let mqtt_port = free_port();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(config)
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .env_remove("GITHUB_SECRET")
            .env_remove("TOKENS")
            .env_remove("TRUSTED_NAMES")
            .env_remove("PORT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "the gateway's HTTP port to accept connections",
            || std::net::TcpStream::connect(("127.0.0.1", http_port)).ok(),
        );
        Self {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            http_port,
            mqtt_port,
        }
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the test config (plus `extra`) to `dir/gateway.toml`.
pub fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir.join("data"), 1, SECRET, extra)).unwrap();
    path
}

#[test]
fn sighup_adds_a_client_without_restarting_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Process::start(&config);
    let watcher = Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2").unwrap();
    assert!(Mqtt::connect(gw.mqtt_port, "", "web-3", "token-web-3").is_err());

    write_config(
        dir.path(),
        "[[clients]]\nname = \"web-3\"\ntoken = \"token-web-3\"\n",
    );
    gw.signal("HUP");
    eventually(Duration::from_secs(5), "web-3 to be able to log in", || {
        Mqtt::connect(gw.mqtt_port, "", "web-3", "token-web-3").ok()
    });
    // Existing connections stayed up: the broker was not restarted.
    watcher
        .client
        .try_publish("x/y", rumqttc::QoS::AtMostOnce, false, "ping")
        .unwrap();
    let (status, _) = {
        let r = ureq::get(format!("{}/healthz", gw.http)).call().unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 200);
}

#[test]
fn sigterm_finishes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut gw = Process::start(&config);
    gw.signal("TERM");
    let status = eventually(Duration::from_secs(10), "the gateway to exit", || {
        gw.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
}

#[test]
fn startup_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("GITHUB_SECRET")
            .env_remove("TOKENS")
            .env_remove("TRUSTED_NAMES")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("data_dir = \"/tmp\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("GITHUB_SECRET"), "{err}");
    let (code, err) = run("[github]\nsecret = \"x\"\n[[clients]]\nname = \"a\"\ntoken = \"12345678\"\n[[clients]]\nname = \"a\"\ntoken = \"87654321\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("defined twice"), "{err}");
    let (code, err) = run("[github]\nsecret = \"x\"\n[mqtt]\nlisten = \"nonsense\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("[mqtt] listen"), "{err}");
    let (code, err) = run(
        "[github]\nsecret = \"x\"\n[http]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("[http] tls_cert /nonexistent/c.pem"), "{err}");
}

#[test]
fn runs_from_the_original_tools_environment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let mqtt_port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .current_dir(dir.path())
        .env("GITHUB_SECRET", SECRET)
        .env("TOKENS", "token-one-1, token-two-2")
        .env("TRUSTED_NAMES", "one, two")
        .env("PORT", http_port.to_string())
        .env(
            "ORCASTRATE_REPOS",
            "Codertocat/Hello-World@master=production",
        )
        .env_remove("ORCASTRATE_HTTP_LISTEN")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = format!("http://127.0.0.1:{http_port}");
    eventually(Duration::from_secs(20), "healthz", || {
        ureq::get(format!("{http}/healthz")).call().ok().map(drop)
    });
    assert!(Mqtt::connect(mqtt_port, "", "two", "token-two-2").is_ok());
    let body = push_of(&sha(77), "master");
    let sig = orcastrate_gateway::github::sign(SECRET, &body);
    let r = ureq::post(format!("{http}/pullrequest"))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "env-1")
        .header("X-Hub-Signature-256", &sig)
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status(), 202);
    let key = Command::new(BIN)
        .args(["public-key"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(key.status.success());
    assert_eq!(String::from_utf8_lossy(&key.stdout).trim().len(), 44);
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the operator CLI `args` against `gw` with the admin token: its exit code, stdout
/// and stderr.
pub(crate) fn operator_cli(gw: &TestGateway, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--gateway", &gw.http])
        .env("ORCASTRATE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_cli_prints_tables_and_json() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let cli = |args: &[&str]| operator_cli(&gw, args);
    let (code, out, _) = cli(&["deploy", "--repo", REPO, "--env", ENV, "--sha", &sha(8)]);
    assert_eq!(code, Some(0));
    assert!(out.contains("manual") && out.contains(&sha(8)), "{out}");
    let (code, out, _) = cli(&["history", "--repo", REPO]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("SEQ"), "{out}");
    assert!(out.contains("manual") && out.contains("admin"), "{out}");
    let (code, out, _) = cli(&["history", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deployments"][0]["sha"], sha(8).as_str());
    let (code, out, _) = cli(&["status"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("AGENT"), "{out}");
    // Refused: exit 4 with the gateway's reason.
    let (code, _, err) = cli(&["rollback", "--repo", REPO, "--env", ENV]);
    assert_eq!(code, Some(4));
    assert!(err.contains("no rollback target"), "{err}");
    let (code, _, err) = cli(&["pause", "--repo", REPO, "--env", "nowhere"]);
    assert_eq!(code, Some(4), "{err}");
    // Unreachable: exit 3.
    let out = Command::new(BIN)
        .args([
            "status",
            "--gateway",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .env("ORCASTRATE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// Issue 11: refused statuses are logged once per burst, whoever sends them and however
/// fast (300 replays and 300 forgeries here), and counted in `/metrics`.
#[test]
fn r11_a_flood_of_refused_statuses_is_one_log_line() {
    use orcastrate_broker::{sign, time, AgentState};

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let log_path = dir.path().join("gateway.log");
    let gw = Process::spawn(&config, std::fs::File::create(&log_path).unwrap().into());
    let mut status = agent_status("web-1", AgentState::Healthy);
    sign::seal_status("token-web-1", &mut status);
    let old = serde_json::to_vec(&status).unwrap();
    status.state = AgentState::Failed;
    status.updated_at = time::from_unix_ms(time::unix_ms() + 1);
    sign::seal_status("token-web-1", &mut status);
    let newer = serde_json::to_vec(&status).unwrap();
    let topic = format!("orcastrate/{REPO}/{ENV}/status/web-1");
    let mut agent = eventually(Duration::from_secs(10), "an MQTT login", || {
        Mqtt::connect(gw.mqtt_port, "", "web-1", "token-web-1").ok()
    });
    let metrics = || metrics_of(&gw.http);
    for (n, status) in [&old, &newer].into_iter().enumerate() {
        let line = format!(
            "orcastrate_agent_statuses_total{{outcome=\"accepted\"}} {}",
            n + 1
        );
        eventually(Duration::from_secs(10), &line, || {
            agent.publish(&topic, status.clone(), false);
            agent.flush();
            metrics().contains(&line).then_some(())
        });
    }
    for _ in 0..300 {
        agent.publish(&topic, old.clone(), false);
    }
    // The status held, again (as an engine re-sends it on every subscribe): not a refusal.
    agent.publish(&topic, newer, false);
    for i in 0..300 {
        agent.publish(&topic, format!("not a status {i}").into_bytes(), false);
    }
    agent.flush();
    let counted = |m: &str, line: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    };
    // Most of the flood reaching the gateway is enough: rumqttd may drop some messages to
    // the gateway's link in a burst (547 to 600 of these 600 arrived in trials).
    eventually(Duration::from_secs(20), "500 refusals counted", || {
        // Keep the client's connection going until every QoS 1 publish is out.
        agent.flush();
        let m = metrics();
        let replay = counted(
            &m,
            "orcastrate_agent_statuses_refused_total{reason=\"replay\"}",
        );
        let malformed = counted(
            &m,
            "orcastrate_agent_statuses_refused_total{reason=\"malformed\"}",
        );
        (replay >= 200 && replay + malformed >= 500).then_some(())
    });
    assert!(
        metrics().contains("orcastrate_agent_statuses_total{outcome=\"accepted\"} 2"),
        "{}",
        metrics()
    );
    gw.signal("TERM");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines = log.matches("agent status refused").count();
    // One for the burst; two if a slow machine stretched it past the 10 s window.
    assert!((1..=2).contains(&lines), "{lines} refusal lines:\n{log}");
}

/// A webhook the gateway answered 202: (delivery, seq, sha, body).
type Accepted = (String, u64, String, Vec<u8>);

/// Sends signed pushes of new shas to `url` one after another, recording each 202 in
/// `accepted`, until the gateway stops answering; any other answer or failure before
/// `killed` is set fails the test.
fn push_until_killed(
    url: &str,
    sender: u64,
    killed: &std::sync::atomic::AtomicBool,
    accepted: &std::sync::Mutex<Vec<Accepted>>,
) {
    let client = orcastrate_testkit::http::client();
    for i in 0.. {
        let (delivery, sha) = (
            format!("load-{sender}-{i}"),
            sha(sender * 1_000_000 + i + 1),
        );
        let body = push_of(&sha, "master");
        let signature = orcastrate_testkit::github::signature(SECRET, &body);
        let answer = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", &delivery)
            .header("X-Hub-Signature-256", signature)
            .send(&body[..])
            .map_err(|e| e.to_string())
            .and_then(|mut r| {
                let text = r.body_mut().read_to_string().unwrap_or_default();
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match (r.status().as_u16(), answer["seq"].as_u64()) {
                    (202, Some(seq)) => Ok(seq),
                    (status, _) => Err(format!("{status} {text}")),
                }
            });
        match answer {
            Ok(seq) => accepted.lock().unwrap().push((delivery, seq, sha, body)),
            // Only the kill may cut an answer short.
            Err(e) => {
                let killed = killed.load(std::sync::atomic::Ordering::SeqCst);
                assert!(killed, "{delivery}: {e}");
                return;
            }
        }
    }
}

/// The accepted webhooks that the ledger in `data` does not hold as accepted deliveries
/// with their seq, sha and order.
fn missing_from_ledger(data: &Path, accepted: &[Accepted]) -> Vec<String> {
    let ledger = rusqlite::Connection::open_with_flags(
        data.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut query = ledger
        .prepare(
            "SELECT d.seq, d.sha FROM deliveries d \
             JOIN orders o ON o.seq = d.seq AND o.sha = d.sha \
             WHERE d.id = ?1 AND d.outcome = 'accepted'",
        )
        .unwrap();
    accepted
        .iter()
        .filter_map(|(delivery, seq, sha, _)| {
            let recorded: Option<(u64, String)> = query
                .query_row([delivery], |r| Ok((r.get(0)?, r.get(1)?)))
                .ok();
            (recorded.as_ref() != Some(&(*seq, sha.clone())))
                .then(|| format!("{delivery} (seq {seq}): {recorded:?}"))
        })
        .collect()
}

/// Issue 10, what held: the gateway SIGKILLed while eight senders push signed webhooks as
/// fast as it answers loses none it accepted: after the restart every delivery answered 202
/// is in the ledger with its seq, sha and order, and is a duplicate when sent again.
#[test]
fn r10_sigkill_under_load_keeps_every_accepted_webhook() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Process::start(&config);
    let url = format!("{}/webhook", gw.http);
    let killed = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..8u64)
        .map(|sender| {
            let (url, killed, accepted) = (url.clone(), killed.clone(), accepted.clone());
            std::thread::spawn(move || push_until_killed(&url, sender, &killed, &accepted))
        })
        .collect();
    eventually(Duration::from_secs(60), "1,000 accepted webhooks", || {
        (accepted.lock().unwrap().len() >= 1_000).then_some(())
    });
    killed.store(true, Ordering::SeqCst);
    gw.signal("KILL");
    for s in senders {
        s.join().unwrap();
    }
    drop(gw);
    let accepted = accepted.lock().unwrap().clone();

    let gw = Process::start(&config);
    let missing = missing_from_ledger(&dir.path().join("data"), &accepted);
    assert!(
        missing.is_empty(),
        "{} of {} accepted webhooks are not in the ledger after SIGKILL: {missing:?}",
        missing.len(),
        accepted.len()
    );
    // Sent again after the restart, an accepted webhook is a duplicate; a new one is the
    // newest order.
    let send = |delivery: &str, body: &[u8]| {
        let url = format!("{}/webhook", gw.http);
        orcastrate_testkit::http::webhook(&url, SECRET, "push", delivery, "application/json", body)
    };
    let (delivery, _, _, body) = accepted.last().unwrap();
    let (status, answer) = send(delivery, body);
    assert_eq!(
        (status, answer["duplicate"].as_bool()),
        (200, Some(true)),
        "{answer}"
    );
    let newest = accepted.iter().map(|a| a.1).max().unwrap();
    let (status, answer) = send("after-restart", &push_of(&sha(999), "master"));
    assert_eq!(status, 202, "{answer}");
    assert!(answer["seq"].as_u64().unwrap() > newest, "{answer}");
    eprintln!(
        "{} accepted webhooks, all in the ledger after SIGKILL",
        accepted.len()
    );
}
