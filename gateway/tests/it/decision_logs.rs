//! Issue 14: the gateway binary logs one info line per decision (webhook, order, agent
//! state change) with the same fields in text and JSON, no colour codes in a file, and warns
//! at start-up about a configuration that works but is probably not meant.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orcastrate_broker::{AgentState, Step};
use serde_json::{json, Value};

use crate::common::*;
use crate::operator_views::Report;
use crate::process::{write_config, BIN};

const WAIT: Duration = Duration::from_secs(20);
const SHA: &str = "3f2a1b0c9d8e7f60514233241506f7e8d9cab0b1";

/// The gateway binary with `args` and `envs`, its stderr in `log`; killed on drop.
struct Logged {
    child: Child,
    http: String,
    http_port: u16,
    mqtt_port: u16,
    log: PathBuf,
}

impl Logged {
    /// Starts `serve` listening on `host` and waits until it logs that it is ready.
    fn start(args: &[&str], envs: &[(&str, &str)], log: &Path, host: &str) -> Self {
        let (http_port, mqtt_port) = (free_port(), free_port());
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(args)
            .args(["--http-listen", &format!("{host}:{http_port}")])
            .args(["--mqtt-listen", &format!("{host}:{mqtt_port}")]);
        for var in [
            "GITHUB_SECRET",
            "TOKENS",
            "TRUSTED_NAMES",
            "PORT",
            "RUST_LOG",
            "ORCASTRATE_REPOS",
            "ORCASTRATE_ADMIN_TOKEN",
            "ORCASTRATE_LOG_FORMAT",
            "ORCASTRATE_CONFIG",
            "ORCASTRATE_HTTP_LISTEN",
            "ORCASTRATE_MQTT_LISTEN",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let gw = Self {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            http_port,
            mqtt_port,
            log: log.to_owned(),
        };
        gw.wait_log("the gateway to be ready", |l| l.contains("gateway ready"));
        gw
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line satisfying `f` and returns it.
    #[track_caller]
    fn wait_log(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        eventually(WAIT, what, || {
            self.text().lines().find(|l| f(l)).map(str::to_owned)
        })
    }

    fn push(&self, branch: &str, delivery: &str) -> (u16, Value) {
        orcastrate_testkit::http::webhook(
            &format!("{}/webhook", self.http),
            SECRET,
            "push",
            delivery,
            "application/json",
            &push_of(SHA, branch),
        )
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.text());
        }
    }
}

/// A failed status of `web-1`, MAC'd with its token, as the agent publishes it.
fn failed_status() -> Vec<u8> {
    Report {
        agent: "web-1",
        token: "token-web-1",
        state: AgentState::Failed,
        step: Some(Step::Install),
        seq: 7,
        sha: SHA,
        running: None,
        error: Some("install exited with code 3:\nnpm ERR! missing script"),
    }
    .payload()
}

/// A push, an ignored push, a manual order and an agent failure, each one line.
fn make_decisions(gw: &Logged) {
    let (code, v) = gw.push("master", "d-accepted");
    assert_eq!(code, 202, "{v}");
    let (code, v) = gw.push("feature-x", "d-ignored");
    assert_eq!(code, 202, "{v}");
    assert!(v["ignored"].is_string(), "{v}");
    let mut r = ureq::post(format!("{}/api/v1/rollback", gw.http))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .send_json(json!({ "repo": REPO, "env": ENV, "to": sha(5) }))
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let mut agent = eventually(WAIT, "an MQTT login", || {
        Mqtt::connect(gw.mqtt_port, "", "web-1", "token-web-1").ok()
    });
    agent.publish(
        &format!("orcastrate/{REPO}/{ENV}/status/web-1"),
        failed_status(),
        true,
    );
    agent.flush();
}

#[test]
fn r14_decisions_are_one_text_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Logged::start(
        &["--config", config.to_str().unwrap()],
        &[],
        &dir.path().join("gateway.log"),
        "127.0.0.1",
    );
    make_decisions(&gw);
    let line = gw.wait_log("the accepted webhook", |l| {
        l.contains(" webhook ") && l.contains("outcome=accepted")
    });
    for field in [
        "delivery=d-accepted",
        "event=push",
        "repo=codertocat/hello-world",
        "env=production",
        "sha7=3f2a1b0",
        "seq=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let line = gw.wait_log("the ignored webhook", |l| l.contains("outcome=ignored"));
    for field in [
        "delivery=d-ignored",
        "repo=codertocat/hello-world",
        "reason=\"branch feature-x is not mapped to an env\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let line = gw.wait_log("the push's order", |l| {
        l.contains(" order ") && l.contains("kind=push")
    });
    assert!(
        line.contains("sha7=3f2a1b0") && line.contains("by="),
        "{line}"
    );
    let line = gw.wait_log("the rollback order", |l| l.contains("kind=rollback"));
    assert!(
        line.contains("by=admin") && line.contains("sha7=0000000"),
        "{line}"
    );
    let line = gw.wait_log("the agent failure", |l| l.contains("agent state"));
    for field in [
        "agent=web-1",
        "state=failed",
        "step=install",
        "sha7=3f2a1b0",
        // Escaped: an agent's error cannot start a line of its own.
        "error=\"install exited with code 3:\\nnpm ERR! missing script\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    // Written to a file: no colour codes.
    assert!(!gw.text().contains('\u{1b}'), "{}", gw.text());
    // The broker's address as configured, not the loopback address the gateway probes.
    let ready = gw.wait_log("gateway ready", |l| l.contains("gateway ready"));
    assert!(
        ready.contains(&format!("mqtt_listen=127.0.0.1:{}", gw.mqtt_port)),
        "{ready}"
    );
}

