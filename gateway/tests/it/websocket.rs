//! MQTT over WebSocket at `GET /mqtt` (issue 15): the same door as TCP. rumqttc's WebSocket
//! transport logs in through the gateway's HTTP port into the embedded broker, and is held
//! to the same login and topic rules as the MQTT port.

use std::process::Command;
use std::time::Duration;

use orcastrate_testkit::mqtt::Mqtt;
use rumqttc::{QoS, SubscribeReasonCode};

use crate::common::*;

fn topic(rest: &str) -> String {
    format!("orcastrate/{REPO}/{ENV}/{rest}")
}

/// `host:port` of the gateway's HTTP listener.
fn http_addr(gw: &TestGateway) -> String {
    gw.http.trim_start_matches("http://").to_owned()
}

fn ws(gw: &TestGateway, id: &str, user: &str, token: &str) -> Result<Mqtt, String> {
    Mqtt::connect_with(Mqtt::ws_options(&http_addr(gw), id, user, token))
}

/// The status line and headers of a WebSocket upgrade request to `/mqtt` offering
/// `protocol` (none when empty), as curl prints them.
fn upgrade_head(gw: &TestGateway, protocol: &str) -> String {
    let mut curl = Command::new("curl");
    curl.args(["-s", "-i", "--max-time", "3", "--http1.1"])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]);
    if !protocol.is_empty() {
        curl.args(["-H", &format!("Sec-WebSocket-Protocol: {protocol}")]);
    }
    let out = curl
        .arg(format!("{}/mqtt", gw.http))
        .output()
        .expect("curl runs (install curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_websocket_client_reads_the_retained_order_through_the_http_port() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let (status, answer) = gw.webhook("push", "ws-1", &push_of(&sha(31), "master"));
    assert_eq!(status, 202, "{answer}");
    let mut watcher = ws(&gw, "", "ops", "token-ops").expect("login over WebSocket");
    assert_eq!(
        watcher.subscribe_acked(&[&topic("desired")]).unwrap(),
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let got = watcher.collect(Duration::from_millis(1500));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(String::from_utf8_lossy(&got[0].1).contains(&sha(31)));
    // The same broker: a TCP client sees what a WebSocket agent publishes, and back.
    let mut tcp = gw.mqtt("ops", "token-ops");
    tcp.subscribe(&topic("log/web-1"));
    tcp.wait_suback();
    let mut agent = ws(&gw, "web-1", "web-1", "token-web-1").expect("agent login");
    agent.publish(&topic("log/web-1"), b"over websocket".to_vec(), false);
    agent.flush();
    let seen = tcp.collect(Duration::from_millis(1500));
    assert!(
        seen.iter().any(|(_, p)| p == b"over websocket"),
        "the TCP client did not get the WebSocket client's message: {seen:?}"
    );
}

#[test]
fn a_refused_websocket_login_gets_connack_5_like_tcp() {
    let (_dir, gw) = TestGateway::start_in_temp();
    for (user, token) in [("web-1", "wrong"), ("nobody", "token-web-1"), ("", "")] {
        let e = ws(&gw, "", user, token).err().unwrap_or_default();
        assert!(e.contains("NotAuthorized"), "{user}: {e}");
    }
    let e = ws(&gw, "web-1/x", "web-1", "token-web-1")
        .err()
        .unwrap_or_default();
    assert!(e.contains("BadClientId"), "a client id with /: {e}");
}

#[test]
fn an_agent_token_over_websocket_cannot_publish_an_order() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let mut watcher = gw.mqtt("ops", "token-ops");
    watcher.subscribe(&format!("orcastrate/{REPO}/#"));
    watcher.wait_suback();
    let mut agent = ws(&gw, "web-1", "web-1", "token-web-1").expect("agent login");
    agent.publish(&topic("desired"), b"forged-over-ws".to_vec(), true);
    agent.flush();
    // The control: its own log line gets through, so the silence above is a refusal.
    agent.publish(&topic("log/web-1"), b"control".to_vec(), false);
    agent.flush();
    let seen = watcher.collect(Duration::from_millis(1500));
    assert!(seen.iter().any(|(_, p)| p == b"control"), "{seen:?}");
    assert!(
        !seen.iter().any(|(_, p)| p == b"forged-over-ws"),
        "a forged order got through over WebSocket: {seen:?}"
    );
    // Nor may it read another repo/env's order or subscribe outside its scope.
    assert_eq!(
        agent
            .subscribe_acked(&["orcastrate/codertocat/hello-world/staging/desired"])
            .unwrap(),
        [SubscribeReasonCode::Failure]
    );
}

