//! A rollout survives its gateway (issue 13): the gateway binary is stopped mid-rollout,
//! once with SIGTERM and once with SIGKILL, while the canary's wave holds; the restarted
//! gateway resumes the rollout from the ledger, hold timer included, and completes it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::restarts::{public_key, GatewayProcess};
use crate::harness::*;

/// The bound of these waits: a restart and a hold fit in it.
const LONG: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes host `name`'s config (its own root, and its app's port shared into every
/// release); returns the config's path and the app's port.
fn write_agent(
    dir: &Path,
    (name, token): (&str, &str),
    mqtt_port: u16,
    key: &str,
    origin: &Origin,
) -> (PathBuf, u16) {
    let port = free_port();
    let root = dir.join(format!("root-{name}"));
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::write(root.join("shared/PORT"), format!("{port}\n")).unwrap();
    let config = dir.join(format!("{name}.toml"));
    let text = AgentConfig {
        name,
        token,
        mqtt_port,
        servers: &[],
        origin: &origin.bare,
        root: &root,
        public_key: key,
        app_port: port,
        health_timeout_s: 15,
        install: "test -f package.json",
        top: "",
        extra: "\n[shared]\nfiles = [\"PORT\"]\n",
    }
    .text();
    std::fs::write(&config, text).unwrap();
    (config, port)
}

fn rollout(gateway: &GatewayProcess) -> Value {
    let (code, v) = gateway.admin_get(&format!("/api/v1/rollouts?repo={REPO}&env={ENV}&limit=1"));
    assert_eq!(code, 200, "{v}");
    v["rollouts"][0].clone()
}

#[test]
fn a_rollout_resumes_after_the_gateway_is_stopped_or_killed_mid_wave() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let config = dir.path().join("gateway.toml");
    let table = "[repos.rollout.production]\nwaves = [\"web-1\", \"100%\"]\nhold_s = 4\n";
    let text = gateway_config(&dir.path().join("data"), mqtt_port) + table;
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::start(&config, http_port, mqtt_port, &log);
    let key = public_key(&config);
    let origin = Origin::on_branch(dir.path(), BRANCH);
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    for host in [(AGENT, AGENT_TOKEN), (AGENT2, AGENT2_TOKEN)] {
        let (cfg, port) = write_agent(dir.path(), host, mqtt_port, &key, &origin);
        agents.push(Agent::start(&cfg));
        ports.push(port);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (n, version) in ["v1", "v2", "v3"].into_iter().enumerate() {
            let sha = orcastrate_testkit::app::commit(&origin, version, 1, &[]);
            let (code, answer) = gateway.push(&sha, &delivery());
            assert_eq!(code, 202, "{answer}");
            let seq = answer["seq"].as_u64().unwrap();
            // The canary's wave: web-1 runs it, web-2 is not in it.
            gateway.wait_agent_of(AGENT, "healthy on the canary's wave", |s| {
                s["state"] == "healthy"
                    && s["sha"] == sha.as_str()
                    && s["seq"].as_u64() >= Some(seq)
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
                LONG,
                &format!("the rollout of {version} to complete"),
                || {
                    let r = rollout(&gateway);
                    (r["state"] == "completed" && r["sha"] == sha.as_str()).then_some(())
                },
            );
            for port in &ports {
                eventually(LONG, &format!("every app to serve {version}"), || {
                    app_identity(*port).filter(|(v, _)| v == version)
                });
            }
        }
    }));
    drop(agents);
    orcastrate_testkit::procs::kill_all_under(dir.path());
    if let Err(panic) = result {
        eprintln!(
            "---- gateway log ----\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}
