//! The embedded broker's authorization, one attack per test, each asserting the refusal and
//! that nothing changed: what an agent token may publish and read, its last will, failed
//! logins from one address, oversized messages and filter floods (gateway RSS from /proc),
//! and hostile usernames in the log.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use orcastrate_broker::{sign, AgentState, AgentStatus};
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

use crate::common::*;
use crate::process::{write_config, Process};

fn topic(rest: &str) -> String {
    format!("orcastrate/{REPO}/{ENV}/{rest}")
}

fn own_status(state: AgentState) -> AgentStatus {
    let mut s = agent_status("web-1", state);
    s.seq = None;
    s.sha = None;
    s.running_sha = None;
    sign::seal_status("token-web-1", &mut s);
    s
}

#[test]
fn an_agent_token_publishes_only_its_own_status_and_log() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "a-1", &push_of(&sha(11), "master"));
    let seq = answer["seq"].as_u64().unwrap();
    let mut watcher = gw.mqtt("ops", "token-ops");
    assert_eq!(
        watcher.subscribe_acked(&["orcastrate/#"]).unwrap(),
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let retained = watcher.collect(Duration::from_millis(500));
    assert_eq!(
        retained.len(),
        1,
        "only the order is retained: {retained:?}"
    );

    let mut agent = gw.mqtt("web-1", "token-web-1");
    let marker = "forged-by-web-1";
    for target in [
        topic("desired"),
        topic("fleet"),
        format!("orcastrate/{REPO}/events"),
        topic("status/web-2"),
        format!("orcastrate/{REPO}/staging/status/web-1"),
        "junk/web-1".to_owned(),
        "$SYS/x".to_owned(),
    ] {
        agent.publish(&target, marker.as_bytes().to_vec(), true);
    }
    agent.flush();
    // The control: what it may publish gets through, so the silence above is a refusal.
    let own = own_status(AgentState::Healthy);
    agent.publish(
        &topic("status/web-1"),
        serde_json::to_vec(&own).unwrap(),
        true,
    );
    agent.publish(&topic("log/web-1"), b"a log line".to_vec(), false);
    agent.flush();
    let seen = watcher.collect(Duration::from_millis(1500));
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        topics.contains(&topic("status/web-1").as_str()),
        "{topics:?}"
    );
    assert!(topics.contains(&topic("log/web-1").as_str()), "{topics:?}");
    assert!(
        !seen
            .iter()
            .any(|(_, p)| String::from_utf8_lossy(p).contains(marker)),
        "a forged message got through: {topics:?}"
    );
    // Nothing forged is retained: a new watcher sees the true order and web-1's status.
    let mut late = gw.mqtt("ops", "token-ops");
    late.subscribe("orcastrate/#");
    let retained = late.collect(Duration::from_millis(800));
    let order = retained
        .iter()
        .find(|(t, _)| *t == topic("desired"))
        .expect("the order");
    assert!(String::from_utf8_lossy(&order.1).contains(&format!("\"seq\":{seq}")));
    assert!(retained
        .iter()
        .all(|(_, p)| !String::from_utf8_lossy(p).contains(marker)));
    // The fleet view holds web-1 only, as it reported itself.
    let (_, v) = gw.admin_get("/api/v1/agents");
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{v}");
    assert_eq!(agents[0]["agent"], "web-1");
}

#[test]
fn repeated_refused_publishes_close_the_connection() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut agent = gw.mqtt("web-1", "token-web-1");
    for _ in 0..30 {
        agent.publish_qos0(&topic("desired"), b"x".to_vec());
    }
    // Sending them (driven by this subscribe) ends with the broker closing the connection.
    assert!(
        !agent.alive(&topic("desired")),
        "the connection is closed after repeated refusals"
    );
    // A fresh login works: the refusals closed one connection, not the name.
    assert!(gw.mqtt("web-1", "token-web-1").alive(&topic("desired")));
}