#[test]
fn the_websocket_upgrade_needs_the_mqtt_subprotocol_and_can_be_turned_off() {
    let (_dir, gw) = TestGateway::start_in_temp();
    let head = upgrade_head(&gw, "mqtt");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{head}"
    );
    let head = upgrade_head(&gw, "");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("Sec-WebSocket-Protocol: mqtt"), "{head}");
    drop(gw);

    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(dir.path(), "[http]\nmqtt_websocket = false\n");
    let head = upgrade_head(&gw, "mqtt");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // The MQTT port is unchanged.
    drop(gw.mqtt("ops", "token-ops"));
}

#[test]
fn websocket_logins_are_throttled_per_address_like_tcp() {
    let (_dir, gw) = TestGateway::start_in_temp();
    // 50 wrong logins at once over WebSocket, from 127.0.0.1 (the HTTP peer's address).
    let addr = http_addr(&gw);
    let tries: Vec<_> = (0..50)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                Mqtt::connect_with(Mqtt::ws_options(&addr, "", "web-1", "wrong-token"))
                    .err()
                    .unwrap_or_default()
            })
        })
        .collect();
    let errors: Vec<String> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let checked = errors
        .iter()
        .filter(|e| e.contains("NotAuthorized"))
        .count();
    let throttled = errors
        .iter()
        .filter(|e| e.contains("ServiceUnavailable"))
        .count();
    // The broker saw the real peer: the burst allowance, then refusals unchecked. Had the
    // WebSocket logins no address, all 50 would have been checked.
    assert!(checked <= 20, "{checked} of 50 wrong logins were checked");
    assert_eq!(
        checked + throttled,
        50,
        "every login got an answer: {errors:?}"
    );
    // Another address is not held back: the right token from 127.0.0.2 over TCP.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt_port.to_string()])
        .args(["-A", "127.0.0.2", "-u", "ops", "-P", "token-ops"])
        .args(["-t", "x/y", "-W", "1"])
        .output()
        .expect("mosquitto_sub is installed");
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !said.contains("unavailable") && !said.contains("authori"),
        "{said}"
    );
}

/// A WebSocket login to the gateway at `addr` whose upgrade request carries
/// `X-Forwarded-For: forwarded`; its error, or "" once in.
fn forwarded_login(addr: &str, token: &str, forwarded: String) -> String {
    let mut options = Mqtt::ws_options(addr, "", "web-1", token);
    options.set_request_modifier(move |mut request| {
        let value = axum::http::HeaderValue::from_str(&forwarded).unwrap();
        async move {
            request.headers_mut().insert("x-forwarded-for", value);
            request
        }
    });
    Mqtt::connect_with(options).err().unwrap_or_default()
}

/// 50 wrong WebSocket logins at once, the n-th naming `forwarded(n)`: how many were
/// throttled (CONNACK 3) rather than checked.
fn throttled_of_50(gw: &TestGateway, forwarded: fn(usize) -> String) -> usize {
    let tries: Vec<_> = (0..50)
        .map(|n| {
            let addr = http_addr(gw);
            std::thread::spawn(move || forwarded_login(&addr, "wrong-token", forwarded(n)))
        })
        .collect();
    let said: Vec<String> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let throttled = said
        .iter()
        .filter(|e| e.contains("ServiceUnavailable"))
        .count();
    let checked = said.iter().filter(|e| e.contains("NotAuthorized")).count();
    assert_eq!(
        throttled + checked,
        50,
        "every login got an answer: {said:?}"
    );
    throttled
}

/// MQTT over WebSocket through a reverse proxy: with the proxy in `[http] trusted_proxies`
/// the broker's login throttle counts the client the proxy names in `X-Forwarded-For`, so
/// a guesser behind the proxy does not lock out the others behind it; without it, the
/// header changes nothing (a client cannot dodge the throttle by writing one).
#[test]
fn behind_a_trusted_proxy_websocket_logins_are_throttled_per_forwarded_client() {
    let each_its_own = |n| format!("203.0.113.{n}");
    let all_one = |_| "203.0.113.250".to_owned();

    let (_dir, gw) = TestGateway::start_in_temp();
    let throttled = throttled_of_50(&gw, each_its_own);
    assert!(
        throttled > 0,
        "the header is not trusted: all 50 were checked"
    );
    drop(gw);

    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(dir.path(), "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    assert_eq!(
        throttled_of_50(&gw, each_its_own),
        0,
        "50 clients, one wrong login each"
    );
    assert!(
        throttled_of_50(&gw, all_one) > 0,
        "one client, 50 wrong logins"
    );
    let said = forwarded_login(&http_addr(&gw), "token-web-1", "203.0.113.251".into());
    assert_eq!(said, "", "another client behind the proxy logs in");
}
