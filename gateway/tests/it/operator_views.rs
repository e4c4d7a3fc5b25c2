//! Issue 14: what an operator sees: `watch` (one readable line per event, order and status
//! change, live), the ERROR column of `status`, and `agent-config`, whose output the real
//! agent's configuration loading accepts.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use orcastrate_broker::{sign, time, AgentState, AgentStatus, Step};
use serde_json::json;

use crate::common::*;
use crate::process::BIN;

const WAIT: Duration = Duration::from_secs(20);

/// What an agent reports, MAC'd with its token as the agent publishes it.
pub struct Report<'a> {
    pub agent: &'a str,
    pub token: &'a str,
    pub state: AgentState,
    pub step: Option<Step>,
    pub seq: u64,
    pub sha: &'a str,
    pub running: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl Report<'_> {
    /// The status payload; each call is stamped later than the one before.
    pub fn payload(&self) -> Vec<u8> {
        static LAST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
        let at = {
            let mut last = LAST.lock().unwrap();
            *last = (*last + 1).max(time::unix_ms());
            *last
        };
        let mut status = AgentStatus {
            session: "s1".into(),
            state: self.state,
            step: self.step,
            seq: Some(self.seq),
            sha: Some(self.sha.into()),
            running_sha: self.running.map(Into::into),
            updated_at: time::from_unix_ms(at),
            error: self.error.map(Into::into),
            ..AgentStatus::idle(self.agent, "h", REPO, ENV, "t")
        };
        sign::seal_status(self.token, &mut status);
        serde_json::to_vec(&status).unwrap()
    }

    /// Publishes it (retained, as the agent does) on the agent's status topic.
    pub fn publish(&self, mqtt: &mut Mqtt) {
        mqtt.publish(
            &format!("orcastrate/{REPO}/{ENV}/status/{}", self.agent),
            self.payload(),
            true,
        );
        mqtt.flush();
    }
}

/// `web-1`'s report with everything but `state` and `sha` unset.
fn web1(state: AgentState, seq: u64, sha: &str) -> Report<'_> {
    Report {
        agent: "web-1",
        token: "token-web-1",
        state,
        step: None,
        seq,
        sha,
        running: Some(sha),
        error: None,
    }
}