#[test]
fn an_agent_token_reads_only_its_scopes_orders() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let codes = agent
        .subscribe_acked(&[
            "#",
            "orcastrate/#",
            "orcastrate/+/+/+/desired",
            &format!("orcastrate/{REPO}/staging/desired"),
            &topic("log/web-1"),
            &topic("log/+"),
            &topic("status/+"),
            &topic("fleet"),
            &topic("desired"),
        ])
        .unwrap();
    let refused = SubscribeReasonCode::Failure;
    assert_eq!(
        codes,
        [
            refused,
            refused,
            refused,
            refused,
            refused,
            refused,
            refused,
            refused,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    // Orders for staging, a status and a log line of another agent: none reach it.
    let (_, answer) = gw.webhook("push", "r-1", &push_of(&sha(21), "develop"));
    assert!(answer["seq"].is_u64(), "{answer}");
    let mut other = gw.mqtt("web-2", "token-web-2");
    other.publish(&topic("log/web-2"), b"secret step output".to_vec(), false);
    other.flush();
    let (_, answer) = gw.webhook("push", "r-2", &push_of(&sha(22), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    let got = agent.collect(Duration::from_millis(1500));
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, [topic("desired").as_str()], "only its own order");
    assert!(String::from_utf8_lossy(&got[0].1).contains(&sha(22)));
}

#[test]
fn a_last_will_on_another_agents_status_is_refused_at_login() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let will = |t: String| {
        let mut o = Mqtt::options(gw.mqtt_port, "web-1", "web-1", "token-web-1");
        o.set_last_will(LastWill::new(t, "forged-will", QoS::AtLeastOnce, true));
        Mqtt::connect_with(o)
    };
    for t in [topic("status/web-2"), topic("desired"), "junk/x".to_owned()] {
        let e = will(t.clone()).err().unwrap_or_default();
        assert!(e.contains("NotAuthorized"), "{t}: {e}");
    }
    // Its own status as the will: accepted, and it fires when the connection drops.
    let agent = will(topic("status/web-1")).expect("its own will");
    drop(agent);
    let mut watcher = gw.mqtt("ops", "token-ops");
    watcher.subscribe(&topic("status/+"));
    let got = watcher.collect(Duration::from_millis(2000));
    assert!(
        got.iter().all(|(t, _)| *t == topic("status/web-1")),
        "no will on another agent's topic: {got:?}"
    );
}

#[test]
fn failed_logins_are_throttled_per_source_address() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "t-1", &push_of(&sha(71), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    let sub = |source: &str, token: &str| {
        let mut c = Command::new("mosquitto_sub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &gw.mqtt_port.to_string(),
            "-A",
            source,
        ])
        .args(["-u", "web-1", "-P", token, "-t", &topic("desired")])
        .args(["-C", "1", "-W", "10"]);
        c
    };
    // 50 wrong logins at once from 127.0.0.1.
    let started = Instant::now();
    let children: Vec<_> = (0..50)
        .map(|_| {
            sub("127.0.0.1", "wrong-token")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("mosquitto_sub is installed")
        })
        .collect();
    // Meanwhile the right token from 127.0.0.2 gets in at once.
    std::thread::sleep(Duration::from_millis(200));
    let right = Instant::now();
    let out = sub("127.0.0.2", "token-web-1").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sha(71)));
    assert!(
        right.elapsed() < Duration::from_secs(2),
        "the other address waited {:?}",
        right.elapsed()
    );
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_lowercase();
    let checked = outputs
        .iter()
        .filter(|o| said(o).contains("not authori"))
        .count();
    let throttled = outputs
        .iter()
        .filter(|o| said(o).contains("unavailable"))
        .count();
    assert!(outputs.iter().all(|o| !o.status.success()));
    // A burst of 10 checked at once, then about 2 a second up to a 3 s wait; the rest are
    // refused unchecked ("server unavailable"), so guessing runs at a few tries a second.
    assert!(checked <= 20, "{checked} of 50 wrong logins were checked");
    assert_eq!(checked + throttled, 50, "every login got an answer");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// The gateway process's resident memory, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[test]
