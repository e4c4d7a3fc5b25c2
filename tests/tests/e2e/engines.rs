//! The bus on an external engine: mosquitto with the files `mosquitto-config` writes, and the
//! EMQX-shaped HTTP login and ACL hooks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::harness::*;

/// A mosquitto server on a loopback port, configured as `config/mosquitto.conf` with the
/// password and ACL files generated from the gateway's config, but without persistence: a
/// restart loses every retained message.
struct Mosquitto {
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    fn start(dir: &Path, gateway_config: &str) -> Self {
        Self::start_with_acl(dir, gateway_config, "")
    }

    /// As [`Mosquitto::start`], with `extra_acl` appended to the generated ACL file (an
    /// operator's mistake, for the tests of what still holds then).
    fn start_with_acl(dir: &Path, gateway_config: &str, extra_acl: &str) -> Self {
        use orcastrate_gateway::config::{FileConfig, Overrides, Settings};
        let file: FileConfig = toml::from_str(gateway_config).unwrap();
        let settings = Settings::build(file, None, &[("UNUSED", "")], &Overrides::default())
            .expect("the gateway's config is valid");
        let files = dir.join("mosquitto");
        orcastrate_gateway::engine_config::write_mosquitto(&settings, &files).unwrap();
        if !extra_acl.is_empty() {
            let acl = files.join("acl");
            let generated = std::fs::read_to_string(&acl).unwrap();
            std::fs::write(&acl, format!("{generated}\n{extra_acl}\n")).unwrap();
        }
        let port = free_port();
        // Started as root, mosquitto drops to the user `mosquitto`, who could not read the
        // 0600 files: stay root in that case.
        let user = if whoami() == "root" {
            "user root\n"
        } else {
            ""
        };
        let conf = files.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{user}listener {port} 127.0.0.1\nuse_username_as_clientid true\n\
                 allow_anonymous false\npersistence false\nset_tcp_nodelay true\n\
                 password_file {passwd}\nacl_file {acl}\n",
                passwd = files.join("passwd").display(),
                acl = files.join("acl").display(),
            ),
        )
        .unwrap();
        let mut m = Self {
            port,
            conf,
            log: files.join("mosquitto.log"),
            child: None,
        };
        m.run();
        m
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        self.child = Some(child);
        eventually(WAIT, "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
    }

    /// Kills mosquitto (SIGKILL: nothing is saved) and starts it again on the same port.
    fn restart_after(&mut self, while_down: impl FnOnce()) {
        self.kill();
        while_down();
        self.run();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mosquitto_binary() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The first message `mosquitto_sub` gets on `filter` as the watcher.
fn mosquitto_sub_one(port: u16, filter: &str) -> Value {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", WATCHER, "-P", WATCHER_TOKEN])
        .args(["-t", filter, "-C", "1", "-W", "5"])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn on_mosquitto_two_hosts_deploy_forgeries_are_dropped_and_a_restart_converges() {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config_external(&dir.path().join("unused"), "mqtt://127.0.0.1:1");
    let mut mosquitto = Mosquitto::start(dir.path(), &config);
    let mut w = World::with_engine(mosquitto.port);
    let (_, sha1, seq1) = w.start_two_hosts_and_push_v1();
    w.gateway.wait_agent_of(AGENT2, "healthy on v1", |s| {
        s["seq"] == seq1 && s["state"] == "healthy"
    });
    let fleet = eventually(WAIT, "the fleet summary with both hosts", || {
        let f = mosquitto_sub_one(mosquitto.port, "orcastrate/+/+/+/fleet");
        (f["agents"].as_array()?.len() == 2).then_some(f)
    });
    assert_eq!(fleet["desired"]["seq"], seq1, "{fleet}");

    // An agent token may not write `desired` or another agent's `status`: mosquitto drops
    // both, so the gateway has nothing to repair and web-2's status stays its own. (The
    // token of an idle agent: with the client id forced to the login name, using a running
    // agent's own token would take over its session.)
    let status2_before = mosquitto_sub_one(mosquitto.port, &topic("status/web-2"));
    for (topic_kind, payload) in [
        ("desired", "{\"forged\":1}"),
        ("status/web-2", "{\"forged\":2}"),
    ] {
        mosquitto_pub_retained(
            mosquitto.port,
            AGENT3,
            AGENT3_TOKEN,
            &topic(topic_kind),
            payload,
        );
    }
    let desired = w.gateway.desired().expect("the true order is retained");
    assert_eq!((desired.seq, desired.sha.as_str()), (seq1, sha1.as_str()));
    assert_eq!(
        mosquitto_sub_one(mosquitto.port, &topic("status/web-2")),
        status2_before
    );
    assert!(
        !w.gateway.logs.text().contains("differs from the ledger"),
        "the forged order reached the bus:\n{}",
        w.gateway.logs.text()
    );

    // mosquitto dies and comes back empty: only the gateway can put the order back, and it
    // does on reconnect, with the fleet summary.
    mosquitto.restart_after(|| {});
    let desired = eventually(WAIT, "the order to be re-published", || w.gateway.desired());
    assert_eq!((desired.seq, desired.sha.as_str()), (seq1, sha1.as_str()));
    assert!(w.gateway.verifies(&desired));
    eventually(WAIT, "the fleet summary to be re-published", || {
        let f = mosquitto_sub_one(mosquitto.port, "orcastrate/+/+/+/fleet");
        (f["desired"]["seq"] == seq1).then_some(())
    });

    // Down again, and a push lands meanwhile: the gateway records it, and both hosts
    // converge on it once mosquitto is back.
    let sha2 = w.commit("v2");
    let mut seq2 = 0;
    mosquitto.restart_after(|| {
        seq2 = w.push(&sha2);
    });
    w.wait_healthy(seq2, &sha2);
    w.gateway.wait_agent_of(AGENT2, "healthy on v2", |s| {
        s["seq"] == seq2 && s["state"] == "healthy"
    });
    w.wait_app("v2");
    let fleet = eventually(WAIT, "the fleet summary of v2", || {
        let f = mosquitto_sub_one(mosquitto.port, "orcastrate/+/+/+/fleet");
        let agents = f["agents"].as_array()?;
        (f["desired"]["seq"] == seq2
            && agents.len() == 2
            && agents
                .iter()
                .all(|a| a["state"] == "healthy" && a["seq"] == seq2))
        .then_some(f)
    });
    assert_eq!(fleet["desired"]["sha"], sha2.as_str(), "{fleet}");
    assert_eq!(w.gateway.deployments().len(), 2);
}

/// POSTs JSON to one of the engine hooks served at `base`; a body that is not JSON is null.
fn hook(base: &str, path: &str, body: Value) -> (u16, Value) {
    let mut r = ureq::post(format!("{base}{path}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(body)
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn the_http_login_and_acl_hooks_answer_as_emqx_expects() {
    // The hooks are served only with an external engine, on [mqtt] hooks_listen; they do
    // not need the engine itself to be up.
    let dir = tempfile::tempdir().unwrap();
    let hooks_port = free_port();
    let text = gateway_config_external(&dir.path().join("data"), "mqtt://127.0.0.1:1").replace(
        "[mqtt]\n",
        &format!("[mqtt]\nhooks_listen = \"127.0.0.1:{hooks_port}\"\n"),
    );
    let gateway = Gateway::start_config(&text, 1);
    let base = format!("http://127.0.0.1:{hooks_port}");
    let (code, _) = hook(&gateway.http, "/api/v1/mqtt/auth", json!({}));
    assert_eq!(code, 404, "not on the public HTTP port");
    let login = |clientid: &str, username: &str, password: &str| {
        let (code, v) = hook(
            &base,
            "/api/v1/mqtt/auth",
            json!({ "clientid": clientid, "username": username, "password": password }),
        );
        assert_eq!(code, 200, "{v}");
        v["result"].as_str().unwrap().to_owned()
    };
    assert_eq!(login(AGENT, AGENT, AGENT_TOKEN), "allow");
    assert_eq!(login("", AGENT, AGENT_TOKEN), "allow");
    assert_eq!(login(AGENT, AGENT, "wrong-token"), "deny");
    assert_eq!(
        login(AGENT2, AGENT, AGENT_TOKEN),
        "deny",
        "a foreign client id"
    );
    assert_eq!(login("", "", ""), "deny", "anonymous");

    let acl = |username: &str, action: &str, topic: &str| {
        let (code, v) = hook(
            &base,
            "/api/v1/mqtt/acl",
            json!({ "clientid": username, "username": username, "action": action, "topic": topic }),
        );
        assert_eq!(code, 200, "{v}");
        v["result"].as_str().unwrap().to_owned()
    };
    assert_eq!(acl(AGENT, "subscribe", &topic("desired")), "allow");
    assert_eq!(acl(AGENT, "publish", &topic("status/web-1")), "allow");
    assert_eq!(acl(AGENT, "publish", &topic("desired")), "deny");
    assert_eq!(acl(AGENT, "publish", &topic("status/web-2")), "deny");
    assert_eq!(acl(AGENT, "subscribe", "orcastrate/#"), "deny");
    assert_eq!(acl(WATCHER, "subscribe", &topic("fleet")), "allow");
    assert_eq!(acl(WATCHER, "publish", &topic("fleet")), "deny");
    assert_eq!(acl("nobody", "subscribe", &topic("desired")), "deny");

    let (code, v) = hook(&base, "/api/v1/mqtt/acl", json!({ "username": AGENT }));
    assert_eq!(code, 400, "a malformed request is 400 (EMQX: ignore): {v}");
    assert!(v["error"].as_str().unwrap().contains("topic"), "{v}");
}

#[test]
fn on_an_external_engine_the_newest_order_is_published_again_every_interval() {
    // A replica of a clustered engine can serve a stale retained order the gateway never
    // sees; the periodic re-publish puts the newest one on every replica again.
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config_external(&dir.path().join("unused"), "mqtt://127.0.0.1:1");
    let mosquitto = Mosquitto::start(dir.path(), &config);
    let data_dir = dir.path().join("gateway-data");
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let text = gateway_config_external(&data_dir, &url)
        .replace("[mqtt]\n", "[mqtt]\nrepublish_interval_s = 1\n");
    let gateway = Gateway::start_config(&text, mosquitto.port);
    let sha = "1".repeat(40);
    let (code, answer) = gateway.push(&sha, &delivery());
    assert_eq!(code, 202, "{answer}");

    let mut watcher = gateway.watch(&topic("desired"));
    for round in 1..=2 {
        let live = watcher.wait_publish(WAIT, |p| !p.retain);
        let order: Value =
            serde_json::from_slice(&live.expect("a re-published order").payload).unwrap();
        assert_eq!(order["sha"], sha.as_str(), "round {round}: {order}");
    }
    assert_eq!(
        gateway.deployments().len(),
        1,
        "re-publishing makes no new order"
    );
}

/// Issue 11: where an engine's ACLs are wrong (here web-3 may write everything), a forged
/// retained `fleet` summary is still replaced by the gateway's own within seconds, as a
/// forged `desired` is.
#[test]
fn on_mosquitto_with_a_wrong_acl_a_forged_fleet_summary_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config_external(&dir.path().join("unused"), "mqtt://127.0.0.1:1");
    let mosquitto = Mosquitto::start_with_acl(
        dir.path(),
        &config,
        &format!("user {AGENT3}\ntopic readwrite orcastrate/#"),
    );
    let mut w = World::with_engine(mosquitto.port);
    w.start_agent();
    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    let genuine = eventually(WAIT, "the fleet summary", || {
        let f = mosquitto_sub_one(mosquitto.port, &topic("fleet"));
        (f["desired"]["seq"] == seq1 && f["agents"].as_array()?.len() == 1).then_some(f)
    });

    let mut forged = genuine.clone();
    forged["desired"]["sha"] = "0000000000000000000000000000000000000bad".into();
    forged["agents"][0]["state"] = "failed".into();
    mosquitto_pub_retained(
        mosquitto.port,
        AGENT3,
        AGENT3_TOKEN,
        &topic("fleet"),
        &forged.to_string(),
    );
    // The forgery reached the bus (the wrong ACL let it through) and the gateway saw it...
    eventually(WAIT, "the gateway to count a foreign summary", || {
        let metrics = w.gateway.metrics();
        metrics
            .lines()
            .any(|l| {
                l.starts_with("orcastrate_foreign_fleet_summaries_total ") && !l.ends_with(" 0")
            })
            .then_some(())
    });
    // ...and put its own back.
    eventually(WAIT, "the gateway's summary back", || {
        let f = mosquitto_sub_one(mosquitto.port, &topic("fleet"));
        (f["desired"]["sha"] == sha1.as_str() && f["agents"][0]["state"] == "healthy").then_some(())
    });
}
