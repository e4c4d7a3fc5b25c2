//! The embedded broker: login rules, the #1062 guard, the desired-topic guard, mosquitto_sub.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn logins_follow_the_rules() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let port = gw.mqtt_port;
    // Any client id a library sends by default works: empty (mosquitto_sub), the name,
    // MQTT.js's and paho's random ones, and another client's name.
    for id in [
        "",
        "web-1",
        "web-1:watch",
        "mqttjs_3f2a9c1b",
        "paho-4711",
        "web-2",
    ] {
        assert!(
            Mqtt::connect(port, id, "web-1", "token-web-1").is_ok(),
            "{id}"
        );
    }
    // Refusals are answered with their CONNACK code, not a bare close.
    let refused = |id: &str, user: &str, token: &str| {
        Mqtt::connect(port, id, user, token)
            .err()
            .unwrap_or_default()
    };
    assert!(
        refused("anon", "", "").contains("NotAuthorized"),
        "anonymous"
    );
    assert!(
        refused("", "web-1", "wrong").contains("NotAuthorized"),
        "wrong token"
    );
    assert!(
        refused("", "nobody", "token-web-1").contains("NotAuthorized"),
        "unknown user"
    );
    assert!(
        refused("web-1/x", "web-1", "token-web-1").contains("BadClientId"),
        "a client id with /"
    );
}

#[test]
fn a_login_under_another_name_does_not_take_over_an_agents_session() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut agent = Mqtt::connect(gw.mqtt_port, "web-1", "web-1", "token-web-1").unwrap();
    agent.subscribe(&format!("orcastrate/{REPO}/{ENV}/desired"));
    agent.flush();
    // The watcher `ops` with the agent's client id: both stay connected.
    let mut watcher = Mqtt::connect(gw.mqtt_port, "web-1", "ops", "token-ops").unwrap();
    watcher.subscribe(&format!("orcastrate/{REPO}/{ENV}/desired"));
    watcher.flush();
    let (_, answer) = gw.webhook("push", "s-1", &push_of(&sha(31), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    for (who, client) in [("agent", &mut agent), ("watcher", &mut watcher)] {
        let got = client.wait_for(Duration::from_secs(5), |_, p| {
            String::from_utf8_lossy(p).contains(&sha(31))
        });
        assert!(got.is_some(), "the {who} still receives orders");
    }
}

#[test]
fn client_id_with_slash_cannot_poison_the_listener() {
    // rumqtt #1062: such an id reconnecting used to kill the listener for everyone.
    let (_dir, gw) = TestGateway::start_in_temp();
    for _ in 0..2 {
        assert!(Mqtt::connect(gw.mqtt_port, "web-1/x", "web-1", "token-web-1").is_err());
        assert!(Mqtt::connect(gw.mqtt_port, "web-1:+", "web-1", "token-web-1").is_err());
    }
    assert!(Mqtt::connect(gw.mqtt_port, "web-1", "web-1", "token-web-1").is_ok());
    let (status, _) = gw.admin_get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn forged_retained_order_is_replaced_by_the_true_one() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "f-1", &push_of(&sha(41), "master"));
    let seq = answer["seq"].as_u64().unwrap();
    let topic = "orcastrate/codertocat/hello-world/production/desired";

    // An agent token may not publish on `desired`: the broker drops the forgery (see
    // authz.rs); were it to get through (an engine with wrong ACLs), the gateway repairs it.
    let mut forger = gw.mqtt("web-1", "token-web-1");
    let forged = serde_json::json!({
        "v": 1, "seq": seq + 1000, "repo": REPO, "env": ENV, "sha": sha(666),
        "ref": null, "kind": "manual", "delivery": null, "issued_at": "2026-01-01T00:00:00.000Z",
        "issued_by": "mallory", "key_id": "x", "sig": "x"
    });
    forger.publish(topic, serde_json::to_vec(&forged).unwrap(), true);
    forger.flush();
    // Clearing it with an empty payload is repaired too.
    forger.publish(topic, Vec::new(), true);
    forger.flush();

    let truth = eventually(
        Duration::from_secs(5),
        "the true order to be retained again",
        || {
            let mut sub = gw.mqtt("web-2", "token-web-2");
            sub.subscribe(topic);
            let (_, payload) = sub.wait_for(Duration::from_secs(1), |_, _| true)?;
            let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
            (v["seq"].as_u64() == Some(seq)).then_some(v)
        },
    );
    assert_eq!(truth["sha"], sha(41).as_str());
}