fn oversized_messages_and_filter_floods_leave_memory_near_its_baseline() {
    // Bounds: the quotas let one token add a few MB at most; without them, 300 retained
    // 1 MB messages took the gateway from 70 to 508 MB and 50,000 filters added 294 MB.
    const PEAK_MB: f64 = 40.0;
    const AFTER_MB: f64 = 20.0;
    let dir = tempfile::tempdir().unwrap();
    let gw = Process::start(&write_config(dir.path(), ""));
    let pid = gw.child.id();
    let baseline = rss_mb(pid);
    let mut peak: f64 = baseline;

    // 300 retained 1 MB messages: each closes the connection before it is buffered.
    let big = vec![b'x'; 1_000_000];
    let mut refused = 0;
    for i in 0..300 {
        let Ok(mut c) = Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2") else {
            continue;
        };
        let t = if i % 2 == 0 {
            format!("junk/{i}")
        } else {
            topic("status/web-2")
        };
        c.publish(&t, big.clone(), true);
        if !c.alive(&topic("desired")) {
            refused += 1;
        }
        peak = peak.max(rss_mb(pid));
    }
    assert!(
        refused >= 290,
        "only {refused} of 300 big publishes were refused"
    );

    // 50,000 distinct filters it may read (every repo/env's desired), 400 per SUBSCRIBE.
    let mut accepted = 0;
    let mut n = 0;
    while n < 50_000 {
        let Ok(mut c) = Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2") else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        while n < 50_000 {
            let filters: Vec<String> = (n..n + 400)
                .map(|i| format!("orcastrate/o/r/e{i}/desired"))
                .collect();
            n += 400;
            let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
            match c.subscribe_acked(&refs) {
                Ok(codes) => {
                    accepted += codes
                        .iter()
                        .filter(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        .count()
                }
                Err(_) => break,
            }
        }
        peak = peak.max(rss_mb(pid));
    }
    assert!(
        accepted <= 64,
        "{accepted} filters accepted past max_subscriptions_per_client"
    );
    assert!(
        peak - baseline < PEAK_MB,
        "RSS went from {baseline:.1} to {peak:.1} MB"
    );
    // The client is gone: memory is back near where it started.
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_mb(pid);
    assert!(
        after - baseline < AFTER_MB,
        "RSS {after:.1} MB after the client left (baseline {baseline:.1} MB)"
    );
    // And the gateway still serves an honest agent.
    assert!(Mqtt::connect(gw.mqtt_port, "", "web-1", "token-web-1")
        .unwrap()
        .alive(&topic("desired")));
}

#[test]
fn hostile_usernames_and_client_ids_give_one_short_escaped_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let gw = Process::start_logging(&write_config(dir.path(), ""), Some(&log));
    let long = "u".repeat(65_000);
    let forging = "web-1\nINFO forged: deploy approved";
    // As usernames, then as client ids of web-1 and web-2 (under the 10 failed logins an
    // address may make before it is throttled).
    for (client_id, user) in [
        ("", long.as_str()),
        ("", forging),
        (long.as_str(), "web-1"),
        (forging, "web-2"),
    ] {
        for _ in 0..2 {
            let e = Mqtt::connect(gw.mqtt_port, client_id, user, "wrong")
                .err()
                .unwrap_or_default();
            assert!(e.contains("NotAuthorized"), "{e}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log).unwrap();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("login refused"))
        .collect();
    assert_eq!(
        refusals.len(),
        4,
        "one line per burst per name: {refusals:#?}"
    );
    assert!(refusals.iter().all(|l| l.len() < 600), "{refusals:#?}");
    assert!(
        !text.lines().any(|l| l.starts_with("INFO forged")),
        "a forged line: {text}"
    );
    assert!(text.len() < 20_000, "{} bytes of log", text.len());
}

#[test]
fn a_reload_changes_what_a_connected_client_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let config = write_config(dir.path(), "");
    let gw = Process::start_logging(&config, Some(&log));
    let mut client = Mqtt::connect(gw.mqtt_port, "web-1", "web-1", "token-web-1").unwrap();
    let fleet = topic("fleet");
    assert_eq!(
        client.subscribe_acked(&[&fleet]).unwrap(),
        [SubscribeReasonCode::Failure],
        "an agent may not read fleet"
    );
    // web-1 becomes a watcher of its scope; SIGHUP; the same connection may now read fleet.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "scopes = [\"codertocat/hello-world/production\"]",
        "scopes = [\"codertocat/hello-world/production\"]\nrole = \"watcher\"",
    );
    std::fs::write(&config, text).unwrap();
    gw.signal("HUP");
    eventually(Duration::from_secs(10), "the reload", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("reloaded clients and repos").then_some(())
    });
    assert_eq!(
        client.subscribe_acked(&[&fleet]).unwrap(),
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
}

