//! A push deploys; a rollback returns to the warm previous release.

use orcastrate_broker::{AgentState, OrderKind};
use serde_json::json;

use crate::harness::*;

#[test]
fn a_signed_push_deploys_that_commit_and_the_fleet_view_shows_it_healthy() {
    let mut w = World::new();
    w.start_agent();
    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);

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
}

#[test]
fn rollback_returns_to_the_warm_first_release_without_fetching() {
    let mut w = World::new();
    w.start_agent();
    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    w.wait_app("v1");

    let sha2 = w.commit("v2");
    let seq2 = w.push(&sha2);
    assert!(seq2 > seq1);
    w.wait_healthy(seq2, &sha2);
    w.wait_app("v2");

    // Without its origin the agent cannot fetch anything: a rollback must use what is on disk.
    std::fs::remove_dir_all(&w.origin.bare).unwrap();

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
    assert!(
        w.agent_logs()
            .contains("switching without fetch or install"),
        "{}",
        w.agent_logs()
    );

    // The sha rolled back from is marked bad: pushing it again deploys nothing.
    let (code, again) = w.gateway.push(&sha2, &delivery());
    assert_eq!(code, 202, "{again}");
    assert!(again["ignored"].is_string(), "{again}");
    let ledger = w.gateway.deployments();
    let seqs: Vec<_> = ledger.iter().map(|o| o["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [seq3, seq2, seq1]);
}
