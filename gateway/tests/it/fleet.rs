//! The fleet view: only verified, in-scope statuses count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orcastrate_broker::{sign, time, AgentState, AgentStatus, FleetSummary};

use crate::common::*;

/// A status sealed with `token`, newer than every one made before (the gateway takes only
/// an agent's newest).
fn status(agent: &str, env: &str, state: AgentState, token: &str) -> AgentStatus {
    static STAMP: AtomicU64 = AtomicU64::new(0);
    let mut s = agent_status(agent, state);
    s.host = "host".into();
    s.env = env.into();
    s.session = format!("session-{agent}");
    s.updated_at = time::from_unix_ms(1_800_000_000_000 + STAMP.fetch_add(1, Ordering::Relaxed));
    s.version = "test".into();
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

    let metrics = gw.metrics();
    assert!(
        metrics.contains("orcastrate_connected_agents 150"),
        "{metrics}"
    );
}

#[test]
fn stale_last_will_does_not_mark_a_reconnected_agent_offline() {
    let (_dir, gw) = TestGateway::start_in_temp();
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
    let (_dir, gw) = TestGateway::start_in_temp();
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

/// The state of `agent` in the retained fleet summary, as a fresh subscriber sees it.
fn fleet_state(gw: &TestGateway, agent: &str) -> Option<AgentState> {
    let mut sub = gw.mqtt("ops", "token-ops");
    sub.subscribe(&format!("orcastrate/{REPO}/{ENV}/fleet"));
    let (_, payload) = sub.wait_for(Duration::from_secs(3), |_, _| true)?;
    let summary: FleetSummary = serde_json::from_slice(&payload).ok()?;
    summary
        .agents
        .iter()
        .find(|a| a.agent == agent)
        .map(|a| a.state)
}

/// web-1's state in `/api/v1/agents`.
fn api_state(gw: &TestGateway) -> Option<String> {
    let (_, v) = gw.admin_get("/api/v1/agents");
    v["agents"][0]["state"].as_str().map(str::to_owned)
}

/// Waits until `/metrics` counts `n` statuses refused for `reason`.
#[track_caller]
fn wait_refused(gw: &TestGateway, reason: &str, n: u64) {
    let line = format!("orcastrate_agent_statuses_refused_total{{reason=\"{reason}\"}} {n}");
    eventually(Duration::from_secs(10), &line, || {
        gw.metrics().lines().any(|l| l == line).then_some(())
    });
}

/// Issue 11: an agent's old, genuine `healthy` status (valid MAC) re-published made the
/// gateway show it healthy while it was in fact `failed`. Published here by web-1 itself on
/// its own topic, so the broker's ACLs cannot be what stops it.
#[test]
fn r11_a_replayed_old_status_is_refused_before_and_after_a_restart() {
    let (dir, gw) = TestGateway::start_in_temp();
    let topic = format!("orcastrate/{REPO}/{ENV}/status/web-1");
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let seal = |state: AgentState, session: &str| {
        let mut s = status("web-1", ENV, state, "token-web-1");
        s.session = session.into();
        sign::seal_status("token-web-1", &mut s);
        serde_json::to_vec(&s).unwrap()
    };
    // The last will of session s1 is made when it connects: it is the oldest.
    let will = seal(AgentState::Offline, "s1");
    let healthy = seal(AgentState::Healthy, "s1");
    let failed = seal(AgentState::Failed, "s1");
    agent.publish(&topic, healthy.clone(), true);
    agent.flush();
    eventually(Duration::from_secs(5), "healthy recorded", || {
        (api_state(&gw).as_deref() == Some("healthy")).then_some(())
    });
    agent.publish(&topic, failed, true);
    agent.flush();
    eventually(
        Duration::from_secs(5),
        "failed in the fleet summary",
        || (fleet_state(&gw, "web-1") == Some(AgentState::Failed)).then_some(()),
    );

    // The replay: refused and counted, and nothing changes.
    agent.publish(&topic, healthy.clone(), true);
    agent.flush();
    wait_refused(&gw, "replay", 1);
    // Longer than the summary interval (1 s): a summary the replay had changed would be out.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(api_state(&gw).as_deref(), Some("failed"));
    assert_eq!(fleet_state(&gw, "web-1"), Some(AgentState::Failed));

    // The will of the same session counts although it is older (it carries the time its
    // connection began) ...
    agent.publish(&topic, will, true);
    agent.flush();
    eventually(Duration::from_secs(5), "offline recorded", || {
        (api_state(&gw).as_deref() == Some("offline")).then_some(())
    });
    // ... and does not lower the bar: the old healthy status is still a replay.
    agent.publish(&topic, healthy.clone(), true);
    agent.flush();
    wait_refused(&gw, "replay", 2);
    drop(agent);
    gw.stop();

    // After a restart the ledger still knows the newest time.
    let gw = TestGateway::start(dir.path());
    let mut agent = gw.mqtt("web-1", "token-web-1");
    agent.publish(&topic, healthy, true);
    agent.flush();
    wait_refused(&gw, "replay", 1);
    assert_eq!(api_state(&gw).as_deref(), Some("offline"));
    // A new status of a new session is newer, and counts.
    agent.publish(&topic, seal(AgentState::Idle, "s2"), true);
    agent.flush();
    eventually(Duration::from_secs(5), "the new session's status", || {
        (api_state(&gw).as_deref() == Some("idle")).then_some(())
    });
    assert!(
        gw.metrics()
            .contains("orcastrate_agent_statuses_total{outcome=\"accepted\"} 1"),
        "{}",
        gw.metrics()
    );
}

/// The retained message on `topic` as a fresh `mosquitto_sub -C 1` of the watcher sees it
/// (`None`: none within 3 s).
fn mosquitto_retained(gw: &TestGateway, topic: &str) -> Option<String> {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt_port.to_string()])
        .args(["-u", "ops", "-P", "token-ops"])
        .args(["-t", topic, "-C", "1", "-W", "3"])
        .output()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Retains `payload` on `topic` with mosquitto_pub, logged in with a client token.