#[test]
fn topics_and_connections_per_name_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: max_topics_per_client = 32, max_connections_per_client = 8.
    let gw = TestGateway::start(dir.path());
    let mut watcher = gw.mqtt("ops", "token-ops");
    watcher.subscribe_acked(&["orcastrate/#"]).unwrap();
    // web-2 reports, retained, for every repo/env: 19 distinct status topics per connection
    // (under the 20 refusals that close one), 40 in all; the first 32 are taken.
    let mut sent = 0;
    while sent < 40 {
        let mut agent = gw.mqtt("web-2", "token-web-2");
        for _ in 0..19.min(40 - sent) {
            let t = format!("orcastrate/o/r/e{sent}/status/web-2");
            agent.publish(&t, format!("quota-{sent}").into_bytes(), true);
            sent += 1;
        }
        agent.flush();
    }
    let got = watcher.collect(Duration::from_millis(1000));
    let quota: Vec<_> = got
        .iter()
        .filter(|(_, p)| String::from_utf8_lossy(p).starts_with("quota-"))
        .collect();
    assert_eq!(quota.len(), 32, "max_topics_per_client");
    // Publishing again on a topic it already holds is fine.
    let mut agent = gw.mqtt("web-2", "token-web-2");
    agent.publish(
        "orcastrate/o/r/e0/status/web-2",
        b"quota-again".to_vec(),
        false,
    );
    agent.flush();
    assert!(watcher
        .collect(Duration::from_millis(800))
        .iter()
        .any(|(_, p)| p == b"quota-again"));
    drop(agent);
    // All were retained: the broker holds 32 of them, one per topic, and no more.
    let mut late = gw.mqtt("ops", "token-ops");
    late.subscribe_acked(&["orcastrate/#"]).unwrap();
    let retained = late
        .collect(Duration::from_secs(3))
        .into_iter()
        .filter(|(_, p)| p.starts_with(b"quota-"))
        .count();
    assert_eq!(retained, 32, "retained messages of one name");

    // Eight connections under one name; the ninth is told to come back later.
    // (The connections above may take a moment to be counted as gone.)
    let mut open = Vec::new();
    eventually(Duration::from_secs(5), "eight connections", || {
        while open.len() < 8 {
            open.push(Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2").ok()?);
        }
        Some(())
    });
    let e = Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2")
        .err()
        .unwrap_or_default();
    assert!(e.contains("ServiceUnavailable"), "{e}");
    drop(open);
    eventually(
        Duration::from_secs(5),
        "a login once the others left",
        || Mqtt::connect(gw.mqtt_port, "", "web-2", "token-web-2").ok(),
    );
}

/// Runs `mosquitto_pub` or `mosquitto_sub` against the gateway, logged in as `user`.
fn mosquitto(tool: &str, port: u16, user: &str, token: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            token,
        ])
        .args(args)
        .output()
        .expect("mosquitto-clients is installed")
}

/// What a mosquitto client printed on stderr, in lower case.
fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_lowercase()
}

