//! The test world: an in-process gateway (its library, with its embedded broker), an
//! in-process agent (its library `run`, stopped with a `CancellationToken`), a bare git
//! "GitHub" origin with a work clone, and a tiny Node app on a free port.
//!
//! Everything observable is read the way users read it: the gateway's HTTP API, retained MQTT
//! messages seen by a fresh subscriber, the app's own HTTP answers. Webhooks are signed here
//! (HMAC-SHA256), not by the gateway's code, and orders and statuses are checked with the
//! broker crate's public verifiers. Each part logs into its own buffer, printed if a test
//! fails.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use orcastrate_broker::{AgentStatus, DeployOrder, FleetSummary, OrderVerifier};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "e2e-webhook-secret";
pub const ADMIN: &str = "e2e-admin-token-0123456789";
/// The repository as GitHub spells it (and as `[[repos]]` names it): mixed case.
pub const GITHUB_REPO: &str = "Octo-Org/Web";
/// The repository as it is used after it entered: lowercased.
pub const REPO: &str = "octo-org/web";
pub const ENV: &str = "production";
pub const BRANCH: &str = "main";
pub const AGENT: &str = "web-1";
pub const AGENT_TOKEN: &str = "token-of-web-1-e2e";
/// An operator's client, allowed to watch the bus.
pub const WATCHER: &str = "watcher";
pub const WATCHER_TOKEN: &str = "token-of-watcher-e2e";
/// A second host of the same repo/env.
pub const AGENT2: &str = "web-2";
pub const AGENT2_TOKEN: &str = "token-of-web-2-e2e";
/// An agent of the same repo/env that never runs: a token an attacker may hold without
/// kicking a running agent off (engines that make the client id the login name would).
pub const AGENT3: &str = "web-3";
pub const AGENT3_TOKEN: &str = "token-of-web-3-e2e";

/// The bound of every wait (normal runs take a small fraction of it).
pub const WAIT: Duration = Duration::from_secs(20);

pub use orcastrate_testkit::free_port;

pub use orcastrate_testkit::eventually;

pub fn topic(kind: &str) -> String {
    format!("orcastrate/{REPO}/{ENV}/{kind}")
}

// ---------------------------------------------------------------------------------------
// Logs

/// A shared buffer one part of the world logs into.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn dispatch(&self, filter: &str) -> tracing::Dispatch {
        let buf = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || buf.clone())
            .finish();
        tracing::Dispatch::new(subscriber)
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `body` on a new thread with its own runtime whose every thread logs into `logs`.
fn spawn_runtime<F, T>(
    name: &str,
    logs: &LogBuf,
    filter: &str,
    body: F,
) -> std::thread::JoinHandle<T>
where
    F: FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
    T: Send + 'static,
{
    let dispatch = logs.dispatch(filter);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _guard = tracing::dispatcher::set_default(&dispatch);
            let for_workers = dispatch.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || {
                    // Kept for the thread's life: it logs into this part's buffer.
                    std::mem::forget(tracing::dispatcher::set_default(&for_workers));
                })
                .build()
                .unwrap();
            body(&runtime)
        })
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Gateway

/// The gateway's login on an external engine.
pub const GATEWAY_USER: &str = "orcastrate-gateway";
pub const GATEWAY_PASSWORD: &str = "password-of-the-gateway-e2e";

/// The gateway's config: its broker on `mqtt_port`, the agent bound to our repo/env, an
/// operator client, and `main` of the repo mapped to `production`.
pub fn gateway_config(data_dir: &Path, mqtt_port: u16) -> String {
    gateway_config_with(data_dir, &format!("listen = \"127.0.0.1:{mqtt_port}\""))
}

/// The same config for an external engine at `url` (mode = "external").
pub fn gateway_config_external(data_dir: &Path, url: &str) -> String {
    gateway_config_with(
        data_dir,
        &format!(
            "mode = \"external\"\nurl = \"{url}\"\nusername = \"{GATEWAY_USER}\"\npassword = \"{GATEWAY_PASSWORD}\""
        ),
    )
}