fn mosquitto_retain(gw: &TestGateway, topic: &str, payload: &str) {
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt_port.to_string()])
        .args(["-u", "web-2", "-P", "token-web-2"])
        .args(["-t", topic, "-r", "-q", "1", "-m", payload])
        .output()
        .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
    assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
}

/// Issue 11: a client retained a forged `fleet` message, still there 26 s later. The
/// embedded broker now refuses it (only the gateway writes `fleet`); the gateway's guard,
/// which replaces a foreign summary where an engine's ACLs are wrong, is shown on mosquitto
/// in the end-to-end tests (`engines.rs`).
#[test]
fn r11_a_forged_retained_fleet_summary_is_refused() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "f-1", &push_of(&sha(61), "master"));
    let seq = answer["seq"].as_u64().expect("an order");
    let topic = format!("orcastrate/{REPO}/{ENV}/fleet");
    let own = |text: &str| {
        serde_json::from_str::<FleetSummary>(text)
            .is_ok_and(|s| s.desired.is_some_and(|d| d.seq == seq) && s.agents.is_empty())
    };
    eventually(Duration::from_secs(10), "the gateway's summary", || {
        mosquitto_retained(&gw, &topic).filter(|t| own(t))
    });

    let mut forged: serde_json::Value =
        serde_json::from_str(&mosquitto_retained(&gw, &topic).unwrap()).unwrap();
    forged["desired"]["sha"] = sha(62).into();
    forged["agents"] = serde_json::json!([{
        "agent": "web-1", "state": "healthy", "seq": seq, "sha12": "000000000062",
        "running_sha12": "000000000062", "updated_at": "2026-11-30T00:00:00.000Z"
    }]);
    let forged = forged.to_string();
    mosquitto_retain(&gw, &topic, &forged);
    // Past the summary interval: the forgery never became the retained summary.
    std::thread::sleep(Duration::from_millis(1500));
    let retained = mosquitto_retained(&gw, &topic).expect("a retained summary");
    assert!(own(&retained), "the forgery was retained: {retained}");
    // Refused by the broker, not repaired by the guard: the gateway never saw it.
    let metrics = gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == "orcastrate_foreign_fleet_summaries_total 0"),
        "{metrics}"
    );
}