#[test]
fn mosquitto_clients_with_an_agent_token_are_refused_too() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "q-1", &push_of(&sha(81), "master"));
    let seq = answer["seq"].as_u64().unwrap();
    let port = gw.mqtt_port;
    // Reading everything, another scope's orders or any log: every filter refused (SUBACK
    // 0x80), so mosquitto_sub says "All subscription requests were denied" and prints
    // nothing.
    for filter in [
        "#",
        &format!("orcastrate/{REPO}/staging/desired"),
        &topic("log/+"),
    ] {
        let out = mosquitto(
            "mosquitto_sub",
            port,
            "web-1",
            "token-web-1",
            &["-t", filter, "-C", "1", "-W", "5"],
        );
        assert!(out.stdout.is_empty(), "{filter}: {out:?}");
        assert!(said(&out).contains("denied"), "{filter}: {out:?}");
    }
    // A last will on another agent's status: the login is refused with CONNACK 5.
    let out = mosquitto(
        "mosquitto_pub",
        port,
        "web-1",
        "token-web-1",
        &[
            "-t",
            &topic("status/web-1"),
            "-m",
            "x",
            "--will-topic",
            &topic("status/web-2"),
            "--will-payload",
            "forged-will",
            "--will-retain",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(said(&out).contains("not authori"), "{out:?}");
    // Forged retained order, fleet, events, another agent's status, a topic outside the
    // prefix: acknowledged and dropped.
    for target in [
        topic("desired"),
        topic("fleet"),
        format!("orcastrate/{REPO}/events"),
        topic("status/web-2"),
        "junk/x".to_owned(),
    ] {
        let out = mosquitto(
            "mosquitto_pub",
            port,
            "web-1",
            "token-web-1",
            &["-t", &target, "-r", "-q", "1", "-m", "forged-by-web-1"],
        );
        assert!(out.status.success(), "{target}: {out:?}");
    }
    // Nothing of it is retained or was heard: the watcher sees the true order only.
    let out = mosquitto(
        "mosquitto_sub",
        port,
        "ops",
        "token-ops",
        &["-t", "orcastrate/#", "-t", "junk/#", "-v", "-W", "2"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("forged"), "{text}");
    assert!(text.contains(&format!("\"seq\":{seq}")), "{text}");
    let (_, v) = gw.admin_get("/api/v1/agents");
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(0), "{v}");
}

#[test]
fn the_log_topic_is_read_only_by_that_scopes_watchers_who_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(
        dir.path(),
        r#"
[[clients]]
name = "ops-production"
token = "token-ops-production"
role = "watcher"
scopes = ["codertocat/hello-world/production"]
[[clients]]
name = "ops-staging"
token = "token-ops-staging"
role = "watcher"
scopes = ["codertocat/hello-world/staging"]
"#,
    );
    let logs = topic("log/+");
    let staging_logs = format!("orcastrate/{REPO}/staging/log/+");
    let granted = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let refused = SubscribeReasonCode::Failure;
    // That scope's watcher reads its logs.
    let mut own = gw.mqtt("ops-production", "token-ops-production");
    assert_eq!(own.subscribe_acked(&[&logs]).unwrap(), [granted]);
    // A watcher of another scope reads its own scope's logs, not these.
    let mut other = gw.mqtt("ops-staging", "token-ops-staging");
    assert_eq!(
        other
            .subscribe_acked(&[&logs, &topic("log/web-1"), "orcastrate/#", &staging_logs])
            .unwrap(),
        [refused, refused, refused, granted]
    );
    // An agent of every scope reads no log, not even its own.
    let mut agent = gw.mqtt("web-2", "token-web-2");
    assert_eq!(
        agent
            .subscribe_acked(&[&logs, &topic("log/web-2"), &staging_logs])
            .unwrap(),
        [refused, refused, refused]
    );
    // mosquitto_sub as the other scope's watcher: refused outright.
    let out = mosquitto(
        "mosquitto_sub",
        gw.mqtt_port,
        "ops-staging",
        "token-ops-staging",
        &["-t", &logs, "-C", "1", "-W", "5"],
    );
    assert!(
        out.stdout.is_empty() && said(&out).contains("denied"),
        "{out:?}"
    );

    // A watcher publishes nothing, not even a log line on a topic it reads.
    own.publish(&topic("log/web-1"), b"forged-by-a-watcher".to_vec(), false);
    let got = own.collect(Duration::from_millis(800));
    assert!(got.is_empty(), "a watcher's publish got through: {got:?}");

    // web-1 prints a secret in a step: only its scope's watcher sees the line.
    let mut web1 = gw.mqtt("web-1", "token-web-1");
    web1.publish(&topic("log/web-1"), b"DB_PASSWORD=hunter2".to_vec(), false);
    web1.flush();
    assert!(own
        .wait_for(Duration::from_secs(5), |_, p| p == b"DB_PASSWORD=hunter2")
        .is_some());
    for (who, client) in [("the other watcher", &mut other), ("an agent", &mut agent)] {
        let got = client.collect(Duration::from_millis(800));
        assert!(got.is_empty(), "{who} read {got:?}");
    }
}