#[test]
fn mosquitto_sub_sees_the_retained_order() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "m-1", &push_of(&sha(51), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt_port.to_string()])
        .args(["-u", "web-2", "-P", "token-web-2"])
        .args(["-t", "orcastrate/+/+/+/desired", "-v", "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mosquitto_sub failed: {out:?}");
    assert!(
        text.starts_with("orcastrate/codertocat/hello-world/production/desired {"),
        "{text}"
    );
    assert!(text.contains(&sha(51)), "{text}");

    // Wrong password: CONNACK 5, and mosquitto_sub says so and exits at once (it used to
    // retry silently until -W ran out).
    let started = std::time::Instant::now();
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt_port.to_string()])
        .args([
            "-u",
            "web-1",
            "-P",
            "nope",
            "-t",
            "orcastrate/#",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(said.contains("not authori"), "{said}");
    // The "within a second" holds on a quiet machine (3 ms here); the
    // bound leaves room for a loaded CI machine and still fails a client left hanging
    // until its own 10 s timeout (`-W 10`), the bug this guards.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn tls_listener_serves_mqtts_and_healthz_still_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let data = dir.path().join("data");
    let port = free_port();
    let text = config_text(&data, port, SECRET, "").replace(
        "[mqtt]\n",
        &format!("[mqtt]\ntls_cert = {:?}\ntls_key = {:?}\n", cert, key),
    );
    let gw = TestGateway::start_config(&data, &text);
    let (_, answer) = gw.webhook("push", "tls-1", &push_of(&sha(61), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    // /healthz logs in over TLS.
    let (status, body) = gw.admin_get("/healthz");
    assert_eq!(status, 200, "{body}");

    // Our client trusting the certificate.
    let options = orcastrate_broker::mqtt::client_options_with(
        &format!("mqtts://localhost:{port}"),
        "",
        "web-1",
        "token-web-1",
        &orcastrate_broker::mqtt::Trust::CaFile(ca.clone()),
    )
    .unwrap();
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .subscribe(
            "orcastrate/codertocat/hello-world/production/desired",
            rumqttc::QoS::AtLeastOnce,
        )
        .unwrap();
    let got = connection.iter().take(10).find_map(|e| match e {
        Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => Some(p.payload),
        Ok(_) => None,
        Err(e) => panic!("TLS connection failed: {e}"),
    });
    assert!(String::from_utf8_lossy(&got.unwrap()).contains(&sha(61)));

    // mosquitto_sub with the CA file.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
        .arg(&ca)
        .args([
            "-u",
            "web-1",
            "-P",
            "token-web-1",
            "-t",
            "orcastrate/codertocat/hello-world/production/desired",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sha(61)));

    // Plain MQTT is not spoken on a TLS listener.
    assert!(Mqtt::connect(port, "", "web-1", "token-web-1").is_err());
}

#[test]
fn external_mode_reaches_an_engine_over_mqtts_trusting_its_ca_file_only() {
    // The engine: a gateway's embedded broker with TLS, signed by a private CA.
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let engine_data = dir.path().join("engine");
    let port = free_port();
    let text = config_text(&engine_data, port, SECRET, "").replace(
        "[mqtt]\n",
        &format!("[mqtt]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
    );
    let _engine = TestGateway::start_config(&engine_data, &text);

    let external = |name: &str, ca_file: &str| {
        let data = dir.path().join(name);
        let text = format!(
            "data_dir = {data:?}\n[admin]\ntokens = [\"{ADMIN}\"]\n[github]\nsecret = \"x\"\n\
             [mqtt]\nmode = \"external\"\nurl = \"mqtts://localhost:{port}\"\n\
             username = \"web-2\"\npassword = \"token-web-2\"\n{ca_file}"
        );
        TestGateway::start_config(&data, &text)
    };
    let trusted = external("trusted", &format!("ca_file = {ca:?}\n"));
    eventually(Duration::from_secs(20), "healthz over mqtts", || {
        let (status, _) = trusted.admin_get("/healthz");
        (status == 200).then_some(())
    });

    // Another CA's file: the engine's certificate is not trusted.
    let other = dir.path().join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _) = make_certificates(&other);
    let untrusted = external("untrusted", &format!("ca_file = {other_ca:?}\n"));
    std::thread::sleep(Duration::from_secs(1));
    let (status, body) = untrusted.admin_get("/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not connected to the MQTT engine at mqtts://localhost"),
        "{body}"
    );
}

#[test]
fn mqtt_js_with_default_options_and_a_watcher_token_reads_the_retained_order() {
    // MQTT.js connects as `mqttjs_<random>`, which the first release refused without a word.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mqttjs");
    assert!(
        fixture.join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed: run `npm ci` in {} (.ci/run does)",
        fixture.display()
    );
    let (_dir, gw) = TestGateway::start_in_temp();
    let (_, answer) = gw.webhook("push", "js-1", &push_of(&sha(81), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    let out = Command::new("node")
        .arg("read_retained.js")
        .arg(format!("mqtt://127.0.0.1:{}", gw.mqtt_port))
        .args([
            "ops",
            "token-ops",
            &format!("orcastrate/{REPO}/{ENV}/desired"),
        ])
        .current_dir(&fixture)
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("connected as mqttjs_"), "{stderr}");
    assert!(stdout.contains(&sha(81)), "{stdout}");
}
