//! The gateway binary and the real agent together across a gateway restart: the agent
//! (in-process, its library `run`) reconnects by itself and deploys what the restarted
//! gateway orders; the ledger keeps every order.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_orcastrate-gateway");
/// The bound of every wait.
const WAIT: Duration = Duration::from_secs(20);
/// `config_text` binds `web-1` to this repo/env.
const AGENT: &str = "web-1";
const AGENT_TOKEN: &str = "token-web-1";

/// The gateway binary on fixed ports, logging to a file.
pub(super) struct GatewayProcess {
    child: Child,
    http: String,
}

impl GatewayProcess {
    pub(super) fn start(config: &Path, http_port: u16, mqtt_port: u16, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .env_remove("GITHUB_SECRET")
            .env_remove("TOKENS")
            .env_remove("TRUSTED_NAMES")
            .env_remove("PORT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let http = format!("http://127.0.0.1:{http_port}");
        eventually(WAIT, "the gateway to answer /healthz with 200", || {
            let r = agent().get(format!("{http}/healthz")).call().ok()?;
            (r.status() == 200).then_some(())
        });
        Self { child, http }
    }

    /// SIGTERM, and the exit code once it has stopped.
    pub(super) fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        eventually(WAIT, "the gateway to exit", || {
            self.child.try_wait().unwrap()
        })
    }

    /// SIGKILL: no graceful anything.
    pub(super) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub(super) fn push(&self, sha: &str, delivery: &str) -> (u16, Value) {
        let body = push_of(sha, "master");
        let sig = orcastrate_gateway::github::sign(SECRET, &body);
        answer(
            agent()
                .post(format!("{}/webhook", self.http))
                .header("Content-Type", "application/json")
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", delivery)
                .header("X-Hub-Signature-256", &sig)
                .send(&body[..]),
        )
    }

    pub(super) fn admin_get(&self, path: &str) -> Value {
        let (code, v) = answer(
            agent()
                .get(format!("{}{path}", self.http))
                .header("Authorization", format!("Bearer {ADMIN}"))
                .call(),
        );
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Waits until `/api/v1/agents` shows the agent healthy on `seq`, running `sha`.
    #[track_caller]
    fn wait_healthy(&self, seq: u64, sha: &str) -> Value {
        let status = eventually(WAIT, &format!("the agent to finish seq {seq}"), || {
            let v = self.admin_get(&format!("/api/v1/agents?repo={REPO}&env={ENV}"));
            let s = v["agents"]
                .as_array()?
                .iter()
                .find(|a| a["agent"] == AGENT)?
                .clone();
            let done = matches!(
                s["state"].as_str(),
                Some("healthy" | "failed" | "rolled_back" | "skipped")
            );
            (s["seq"] == seq && done).then_some(s)
        });
        assert_eq!(status["state"], "healthy", "{status}");
        assert_eq!(status["running_sha"], sha, "{status}");
        status
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = result.expect("request sent");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A shared buffer the agent logs into.
#[derive(Clone, Default)]
pub(super) struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The agent in-process, on its own runtime, logging into `logs`.
pub(super) struct Agent {
    pub(super) logs: LogBuf,
    cancel: CancellationToken,
    done: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub(super) fn start(config: &Path) -> Self {
        let cli = orcastrate_agent::Cli {
            config: Some(config.to_owned()),
            ..Default::default()
        };
        let settings = orcastrate_agent::Settings::load(&cli).expect("the agent's config is valid");
        let logs = LogBuf::default();
        let writer = logs.clone();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "orcastrate_agent=debug,info",
                ))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _guard = tracing::dispatcher::set_default(&dispatch);
            let for_workers = dispatch.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || {
                    std::mem::forget(tracing::dispatcher::set_default(&for_workers));
                })
                .build()
                .unwrap();
            let outcome = runtime.block_on(orcastrate_agent::run(settings, stop));
            tracing::info!(?outcome, "the agent returned");
            let _ = done_tx.send(());
        });
        Self {
            logs,
            cancel,
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            if self.done.recv_timeout(WAIT).is_ok() {
                let _ = thread.join();
            }
        }
    }
}

/// The app: answers `/` with its version, `/health` with 200; port from the `PORT` file.
const SERVER_JS: &str = r#"
const http = require('http');
const fs = require('fs');
const version = fs.readFileSync('VERSION', 'utf8').trim();
const port = +fs.readFileSync('PORT', 'utf8').trim();
http.createServer((q, s) => s.end(q.url === '/health' ? 'ok' : version)).listen(port, '127.0.0.1');
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A bare origin and a work clone; `commit` pushes a version of the app and returns its sha.
pub(super) struct Origin {
    pub(super) bare: PathBuf,
    work: PathBuf,
    app_port: u16,
}

impl Origin {
    pub(super) fn new(dir: &Path, app_port: u16) -> Self {
        let bare = dir.join("origin.git");
        let work = dir.join("work");
        git(dir, &["init", "-q", "--bare", bare.to_str().unwrap()]);
        git(dir, &["init", "-q", work.to_str().unwrap()]);
        Self {
            bare,
            work,
            app_port,
        }
    }