/// A burst of statuses (a fleet reporting after a deploy) reaches the gateway whole: the
/// router's log of the gateway's `status/+` filter holds it, so none is skipped while the
/// gateway catches up (with the 64 KiB log every other filter gets, part of a burst this
/// size was skipped and the fleet view missed those statuses until each agent's next one).
#[test]
fn a_burst_of_statuses_reaches_the_gateway_whole() {
    const BURST: usize = 1_500;
    let (_dir, gw) = TestGateway::start_in_temp();
    let topic = format!("orcastrate/{REPO}/{ENV}/status/web-1");
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let payloads: Vec<Vec<u8>> = (0..BURST)
        .map(|_| {
            serde_json::to_vec(&status("web-1", ENV, AgentState::Deploying, "token-web-1")).unwrap()
        })
        .collect();
    for payload in payloads {
        agent.publish_qos0(&topic, payload);
    }
    agent.flush();
    let line = format!("orcastrate_agent_statuses_total{{outcome=\"accepted\"}} {BURST}");
    eventually(Duration::from_secs(20), &line, || {
        gw.metrics().lines().any(|l| l == line).then_some(())
    });
}

/// Issue 16: an agent behind `[proxy]` reports the private port its release serves on; the
/// fleet summary, `/api/v1/agents` and `status` show it, and the MAC covers it.
#[test]
fn r16_the_port_of_a_proxied_release_shows_everywhere_and_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path());
    let topic = format!("orcastrate/{REPO}/{ENV}/status/web-1");
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let with_port = |port: u16| {
        let mut s = status("web-1", ENV, AgentState::Healthy, "token-web-1");
        s.port = Some(port);
        sign::seal_status("token-web-1", &mut s);
        s
    };
    agent.publish(&topic, serde_json::to_vec(&with_port(41234)).unwrap(), true);
    agent.flush();
    let fleet_port = || {
        let mut sub = gw.mqtt("ops", "token-ops");
        sub.subscribe(&format!("orcastrate/{REPO}/{ENV}/fleet"));
        let (_, payload) = sub.wait_for(Duration::from_secs(3), |_, _| true)?;
        let summary: FleetSummary = serde_json::from_slice(&payload).ok()?;
        summary.agents.iter().find(|a| a.agent == "web-1")?.port
    };
    eventually(Duration::from_secs(10), "port 41234 in the fleet", || {
        (fleet_port() == Some(41234)).then_some(())
    });
    let (_, v) = gw.admin_get("/api/v1/agents");
    assert_eq!(v["agents"][0]["port"], 41234, "{v}");
    let out = std::process::Command::new(crate::process::BIN)
        .args(["status", "--gateway", &gw.http])
        .env("ORCASTRATE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let column = |line: &str| line.split_whitespace().nth(8).map(str::to_owned);
    assert_eq!(
        column(out.lines().next().unwrap()).as_deref(),
        Some("PORT"),
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with("web-1")).unwrap();
    assert_eq!(column(row).as_deref(), Some("41234"), "{out}");

    // The port changed after sealing: refused, the recorded port stays.
    let mut tampered = with_port(41234);
    tampered.port = Some(41235);
    agent.publish(&topic, serde_json::to_vec(&tampered).unwrap(), true);
    agent.flush();
    wait_refused(&gw, "bad_mac", 1);
    let (_, v) = gw.admin_get("/api/v1/agents");
    assert_eq!(v["agents"][0]["port"], 41234, "{v}");
}
