//! A rollout survives its gateway (issue 13): the gateway binary is stopped mid-rollout,
//! once with SIGTERM and once with SIGKILL, while the canary's wave holds; the restarted
//! gateway resumes the rollout from the ledger, hold timer included, and completes it.

use std::path::Path;

use serde_json::Value;

use super::agent_e2e::{app_version, public_key, Agent, GatewayProcess, Origin};
use crate::common::*;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `web-1` and `web-2` (their tokens in `config_text`), each with its own root and app port.
const HOSTS: [(&str, &str); 2] = [("web-1", "token-web-1"), ("web-2", "token-web-2")];

fn write_agent(
    dir: &Path,
    name: &str,
    token: &str,
    mqtt_port: u16,
    key: &str,
    origin: &Origin,
) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let root = dir.join(format!("root-{name}"));
    std::fs::create_dir_all(root.join("shared")).unwrap();
    // The app reads its port from `PORT`: this host's own, shared into every release.
    std::fs::write(root.join("shared/PORT"), port.to_string()).unwrap();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"name = "{name}"
server = ["mqtt://127.0.0.1:{mqtt_port}"]
token = "{token}"
repo = "Codertocat/Hello-World"
env = "{ENV}"
git_url = "{origin}"
root = "{root}"
gateway_public_keys = ["{key}"]
on_shutdown = "stop"
[steps]
install = "test -f server.js"
start = "exec node server.js"
stop_timeout_s = 5
[shared]
files = ["PORT"]
[health]
http = "http://127.0.0.1:{port}/health"
timeout_s = 15
interval_s = 1
"#,
            origin = origin.bare.display(),
            root = root.display(),
        ),
    )
    .unwrap();
    (config, port)
}

fn rollout(gateway: &GatewayProcess) -> Value {
    gateway.admin_get(&format!("/api/v1/rollouts?repo={REPO}&env={ENV}&limit=1"))["rollouts"][0]
        .clone()
}

fn agent_at(gateway: &GatewayProcess, name: &str, sha: &str, seq: u64) -> bool {
    let v = gateway.admin_get(&format!("/api/v1/agents?repo={REPO}&env={ENV}"));
    v["agents"].as_array().into_iter().flatten().any(|a| {
        a["agent"] == name
            && a["state"] == "healthy"
            && a["sha"] == sha
            && a["seq"].as_u64() >= Some(seq)
    })
}

#[test]
fn a_rollout_resumes_after_the_gateway_is_stopped_or_killed_mid_wave() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let config = dir.path().join("gateway.toml");
    let table = "[repos.rollout.production]\nwaves = [\"web-1\", \"100%\"]\nhold_s = 4\n";
    std::fs::write(
        &config,
        config_text(&dir.path().join("data"), mqtt_port, SECRET, table),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);
    let key = public_key(&config);
    let origin = Origin::new(dir.path(), 1);
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    for (name, token) in HOSTS {
        let (cfg, port) = write_agent(dir.path(), name, token, mqtt_port, &key, &origin);
        agents.push(Agent::start(&cfg));
        ports.push(port);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (n, version) in ["v1", "v2", "v3"].into_iter().enumerate() {
            let sha = origin.commit(version);
            let (code, answer) = gateway.push(&sha, &format!("restart-{version}"));
            assert_eq!(code, 202, "{answer}");
            let seq = answer["seq"].as_u64().unwrap();
            // The canary's wave: web-1 runs it, web-2 is not in it.
            eventually(WAIT, "the canary to be healthy", || {
                agent_at(&gateway, "web-1", &sha, seq).then_some(())
            });
            let r = rollout(&gateway);
            assert_eq!(
                (r["state"].as_str(), r["wave"].as_u64()),
                (Some("running"), Some(0)),
                "{r}"
            );
            if n > 0 {
                // Mid-wave, during the hold: stopped gracefully once, killed once.
                if n == 1 {
                    assert!(gateway.terminate().success());
                } else {
                    gateway.kill9();
                }
                gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);
            }
            eventually(
                WAIT,
                &format!("the rollout of {version} to complete"),
                || {
                    let r = rollout(&gateway);
                    (r["state"] == "completed" && r["sha"] == sha.as_str()).then_some(())
                },
            );
            for port in &ports {
                eventually(WAIT, &format!("every app to serve {version}"), || {
                    (app_version(*port)? == version).then_some(())
                });
            }
        }
    }));
    drop(agents);
    if let Err(panic) = result {
        eprintln!(
            "---- gateway log ----\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}
