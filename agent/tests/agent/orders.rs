//! Which orders the agent acts on.

use orcastrate_broker::{AgentState, OrderKind, OrderSigner};

use crate::common::*;

const OK_INSTALL: &str = "true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_foreign_orders_are_ignored() {
    let mut w = World::new().await;
    let a = w.commit("v1", OK_INSTALL);
    let b = w.commit("v2", OK_INSTALL);
    let c = w.commit("v3", OK_INSTALL);
    let s1 = w.order(&a, OrderKind::Manual).await;
    let n = w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);
    let first = w.bus.order(s1, &a, OrderKind::Manual);

    // Forged: signed by a key the agent does not trust, with a huge seq.
    let mut forged = w.bus.order(9_000_000, &b, OrderKind::Manual);
    OrderSigner::generate().sign(&mut forged);
    w.bus.publish(&forged).await;
    // A trusted key id but a signature over other fields (sha swapped after signing).
    let mut tampered = w.bus.order(9_000_001, &a, OrderKind::Manual);
    tampered.sha = b.clone();
    w.bus.publish(&tampered).await;
    // Validly signed, but for another repo.
    let mut foreign = w.bus.order(9_000_002, &b, OrderKind::Manual);
    foreign.repo = "octo-org/other".into();
    w.bus.signer.sign(&mut foreign);
    w.bus.publish(&foreign).await;
    // Garbage.
    w.bus.publish_raw(b"not json".to_vec()).await;

    // A valid order after them still deploys: none of the above moved the floor.
    let s2 = w.order(&b, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s2).await.state, AgentState::Healthy);

    // Replayed: the first order again (valid signature, old seq).
    w.bus.publish(&first).await;
    let s3 = w.order(&c, OrderKind::Push).await;
    assert_eq!(w.bus.wait_outcome(s3).await.state, AgentState::Healthy);
    w.wait_app("v3");

    let seqs: Vec<Option<u64>> = w.bus.statuses().iter().map(|s| s.seq).collect();
    for bad in [9_000_000, 9_000_001, 9_000_002] {
        assert!(!seqs.contains(&Some(bad)), "acted on {bad}");
    }
    // After s2, nothing about s1 again.
    let statuses = w.bus.statuses();
    let after = statuses.iter().position(|s| s.seq == Some(s2)).unwrap();
    assert!(!statuses[after..].iter().any(|s| s.seq == Some(s1)));
    // Each refusal was logged with its reason.
    let log = w.agent_log(n);
    for reason in [
        "unknown key id",
        "does not verify",
        "this agent deploys",
        "not a deploy order",
        "not above the floor",
    ] {
        assert!(
            log.contains(reason),
            "no {reason:?} in the agent log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_for_an_ancestor_is_skipped_but_manual_is_not() {
    let mut w = World::new().await;
    let a = w.commit("v1", OK_INSTALL);
    let b = w.commit("v2", OK_INSTALL);
    let s1 = w.order(&b, OrderKind::Push).await;
    w.start_agent();
    assert_eq!(w.bus.wait_outcome(s1).await.state, AgentState::Healthy);
    let pid = w.wait_app("v2");

    // A late delivery of the older push.
    let s2 = w.order(&a, OrderKind::Push).await;
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::Skipped, "{out:?}");
    assert_eq!(out.running_sha.as_deref(), Some(b.as_str()));
    assert_eq!(w.wait_app("v2"), pid);
    assert_eq!(w.state_json()["floor"], s2);

    // An operator's manual deploy of the same sha is never skipped.
    let s3 = w.order(&a, OrderKind::Manual).await;
    assert_eq!(w.bus.wait_outcome(s3).await.state, AgentState::Healthy);
    w.wait_app("v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_host_waits_and_takes_the_highest_order() {
    let mut w = World::new().await;
    let a = w.commit("v1", OK_INSTALL);
    let b = w.commit("v2", OK_INSTALL);
    let n = w.start_agent();
    w.bus
        .wait_status("idle", |s| s.state == AgentState::Idle)
        .await;
    eventually(WAIT, "the settle wait to start", || {
        w.agent_log(n).contains("waiting 2 s").then_some(())
    });
    // A replayed old order, then the newest, within the settle wait.
    let old = w.next_seq();
    let new = w.next_seq();
    w.bus.publish(&w.bus.order(old, &a, OrderKind::Push)).await;
    w.bus.publish(&w.bus.order(new, &b, OrderKind::Push)).await;
    assert_eq!(w.bus.wait_outcome(new).await.state, AgentState::Healthy);
    w.wait_app("v2");
    assert!(
        !w.bus.statuses().iter().any(|s| s.seq == Some(old)),
        "the older order ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_a_commit_the_origin_lacks_fails_cleanly() {
    let mut w = World::new().await;
    w.start_healthy_on_v1(OK_INSTALL).await;
    let pid = w.wait_app("v1");
    let s2 = w
        .order(&"0123456789abcdef".repeat(3)[..40], OrderKind::Manual)
        .await;
    let out = w.bus.wait_outcome(s2).await;
    assert_eq!(out.state, AgentState::Failed, "{out:?}");
    assert!(out.error.as_deref().unwrap().contains("git"), "{out:?}");
    assert_eq!(w.wait_app("v1"), pid);
    assert_eq!(w.release_dirs().len(), 1);
}