fn gateway_config_with(data_dir: &Path, mqtt: &str) -> String {
    format!(
        r#"
data_dir = "{data_dir}"
[mqtt]
{mqtt}
[github]
secret = "{SECRET}"
[admin]
tokens = ["{ADMIN}"]
[[clients]]
name = "{AGENT}"
token = "{AGENT_TOKEN}"
scopes = ["{REPO}/{ENV}"]
[[clients]]
name = "{AGENT2}"
token = "{AGENT2_TOKEN}"
scopes = ["{REPO}/{ENV}"]
[[clients]]
name = "{AGENT3}"
token = "{AGENT3_TOKEN}"
scopes = ["{REPO}/{ENV}"]
[[clients]]
name = "{WATCHER}"
token = "{WATCHER_TOKEN}"
role = "watcher"
[[repos]]
name = "{GITHUB_REPO}"
branches = {{ {BRANCH} = "{ENV}" }}
"#,
        data_dir = data_dir.display()
    )
}

/// A gateway running in-process on its own runtime.
pub struct Gateway {
    pub http: String,
    pub mqtt_port: u16,
    pub public_key: String,
    pub logs: LogBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// A gateway with its embedded broker on a free port.
    pub fn start(data_dir: &Path) -> Self {
        let mqtt_port = free_port();
        Self::start_config(&gateway_config(data_dir, mqtt_port), mqtt_port)
    }

    /// A gateway whose bus is the external engine listening on `engine_port`.
    pub fn start_external(data_dir: &Path, engine_port: u16) -> Self {
        let url = format!("mqtt://127.0.0.1:{engine_port}");
        Self::start_config(&gateway_config_external(data_dir, &url), engine_port)
    }

