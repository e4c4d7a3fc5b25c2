//! The gateway binary and the real agent together across gateway restarts: the agent
//! (in-process, its library `run`) reconnects by itself and deploys what the restarted
//! gateway orders; the ledger keeps every order. (Moved from the gateway's own tests, which
//! should not need the agent.)

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::harness::*;

/// The gateway binary on fixed ports, logging to a file.
pub(super) struct GatewayProcess {
    child: Child,
    api: Api,
}

impl GatewayProcess {
    /// Starts `orcastrate-gateway serve --config config` on `http_port` and `mqtt_port`,
    /// appending its stderr to `log`; returns once `/healthz` answers 200.
    pub(super) fn start(config: &Path, http_port: u16, mqtt_port: u16, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = gateway_command(config, "serve")
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
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
            let answer = orcastrate_testkit::http::client()
                .get(format!("{http}/healthz"))
                .call()
                .ok()?;
            (answer.status() == 200).then_some(())
        });
        Self {
            child,
            api: Api {
                http,
                mqtt_port,
                public_key: public_key(config),
            },
        }
    }

    /// SIGTERM, and the exit status once it has stopped.
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

    /// A push of `sha`: asserts the 202 and returns the order's seq.
    #[track_caller]
    fn push_accepted(&self, sha: &str, delivery: &str) -> u64 {
        let (code, answer) = self.push(sha, delivery);
        assert_eq!(code, 202, "{answer}");
        answer["seq"].as_u64().expect("a seq in the answer")
    }
}

impl Deref for GatewayProcess {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `orcastrate-gateway <command> --config config`, without the caller's secret.
fn gateway_command(config: &Path, command: &str) -> Command {
    let mut cmd = Command::new(workspace_binary("orcastrate-gateway"));
    cmd.args([command, "--config"])
        .arg(config)
        .env_remove("GITHUB_SECRET");
    cmd
}

/// The gateway's public key, from `orcastrate-gateway public-key` as an operator gets it.
pub(super) fn public_key(config: &Path) -> String {
    let out = gateway_command(config, "public-key").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One test's setting: the gateway's config file, ports and log, an origin, and the agent.
///
/// Prints the logs if the test fails; stops the agent (and with it the app) first.
struct Restarts {
    dir: tempfile::TempDir,
    config: PathBuf,
    http_port: u16,
    mqtt_port: u16,
    app_port: u16,
    origin: Origin,
    agent: Option<Agent>,
}

impl Restarts {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mqtt_port = free_port();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, gateway_config(&dir.path().join("data"), mqtt_port)).unwrap();
        let origin = Origin::on_branch(dir.path(), BRANCH);
        Self {
            config,
            http_port: free_port(),
            mqtt_port,
            app_port: free_port(),
            origin,
            agent: None,
            dir,
        }
    }

    fn start_gateway(&self) -> GatewayProcess {
        let log = self.dir.path().join("gateway.log");
        GatewayProcess::start(&self.config, self.http_port, self.mqtt_port, &log)
    }

    /// Starts the agent with `install` as its install step; its `gateway_public_keys` come
    /// from `orcastrate-gateway public-key`.
    fn start_agent(&mut self, install: &str) {
        let config = self.dir.path().join("agent.toml");
        let text = AgentConfig {
            name: AGENT,
            token: AGENT_TOKEN,
            mqtt_port: self.mqtt_port,
            servers: &[],
            origin: &self.origin.bare,
            root: &self.dir.path().join("agent-root"),
            public_key: &public_key(&self.config),
            app_port: self.app_port,
            health_timeout_s: 15,
            install,
            top: "",
            extra: "",
        }
        .text();
        std::fs::write(&config, text).unwrap();
        self.agent = Some(Agent::start(&config));
    }

    fn commit(&self, version: &str) -> String {
        orcastrate_testkit::app::commit(&self.origin, version, self.app_port, &[])
    }

    /// Waits until the app serves `version`.
    #[track_caller]
    fn wait_app(&self, version: &str) {
        eventually(WAIT, &format!("the app to serve {version}"), || {
            app_identity(self.app_port).filter(|(v, _)| v == version)
        });
    }
}

impl Drop for Restarts {
    fn drop(&mut self) {
        let agent_log = self.agent.as_ref().map(|a| a.logs.text());
        drop(self.agent.take());
        orcastrate_testkit::procs::kill_all_under(self.dir.path());
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", agent_log.unwrap_or_default());
            let gateway =
                std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
            eprintln!("---- gateway log ----\n{gateway}");
        }
    }
}

