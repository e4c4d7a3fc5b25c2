//! Issue 14, coming from the Node tool: the gateway binary from the original tool's
//! variables (`GITHUB_SECRET`, `TOKENS`, `TRUSTED_NAMES`, `PORT`) plus the repo mapping,
//! a merged pull request through `/pullrequest` with a form-encoded body, as the original
//! tool's webhook was set up; `agent-config` gives the agent the key that verifies the order.
//! (The agent side, from `ORCASTRATE_SERVER`, `CONNECT_TOKEN`, … is tested in the agent's
//! own migration test.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orcastrate_broker::{DeployOrder, OrderVerifier};
use serde_json::Value;

use crate::common::*;
use crate::process::BIN;

const WAIT: Duration = Duration::from_secs(20);

/// The original tool's environment, and ours for the repo mapping and the broker's port.
fn node_tool_env(cmd: &mut Command, dir: &Path, http_port: u16, mqtt_port: u16) {
    for var in [
        "RUST_LOG",
        "ORCASTRATE_ADMIN_TOKEN",
        "ORCASTRATE_CONFIG",
        "ORCASTRATE_DATA_DIR",
        "ORCASTRATE_HTTP_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir)
        .env("GITHUB_SECRET", SECRET)
        .env("TOKENS", "token-of-web-1, token-of-web-2")
        .env("TRUSTED_NAMES", "web-1, web-2")
        .env("PORT", http_port.to_string())
        .env(
            "ORCASTRATE_REPOS",
            "Codertocat/Hello-World@master=production",
        )
        .env("ORCASTRATE_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"));
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn r14_migration_from_the_node_tools_variables_and_a_form_encoded_pull_request() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let log = dir.path().join("gateway.log");
    let mut serve = Command::new(BIN);
    serve.arg("serve");
    node_tool_env(&mut serve, dir.path(), http_port, mqtt_port);
    let _gateway = Killed(
        serve
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let http = format!("http://127.0.0.1:{http_port}");
    eventually(WAIT, "healthz", || {
        ureq::get(format!("{http}/healthz")).call().ok().map(drop)
    });
    // The original tool had no admin token: said at start-up, not silently.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("no admin token"), "{text}");
    assert!(!text.contains("no repos configured"), "{text}");

    // The agent's config, printed by the gateway: nothing copied by hand.
    let mut agent_config = Command::new(BIN);
    agent_config.args([
        "agent-config",
        "--name",
        "web-1",
        "--repo",
        "Codertocat/Hello-World",
        "--env",
        "production",
    ]);
    node_tool_env(&mut agent_config, dir.path(), http_port, mqtt_port);
    let out = agent_config.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(
        printed["server"][0].as_str(),
        Some(format!("mqtt://127.0.0.1:{mqtt_port}").as_str())
    );
    let keys: Vec<String> = printed["gateway_public_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let verifier = OrderVerifier::new(&keys).unwrap();

    // A merged pull request, form-encoded as GitHub sends it with that content type.
    let (pr, merge_sha) = merged_pull_request();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &serde_json::to_string(&pr).unwrap())
        .finish();
    let sig = orcastrate_gateway::github::sign(SECRET, body.as_bytes());
    let mut r = ureq::post(format!("{http}/pullrequest"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", "node-1")
        .header("X-Hub-Signature-256", &sig)
        .send(body.as_bytes())
        .unwrap();
    let answer: Value = r.body_mut().read_json().unwrap();
    assert_eq!(r.status(), 202, "{answer}");
    assert_eq!(answer["sha"], merge_sha.as_str(), "{answer}");

    // The agent (a TRUSTED_NAMES login) gets the order and verifies it with that key.
    let mut agent = eventually(WAIT, "web-1's login", || {
        Mqtt::connect(mqtt_port, "", "web-1", "token-of-web-1").ok()
    });
    agent.subscribe(&format!("orcastrate/{REPO}/{ENV}/desired"));
    let (_, payload) = agent
        .wait_for(WAIT, |_, p| !p.is_empty())
        .expect("the retained order");
    let order: DeployOrder = serde_json::from_slice(&payload).unwrap();
    assert_eq!(order.sha, merge_sha);
    assert_eq!(order.kind.as_str(), "merge");
    verifier.verify(&order).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("webhook")
            && l.contains("delivery=node-1")
            && l.contains("outcome=accepted")),
        "{text}"
    );
}