    /// A gateway of config `text`; agents and watchers log in on `mqtt_port`.
    pub fn start_config(text: &str, mqtt_port: u16) -> Self {
        use orcastrate_gateway::config::{FileConfig, Overrides, Settings};
        let file: FileConfig = toml::from_str(text).unwrap();
        let settings = Settings::build(file, None, &[("UNUSED", "")], &Overrides::default())
            .expect("the gateway's config is valid");
        let logs = LogBuf::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn_runtime("gateway", &logs, "info", move |runtime| {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let gateway = orcastrate_gateway::Gateway::start(settings, listener)
                    .await
                    .expect("the gateway starts");
                let _ = ready_tx.send((gateway.http_addr, gateway.public_key.clone()));
                let _ = stop_rx.await;
                gateway.shutdown().await.unwrap();
            });
        });
        let (addr, public_key) = ready_rx.recv_timeout(WAIT).expect("the gateway started");
        Self {
            http: format!("http://{addr}"),
            mqtt_port,
            public_key,
            logs,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Graceful shutdown, bounded: a gateway that does not stop within [`WAIT`] is reported
    /// and left behind, so a shutdown hang fails loudly instead of stalling the suite.
    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!(
                    "the gateway did not shut down within {WAIT:?}; its log:\n{}",
                    self.logs.text()
                );
                assert!(
                    std::thread::panicking(),
                    "the gateway did not shut down within {WAIT:?}"
                );
            }
        }
    }

    /// POSTs a GitHub push of `sha` to the mapped branch, signed as GitHub signs it.
    pub fn push(&self, sha: &str, delivery: &str) -> (u16, Value) {
        self.webhook("push", delivery, "application/json", &push_body(sha))
    }

    /// POSTs a webhook `body` as GitHub sends it, signed with the secret.
    pub fn webhook(
        &self,
        event: &str,
        delivery: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        answer(
            http_agent()
                .post(format!("{}/webhook", self.http))
                .header("Content-Type", content_type)
                .header("X-GitHub-Event", event)
                .header("X-GitHub-Delivery", delivery)
                .header("X-Hub-Signature-256", github_signature(SECRET, body))
                .send(body),
        )
    }

    /// GET with the admin token.
    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        answer(
            http_agent()
                .get(format!("{}{path}", self.http))
                .header("Authorization", format!("Bearer {ADMIN}"))
                .call(),
        )
    }

    /// POST JSON with the admin token.
    pub fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        answer(
            http_agent()
                .post(format!("{}{path}", self.http))
                .header("Authorization", format!("Bearer {ADMIN}"))
                .send_json(body),
        )
    }

    /// The agent's latest verified status in the gateway's fleet view (`/api/v1/agents`).
    pub fn agent_status(&self) -> Option<Value> {
        self.agent_status_of(AGENT)
    }

    /// Agent `name`'s latest verified status in the gateway's fleet view.
    pub fn agent_status_of(&self, name: &str) -> Option<Value> {
        let (code, v) = self.admin_get(&format!("/api/v1/agents?repo={REPO}&env={ENV}"));
        assert_eq!(code, 200, "{v}");
        v["agents"]
            .as_array()?
            .iter()
            .find(|a| a["agent"] == name)
            .cloned()
    }

    /// Waits until the fleet view shows a status of the agent satisfying `pred`.
    #[track_caller]
    pub fn wait_agent(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_agent_of(AGENT, what, pred)
    }

    /// Waits until the fleet view shows a status of agent `name` satisfying `pred`.
    #[track_caller]
    pub fn wait_agent_of(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(s) = self.agent_status_of(name) {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name} to be {what}; last status in the fleet view: {}",
                last.map(|s| s.to_string()).unwrap_or_else(|| "none".into())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The orders of the ledger, newest first (`/api/v1/deployments`).
    pub fn deployments(&self) -> Vec<Value> {
        let (code, v) = self.admin_get(&format!("/api/v1/deployments?repo={REPO}&env={ENV}"));
        assert_eq!(code, 200, "{v}");
        v["deployments"].as_array().cloned().unwrap_or_default()
    }

    /// What a new subscriber gets as the retained message on `topic`, if anything.
    pub fn retained(&self, topic: &str) -> Option<Vec<u8>> {
        let mut sub = Mqtt::connect(self.mqtt_port, "", WATCHER, WATCHER_TOKEN).ok()?;
        sub.subscribe(topic);
        sub.wait_for(Duration::from_secs(2), |p| p.topic == topic && p.retain)
    }

    /// A watcher subscribed to `filter` (the subscription acknowledged before it returns,
    /// so nothing published afterwards is missed).
    pub fn watch(&self, filter: &str) -> Mqtt {
        let mut sub = Mqtt::connect(self.mqtt_port, "", WATCHER, WATCHER_TOKEN).expect("login");
        sub.subscribe(filter);
        sub.wait_suback();
        sub
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        let mut r = http_agent()
            .get(format!("{}/metrics", self.http))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.body_mut().read_to_string().unwrap()
    }

    /// The retained fleet summary of our repo/env.
    pub fn fleet(&self) -> Option<FleetSummary> {
        serde_json::from_slice(&self.retained(&topic("fleet"))?).ok()
    }

    /// The retained order on our `desired` topic, parsed.
    pub fn desired(&self) -> Option<DeployOrder> {
        serde_json::from_slice(&self.retained(&topic("desired"))?).ok()
    }

    /// Checks an order's signature with the gateway's public key.
    pub fn verifies(&self, order: &DeployOrder) -> bool {
        OrderVerifier::new(&[self.public_key.as_str()])
            .unwrap()
            .verify(order)
            .is_ok()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = result.expect("request sent");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A real GitHub push payload (`push__with-new-branch`) turned into a push of `sha` to
/// `main` of our repository. Each call makes a new body, as each of GitHub's pushes is
/// (`repository.pushed_at` differs): the gateway answers a body it has seen as a duplicate.
pub fn push_body(sha: &str) -> Vec<u8> {
    static PUSHED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/fixtures/github/push__with-new-branch.payload.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["after"] = sha.into();
    v["ref"] = format!("refs/heads/{BRANCH}").into();
    v["repository"]["pushed_at"] =
        (1_700_000_000 + PUSHED_AT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).into();
    v["repository"]["full_name"] = GITHUB_REPO.into();
    serde_json::to_vec(&v).unwrap()
}

/// A real GitHub pull request payload (`pull_request__closed`) turned into the merge of a
/// pull request into `main` of our repository, with merge commit `sha`.
pub fn merged_pull_request_body(sha: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/fixtures/github/pull_request__closed.payload.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["pull_request"]["merged"] = true.into();
    v["pull_request"]["merge_commit_sha"] = sha.into();
    v["pull_request"]["base"]["ref"] = BRANCH.into();
    v["repository"]["full_name"] = GITHUB_REPO.into();
    serde_json::to_vec(&v).unwrap()
}

/// A JSON payload as GitHub's `application/x-www-form-urlencoded` content type sends it.
pub fn form_encoded(json: &[u8]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(json).unwrap())
        .finish()
        .into_bytes()
}

/// `mosquitto_pub` of a retained QoS 1 message as `user` on the broker at `port`. Engines
/// with ACLs acknowledge a forbidden publish and drop it, so success says nothing about
/// delivery.
pub fn mosquitto_pub_retained(port: u16, user: &str, token: &str, topic: &str, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", user, "-P", token, "-q", "1", "-r"])
        .args(["-t", topic, "-m", payload])
        .output()
        .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
    assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
}

/// `X-Hub-Signature-256` as GitHub computes it.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------------------
// MQTT

/// A connected rumqttc client (synchronous).
pub struct Mqtt {
    pub client: Client,
    connection: Connection,
}

impl Mqtt {
    /// Connects and waits for the CONNACK; `Err` if the broker refuses or drops the login.
    pub fn connect(port: u16, client_id: &str, user: &str, token: &str) -> Result<Self, String> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_credentials(user, token);
        let (client, mut connection) = Client::new(options, 100);
        match connection.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => Ok(Self { client, connection }),
            Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("no answer: {e:?}")),
        }
    }

    pub fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    }

    /// Waits for the SUBACK of the subscription just sent.
    pub fn wait_suback(&mut self) {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
                Err(_) => break,
            }
        }
        panic!("no SUBACK within {WAIT:?}");
    }

    /// Waits for a publish satisfying `f`; returns its payload.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&rumqttc::Publish) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) if f(&p) => {
                    return Some(p.payload.to_vec())
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
                Err(_) => return None,
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// Git and the app

