//! A forged order, published by a token holder: the embedded broker refuses it (only the
//! gateway writes `desired`), so the agent never sees it and the retained order stays true.
//! (On an external engine with wrong ACLs the agent's signature check and the gateway's
//! repair are the defence: `engines.rs`.)

use orcastrate_broker::AgentState;

use crate::harness::*;

#[test]
fn a_forged_retained_order_from_an_agent_token_is_refused_by_the_broker() {
    let mut w = World::new();
    w.start_agent();
    let (sha1, seq1, pid) = w.deploy("v1");
    // A real commit of the origin, so an agent fooled by the order could deploy it.
    let sha2 = w.commit("v2");

    // A valid agent token tries `desired`: a newer seq and another sha under the gateway's
    // key_id, with a signature the gateway never made.
    let mut forged = serde_json::to_value(w.gateway.desired().expect("the true order")).unwrap();
    forged["seq"] = (seq1 + 1).into();
    forged["sha"] = sha2.as_str().into();
    forged["kind"] = "manual".into();
    forged["issued_by"] = "mallory".into();
    forged["sig"] = format!("{}==", "A".repeat(86)).into(); // 64 zero bytes
    mosquitto_pub_retained(
        w.gateway.mqtt_port,
        AGENT,
        AGENT_TOKEN,
        &topic("desired"),
        &forged.to_string(),
    );

    // The broker dropped it: the retained order is the true one, and the agent never saw
    // another.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let truth = w.gateway.desired().expect("the true order");
    assert_eq!(truth.seq, seq1);
    assert!(
        !w.agent_logs().contains("order refused"),
        "the agent saw the forgery"
    );
    assert_eq!(truth.sha, sha1);
    assert!(w.gateway.verifies(&truth), "{truth:?}");
    assert_eq!(w.gateway.deployments().len(), 1);

    // The agent kept serving the same process, and its status did not change.
    assert_eq!(app_identity(w.app_port), Some(("v1".to_owned(), pid)));
    let status = w
        .gateway
        .agent_status()
        .expect("the agent in the fleet view");
    assert_eq!(status["state"], "healthy", "{status}");
    assert_eq!(status["seq"], seq1, "{status}");
    assert_eq!(status["running_sha"], sha1.as_str(), "{status}");
    let own = w.retained_status();
    assert_eq!(own.state, AgentState::Healthy, "{own:?}");
    assert_eq!(own.seq, Some(seq1));
    let releases: Vec<_> = std::fs::read_dir(w.root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(releases, [format!("{seq1}-{}", &sha1[..12])]);

    // Still following the gateway: a real order for that sha deploys.
    let seq2 = w.push(&sha2);
    w.wait_healthy(seq2, &sha2);
    w.wait_app("v2");
}
