//! The fleet view: only verified, in-scope statuses count.

use std::time::Duration;

use orcastrate_broker::{sign, AgentState, AgentStatus, FleetSummary};

use crate::common::*;

fn status(agent: &str, env: &str, state: AgentState, token: &str) -> AgentStatus {
    let mut s = AgentStatus {
        v: 1,
        agent: agent.into(),
        host: "host".into(),
        repo: REPO.into(),
        env: env.into(),
        session: format!("session-{agent}"),
        state,
        step: None,
        seq: Some(1),
        sha: Some(sha(1)),
        running_sha: Some(sha(1)),
        previous_sha: None,
        release: None,
        updated_at: "2026-11-26T00:00:00.000Z".into(),
        deploy_ms: None,
        error: None,
        version: "test".into(),
        mac: String::new(),
    };
    sign::seal_status(token, &mut s);
    s
}

#[test]
fn fleet_summary_holds_verified_statuses_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = String::new();
    for i in 0..150 {
        extra.push_str(&format!(
            "[[clients]]\nname = \"agent-{i}\"\ntoken = \"token-agent-{i}\"\nscopes = [\"codertocat/hello-world/production\"]\n"
        ));
    }
    let gw = TestGateway::start_with(dir.path(), &extra);
    // Each agent publishes its own status (the broker refuses anyone else's).
    let mut agents: Vec<Mqtt> = (0..150)
        .map(|i| gw.mqtt(&format!("agent-{i}"), &format!("token-agent-{i}")))
        .collect();
    // Two rounds: 300 messages on the gateway's link, past the ~200 notifications after
    // which rumqttd unschedules a local link that is not woken again.
    for state in [AgentState::Deploying, AgentState::Healthy] {
        for (i, publisher) in agents.iter_mut().enumerate() {
            let agent = format!("agent-{i}");
            let s = status(&agent, ENV, state, &format!("token-agent-{i}"));
            publisher.publish(
                &format!("orcastrate/{REPO}/{ENV}/status/{agent}"),
                serde_json::to_vec(&s).unwrap(),
                true,
            );
        }
    }
    for publisher in &mut agents {
        publisher.flush();
    }
    // A forged MAC (signed with another agent's token).
    let forged = status("agent-0", ENV, AgentState::Failed, "token-agent-1");
    agents[0].publish(
        &format!("orcastrate/{REPO}/{ENV}/status/agent-0"),
        serde_json::to_vec(&forged).unwrap(),
        true,
    );
    agents[0].flush();
    // web-1 may only report for production (the broker refuses this one already).
    let mut publisher = gw.mqtt("web-1", "token-web-1");
    let out_of_scope = status("web-1", "staging", AgentState::Healthy, "token-web-1");
    publisher.publish(
        &format!("orcastrate/{REPO}/staging/status/web-1"),
        serde_json::to_vec(&out_of_scope).unwrap(),
        true,
    );
    // A status published on another agent's topic (refused by the broker too).
    let mut publisher = gw.mqtt("web-2", "token-web-2");
    let wrong_topic = status("web-2", ENV, AgentState::Healthy, "token-web-2");
    publisher.publish(
        &format!("orcastrate/{REPO}/{ENV}/status/agent-5"),
        serde_json::to_vec(&wrong_topic).unwrap(),
        true,
    );
    publisher.flush();

    let summary = eventually(
        Duration::from_secs(10),
        "a fleet summary with 150 agents",
        || {
            let mut sub = gw.mqtt("ops", "token-ops");
            sub.subscribe(&format!("orcastrate/{REPO}/{ENV}/fleet"));
            let (_, payload) = sub.wait_for(Duration::from_secs(2), |_, _| true)?;
            let s: FleetSummary = serde_json::from_slice(&payload).ok()?;
            (s.agents.len() == 150 && s.agents.iter().all(|a| a.state == AgentState::Healthy))
                .then_some(s)
        },
    );
    assert!(summary
        .agents
        .iter()
        .all(|a| a.state == AgentState::Healthy));
    assert!(summary.agents.iter().all(|a| a.agent.starts_with("agent-")));
    let (status_code, agents) = gw.admin_get("/api/v1/agents?repo=codertocat/hello-world");
    assert_eq!(status_code, 200);
    assert_eq!(agents["agents"].as_array().unwrap().len(), 150);
    // No staging fleet from the out-of-scope status.
    let mut sub = gw.mqtt("ops", "token-ops");
    sub.subscribe(&format!("orcastrate/{REPO}/staging/fleet"));
    assert!(sub
        .wait_for(Duration::from_millis(1500), |_, _| true)
        .is_none());

    let metrics = ureq::get(format!("{}/metrics", gw.http))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("orcastrate_connected_agents 150"),
        "{metrics}"
    );
}

#[test]
fn stale_last_will_does_not_mark_a_reconnected_agent_offline() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path());
    let mut publisher = gw.mqtt("web-1", "token-web-1");
    let topic = format!("orcastrate/{REPO}/{ENV}/status/web-1");
    let mut fresh = status("web-1", ENV, AgentState::Healthy, "token-web-1");
    fresh.session = "new".into();
    sign::seal_status("token-web-1", &mut fresh);
    publisher.publish(&topic, serde_json::to_vec(&fresh).unwrap(), true);
    let mut old_will = status("web-1", ENV, AgentState::Offline, "token-web-1");
    old_will.session = "old".into();
    sign::seal_status("token-web-1", &mut old_will);
    publisher.publish(&topic, serde_json::to_vec(&old_will).unwrap(), true);
    // A marker after the will: once it is recorded, the will has been handled.
    publisher.flush();
    let marker = status("web-2", ENV, AgentState::Idle, "token-web-2");
    let mut publisher = gw.mqtt("web-2", "token-web-2");
    publisher.publish(
        &format!("orcastrate/{REPO}/{ENV}/status/web-2"),
        serde_json::to_vec(&marker).unwrap(),
        true,
    );
    publisher.flush();
    let agents = eventually(Duration::from_secs(5), "both agents recorded", || {
        let (_, v) = gw.admin_get("/api/v1/agents");
        let a = v["agents"].as_array()?.clone();
        (a.len() == 2).then_some(a)
    });
    assert_eq!(agents[0]["agent"], "web-1");
    assert_eq!(agents[0]["state"], "healthy");
}

#[test]
fn gateway_link_keeps_up_with_a_burst_of_statuses() {
    // rumqttd unschedules a local link once ~200 notifications queue up; unless it is woken
    // the gateway stops hearing anything. A QoS 0 burst of 2,000 statuses queues that many.
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path());
    let mut publisher = gw.mqtt("web-1", "token-web-1");
    let topic = format!("orcastrate/{REPO}/{ENV}/status/web-1");
    for n in 1..=2000u64 {
        let mut s = status("web-1", ENV, AgentState::Deploying, "token-web-1");
        s.seq = Some(n);
        sign::seal_status("token-web-1", &mut s);
        publisher.publish_qos0(&topic, serde_json::to_vec(&s).unwrap());
    }
    publisher.flush();
    // After the burst, one more status must still get through.
    let mut last = status("web-1", ENV, AgentState::Healthy, "token-web-1");
    last.seq = Some(5000);
    sign::seal_status("token-web-1", &mut last);
    eventually(
        Duration::from_secs(10),
        "the status after the burst",
        || {
            publisher.publish_qos0(&topic, serde_json::to_vec(&last).unwrap());
            publisher.flush();
            let (_, v) = gw.admin_get("/api/v1/agents");
            (v["agents"][0]["seq"].as_u64() == Some(5000)).then_some(())
        },
    );
}
