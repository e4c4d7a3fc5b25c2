//! The test world: an in-process gateway (its library, with its embedded broker), an
//! in-process agent (its library `run`, stopped with a `CancellationToken`), a bare git
//! "GitHub" origin with a work clone, and a tiny Node app on a free port.
//!
//! Everything observable is read the way users read it: the gateway's HTTP API, retained MQTT
//! messages seen by a fresh subscriber, the app's own HTTP answers. Webhooks are signed here
//! (HMAC-SHA256), not by the gateway's code, and orders and statuses are checked with the
//! broker crate's public verifiers. Each part logs into its own buffer, printed if a test
//! fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use orcastrate_broker::{AgentStatus, DeployOrder, FleetSummary, OrderVerifier};
use orcastrate_testkit::{app, github, http, procs, Ended, InProcess, Stop};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "e2e-webhook-secret";
pub const ADMIN: &str = "e2e-admin-token-0123456789";
/// A read-only board sign-in (`[admin] viewer_tokens`).
pub const VIEWER: &str = "e2e-viewer-token-0123456789";
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

/// Runs `serve` in-process (see [`InProcess::start`]) with every thread of its runtime
/// logging into `logs`.
fn start_logged<T, F, Fut>(name: &str, logs: &LogBuf, filter: &str, serve: F) -> (InProcess, T)
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>, Stop) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let dispatch = logs.dispatch(filter);
    // Kept for the thread's life: it logs into this part's buffer.
    let log_here = move || std::mem::forget(tracing::dispatcher::set_default(&dispatch));
    InProcess::start(name, log_here, serve)
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
viewer_tokens = ["{VIEWER}"]
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

/// A gateway running in-process on its own runtime; its [`Api`] is what tests use.
pub struct Gateway {
    pub api: Api,
    pub logs: LogBuf,
    server: InProcess,
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
        let (server, (addr, public_key)) =
            start_logged("gateway", &logs, "info", move |ready, stop| async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let gateway = orcastrate_gateway::Gateway::start(settings, listener)
                    .await
                    .expect("the gateway starts");
                let _ = ready.send((gateway.http_addr, gateway.public_key.clone()));
                let _ = stop.await;
                gateway.shutdown().await.unwrap();
            });
        Self {
            api: Api {
                http: format!("http://{addr}"),
                mqtt_port,
                public_key,
            },
            logs,
            server,
        }
    }

    /// Graceful shutdown, bounded: a gateway that does not stop within [`WAIT`] is reported
    /// and left behind, so a shutdown hang fails loudly instead of stalling the suite.
    fn shutdown(&mut self) {
        if self.server.stop_within(WAIT) == Ended::StillRunning {
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

impl std::ops::Deref for Gateway {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A gateway as its users reach it: HTTP (webhooks, the admin API, metrics) and MQTT (as the
/// operator's watcher). The same for an in-process gateway and the gateway binary.
pub struct Api {
    /// `http://127.0.0.1:{port}`.
    pub http: String,
    /// Where agents and watchers log in.
    pub mqtt_port: u16,
    /// The key its orders are signed with (base64), for agents' `gateway_public_keys`.
    pub public_key: String,
}

impl Api {
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
        let url = format!("{}/webhook", self.http);
        http::webhook(&url, SECRET, event, delivery, content_type, body)
    }

    /// GET with the admin token.
    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        http::get_bearer(&format!("{}{path}", self.http), ADMIN)
    }

    /// POST JSON with the admin token.
    pub fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        http::post_bearer(&format!("{}{path}", self.http), ADMIN, &body)
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

    /// Waits until the fleet view shows the agent `healthy` on order `seq` running `sha`.
    #[track_caller]
    pub fn wait_healthy(&self, seq: u64, sha: &str) -> Value {
        let status = self.wait_agent(&format!("healthy on seq {seq}"), |s| {
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
        sub.wait_publish(Duration::from_secs(2), |p| p.topic == topic && p.retain)
            .map(|p| p.payload.to_vec())
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
        let mut r = http::client()
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

/// A real GitHub push payload turned into a push of `sha` to `main` of our repository (a
/// new body each call, as each of GitHub's pushes is).
pub fn push_body(sha: &str) -> Vec<u8> {
    let mut v = github::push(sha, BRANCH);
    v["repository"]["full_name"] = GITHUB_REPO.into();
    serde_json::to_vec(&v).unwrap()
}

/// A real GitHub pull request payload (`pull_request__closed`) turned into the merge of a
/// pull request into `main` of our repository, with merge commit `sha`.
pub fn merged_pull_request_body(sha: &str) -> Vec<u8> {
    let mut v = github::payload("pull_request__closed.payload.json");
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

// ---------------------------------------------------------------------------------------
// MQTT

pub use orcastrate_testkit::mqtt::Mqtt;

// ---------------------------------------------------------------------------------------
// Git and the app

pub use orcastrate_testkit::git::Origin;

pub use orcastrate_testkit::app::{answer as app_answer, identity as app_identity};

// ---------------------------------------------------------------------------------------
// Binaries

/// `<target>/<profile>`: this test binary is `<target>/<profile>/deps/e2e-<hash>`, and the
/// workspace's binaries are built next to `deps/` (so `CARGO_TARGET_DIR` is honoured).
pub fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the test binary");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps/", exe.display()))
        .to_path_buf()
}

/// The workspace's binary `name` of this build.
///
/// # Panics
///
/// If it has not been built: `cargo test -p orcastrate-e2e` builds only libraries.
#[track_caller]
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = binaries_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: this test runs the workspace's binaries; run `cargo build --workspace` \
         first (or `cargo test --workspace`, which builds them)",
        path.display()
    );
    path
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
    /// The install step.
    pub install: &'a str,
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
install = "{install}"
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
            install = self.install,
            top = self.top,
            extra = self.extra,
        )
    }
}

