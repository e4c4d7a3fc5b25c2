//! The fault matrix of issue 5, with the real gateway and agent: the agent offline while
//! pushes land, a burst of pushes, and an unreachable git remote. Each case ends with the
//! right release serving, every delivery in the ledger, and the agent's status saying so.
//!
//! Elsewhere: the agent killed during install (`agent/tests/agent/crash.rs`), the gateway
//! killed during a deploy (`restarts.rs`), under load (`gateway/tests/it/process.rs`), install and health failures
//! (`agent/tests/agent/deploys.rs`, and `deploys.rs` here), an unwritable release directory
//! (`agent/tests/agent/deploys.rs`).

use std::path::{Path, PathBuf};

use orcastrate_broker::{AgentState, AgentStatus, LogLine};
use serde_json::{json, Value};

use crate::harness::*;

/// The release directories on the agent's disk.
fn release_dirs(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// (seq, sha, delivery) of every order in the ledger, newest first.
fn ledger(w: &World) -> Vec<(u64, String, String)> {
    let (code, v) = w.gateway.admin_get(&format!(
        "/api/v1/deployments?repo={REPO}&env={ENV}&limit=100"
    ));
    assert_eq!(code, 200, "{v}");
    v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["seq"].as_u64().unwrap(),
                o["sha"].as_str().unwrap().to_owned(),
                o["delivery"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A signed push of `sha` with a fresh delivery id: (seq, delivery).
#[track_caller]
fn push(w: &World, sha: &str) -> (u64, String) {
    let id = delivery();
    let (code, answer) = w.gateway.push(sha, &id);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["sha"], sha, "{answer}");
    (answer["seq"].as_u64().expect("a seq in the answer"), id)
}

#[test]
fn three_pushes_while_the_agent_is_offline_deploy_only_the_newest() {
    let mut w = World::new();
    w.start_agent();
    let (sha1, seq1, _) = w.deploy("v1");

    w.agent.take().unwrap().stop();
    w.gateway.wait_agent("offline", |s| s["state"] == "offline");
    let mut pushed = Vec::new();
    for v in ["v2", "v3", "v4"] {
        let sha = w.commit(v);
        let (seq, id) = push(&w, &sha);
        pushed.push((seq, sha, id));
    }
    let (seq4, sha4, _) = pushed[2].clone();

    // Back: it deploys the newest order only.
    w.start_agent();
    w.wait_healthy(seq4, &sha4);
    w.wait_app("v4");
    let dirs = release_dirs(&w.root);
    assert_eq!(
        dirs,
        [
            format!("{seq1}-{}", &sha1[..12]),
            format!("{seq4}-{}", &sha4[..12])
        ],
        "only the first and the newest order were built"
    );
    let logs = w.agent_logs();
    for (seq, sha, _) in &pushed[..2] {
        assert!(
            !logs.contains(sha.as_str()),
            "seq {seq} was acted on:\n{logs}"
        );
    }
    assert_eq!(w.current_release(), format!("{seq4}-{}", &sha4[..12]));
    let own = w.retained_status();
    assert_eq!(own.seq, Some(seq4), "{own:?}");
    assert_eq!(own.running_sha.as_deref(), Some(sha4.as_str()), "{own:?}");

    // Every push is in the ledger, newest first.
    let mut expected: Vec<(u64, String, String)> = pushed.into_iter().rev().collect();
    expected.push((seq1, sha1, String::new()));
    let got = ledger(&w);
    assert_eq!(got.len(), 4, "{got:?}");
    for ((seq, sha, id), (gseq, gsha, gid)) in expected.iter().zip(&got) {
        assert_eq!((seq, sha), (gseq, gsha), "{got:?}");
        if !id.is_empty() {
            assert_eq!(id, gid, "{got:?}");
        }
    }
}

#[test]
fn a_burst_of_20_pushes_deploys_one_at_a_time_and_the_last_sha_wins() {
    let mut w = World::new();
    w.start_agent();
    w.deploy("v0");

    let shas: Vec<String> = (1..=20).map(|n| w.commit(&format!("v{n}"))).collect();
    // Everything the agent says from here on, in the order the broker delivers it.
    let mut watch = w.gateway.watch(&format!("orcastrate/{REPO}/{ENV}/#"));
    let started = std::time::Instant::now();
    let burst: Vec<(u64, String)> = shas.iter().map(|sha| push(&w, sha)).collect();
    eprintln!("20 signed pushes answered in {:?}", started.elapsed());
    let seqs: Vec<u64> = burst.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    let (last_seq, last_sha) = (seqs[19], shas[19].clone());

    let status_topic = topic(&format!("status/{AGENT}"));
    let log_topic = topic(&format!("log/{AGENT}"));
    let mut statuses: Vec<AgentStatus> = Vec::new();
    let mut lines: Vec<LogLine> = Vec::new();
    watch
        .wait_publish(WAIT, |p| {
            if p.topic == log_topic {
                lines.push(serde_json::from_slice(&p.payload).unwrap());
            } else if p.topic == status_topic && !p.retain {
                let s: AgentStatus = serde_json::from_slice(&p.payload).unwrap();
                let done = s.seq == Some(last_seq) && s.state != AgentState::Deploying;
                statuses.push(s);
                return done;
            }
            false
        })
        .unwrap_or_else(|| panic!("no outcome of seq {last_seq}; statuses: {statuses:?}"));

    // The last sha wins.
    let status = w.wait_healthy(last_seq, &last_sha);
    assert_eq!(status["sha"], last_sha.as_str(), "{status}");
    w.wait_app("v20");
    assert_eq!(
        w.current_release(),
        format!("{last_seq}-{}", &last_sha[..12])
    );

    // One deploy at a time: the orders the agent reports on and logs for never go back to
    // an older one (a deploy that started while another ran would interleave).
    let reported: Vec<u64> = statuses.iter().filter_map(|s| s.seq).collect();
    assert!(
        reported.windows(2).all(|p| p[0] <= p[1]),
        "statuses interleave: {reported:?}"
    );
    let logged: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.seq)
        .filter(|s| seqs.contains(s))
        .collect();
    assert!(
        logged.windows(2).all(|p| p[0] <= p[1]),
        "deploy logs interleave: {logged:?}"
    );
    // All 20 deliveries are in the ledger, each with its order.
    let got = ledger(&w);
    assert_eq!(got.len(), 21, "{got:?}");
    for ((seq, id), sha) in burst.iter().zip(&shas) {
        assert!(
            got.iter()
                .any(|(gs, gsha, gid)| gs == seq && gsha == sha && gid == id),
            "delivery {id} (seq {seq}) is not in the ledger: {got:?}"
        );
    }
    assert_eq!(
        w.gateway.desired().map(|o| (o.seq, o.sha)),
        Some((last_seq, last_sha))
    );
}

/// Moves the origin away (git cannot reach it) until `restore`.
struct Outage {
    origin: PathBuf,
    away: PathBuf,
}

impl Outage {
    fn start(origin: &Path) -> Self {
        let away = origin.with_extension("away");
        std::fs::rename(origin, &away).unwrap();
        Self {
            origin: origin.to_owned(),
            away,
        }
    }

    fn restore(&self) {
        std::fs::rename(&self.away, &self.origin).unwrap();
    }
}

/// Waits for a log line of `seq` containing `text`; returns it.
#[track_caller]
fn wait_line(log: &mut Mqtt, seq: u64, text: &str) -> String {
    let payload = log
        .wait_publish(WAIT, |p| {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|l| {
                l["seq"] == seq && l["line"].as_str().is_some_and(|t| t.contains(text))
            })
        })
        .unwrap_or_else(|| panic!("no log line of seq {seq} containing {text:?}"));
    let line: Value = serde_json::from_slice(&payload.payload).unwrap();
    line["line"].as_str().unwrap().to_owned()
}