/// The orders of the ledger, newest first, as (seq, sha, delivery).
fn orders(gateway: &Api) -> Vec<(u64, String, String)> {
    gateway
        .deployments()
        .iter()
        .map(|o| {
            (
                o["seq"].as_u64().unwrap(),
                o["sha"].as_str().unwrap().to_owned(),
                o["delivery"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn gateway_restarted_while_the_agent_waits() {
    let mut r = Restarts::new();
    let gateway = r.start_gateway();
    r.start_agent("test -f server.js");

    let sha1 = r.commit("v1");
    let seq1 = gateway.push_accepted(&sha1, "restart-1");
    gateway.wait_healthy(seq1, &sha1);
    r.wait_app("v1");

    let status = gateway.terminate();
    assert!(status.success(), "{status}");
    // The app does not depend on the gateway.
    assert_eq!(
        app_identity(r.app_port).map(|(v, _)| v).as_deref(),
        Some("v1")
    );

    let gateway = r.start_gateway();
    let sha2 = r.commit("v2");
    let seq2 = gateway.push_accepted(&sha2, "restart-2");
    assert!(seq2 > seq1, "{seq2} after {seq1}");
    gateway.wait_healthy(seq2, &sha2);
    r.wait_app("v2");

    // The restarted gateway's retained fleet summary has the agent on the new order.
    let fleet = eventually(WAIT, "the fleet summary to show seq2 healthy", || {
        let f = gateway.fleet()?;
        let a = f.agents.iter().find(|a| a.agent == AGENT)?;
        (a.seq == Some(seq2) && a.state == orcastrate_broker::AgentState::Healthy).then_some(f)
    });
    assert_eq!(
        fleet.desired.map(|d| (d.seq, d.sha)),
        Some((seq2, sha2.clone()))
    );
    let metrics = gateway.metrics();
    assert!(
        metrics.contains("orcastrate_connected_agents 1"),
        "{metrics}"
    );

    let orders: Vec<(u64, String)> = orders(&gateway)
        .into_iter()
        .map(|(seq, sha, _)| (seq, sha))
        .collect();
    assert_eq!(orders, [(seq2, sha2), (seq1, sha1)]);
}

#[test]
fn gateway_sigkilled_during_a_deploy_and_restarted() {
    let mut r = Restarts::new();
    let gateway = r.start_gateway();
    // The install waits while the file `hold` exists: the test decides when it finishes.
    let hold = r.dir.path().join("hold");
    r.start_agent(&format!(
        "while [ -e '{}' ]; do sleep 0.05; done; test -f server.js",
        hold.display()
    ));

    let sha1 = r.commit("v1");
    let seq1 = gateway.push_accepted(&sha1, "kill-1");
    gateway.wait_healthy(seq1, &sha1);
    r.wait_app("v1");

    // A deploy is in its install step when the gateway is killed.
    std::fs::write(&hold, "").unwrap();
    let sha2 = r.commit("v2");
    let seq2 = gateway.push_accepted(&sha2, "kill-2");
    gateway.wait_agent("installing seq2", |s| {
        s["seq"] == seq2 && s["state"] == "deploying" && s["step"] == "install"
    });
    gateway.kill9();

    // The agent finishes the deploy without the gateway.
    std::fs::remove_file(&hold).unwrap();
    r.wait_app("v2");

    // The restarted gateway has every order, recognises the delivery it answered before
    // the kill, and shows the agent's true status once it has reconnected.
    let gateway = r.start_gateway();
    let (code, again) = gateway.push(&sha2, "kill-2");
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    let status: Value = gateway.wait_healthy(seq2, &sha2);
    assert_eq!(status["sha"], sha2.as_str(), "{status}");
    let desired = eventually(WAIT, "the retained order of seq2", || {
        gateway.desired().filter(|o| o.seq == seq2)
    });
    assert_eq!(desired.sha, sha2);
    // Not deployed twice: the agent did not start seq2 again after reconnecting.
    let agent_log = r.agent.as_ref().unwrap().logs.text();
    assert_eq!(
        agent_log.matches(&format!("deploying {sha2}")).count(),
        1,
        "{agent_log}"
    );

    // And it keeps working.
    let sha3 = r.commit("v3");
    let seq3 = gateway.push_accepted(&sha3, "kill-3");
    gateway.wait_healthy(seq3, &sha3);
    r.wait_app("v3");
    assert_eq!(
        orders(&gateway),
        [
            (seq3, sha3, "kill-3".to_owned()),
            (seq2, sha2, "kill-2".to_owned()),
            (seq1, sha1, "kill-1".to_owned())
        ]
    );
}