/// A bare "GitHub" origin and a work clone to commit and push from.
pub struct Origin {
    pub bare: PathBuf,
    work: PathBuf,
}

impl Origin {
    pub fn new(dir: &Path) -> Self {
        let bare = dir.join("origin.git");
        let work = dir.join("work");
        git(
            dir,
            &["init", "-q", "--bare", "-b", BRANCH, path_str(&bare)],
        );
        git(dir, &["init", "-q", "-b", BRANCH, path_str(&work)]);
        Self { bare, work }
    }

    /// Commits version `version` of the app (serving on `port`; its `/health` failing unless
    /// `healthy`), pushes it to the origin's `main`, and returns the commit's sha.
    pub fn commit_app(&self, version: &str, port: u16, healthy: bool) -> String {
        self.commit_app_with(version, port, healthy, &[])
    }

    /// Like `commit_app`, with more files (path, content) written before the commit.
    pub fn commit_app_with(
        &self,
        version: &str,
        port: u16,
        healthy: bool,
        more: &[(&str, &str)],
    ) -> String {
        let files = [
            ("server.js", SERVER_JS.to_owned()),
            ("VERSION", format!("{version}\n")),
            ("PORT", format!("{port}\n")),
            (
                "package.json",
                r#"{"name":"web","version":"1.0.0","private":true,"scripts":{"start":"node server.js"}}"#
                    .to_owned(),
            ),
        ];
        for (name, content) in files {
            std::fs::write(self.work.join(name), content).unwrap();
        }
        for (name, content) in more {
            let path = self.work.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let unhealthy = self.work.join("UNHEALTHY");
        if healthy {
            let _ = std::fs::remove_file(unhealthy);
        } else {
            std::fs::write(unhealthy, "").unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                version,
            ],
        );
        git(
            &self.work,
            &[
                "push",
                "-q",
                path_str(&self.bare),
                &format!("HEAD:refs/heads/{BRANCH}"),
            ],
        );
        git_out(&self.work, &["rev-parse", "HEAD"])
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn git(dir: &Path, args: &[&str]) {
    git_out(dir, args);
}

fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The app: answers `/` with its version and pid, `/health` with 200 (500 if the release
/// has a file `UNHEALTHY`); the port is in the release's `PORT` file.
const SERVER_JS: &str = r#"
const http = require('http');
const fs = require('fs');
const version = fs.readFileSync('VERSION', 'utf8').trim();
const port = +fs.readFileSync('PORT', 'utf8').trim();
const configFile = 'config/decrypted_production.json';
const config = fs.existsSync(configFile) ? JSON.parse(fs.readFileSync(configFile, 'utf8')) : {};
http.createServer((q, s) => {
  if (q.url === '/health') { s.statusCode = fs.existsSync('UNHEALTHY') ? 500 : 200; return s.end('ok'); }
  s.setHeader('content-type', 'application/json');
  s.end(JSON.stringify({ version, pid: process.pid, greeting: config.greeting }));
}).listen(port, '127.0.0.1');
"#;

/// What the app on `port` answers on `/`: (version, pid), or `None` if nothing answers.
pub fn app_identity(port: u16) -> Option<(String, u64)> {
    let v = app_answer(port)?;
    Some((v["version"].as_str()?.to_owned(), v["pid"].as_u64()?))
}

/// The app's JSON answer on `/` (version, pid, greeting from its decrypted config).
pub fn app_answer(port: u16) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    if text.split_whitespace().nth(1)? != "200" {
        return None;
    }
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

// ---------------------------------------------------------------------------------------
// Agent

/// An agent's config file.
pub struct AgentConfig<'a> {
    pub name: &'a str,
    pub token: &'a str,
    pub mqtt_port: u16,
    /// `server` URLs in order of preference; empty: just `mqtt_port` on loopback.
    pub servers: &'a [String],
    pub origin: &'a Path,
    pub root: &'a Path,
    pub public_key: &'a str,
    /// Where its health check looks.
    pub app_port: u16,
    pub health_timeout_s: u64,
    /// Top-level keys (before the tables).
    pub top: &'a str,
    /// Appended (TOML tables).
    pub extra: &'a str,
}

impl AgentConfig<'_> {
    pub fn text(&self) -> String {
        let servers = if self.servers.is_empty() {
            vec![format!("mqtt://127.0.0.1:{}", self.mqtt_port)]
        } else {
            self.servers.to_vec()
        };
        format!(
            r#"name = "{name}"
server = {servers:?}
token = "{token}"
repo = "{GITHUB_REPO}"
env = "{ENV}"
git_url = "{origin}"
root = "{root}"
keep_releases = 3
gateway_public_keys = ["{public_key}"]
on_shutdown = "stop"
{top}

[steps]
install = "test -f package.json"
build = ""
start = "exec node server.js"
stop_timeout_s = 5

[health]
http = "http://127.0.0.1:{app_port}/health"
timeout_s = {health_timeout_s}
interval_s = 1
{extra}"#,
            name = self.name,
            token = self.token,
            origin = self.origin.display(),
            root = self.root.display(),
            public_key = self.public_key,
            app_port = self.app_port,
            health_timeout_s = self.health_timeout_s,
            top = self.top,
            extra = self.extra,
        )
    }
}

/// The agent running in-process (its library `run`) on its own runtime.
pub struct Agent {
    pub logs: LogBuf,
    cancel: CancellationToken,
    done: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Loads `config` as `orcastrate-agent --config config` would, and runs the agent.
    pub fn start(config: &Path) -> Self {
        let cli = orcastrate_agent::Cli {
            config: Some(config.to_owned()),
            ..Default::default()
        };
        let settings = orcastrate_agent::Settings::load(&cli).expect("the agent's config is valid");
        let logs = LogBuf::default();
        let cancel = CancellationToken::new();
        let (done_tx, done) = mpsc::channel();
        let stop = cancel.clone();
        let thread = spawn_runtime("agent", &logs, "orcastrate_agent=debug,info", move |rt| {
            let outcome = rt.block_on(orcastrate_agent::run(settings, stop));
            tracing::info!(?outcome, "the agent returned");
            let _ = done_tx.send(());
        });
        Self {
            logs,
            cancel,
            done,
            thread: Some(thread),
        }
    }