#[test]
fn an_unreachable_git_remote_is_retried_then_fails_and_the_old_release_keeps_serving() {
    let mut w = World::new();
    w.start_agent();
    let (sha1, seq1, pid) = w.deploy("v1");

    let sha2 = w.commit("v2");
    let outage = Outage::start(&w.origin.bare);
    let mut log = w.gateway.watch(&topic(&format!("log/{AGENT}")));
    let statuses = StatusRecorder::start(&w.gateway);
    let seq2 = w.push(&sha2);
    let first = wait_line(&mut log, seq2, "fetch attempt 1 of 3 failed");
    assert!(first.contains("retrying in 1 s"), "{first}");
    let second = wait_line(&mut log, seq2, "fetch attempt 2 of 3 failed");
    assert!(second.contains("retrying in 2 s"), "{second}");
    wait_line(&mut log, seq2, "attempt 3 of 3");

    // The fleet-wide revert replaces the outcome in the fleet view within milliseconds.
    let status = statuses.outcome(seq2);
    assert_eq!(status.state, AgentState::Failed, "{status:?}");
    assert_eq!(
        status.running_sha.as_deref(),
        Some(sha1.as_str()),
        "{status:?}"
    );
    let error = status.error.as_deref().unwrap();
    let url = w.origin.bare.display().to_string();
    assert!(
        error.contains(&format!(
            "cannot fetch {sha2} from {url}: 3 attempts failed"
        )),
        "{error}"
    );
    // What git said, and what to check.
    assert!(
        error.contains("does not appear to be a git repository"),
        "{error}"
    );
    assert!(error.contains("check git_url"), "{error}");
    // The old release never stopped.
    assert_eq!(app_identity(w.app_port), Some(("v1".to_owned(), pid)));
    assert_eq!(w.current_release(), format!("{seq1}-{}", &sha1[..12]));
    // The failure reverts the fleet to v1 (issue 13), which the agent already serves: it
    // is not restarted, and the history says why seq2 was reverted.
    let revert = eventually(WAIT, "the fleet-wide revert", || {
        w.gateway.desired().filter(|d| d.seq > seq2)
    });
    assert_eq!(revert.sha, sha1);
    w.wait_healthy(revert.seq, &sha1);
    assert_eq!(app_identity(w.app_port), Some(("v1".to_owned(), pid)));
    let history = w.gateway.deployments();
    let entry = history.iter().find(|o| o["seq"] == seq2).unwrap();
    assert_eq!(entry["outcome"], "reverted", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("3 attempts failed"),
        "{entry}"
    );

    // The remote is back: the operator deploys the commit again (a manual deploy may name
    // a sha marked bad), and it runs.
    outage.restore();
    let (code, answer) = w.gateway.admin_post(
        "/api/v1/deploy",
        json!({ "repo": REPO, "env": ENV, "sha": sha2 }),
    );
    assert_eq!(code, 202, "{answer}");
    let seq3 = answer["order"]["seq"].as_u64().unwrap();
    w.wait_healthy(seq3, &sha2);
    w.wait_app("v2");
    let got: Vec<(u64, String)> = ledger(&w).into_iter().map(|(s, h, _)| (s, h)).collect();
    assert_eq!(
        got,
        [
            (seq3, sha2.clone()),
            (revert.seq, sha1.clone()),
            (seq2, sha2),
            (seq1, sha1)
        ]
    );
}