#[test]
fn message_size_limits_depend_on_the_topic_kind() {
    // The defaults: max_log_bytes = 8192, max_message_bytes = 16384.
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut watcher = gw.mqtt("ops", "token-ops");
    watcher.subscribe_acked(&["orcastrate/#"]).unwrap();
    let mut agent = gw.mqtt("web-1", "token-web-1");
    let sizes = [
        ("log/web-1", 8192),
        ("log/web-1", 8193),
        ("status/web-1", 8193),
        ("status/web-1", 16384),
        ("status/web-1", 16385),
    ];
    for (rest, len) in sizes {
        agent.publish(&topic(rest), vec![b'x'; len], false);
    }
    agent.flush();
    let got: Vec<(String, usize)> = watcher
        .collect(Duration::from_secs(3))
        .into_iter()
        .map(|(t, p)| (t, p.len()))
        .collect();
    assert_eq!(
        got,
        [
            (topic("log/web-1"), 8192),
            (topic("status/web-1"), 8193),
            (topic("status/web-1"), 16384)
        ],
        "a log line over 8192 bytes and a status over 16384 are dropped"
    );
}

#[test]
fn a_client_that_does_not_acknowledge_gets_at_most_max_inflight_messages() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), 0, SECRET, "").replace("[mqtt]\n", "[mqtt]\nmax_inflight = 10\n");
    let gw = TestGateway::start_config(dir.path(), &text);
    let mut options = Mqtt::options(gw.mqtt_port, "slow", "ops", "token-ops");
    options.set_manual_acks(true);
    let mut slow = Mqtt::connect_with(options).unwrap();
    slow.subscribe_acked(&[&topic("log/web-1")]).unwrap();
    let mut prompt = gw.mqtt("ops", "token-ops");
    prompt.subscribe_acked(&[&topic("log/web-1")]).unwrap();
    let mut agent = gw.mqtt("web-1", "token-web-1");
    for i in 0..25 {
        agent.publish(&topic("log/web-1"), format!("line {i}").into_bytes(), false);
    }
    agent.flush();
    // A client that acknowledges gets all 25; one that does not, the first 10 only.
    let receive = |client: &mut Mqtt| {
        let mut got = Vec::new();
        while let Some(p) = client.wait_publish(Duration::from_millis(1000), |_| true) {
            got.push(p);
        }
        got
    };
    assert_eq!(receive(&mut prompt).len(), 25);
    let first = receive(&mut slow);
    assert_eq!(first.len(), 10, "max_inflight");
    // Once it acknowledges them, the next 10 come.
    for p in &first {
        slow.client.try_ack(p).unwrap();
    }
    let next = receive(&mut slow);
    assert_eq!(next.len(), 10, "{next:?}");
    assert_eq!(&next[0].payload[..], b"line 10");
}

#[test]
fn refused_packets_are_logged_once_per_burst() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let gw = Process::start_logging(&write_config(dir.path(), ""), Some(&log));
    // Five connections one after the other, each closed after 20 refused publishes, and
    // refused filters on a sixth.
    for _ in 0..5 {
        let mut agent = Mqtt::connect(gw.mqtt_port, "", "web-1", "token-web-1").unwrap();
        for _ in 0..25 {
            agent.publish_qos0(&topic("desired"), b"x".to_vec());
        }
        assert!(!agent.alive(&topic("desired")));
    }
    let mut agent = Mqtt::connect(gw.mqtt_port, "", "web-1", "token-web-1").unwrap();
    for _ in 0..5 {
        agent.subscribe_acked(&["#"]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log).unwrap();
    for line in [
        "MQTT publish refused",
        "MQTT subscribe refused",
        "MQTT connection closed after repeated refusals",
    ] {
        assert_eq!(text.matches(line).count(), 1, "{line}:\n{text}");
    }
}