    /// Cancels the agent and waits (bounded) until `run` returns.
    pub fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            if self.done.recv_timeout(WAIT).is_ok() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Live processes whose working directory is inside `dir`.
fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            (cwd.starts_with(dir) && !matches!(state, 'Z' | 'X')).then_some(pid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The world

static DELIVERY: AtomicU64 = AtomicU64::new(1);

/// A fresh `X-GitHub-Delivery`.
pub fn delivery() -> String {
    format!(
        "e2e-{}-{}",
        std::process::id(),
        DELIVERY.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's world: temp dir, gateway, origin, app port, agent.
///
/// Fields drop in this order: the agent (stopping the app), the gateway, then the files.
pub struct World {
    pub agent: Option<Agent>,
    /// More hosts of the same repo/env.
    pub others: Vec<Agent>,
    pub gateway: Gateway,
    pub origin: Origin,
    pub app_port: u16,
    pub root: PathBuf,
    /// `[health] timeout_s` of the agent.
    pub health_timeout_s: u64,
    /// `config_key` of the agent (for the encrypted config), if any.
    pub config_key: Option<String>,
    pub dir: tempfile::TempDir,
}

impl World {
    /// A gateway and an origin; no agent yet.
    pub fn new() -> Self {
        Self::with_gateway(Gateway::start)
    }

    /// A gateway on the external engine at `engine_port`, and an origin; no agent yet.
    pub fn with_engine(engine_port: u16) -> Self {
        Self::with_gateway(|data_dir| Gateway::start_external(data_dir, engine_port))
    }

    fn with_gateway(start: impl FnOnce(&Path) -> Gateway) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gateway = start(&dir.path().join("gateway-data"));
        let origin = Origin::new(dir.path());
        let root = dir.path().join("agent-root");
        Self {
            origin,
            app_port: free_port(),
            root,
            health_timeout_s: 15,
            config_key: None,
            agent: None,
            others: Vec::new(),
            gateway,
            dir,
        }
    }

    /// Starts the agent and waits until the gateway's fleet view has its first verified
    /// status (it logged in, subscribed and reported).
    pub fn start_agent(&mut self) {
        self.start_agent_on(&[]);
    }

    /// Starts the agent with `server = servers` (empty: the gateway's MQTT port).
    pub fn start_agent_on(&mut self, servers: &[String]) {
        self.agent =
            Some(self.agent_with(AGENT, AGENT_TOKEN, &self.root, self.app_port, "", servers));
    }

    /// Starts a second host of the same repo/env (`AGENT2`) with its own root; its app
    /// listens on `port`, from a `[shared]` file `PORT` that replaces the repository's.
    pub fn start_second_agent(&mut self, port: u16) {
        self.start_second_agent_on(port, &[]);
    }

    /// Starts `AGENT2` as `start_second_agent` does, with `server = servers`.
    pub fn start_second_agent_on(&mut self, port: u16, servers: &[String]) {
        let root = self.dir.path().join("agent-root-2");
        std::fs::create_dir_all(root.join("shared")).unwrap();
        std::fs::write(root.join("shared/PORT"), format!("{port}\n")).unwrap();
        let agent = self.agent_with(
            AGENT2,
            AGENT2_TOKEN,
            &root,
            port,
            "\n[shared]\nfiles = [\"PORT\"]\n",
            servers,
        );
        self.others.push(agent);
    }

    /// Writes the config of agent `name` and starts it; returns once the gateway's fleet
    /// view has its first verified status (it logged in, subscribed and reported).
    fn agent_with(
        &self,
        name: &str,
        token: &str,
        root: &Path,
        port: u16,
        extra: &str,
        servers: &[String],
    ) -> Agent {
        let config = self.dir.path().join(format!("{name}.toml"));
        let text = AgentConfig {
            name,
            token,
            mqtt_port: self.gateway.mqtt_port,
            servers,
            origin: &self.origin.bare,
            root,
            public_key: &self.gateway.public_key,
            app_port: port,
            health_timeout_s: self.health_timeout_s,
            top: &self
                .config_key
                .as_ref()
                .map(|k| format!("config_key = \"{k}\""))
                .unwrap_or_default(),
            extra,
        }
        .text();
        std::fs::write(&config, text).unwrap();
        let agent = Agent::start(&config);
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.gateway
                .wait_agent_of(name, "connected (any verified status)", |_| true)
        }));
        if let Err(panic) = waited {
            eprintln!("---- {name} log ----\n{}", agent.logs.text());
            std::panic::resume_unwind(panic);
        }
        agent
    }