#[test]
fn a_git_remote_back_within_the_retries_deploys() {
    let mut w = World::new();
    w.start_agent();
    let (sha1, seq1, _) = w.deploy("v1");

    let sha2 = w.commit("v2");
    let outage = Outage::start(&w.origin.bare);
    let mut log = w.gateway.watch(&topic(&format!("log/{AGENT}")));
    let seq2 = w.push(&sha2);
    wait_line(&mut log, seq2, "fetch attempt 1 of 3 failed");
    outage.restore();

    w.wait_healthy(seq2, &sha2);
    w.wait_app("v2");
    let logs = w.agent_logs();
    assert!(logs.contains("(attempt 2 of 3)"), "{logs}");
    let got: Vec<(u64, String)> = ledger(&w).into_iter().map(|(s, h, _)| (s, h)).collect();
    assert_eq!(got, [(seq2, sha2), (seq1, sha1)]);
}

/// Issue 10, finding 8, with the real gateway: a `git_url` with tokens (as its user and in
/// its query string; here to a host that refuses, so the deploy fails and the URL lands in
/// the error) never shows them in the fleet view (`/api/v1/agents`), on the bus, in either
/// log or in the agent's files; the URL shows with its credentials hidden.
#[test]
fn r10_a_token_in_git_url_never_shows_in_the_fleet_view_the_bus_or_files() {
    const TOKEN: &str = "ghp_e2eS3cretInTheGitUrl";
    const QUERY_TOKEN: &str = "e2eS3cretInTheQuery";
    let mut w = World::new();
    let bus = orcastrate_testkit::mqtt::Recorder::start(
        Mqtt::options(w.gateway.mqtt_port, "", WATCHER, WATCHER_TOKEN),
        "orcastrate/#",
    )
    .expect("the watcher's SUBACK");
    let url = format!(
        "https://deploy:{TOKEN}@127.0.0.1:{}/web.git?access_token={QUERY_TOKEN}",
        free_port()
    );
    let config = w.dir.path().join("agent.toml");
    let text = AgentConfig {
        name: AGENT,
        token: AGENT_TOKEN,
        mqtt_port: w.gateway.mqtt_port,
        servers: &[],
        origin: Path::new(&url),
        root: &w.root,
        public_key: &w.gateway.public_key,
        app_port: w.app_port,
        health_timeout_s: 15,
        install: "true",
        top: "",
        extra: "\n[git]\nfetch_attempts = 2\n",
    }
    .text();
    std::fs::write(&config, text).unwrap();
    w.agent = Some(Agent::start(&config));

    let sha = w.commit("v1");
    let seq = w.push(&sha);
    let status = w.gateway.wait_agent("failed on the fetch", |s| {
        s["seq"] == seq && s["state"] == "failed"
    });
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("https://***@127.0.0.1"), "{error}");
    let (code, agents) = w
        .gateway
        .admin_get(&format!("/api/v1/agents?repo={REPO}&env={ENV}"));
    assert_eq!(code, 200);
    let mut places = vec![
        ("/api/v1/agents".to_owned(), agents.to_string()),
        ("the bus".to_owned(), bus.text()),
        ("the gateway's log".to_owned(), w.gateway.logs.text()),
        ("the agent's log".to_owned(), w.agent_logs()),
    ];
    assert!(places[1].1.contains("***@127.0.0.1"), "{}", places[1].1);
    for (path, content) in orcastrate_testkit::files::under(&w.root) {
        places.push((
            path.display().to_string(),
            String::from_utf8_lossy(&content).into_owned(),
        ));
    }
    for (place, text) in places {
        assert!(!text.contains(TOKEN), "the token is in {place}:\n{text}");
        assert!(
            !text.contains(QUERY_TOKEN),
            "the query is in {place}:\n{text}"
        );
        assert!(
            !text.contains("//deploy"),
            "the user is in {place}:\n{text}"
        );
    }
}