/// The agent running in-process (its library `run`) on its own runtime.
pub struct Agent {
    pub logs: LogBuf,
    server: InProcess,
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
        let filter = "orcastrate_agent=debug,info";
        let (server, ()) = start_logged("agent", &logs, filter, move |ready, stop| async move {
            let cancel = CancellationToken::new();
            let on_stop = cancel.clone();
            tokio::spawn(async move {
                let _ = stop.await;
                on_stop.cancel();
            });
            let _ = ready.send(());
            let outcome = orcastrate_agent::run(settings, cancel).await;
            tracing::info!(?outcome, "the agent returned");
        });
        Self { logs, server }
    }

    /// Cancels the agent and waits (bounded) until `run` returns.
    pub fn stop(&mut self) {
        let _ = self.server.stop_within(WAIT);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
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
    /// More top-level keys of every agent's config (`ca_file = …`).
    pub agent_top: String,
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
        let origin = Origin::on_branch(dir.path(), BRANCH);
        let root = dir.path().join("agent-root");
        Self {
            origin,
            app_port: free_port(),
            root,
            health_timeout_s: 15,
            config_key: None,
            agent_top: String::new(),
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
            install: "test -f package.json",
            top: &self
                .config_key
                .as_ref()
                .map(|k| format!("config_key = \"{k}\"\n"))
                .into_iter()
                .chain([self.agent_top.clone()])
                .collect::<String>(),
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
        self.commit_with(version, &[("UNHEALTHY", None)])
    }

    /// Commits app version `version` whose health check fails; returns its sha.
    pub fn commit_unhealthy(&self, version: &str) -> String {
        self.commit_with(version, &[("UNHEALTHY", Some(""))])
    }

    /// Commits app version `version` with `more` files (path, content; `None` deletes).
    pub fn commit_with(&self, version: &str, more: &[(&str, Option<&str>)]) -> String {
        app::commit(&self.origin, version, self.app_port, more)
    }

    /// Starts the agent and a second host (`AGENT2`, its app on a port of its own), commits
    /// v1 and pushes it; returns the second app's port, v1's sha and the order's seq once the
    /// first agent is healthy on it.
    #[track_caller]
    pub fn start_two_hosts_and_push_v1(&mut self) -> (u16, String, u64) {
        self.start_agent();
        let port2 = free_port();
        self.start_second_agent(port2);
        let sha1 = self.commit("v1");
        let seq1 = self.push(&sha1);
        self.wait_healthy(seq1, &sha1);
        (port2, sha1, seq1)
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
        self.gateway.wait_healthy(seq, sha)
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
        orcastrate_testkit::files::link_name(&self.root.join("current"))
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
        procs::kill_all_under(self.dir.path());
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.gateway.logs.text());
            // One log per release (`{seq}-{sha12}.log`, rotated to `.1`…).
            let logs = std::fs::read_dir(self.root.join("logs/app"))
                .into_iter()
                .flatten();
            for file in logs.flatten() {
                if let Ok(app) = std::fs::read_to_string(file.path()) {
                    eprintln!("---- {} ----\n{app}", file.path().display());
                }
            }
        }
    }
}

/// Every agent status published on the test's repo/env, as a watcher sees them from the
/// moment it started: an outcome the fleet view shows only briefly (the fleet-wide revert
/// replaces it within milliseconds) is still here.
pub struct StatusRecorder(orcastrate_testkit::mqtt::Recorder);

impl StatusRecorder {
    pub fn start(gateway: &Gateway) -> Self {
        let options =
            orcastrate_testkit::mqtt::Mqtt::options(gateway.mqtt_port, "", WATCHER, WATCHER_TOKEN);
        Self(
            orcastrate_testkit::mqtt::Recorder::start(options, &topic("status/+"))
                .expect("the status watcher"),
        )
    }

    /// Waits for the outcome of order `seq` (a state other than `deploying`).
    #[track_caller]
    pub fn outcome(&self, seq: u64) -> orcastrate_broker::AgentStatus {
        use orcastrate_broker::AgentState;
        eventually(WAIT, &format!("the outcome of seq {seq}"), || {
            self.0.messages().iter().find_map(|(_, payload)| {
                let s: orcastrate_broker::AgentStatus = serde_json::from_slice(payload).ok()?;
                (s.seq == Some(seq)
                    && !matches!(
                        s.state,
                        AgentState::Deploying | AgentState::Idle | AgentState::Offline
                    ))
                .then_some(s)
            })
        })
    }
}