    pub fn agent_logs(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| a.logs.text())
            .unwrap_or_default()
    }

    /// Commits app version `version`; returns its sha.
    pub fn commit(&self, version: &str) -> String {
        self.origin.commit_app(version, self.app_port, true)
    }

    /// Commits app version `version` whose health check fails; returns its sha.
    pub fn commit_unhealthy(&self, version: &str) -> String {
        self.origin.commit_app(version, self.app_port, false)
    }

    /// A signed push of `sha`: asserts the 202 names our repo/env and the sha; returns `seq`.
    #[track_caller]
    pub fn push(&self, sha: &str) -> u64 {
        let delivery = delivery();
        let (code, answer) = self.gateway.push(sha, &delivery);
        assert_eq!(code, 202, "{answer}");
        assert_eq!(answer["delivery"], delivery.as_str(), "{answer}");
        assert_eq!(answer["repo"], REPO, "{answer}");
        assert_eq!(answer["env"], ENV, "{answer}");
        assert_eq!(answer["sha"], sha, "{answer}");
        answer["seq"].as_u64().expect("a seq in the answer")
    }

    /// Commits app `version`, pushes it, and waits until the agent is healthy on it and the
    /// app answers: its sha, the order's seq, and the app's pid.
    #[track_caller]
    pub fn deploy(&self, version: &str) -> (String, u64, u64) {
        let sha = self.commit(version);
        let seq = self.push(&sha);
        self.wait_healthy(seq, &sha);
        let pid = self.wait_app(version);
        (sha, seq, pid)
    }