#[test]
fn r14_decisions_keep_their_fields_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = Logged::start(
        &["--log-format", "json", "--config", config.to_str().unwrap()],
        &[],
        &dir.path().join("gateway.log"),
        "127.0.0.1",
    );
    make_decisions(&gw);
    let find = |what: &str, f: &dyn Fn(&Value) -> bool| -> Value {
        eventually(WAIT, what, || {
            gw.text().lines().find_map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
                f(&v["fields"]).then(|| v["fields"].clone())
            })
        })
    };
    let f = find("the accepted webhook", &|f| {
        f["message"] == "webhook" && f["outcome"] == "accepted"
    });
    assert_eq!(f["delivery"], "d-accepted", "{f}");
    assert_eq!(f["repo"], REPO, "{f}");
    assert_eq!(f["env"], ENV, "{f}");
    assert_eq!(f["sha7"], "3f2a1b0", "{f}");
    assert!(f["seq"].is_u64(), "{f}");
    let f = find("the ignored webhook", &|f| f["outcome"] == "ignored");
    assert_eq!(f["delivery"], "d-ignored", "{f}");
    assert_eq!(
        f["reason"], "branch feature-x is not mapped to an env",
        "{f}"
    );
    let f = find("the rollback order", &|f| {
        f["message"] == "order" && f["kind"] == "rollback"
    });
    assert_eq!(f["by"], "admin", "{f}");
    assert_eq!(f["sha7"], "0000000", "{f}");
    let f = find("the agent failure", &|f| f["message"] == "agent state");
    assert_eq!(f["agent"], "web-1", "{f}");
    assert_eq!(f["state"], "failed", "{f}");
    assert_eq!(f["sha7"], "3f2a1b0", "{f}");
    assert!(
        f["error"]
            .as_str()
            .unwrap()
            .contains("install exited with code 3"),
        "{f}"
    );
}

#[test]
fn r14_startup_warns_of_no_repos_and_no_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = Logged::start(
        &["--data-dir", data.to_str().unwrap()],
        &[
            ("GITHUB_SECRET", "k3Jd9sLq0vXz"),
            ("TOKENS", "f0e1d2c3b4a59687"),
            ("TRUSTED_NAMES", "web-1"),
        ],
        &dir.path().join("gateway.log"),
        "127.0.0.1",
    );
    let log = gw.text();
    assert!(
        log.contains("WARN") && log.contains("no repos configured"),
        "{log}"
    );
    assert!(
        log.contains("ORCASTRATE_REPOS=owner/name@branch=env"),
        "{log}"
    );
    assert!(log.contains("no admin token"), "{log}");
    assert!(
        !log.contains("demo-looking") && !log.contains("without TLS"),
        "{log}"
    );
}

#[test]
fn r14_startup_warns_of_demo_secrets_and_no_tls_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = Logged::start(
        &["--data-dir", data.to_str().unwrap()],
        &[
            ("GITHUB_SECRET", "change-me"),
            ("TOKENS", "token-of-web-1-0123"),
            ("TRUSTED_NAMES", "web-1"),
            ("ORCASTRATE_REPOS", "octo-org/web@main=production"),
            ("ORCASTRATE_ADMIN_TOKEN", "admin-token-0123456789"),
        ],
        &dir.path().join("gateway.log"),
        "0.0.0.0",
    );
    let log = gw.text();
    let warning = |start: &str| {
        log.lines()
            .find(|l| l.contains("WARN") && l.contains(start))
            .unwrap_or_else(|| panic!("no warning {start:?} in:\n{log}"))
            .to_owned()
    };
    let demo = warning("demo-looking secrets on a public address");
    for named in [
        "[github] secret",
        "[admin] tokens",
        "the token of client web-1",
        "listen on 127.0.0.1 for a local demo",
    ] {
        assert!(demo.contains(named), "{named} in {demo}");
    }
    for secret in ["change-me", "token-of-web-1-0123", "admin-token-0123456789"] {
        assert!(!log.contains(secret), "a secret in the log: {log}");
    }
    warning(&format!(
        "HTTP on the public address 0.0.0.0:{}",
        gw.http_port
    ));
    warning(&format!(
        "MQTT on the public address 0.0.0.0:{}",
        gw.mqtt_port
    ));
    assert!(
        !log.contains("no repos") && !log.contains("no admin token"),
        "{log}"
    );
    // The broker's address as bound, not the loopback address the gateway probes itself on.
    let ready = ready_line(&log);
    assert!(
        ready.contains(&format!("mqtt_listen=0.0.0.0:{}", gw.mqtt_port)),
        "{ready}"
    );
}

fn ready_line(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("gateway ready"))
        .unwrap_or_default()
        .to_owned()
}
