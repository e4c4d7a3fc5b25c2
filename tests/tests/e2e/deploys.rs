//! A push deploys; a rollback returns to the warm previous release.

use orcastrate_broker::{AgentState, OrderKind};
use serde_json::{json, Value};

use crate::harness::*;

#[test]
fn a_signed_push_deploys_that_commit_and_the_fleet_view_shows_it_healthy() {
    let mut w = World::new();
    w.start_agent();
    // An operator watching the webhook decisions of the repository (not retained).
    let mut events = w.gateway.watch(&format!("orcastrate/{REPO}/events"));
    let sha1 = w.commit("v1");
    let id = delivery();
    let (code, answer) = w.gateway.push(&sha1, &id);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["delivery"], id.as_str(), "{answer}");
    assert_eq!(answer["repo"], REPO, "{answer}");
    assert_eq!(answer["env"], ENV, "{answer}");
    assert_eq!(answer["sha"], sha1.as_str(), "{answer}");
    let seq1 = answer["seq"].as_u64().expect("a seq in the answer");
    let event = events
        .wait_publish(WAIT, |p| {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|e| e["delivery"] == id.as_str())
        })
        .expect("an event for the delivery");
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["outcome"], "accepted", "{event}");
    assert_eq!(event["seq"], seq1, "{event}");
    assert_eq!(event["sha"], sha1.as_str(), "{event}");

    // GitHub redelivers: recognised, no second order.
    let (code, again) = w.gateway.push(&sha1, &id);
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");

    // The gateway's fleet view (verified statuses only) shows the agent healthy on it.
    let status = w.wait_healthy(seq1, &sha1);
    assert_eq!(status["repo"], REPO, "{status}");
    assert_eq!(status["env"], ENV, "{status}");

    // The app of that exact commit answers on its port.
    w.wait_app("v1");
    assert_eq!(w.current_release(), format!("{seq1}-{}", &sha1[..12]));

    // The retained order is the ledger's, signed by the gateway's key.
    let order = w.gateway.desired().expect("a retained order");
    assert_eq!((order.seq, order.sha.as_str()), (seq1, sha1.as_str()));
    assert_eq!(order.kind, OrderKind::Push);
    assert_eq!(order.git_ref.as_deref(), Some("refs/heads/main"));
    assert!(w.gateway.verifies(&order), "{order:?}");
    let ledger = w.gateway.deployments();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["seq"], seq1);

    // The agent's own retained status, as an operator with a token sees it.
    let own = w.retained_status();
    assert_eq!(own.state, AgentState::Healthy, "{own:?}");
    assert_eq!(own.seq, Some(seq1));
    assert_eq!(own.running_sha.as_deref(), Some(sha1.as_str()));

    // The retained fleet summary lists it (published at most once a second: poll).
    let fleet = eventually(WAIT, "the fleet summary to list the agent healthy", || {
        let f = w.gateway.fleet()?;
        let a = f.agents.iter().find(|a| a.agent == AGENT)?;
        (a.state == AgentState::Healthy && a.seq == Some(seq1)).then_some(f)
    });
    assert_eq!((fleet.repo.as_str(), fleet.env.as_str()), (REPO, ENV));
    let desired = fleet
        .desired
        .as_ref()
        .expect("the desired order in the summary");
    assert_eq!((desired.seq, desired.sha.as_str()), (seq1, sha1.as_str()));
    assert_eq!(fleet.agents.len(), 1, "{fleet:?}");
    let entry = &fleet.agents[0];
    assert_eq!(entry.sha12.as_deref(), Some(&sha1[..12]));
    assert_eq!(entry.running_sha12.as_deref(), Some(&sha1[..12]));

    let metrics = w.gateway.metrics();
    assert!(
        metrics.contains("orcastrate_connected_agents 1"),
        "{metrics}"
    );

    // The agent stops (on_shutdown = "stop"): it says so, and the app stops with it.
    w.agent.take().unwrap().stop();
    let status = w.gateway.wait_agent("offline", |s| s["state"] == "offline");
    assert_eq!(status["seq"], seq1, "{status}");
    assert!(status["running_sha"].is_null(), "{status}");
    eventually(WAIT, "the fleet summary to show the agent offline", || {
        let f = w.gateway.fleet()?;
        (f.agents.first()?.state == AgentState::Offline).then_some(())
    });
    assert_eq!(app_identity(w.app_port), None);
}