    /// Waits until the fleet view shows the agent `healthy` on order `seq` running `sha`.
    #[track_caller]
    pub fn wait_healthy(&self, seq: u64, sha: &str) -> Value {
        let status = self
            .gateway
            .wait_agent(&format!("healthy on seq {seq}"), |s| {
                s["seq"] == seq
                    && matches!(
                        s["state"].as_str(),
                        Some("healthy" | "failed" | "rolled_back" | "skipped")
                    )
            });
        assert_eq!(status["state"], "healthy", "{status}");
        assert_eq!(status["sha"], sha, "{status}");
        assert_eq!(status["running_sha"], sha, "{status}");
        status
    }

    /// Waits until the app answers as `version`; returns its pid.
    #[track_caller]
    pub fn wait_app(&self, version: &str) -> u64 {
        eventually(WAIT, &format!("the app to answer as {version}"), || {
            app_identity(self.app_port)
                .filter(|(v, _)| v == version)
                .map(|(_, pid)| pid)
        })
    }

    /// The agent's own retained status, as any token holder sees it; its MAC verified with
    /// the agent's token.
    pub fn retained_status(&self) -> AgentStatus {
        let payload = self
            .gateway
            .retained(&topic(&format!("status/{AGENT}")))
            .expect("the agent's status is retained");
        let status: AgentStatus = serde_json::from_slice(&payload).unwrap();
        assert!(
            orcastrate_broker::sign::verify_status(AGENT_TOKEN, &status),
            "the status MAC does not verify: {status:?}"
        );
        status
    }

    /// The release `current` points to.
    pub fn current_release(&self) -> String {
        std::fs::read_link(self.root.join("current"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (n, mut agent) in self
            .agent
            .take()
            .into_iter()
            .chain(self.others.drain(..))
            .enumerate()
        {
            agent.stop();
            if std::thread::panicking() {
                eprintln!("---- agent {n} log ----\n{}", agent.logs.text());
            }
        }
        // Nothing the agent started may outlive the test.
        for _ in 0..50 {
            let left = processes_under(self.dir.path());
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.gateway.logs.text());
            if let Ok(app) = std::fs::read_to_string(self.root.join("logs/app.log")) {
                eprintln!("---- app.log ----\n{app}");
            }
        }
    }
}
