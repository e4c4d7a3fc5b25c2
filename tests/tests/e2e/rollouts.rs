//! Rollouts end to end (issue 13): real agents, each with its own root and app port, a real
//! git origin, and the gateway's fleet-wide revert and waves.
//!
//! - Without a `rollout` table, one host failing a push brings the whole repo/env back to
//!   the last healthy sha, and a host added later deploys that one.
//! - With waves, a push reaches the canary first while the others keep serving the base
//!   sha; a canary that fails reverts the fleet before anyone else starts the bad sha.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orcastrate_broker::{AgentStatus, OrderKind};
use serde_json::{json, Value};

use crate::harness::*;

/// One host: its agent, root and app port.
struct Host {
    name: &'static str,
    port: u16,
    agent: Option<Agent>,
}

/// A gateway (with `table` appended to its `[[repos]]`), an origin, and hosts.
struct Fleet {
    hosts: Vec<Host>,
    gateway: Gateway,
    origin: Origin,
    dir: tempfile::TempDir,
}

const HOSTS: [(&str, &str); 3] = [
    (AGENT, AGENT_TOKEN),
    (AGENT2, AGENT2_TOKEN),
    (AGENT3, AGENT3_TOKEN),
];

impl Fleet {
    fn new(table: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mqtt_port = free_port();
        let text = gateway_config(&dir.path().join("gateway-data"), mqtt_port) + table;
        let gateway = Gateway::start_config(&text, mqtt_port);
        let origin = Origin::on_branch(dir.path(), BRANCH);
        Self {
            hosts: Vec::new(),
            gateway,
            origin,
            dir,
        }
    }

    /// A fleet with rollout `table` of the first `hosts` of [`HOSTS`], all healthy on `v1`,
    /// deployed to every host at once; returns it and v1's sha.
    fn on_v1(table: &str, hosts: usize) -> (Self, String) {
        let mut f = Self::new(table);
        for i in 0..hosts {
            f.start(i);
        }
        let v1 = f.commit("v1", true);
        let seq1 = f.deploy_now(&v1);
        for (name, _) in &HOSTS[..hosts] {
            f.wait_healthy(name, seq1, &v1);
        }
        (f, v1)
    }

    /// Starts host `i` of [`HOSTS`] and waits for its first verified status.
    fn start(&mut self, i: usize) {
        let (name, token) = HOSTS[i];
        let port = free_port();
        let root: PathBuf = self.dir.path().join(format!("root-{name}"));
        std::fs::create_dir_all(root.join("shared")).unwrap();
        // The app reads its port from `PORT`: each host's own, shared into every release.
        std::fs::write(root.join("shared/PORT"), format!("{port}\n")).unwrap();
        let config = self.dir.path().join(format!("{name}.toml"));
        let text = AgentConfig {
            name,
            token,
            mqtt_port: self.gateway.mqtt_port,
            servers: &[],
            origin: &self.origin.bare,
            root: &root,
            public_key: &self.gateway.public_key,
            app_port: port,
            health_timeout_s: 3,
            install: "test -f package.json",
            top: "",
            extra: "\n[shared]\nfiles = [\"PORT\"]\n",
        }
        .text();
        std::fs::write(&config, text).unwrap();
        let agent = Agent::start(&config);
        self.gateway
            .wait_agent_of(name, "connected (any verified status)", |_| true);
        self.hosts.push(Host {
            name,
            port,
            agent: Some(agent),
        });
    }

    fn commit(&self, version: &str, healthy: bool) -> String {
        let unhealthy = if healthy { None } else { Some("") };
        orcastrate_testkit::app::commit(&self.origin, version, 1, &[("UNHEALTHY", unhealthy)])
    }

    /// A signed push: its seq, or the reason it was ignored.
    fn push(&self, sha: &str) -> Result<u64, String> {
        let (code, answer) = self.gateway.push(sha, &delivery());
        assert_eq!(code, 202, "{answer}");
        match answer["seq"].as_u64() {
            Some(seq) => Ok(seq),
            None => Err(answer["ignored"].as_str().unwrap_or_default().to_owned()),
        }
    }