#[test]
fn rollback_returns_to_the_warm_first_release_without_fetching() {
    let mut w = World::new();
    w.start_agent();
    let (sha1, seq1, _) = w.deploy("v1");

    let sha2 = w.commit("v2");
    let seq2 = w.push(&sha2);
    assert!(seq2 > seq1);
    w.wait_healthy(seq2, &sha2);
    w.wait_app("v2");

    // Without its origin the agent cannot fetch anything: a rollback must use what is on disk.
    std::fs::remove_dir_all(&w.origin.bare).unwrap();
    // What the agent says while it works, as an operator sees it.
    let mut log = w.gateway.watch(&topic(&format!("log/{AGENT}")));

    let (code, answer) = w
        .gateway
        .admin_post("/api/v1/rollback", json!({ "repo": REPO, "env": ENV }));
    assert_eq!(code, 202, "{answer}");
    let order = &answer["order"];
    assert_eq!(order["kind"], "rollback", "{answer}");
    assert_eq!(
        order["sha"],
        sha1.as_str(),
        "the gateway picks the first (healthy) sha: {answer}"
    );
    let seq3 = order["seq"].as_u64().unwrap();
    assert!(seq3 > seq2, "{answer}");

    let status = w.wait_healthy(seq3, &sha1);
    let warm = format!("{seq1}-{}", &sha1[..12]);
    assert_eq!(status["release"], warm.as_str(), "{status}");
    assert_eq!(w.current_release(), warm);
    w.wait_app("v1");
    let line = log
        .wait_publish(WAIT, |p| {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|l| {
                l["seq"] == seq3
                    && l["line"]
                        .as_str()
                        .is_some_and(|t| t.contains("without fetch"))
            })
        })
        .expect("the agent's log line about the warm release");
    let line: Value = serde_json::from_slice(&line.payload).unwrap();
    assert_eq!(line["agent"], AGENT, "{line}");

    // The sha rolled back from is marked bad: pushing it again deploys nothing.
    let (code, again) = w.gateway.push(&sha2, &delivery());
    assert_eq!(code, 202, "{again}");
    assert!(again["ignored"].is_string(), "{again}");
    let ledger = w.gateway.deployments();
    let seqs: Vec<_> = ledger.iter().map(|o| o["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [seq3, seq2, seq1]);
}

#[test]
fn a_broken_push_is_rolled_back_by_the_agent_and_reverted_for_the_fleet_which_marks_it_bad() {
    let mut w = World::new();
    // The broken release fails its health check until this runs out.
    w.health_timeout_s = 6;
    w.start_agent();
    let (sha1, _, _) = w.deploy("v1");

    let statuses = StatusRecorder::start(&w.gateway);
    let sha2 = w.commit_unhealthy("v2");
    let seq2 = w.push(&sha2);
    let status = statuses.outcome(seq2);
    // It failed after the switch: the newest healthy release is restored.
    assert_eq!(status.state, AgentState::RolledBack, "{status:?}");
    assert_eq!(status.sha.as_deref(), Some(sha2.as_str()), "{status:?}");
    assert_eq!(
        status.running_sha.as_deref(),
        Some(sha1.as_str()),
        "{status:?}"
    );
    w.wait_app("v1");

    // The gateway reverts the fleet by itself (issue 13): a rollback order to the first
    // sha, which is what the operator had to ask for before.
    let revert = eventually(WAIT, "the fleet-wide revert", || {
        w.gateway.desired().filter(|d| d.seq > seq2)
    });
    assert_eq!(revert.sha, sha1);
    assert_eq!(revert.issued_by.as_deref(), Some("rollout"));
    let seq3 = revert.seq;
    w.wait_healthy(seq3, &sha1);
    w.wait_app("v1");
    // Nothing is left for an operator's rollback to go back to.
    let (code, answer) = w
        .gateway
        .admin_post("/api/v1/rollback", json!({ "repo": REPO, "env": ENV }));
    assert_eq!(code, 409, "{answer}");

    // The broken sha is marked bad: GitHub redelivering its push (a new delivery) deploys
    // nothing.
    let (code, again) = w.gateway.push(&sha2, &delivery());
    assert_eq!(code, 202, "{again}");
    assert!(again["ignored"].is_string(), "{again}");
    let status = w.gateway.agent_status().unwrap();
    assert_eq!(status["seq"], seq3, "{status}");
}

#[test]
fn two_hosts_deploy_the_same_push_and_the_fleet_summary_lists_both() {
    let mut w = World::new();
    let (port2, sha1, seq1) = w.start_two_hosts_and_push_v1();
    let status = w.gateway.wait_agent_of(AGENT2, "healthy", |s| {
        s["seq"] == seq1 && s["state"] == "healthy"
    });
    assert_eq!(status["running_sha"], sha1.as_str(), "{status}");
    let pid1 = w.wait_app("v1");
    let (version, pid2) = eventually(WAIT, "the second host's app", || app_identity(port2));
    assert_eq!(version, "v1");
    assert_ne!(pid1, pid2);

    let fleet = eventually(WAIT, "the fleet summary to list both hosts healthy", || {
        let f = w.gateway.fleet()?;
        (f.agents.len() == 2
            && f.agents
                .iter()
                .all(|a| a.state == AgentState::Healthy && a.seq == Some(seq1)))
        .then_some(f)
    });
    let mut names: Vec<_> = fleet.agents.iter().map(|a| a.agent.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, [AGENT, AGENT2]);
    let desired = fleet.desired.expect("the desired order in the summary");
    assert_eq!((desired.seq, desired.sha), (seq1, sha1));
}

#[test]
fn a_late_push_of_an_older_commit_is_skipped_but_a_manual_deploy_of_it_is_not() {
    let mut w = World::new();
    w.start_agent();
    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    let (sha2, _, pid2) = w.deploy("v2");

    // GitHub does not promise delivery order: the push of v1 arrives again, late.
    let seq3 = w.push(&sha1);
    let status = w.gateway.wait_agent(&format!("done with seq {seq3}"), |s| {
        s["seq"] == seq3 && s["state"] != "deploying" && s["state"] != "idle"
    });
    assert_eq!(status["state"], "skipped", "{status}");
    assert_eq!(status["running_sha"], sha2.as_str(), "{status}");
    assert_eq!(app_identity(w.app_port), Some(("v2".to_owned(), pid2)));

    // An operator asking for it is obeyed.
    let (code, answer) = w.gateway.admin_post(
        "/api/v1/deploy",
        json!({ "repo": REPO, "env": ENV, "sha": sha1 }),
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["order"]["kind"], "manual", "{answer}");
    let seq4 = answer["order"]["seq"].as_u64().unwrap();
    w.wait_healthy(seq4, &sha1);
    w.wait_app("v1");
}

#[test]
fn a_merged_pull_request_deploys_its_merge_commit_and_the_push_that_follows_is_ignored() {
    let mut w = World::new();
    w.start_agent();
    let sha1 = w.commit("v1");
    let (code, answer) = w.gateway.webhook(
        "pull_request",
        &delivery(),
        "application/json",
        &merged_pull_request_body(&sha1),
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["sha"], sha1.as_str(), "{answer}");
    let seq1 = answer["seq"].as_u64().unwrap();
    w.wait_healthy(seq1, &sha1);
    w.wait_app("v1");
    let order = w.gateway.desired().unwrap();
    assert_eq!((order.seq, order.kind), (seq1, OrderKind::Merge));

    // GitHub's merge button also sends the push of that commit (here form-encoded, as
    // GitHub can send it too).
    let (code, again) = w.gateway.webhook(
        "push",
        &delivery(),
        "application/x-www-form-urlencoded",
        &form_encoded(&push_body(&sha1)),
    );
    assert_eq!(code, 202, "{again}");
    assert!(again["ignored"].is_string(), "{again}");
    assert_eq!(w.gateway.deployments().len(), 1);
    let status = w.gateway.agent_status().unwrap();
    assert_eq!(status["seq"], seq1, "{status}");
}

#[test]
fn a_paused_env_orders_nothing_until_it_is_resumed() {
    let mut w = World::new();
    w.start_agent();
    let (code, answer) = w
        .gateway
        .admin_post("/api/v1/pause", json!({ "repo": REPO, "env": ENV }));
    assert_eq!(code, 200, "{answer}");
    let sha1 = w.commit("v1");
    let (code, answer) = w.gateway.push(&sha1, &delivery());
    assert_eq!(code, 202, "{answer}");
    assert!(answer["ignored"].is_string(), "{answer}");
    assert!(w.gateway.deployments().is_empty());
    assert!(w.gateway.desired().is_none());
    let status = w.gateway.agent_status().unwrap();
    assert_eq!(status["state"], "idle", "{status}");

    let (code, answer) = w
        .gateway
        .admin_post("/api/v1/resume", json!({ "repo": REPO, "env": ENV }));
    assert_eq!(code, 200, "{answer}");
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    w.wait_app("v1");
}