/// `orcastrate-gateway watch` as a child whose stdout lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn start(gw: &TestGateway) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "watch",
                "--server",
                &format!("mqtt://127.0.0.1:{}", gw.mqtt_port),
            ])
            .args([
                "--user",
                "ops",
                "--repo",
                "Codertocat/Hello-World",
                "--env",
                ENV,
            ])
            .env("ORCASTRATE_WATCHER_TOKEN", "token-ops")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        assert!(first.starts_with("watching "), "{first}");
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing every one of `parts`, in that order.
    #[track_caller]
    fn expect(&mut self, parts: &[&str]) -> String {
        let matches = |l: &str| {
            let mut rest = l;
            parts.iter().all(|p| match rest.find(p) {
                Some(i) => {
                    rest = &rest[i + p.len()..];
                    true
                }
                None => false,
            })
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.seen.iter().find(|l| matches(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "no line with {parts:?}; watch printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn r14_watch_shows_a_push_its_deploy_and_a_rollback() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut watch = Watch::start(&gw);
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let (a, b) = (sha(0xa1), format!("{:0<40}", "b2c3d4e"));
    let a7 = &a[..7];

    let (code, v) = gw.webhook("push", "d-1", &push_of(&a, "master"));
    assert_eq!(code, 202, "{v}");
    let seq_a = v["seq"].as_u64().unwrap();
    watch.expect(&[
        "codertocat/hello-world production",
        "webhook push d-1: accepted",
        &format!("seq {seq_a} {a7}"),
    ]);
    watch.expect(&[&format!("order {seq_a} push {a7} by github:Codertocat")]);
    let mut deploying = web1(AgentState::Deploying, seq_a, &a);
    deploying.step = Some(Step::Install);
    deploying.running = None;
    deploying.publish(&mut agent);
    watch.expect(&["web-1 deploying install", a7]);
    web1(AgentState::Healthy, seq_a, &a).publish(&mut agent);
    watch.expect(&["web-1 healthy", a7]);

    let (code, v) = gw.webhook("push", "d-2", &push_of(&b, "develop"));
    assert_eq!(code, 202, "{v}");
    let (code, v) = gw.webhook("push", "d-3", &push_of(&b, "master"));
    assert_eq!(code, 202, "{v}");
    let seq_b = v["seq"].as_u64().unwrap();
    watch.expect(&[&format!("order {seq_b} push b2c3d4e")]);
    let mut rolled = web1(AgentState::RolledBack, seq_b, &b);
    rolled.running = Some(&a);
    rolled.error = Some("health check failed: GET /healthz: 500\nsecond line");
    rolled.publish(&mut agent);
    let line = watch.expect(&[
        "web-1 rolled_back b2c3d4e",
        &format!("running {a7}"),
        ": health check failed: GET /healthz: 500…",
    ]);
    assert!(!line.contains("second line"), "{line}");

    let (code, v) = gw.admin_post(
        "/api/v1/rollback",
        json!({ "repo": REPO, "env": ENV, "to": a }),
    );
    assert_eq!(code, 202, "{v}");
    watch.expect(&["order", "rollback", a7, "by admin"]);
    // The staging push was filtered out (--env production): a line is for this env only.
    assert!(
        !watch.seen.iter().any(|l| l.contains("staging")),
        "{}",
        watch.seen.join("\n")
    );
}

#[test]
fn r14_watch_with_a_wrong_token_says_what_to_check() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let out = Command::new(BIN)
        .args([
            "watch",
            "--server",
            &format!("mqtt://127.0.0.1:{}", gw.mqtt_port),
        ])
        .args(["--user", "ops", "--token", "wrong-token"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check --server, --user and --token"), "{err}");
    let out = Command::new(BIN)
        .args(["watch", "--token", "x", "--repo", "not a repo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--repo"),
        "{out:?}"
    );
}

#[test]
fn r14_status_has_an_error_column() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let mut failed = web1(
        AgentState::Failed,
        5,
        "5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f",
    );
    failed.step = Some(Step::Install);
    failed.error = Some("install exited with code 1: Cannot find module 'pg'\nat Module._resolve");
    failed.publish(&mut agent);
    let status = || {
        let out = Command::new(BIN)
            .args(["status", "--gateway", &gw.http])
            .env("ORCASTRATE_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = eventually(WAIT, "the failed status in `status`", || {
        let out = status();
        out.contains("failed").then_some(out)
    });
    let header = out.lines().next().unwrap();
    assert!(header.ends_with("ERROR"), "{out}");
    let row = out.lines().find(|l| l.starts_with("web-1")).unwrap();
    assert!(
        row.ends_with("install exited with code 1: Cannot find module 'pg'…"),
        "{out}"
    );
}

#[test]
fn r14_agent_config_is_accepted_by_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = TestGateway::start(&data);
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_text(&data, 1883, SECRET, "")).unwrap();
    let out = Command::new(BIN)
        .args(["agent-config", "--config"])
        .arg(&config)
        .args([
            "--name",
            "web-1",
            "--repo",
            "Codertocat/Hello-World",
            "--env",
            ENV,
        ])
        .env_remove("GITHUB_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "no warning for a known client and repo: {out:?}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&gw.public_key), "{text}");
    assert!(
        text.contains("server = [\"mqtt://127.0.0.1:1883\"]"),
        "{text}"
    );
    assert!(text.contains("repo = \"codertocat/hello-world\""), "{text}");
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(&agent_toml, &text).unwrap();

    // The agent takes it with its token from the command line (or CONNECT_TOKEN).
    let cli = orcastrate_agent::Cli {
        config: Some(agent_toml.clone()),
        token: Some("token-web-1".into()),
        ..Default::default()
    };
    let file: orcastrate_agent::config::FileConfig = toml::from_str(&text).unwrap();
    let settings = orcastrate_agent::Settings::validate(
        &cli,
        &file,
        &agent_toml.display().to_string(),
        &orcastrate_agent::config::Environment::current(),
    )
    .unwrap_or_else(|e| panic!("the agent refused:\n{e}\n{text}"));
    assert_eq!(settings.name, "web-1");
    assert_eq!(settings.repo, REPO);
    assert_eq!(settings.env, ENV);
    assert_eq!(settings.servers, ["mqtt://127.0.0.1:1883"]);
    // Its key verifies the gateway's orders.
    let (code, _) = gw.webhook("push", "d-1", &push_of(&sha(3), "master"));
    assert_eq!(code, 202);
    let mut watcher = gw.mqtt("ops", "token-ops");
    watcher.subscribe(&format!("orcastrate/{REPO}/{ENV}/desired"));
    let (_, order) = watcher
        .wait_for(WAIT, |_, p| !p.is_empty())
        .expect("the retained order");
    let order: orcastrate_broker::DeployOrder = serde_json::from_slice(&order).unwrap();
    settings.verifier.verify(&order).unwrap();

    // Unknown names are warned about, bad ones refused with exit 2.
    let run = |name: &str| {
        Command::new(BIN)
            .args(["agent-config", "--config"])
            .arg(&config)
            .args(["--name", name, "--repo", "octo-org/other", "--env", ENV])
            .env_remove("GITHUB_SECRET")
            .output()
            .unwrap()
    };
    let out = run("web-9");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web-9 is not a client of this gateway"),
        "{err}"
    );
    assert!(
        err.contains("octo-org/other/production is not mapped"),
        "{err}"
    );
    let out = run("Web 9");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--name"),
        "{out:?}"
    );
}

/// Issue 14: the README says 2 for a usage error; `status` without a token exited 1.
#[test]
fn r14_a_client_command_without_a_token_exits_2() {
    let out = Command::new(BIN)
        .args(["status", "--gateway", "http://127.0.0.1:9"])
        .env_remove("ORCASTRATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no admin token: pass --token or set ORCASTRATE_ADMIN_TOKEN"),
        "{err}"
    );
}