    /// An operator's deploy to every agent at once (`deploy --now`).
    fn deploy_now(&self, sha: &str) -> u64 {
        let (code, answer) = self.gateway.admin_post(
            "/api/v1/deploy",
            json!({ "repo": REPO, "env": ENV, "sha": sha, "now": true }),
        );
        assert_eq!(code, 202, "{answer}");
        answer["order"]["seq"].as_u64().unwrap()
    }

    /// Waits until host `name` is healthy at `sha` (on any order from `seq` on).
    #[track_caller]
    fn wait_healthy(&self, name: &str, seq: u64, sha: &str) -> Value {
        self.gateway
            .wait_agent_of(name, &format!("healthy at {sha} from seq {seq}"), |s| {
                s["state"] == "healthy" && s["sha"] == sha && s["seq"].as_u64() >= Some(seq)
            })
    }

    /// What host `name`'s app answers as its version.
    fn version(&self, name: &str) -> Option<String> {
        let host = self.hosts.iter().find(|h| h.name == name).unwrap();
        app_identity(host.port).map(|(v, _)| v)
    }

    #[track_caller]
    fn wait_version(&self, name: &str, version: &str) {
        eventually(
            WAIT,
            &format!("{name}'s app to answer as {version}"),
            || (self.version(name).as_deref() == Some(version)).then_some(()),
        );
    }

    /// The newest rollout of our repo/env in the API.
    fn rollout(&self) -> Value {
        let (code, v) = self
            .gateway
            .admin_get(&format!("/api/v1/rollouts?repo={REPO}&env={ENV}&limit=1"));
        assert_eq!(code, 200, "{v}");
        v["rollouts"][0].clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut a) = h.agent.take() {
                a.stop();
                if std::thread::panicking() {
                    eprintln!("---- {} log ----\n{}", h.name, a.logs.text());
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.gateway.logs.text());
        }
    }
}