    pub(super) fn commit(&self, version: &str) -> String {
        std::fs::write(self.work.join("server.js"), SERVER_JS).unwrap();
        std::fs::write(self.work.join("VERSION"), version).unwrap();
        std::fs::write(self.work.join("PORT"), self.app_port.to_string()).unwrap();
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                version,
            ],
        );
        git(
            &self.work,
            &[
                "push",
                "-q",
                self.bare.to_str().unwrap(),
                "HEAD:refs/heads/master",
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// What the app answers on `/`.
pub(super) fn app_version(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    (text.split_whitespace().nth(1)? == "200")
        .then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))?
}

/// Prints the logs if the test fails; stops the agent (and with it the app) first.
struct Logs<'a> {
    dir: &'a Path,
    agent: Option<Agent>,
}

impl Drop for Logs<'_> {
    fn drop(&mut self) {
        let agent_log = self.agent.as_ref().map(|a| a.logs.text());
        drop(self.agent.take());
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", agent_log.unwrap_or_default());
            let gateway = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
            eprintln!("---- gateway log ----\n{gateway}");
        }
    }
}

/// The gateway's public key, from `orcastrate-gateway public-key` as an operator gets it.
pub(super) fn public_key(config: &Path) -> String {
    let out = Command::new(BIN)
        .args(["public-key", "--config"])
        .arg(config)
        .env_remove("GITHUB_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Writes the agent's config: `web-1` following our repo/env, fetching from `origin`,
/// running `install` as its install step.
fn write_agent_config(
    path: &Path,
    mqtt_port: u16,
    public_key: &str,
    origin: &Origin,
    root: &Path,
    install: &str,
) {
    std::fs::write(
        path,
        format!(
            r#"name = "{AGENT}"
server = ["mqtt://127.0.0.1:{mqtt_port}"]
token = "{AGENT_TOKEN}"
repo = "Codertocat/Hello-World"
env = "{ENV}"
git_url = "{origin}"
root = "{root}"
gateway_public_keys = ["{public_key}"]
on_shutdown = "stop"
[steps]
install = "{install}"
start = "exec node server.js"
stop_timeout_s = 5
[health]
http = "http://127.0.0.1:{app_port}/health"
timeout_s = 15
interval_s = 1
"#,
            origin = origin.bare.display(),
            root = root.display(),
            app_port = origin.app_port,
        ),
    )
    .unwrap();
}

#[test]
fn gateway_restarted_while_the_agent_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port, app_port) = (free_port(), free_port(), free_port());
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_text(&data, mqtt_port, SECRET, "")).unwrap();
    let log = dir.path().join("gateway.log");
    let gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);

    // The agents' gateway_public_keys come from `orcastrate-gateway public-key`.
    let public_key = public_key(&config);

    let origin = Origin::new(dir.path(), app_port);
    let root = dir.path().join("agent-root");
    let agent_config = dir.path().join("agent.toml");
    write_agent_config(
        &agent_config,
        mqtt_port,
        &public_key,
        &origin,
        &root,
        "test -f server.js",
    );
    let guard = Logs {
        dir: dir.path(),
        agent: Some(Agent::start(&agent_config)),
    };

    let sha1 = origin.commit("v1");
    let (code, answer) = gateway.push(&sha1, "restart-1");
    assert_eq!(code, 202, "{answer}");
    let seq1 = answer["seq"].as_u64().unwrap();
    gateway.wait_healthy(seq1, &sha1);
    eventually(WAIT, "the app to serve v1", || {
        (app_version(app_port)? == "v1").then_some(())
    });

    let status = gateway.terminate();
    assert!(status.success(), "{status}");
    // The app does not depend on the gateway.
    assert_eq!(app_version(app_port).as_deref(), Some("v1"));

    let gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);
    let sha2 = origin.commit("v2");
    let (code, answer) = gateway.push(&sha2, "restart-2");
    assert_eq!(code, 202, "{answer}");
    let seq2 = answer["seq"].as_u64().unwrap();
    assert!(seq2 > seq1, "{answer}");
    gateway.wait_healthy(seq2, &sha2);
    eventually(WAIT, "the app to serve v2", || {
        (app_version(app_port)? == "v2").then_some(())
    });

    // The restarted gateway's retained fleet summary has the agent on the new order.
    let fleet = eventually(WAIT, "the fleet summary to show seq2 healthy", || {
        let mut sub = Mqtt::connect(mqtt_port, "", "ops", "token-ops").ok()?;
        sub.subscribe(&format!("orcastrate/{REPO}/{ENV}/fleet"));
        let (_, payload) = sub.wait_for(Duration::from_secs(2), |_, _| true)?;
        let f: orcastrate_broker::FleetSummary = serde_json::from_slice(&payload).ok()?;
        let a = f.agents.iter().find(|a| a.agent == AGENT)?;
        (a.seq == Some(seq2) && a.state == orcastrate_broker::AgentState::Healthy).then_some(f)
    });
    assert_eq!(
        fleet.desired.map(|d| (d.seq, d.sha)),
        Some((seq2, sha2.clone()))
    );
    let metrics = ureq::get(format!("{}/metrics", gateway.http))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("orcastrate_connected_agents 1"),
        "{metrics}"
    );

    let v = gateway.admin_get(&format!("/api/v1/deployments?repo={REPO}&env={ENV}"));
    let orders: Vec<(u64, String)> = v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["seq"].as_u64().unwrap(),
                o["sha"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(orders, [(seq2, sha2), (seq1, sha1)]);
    drop(guard);
}

#[test]
fn gateway_sigkilled_during_a_deploy_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port, app_port) = (free_port(), free_port(), free_port());
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_text(&data, mqtt_port, SECRET, "")).unwrap();
    let log = dir.path().join("gateway.log");
    let gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);
    let origin = Origin::new(dir.path(), app_port);
    let root = dir.path().join("agent-root");
    let agent_config = dir.path().join("agent.toml");
    // The install waits while the file `hold` exists: the test decides when it finishes.
    let hold = dir.path().join("hold");
    write_agent_config(
        &agent_config,
        mqtt_port,
        &public_key(&config),
        &origin,
        &root,
        &format!(
            "while [ -e '{}' ]; do sleep 0.05; done; test -f server.js",
            hold.display()
        ),
    );
    let guard = Logs {
        dir: dir.path(),
        agent: Some(Agent::start(&agent_config)),
    };
    let app = |version: &str| {
        eventually(WAIT, &format!("the app to serve {version}"), || {
            (app_version(app_port)? == version).then_some(())
        });
    };

    let sha1 = origin.commit("v1");
    let (code, answer) = gateway.push(&sha1, "kill-1");
    assert_eq!(code, 202, "{answer}");
    let seq1 = answer["seq"].as_u64().unwrap();
    gateway.wait_healthy(seq1, &sha1);
    app("v1");

    // A deploy is in its install step when the gateway is killed.
    std::fs::write(&hold, "").unwrap();
    let sha2 = origin.commit("v2");
    let (code, answer) = gateway.push(&sha2, "kill-2");
    assert_eq!(code, 202, "{answer}");
    let seq2 = answer["seq"].as_u64().unwrap();
    eventually(WAIT, "the agent to install seq2", || {
        let v = gateway.admin_get(&format!("/api/v1/agents?repo={REPO}&env={ENV}"));
        let s = v["agents"].as_array()?.first()?.clone();
        (s["seq"] == seq2 && s["state"] == "deploying" && s["step"] == "install").then_some(())
    });
    gateway.kill9();

    // The agent finishes the deploy without the gateway.
    std::fs::remove_file(&hold).unwrap();
    app("v2");

    // The restarted gateway has every order, recognises the delivery it answered before
    // the kill, and shows the agent's true status once it has reconnected.
    let gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);
    let (code, again) = gateway.push(&sha2, "kill-2");
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    let status = gateway.wait_healthy(seq2, &sha2);
    assert_eq!(status["sha"], sha2.as_str(), "{status}");
    let desired = eventually(WAIT, "the retained order of seq2", || {
        let mut sub = Mqtt::connect(mqtt_port, "", "web-2", "token-web-2").ok()?;
        sub.subscribe(&format!("orcastrate/{REPO}/{ENV}/desired"));
        let (_, payload) = sub.wait_for(Duration::from_secs(2), |_, _| true)?;
        let o: orcastrate_broker::DeployOrder = serde_json::from_slice(&payload).ok()?;
        (o.seq == seq2).then_some(o)
    });
    assert_eq!(desired.sha, sha2);
    // Not deployed twice: the agent did not start seq2 again after reconnecting.
    let agent_log = guard.agent.as_ref().unwrap().logs.text();
    assert_eq!(
        agent_log.matches(&format!("deploying {sha2}")).count(),
        1,
        "{agent_log}"
    );

    // And it keeps working.
    let sha3 = origin.commit("v3");
    let (code, answer) = gateway.push(&sha3, "kill-3");
    assert_eq!(code, 202, "{answer}");
    let seq3 = answer["seq"].as_u64().unwrap();
    gateway.wait_healthy(seq3, &sha3);
    app("v3");
    let v = gateway.admin_get(&format!("/api/v1/deployments?repo={REPO}&env={ENV}"));
    let orders: Vec<(u64, String, String)> = v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["seq"].as_u64().unwrap(),
                o["sha"].as_str().unwrap().to_owned(),
                o["delivery"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        orders,
        [
            (seq3, sha3, "kill-3".to_owned()),
            (seq2, sha2, "kill-2".to_owned()),
            (seq1, sha1, "kill-1".to_owned())
        ]
    );
    drop(guard);
}