/// Every status published on our repo/env while it runs, as a watcher sees them.
struct StatusLog {
    seen: Arc<Mutex<Vec<AgentStatus>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusLog {
    fn start(gateway: &Gateway) -> Self {
        let mut sub = gateway.watch(&topic("status/+"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                sub.wait_for(Duration::from_millis(100), |_, payload| {
                    if let Ok(status) = serde_json::from_slice::<AgentStatus>(payload) {
                        s.lock().unwrap().push(status);
                    }
                    false
                });
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; every status seen.
    fn finish(mut self) -> Vec<AgentStatus> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The statuses of agent `name` that name `sha` (the order it deployed or tried).
fn statuses_at<'a>(log: &'a [AgentStatus], name: &str, sha: &str) -> Vec<&'a AgentStatus> {
    log.iter()
        .filter(|s| s.agent == name && s.sha.as_deref() == Some(sha))
        .collect()
}

#[test]
fn without_a_rollout_table_a_bad_push_is_reverted_for_the_whole_fleet() {
    let mut f = Fleet::new("");
    f.start(0);
    f.start(1);
    let good = f.commit("v1", true);
    let seq1 = f.push(&good).unwrap();
    f.wait_healthy(AGENT, seq1, &good);
    f.wait_healthy(AGENT2, seq1, &good);

    let bad = f.commit("v2-bad", false);
    let seq2 = f.push(&bad).unwrap();
    // Both hosts try it (one wave: everyone), fail its health check and roll back.
    for name in [AGENT, AGENT2] {
        f.gateway
            .wait_agent_of(name, "done with the bad push", |s| {
                s["seq"].as_u64() >= Some(seq2)
                    && s["state"] == "healthy"
                    && s["sha"] == good.as_str()
                    || s["seq"] == seq2
                        && matches!(s["state"].as_str(), Some("rolled_back" | "failed"))
            });
    }
    // The desired order goes back to the good sha by itself, for everyone.
    let desired = eventually(WAIT, "the desired order to revert", || {
        f.gateway.desired().filter(|d| d.seq > seq2)
    });
    assert_eq!(desired.kind, OrderKind::Rollback, "{desired:?}");
    assert_eq!(desired.sha, good);
    assert_eq!(desired.issued_by.as_deref(), Some("rollout"));
    assert_eq!(
        (desired.targets.as_ref(), desired.base_sha.as_ref()),
        (None, None)
    );
    assert!(f.gateway.verifies(&desired));
    for name in [AGENT, AGENT2] {
        f.wait_healthy(name, desired.seq, &good);
        f.wait_version(name, "v1");
    }
    let rollout = f.rollout();
    assert_eq!(rollout["state"], "reverted", "{rollout}");
    assert!(
        rollout["reason"].as_str().unwrap().contains("failed at"),
        "{rollout}"
    );

    // The bad sha is marked: pushing it again deploys nothing, and says why.
    let again = f.push(&bad).unwrap_err();
    assert!(again.contains("marked bad"), "{again}");

    // A host added later deploys the good sha, not the bad one.
    f.start(2);
    f.wait_healthy(AGENT3, desired.seq, &good);
    f.wait_version(AGENT3, "v1");
}

#[test]
fn waves_reach_the_canary_first_then_everyone() {
    let (f, v1) = Fleet::on_v1(
        "[repos.rollout.production]\nwaves = [\"web-1\", \"50%\", \"100%\"]\nhold_s = 5\nwave_timeout_s = 60\n",
        3,
    );

    let log = StatusLog::start(&f.gateway);
    let v2 = f.commit("v2", true);
    let seq2 = f.push(&v2).unwrap();
    let first = f.gateway.desired().unwrap();
    assert_eq!(first.seq, seq2);
    assert_eq!(first.targets.as_deref(), Some(&["web-1".to_owned()][..]));
    assert_eq!(first.base_sha.as_deref(), Some(v1.as_str()));
    f.wait_healthy(AGENT, seq2, &v2);
    f.wait_version(AGENT, "v2");
    // During the canary's hold the others keep serving the base sha.
    for name in [AGENT2, AGENT3] {
        assert_eq!(f.version(name).as_deref(), Some("v1"), "{name}");
    }
    // Then the next waves: everyone ends on v2, with the last wave's order for all.
    for name in [AGENT, AGENT2, AGENT3] {
        f.wait_healthy(name, seq2, &v2);
        f.wait_version(name, "v2");
    }
    let done = eventually(WAIT, "the rollout to complete", || {
        let r = f.rollout();
        (r["state"] == "completed").then_some(r)
    });
    assert_eq!(done["wave"], 2, "{done}");
    let last = f.gateway.desired().unwrap();
    assert_eq!(
        (last.sha.as_str(), last.targets.as_ref()),
        (v2.as_str(), None)
    );
    // The fleet summary follows on its next publishing round (at most one a second).
    eventually(WAIT, "the fleet summary at the last wave", || {
        let summary = f.gateway.fleet()?.rollout?;
        ((summary.wave, summary.waves) == (3, 3)).then_some(())
    });
    // Nobody but the canary ran v2 on the first wave's order.
    let log = log.finish();
    for name in [AGENT2, AGENT3] {
        for s in statuses_at(&log, name, &v2) {
            assert!(
                s.seq > Some(seq2),
                "{name} ran v2 in the canary's wave: {s:?}"
            );
        }
    }
}

#[test]
fn a_canary_that_fails_reverts_the_fleet_before_anyone_else_starts_it() {
    let (f, v1) = Fleet::on_v1(
        "[repos.rollout.production]\nwaves = [\"web-1\", \"50%\", \"100%\"]\nhold_s = 1\n",
        3,
    );
    let log = StatusLog::start(&f.gateway);
    let bad = f.commit("v2-bad", false);
    let seq2 = f.push(&bad).unwrap();
    let revert = eventually(WAIT, "the fleet to be reverted", || {
        f.gateway
            .desired()
            .filter(|d| d.seq > seq2 && d.kind == OrderKind::Rollback)
    });
    assert_eq!(revert.sha, v1);
    for (name, _) in HOSTS {
        f.wait_healthy(name, revert.seq, &v1);
        f.wait_version(name, "v1");
    }
    let log = log.finish();
    assert!(
        statuses_at(&log, AGENT, &bad)
            .iter()
            .any(|s| s.state == orcastrate_broker::AgentState::RolledBack),
        "the canary tried the bad sha and rolled back"
    );
    for name in [AGENT2, AGENT3] {
        let tried = statuses_at(&log, name, &bad);
        assert!(tried.is_empty(), "{name} started the bad sha: {tried:?}");
    }
    let rollout = f.rollout();
    assert_eq!(rollout["state"], "reverted", "{rollout}");
    assert_eq!(rollout["wave"], 0, "{rollout}");
    assert!(
        rollout["reason"]
            .as_str()
            .unwrap()
            .contains("web-1 rolled_back"),
        "{rollout}"
    );
    let again = f.push(&bad).unwrap_err();
    assert!(again.contains("marked bad"), "{again}");
}

#[test]
fn promote_skips_the_hold_abort_reverts_and_a_newer_push_supersedes() {
    let (f, _) = Fleet::on_v1(
        "[repos.rollout.production]\nwaves = [\"web-1\", \"100%\"]\nhold_s = 3600\n",
        2,
    );

    // An hour's hold: promote moves on at once.
    let v2 = f.commit("v2", true);
    let seq2 = f.push(&v2).unwrap();
    f.wait_healthy(AGENT, seq2, &v2);
    let (code, answer) = f.gateway.admin_post(
        "/api/v1/rollouts/promote",
        json!({ "repo": REPO, "env": ENV }),
    );
    assert_eq!(code, 202, "{answer}");
    f.wait_healthy(AGENT2, seq2, &v2);
    f.wait_version(AGENT2, "v2");
    // At the last wave there is nothing to promote to.
    let (code, answer) = f.gateway.admin_post(
        "/api/v1/rollouts/promote",
        json!({ "repo": REPO, "env": ENV }),
    );
    assert_eq!(code, 409, "{answer}");

    // A push during a rollout supersedes it, keeping its base.
    let v3 = f.commit("v3", true);
    let seq3 = f.push(&v3).unwrap();
    f.wait_healthy(AGENT, seq3, &v3);
    let v4 = f.commit("v4", true);
    let seq4 = f.push(&v4).unwrap();
    let order = f.gateway.desired().unwrap();
    assert_eq!(order.seq, seq4);
    assert_eq!(order.base_sha.as_deref(), Some(v2.as_str()), "{order:?}");
    let (code, v) = f
        .gateway
        .admin_get(&format!("/api/v1/rollouts?repo={REPO}&env={ENV}&limit=2"));
    assert_eq!(code, 200);
    assert_eq!(v["rollouts"][1]["state"], "superseded", "{v}");
    assert_eq!(v["rollouts"][1]["sha"], v3.as_str(), "{v}");

    // Abort reverts everyone to the base and marks the sha bad.
    f.wait_healthy(AGENT, seq4, &v4);
    let (code, answer) = f.gateway.admin_post(
        "/api/v1/rollouts/abort",
        json!({ "repo": REPO, "env": ENV }),
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["rollout"]["state"], "aborted", "{answer}");
    let revert = f.gateway.desired().unwrap();
    assert_eq!(
        (revert.kind, revert.sha.as_str()),
        (OrderKind::Rollback, v2.as_str())
    );
    f.wait_healthy(AGENT, revert.seq, &v2);
    f.wait_version(AGENT, "v2");
    assert!(f.push(&v4).unwrap_err().contains("marked bad"));
}
