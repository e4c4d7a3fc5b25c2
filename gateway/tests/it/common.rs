//! Test helpers: a gateway on free loopback ports, signed webhooks, MQTT clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orcastrate_broker::{AgentState, AgentStatus};
use orcastrate_gateway::config::{FileConfig, Overrides, Settings};
use orcastrate_gateway::Gateway;
use orcastrate_testkit::{http, Ended, InProcess};
use serde_json::Value;

pub const SECRET: &str = "test-webhook-secret";
pub const ADMIN: &str = "admin-token-0123456789";
pub const REPO: &str = "codertocat/hello-world";
pub const ENV: &str = "production";
/// How long a graceful shutdown may take before the test fails (far more than it needs).
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(60);

pub use orcastrate_testkit::free_port;

/// The default config of a test gateway, for `data_dir` and an MQTT port.
pub fn config_text(data_dir: &Path, mqtt_port: u16, secret: &str, extra: &str) -> String {
    format!(
        r#"
data_dir = "{}"
[mqtt]
listen = "127.0.0.1:{mqtt_port}"
[github]
secret = "{secret}"
[admin]
tokens = ["{ADMIN}"]
[[clients]]
name = "web-1"
token = "token-web-1"
scopes = ["codertocat/hello-world/production"]
[[clients]]
name = "web-2"
token = "token-web-2"
[[clients]]
name = "ops"
token = "token-ops"
role = "watcher"
[[repos]]
name = "Codertocat/Hello-World"
branches = {{ master = "production", develop = "staging" }}
{extra}
"#,
        data_dir.display()
    )
}

/// A gateway running in-process on its own runtime.
pub struct TestGateway {
    pub http: String,
    pub mqtt_port: u16,
    pub data_dir: PathBuf,
    pub public_key: String,
    server: InProcess,
}

impl TestGateway {
    /// Starts a gateway on `data_dir` with the default test config.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, "")
    }

    /// Starts a gateway with the default test config on a new temporary folder, which it
    /// uses as long as the folder is kept.
    pub fn start_in_temp() -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().unwrap();
        let gw = Self::start(dir.path());
        (dir, gw)
    }

    /// Starts a gateway with extra TOML appended to the default config.
    pub fn start_with(data_dir: &Path, extra: &str) -> Self {
        Self::start_with_secret(data_dir, SECRET, extra)
    }

    /// Starts a gateway with its own webhook secret and extra TOML.
    /// Its broker listens on a port the kernel chooses (port 0).
    pub fn start_with_secret(data_dir: &Path, secret: &str, extra: &str) -> Self {
        let text = config_text(data_dir, 0, secret, extra);
        Self::start_config(data_dir, &text)
    }

    /// Starts a gateway from a whole config text; `mqtt_port` is where its broker listens
    /// (or the external engine's port).
    pub fn start_config(data_dir: &Path, text: &str) -> Self {
        let file: FileConfig = toml::from_str(text).unwrap();
        let settings =
            Settings::build(file, None, &[("UNUSED", "")], &Overrides::default()).unwrap();
        let (server, (addr, mqtt_addr, public_key)) = InProcess::start(
            "gateway",
            || {},
            move |ready, stop| async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let gateway = Gateway::start(settings, listener).await.unwrap();
                let addrs = (
                    gateway.http_addr,
                    gateway.mqtt_addr,
                    gateway.public_key.clone(),
                );
                ready.send(addrs).unwrap();
                let _ = stop.await;
                gateway.shutdown().await.unwrap();
            },
        );
        let mqtt_port = mqtt_addr.map_or(0, |a| a.port());
        Self {
            http: format!("http://{addr}"),
            mqtt_port,
            data_dir: data_dir.to_owned(),
            public_key,
            server,
        }
    }

    /// Graceful shutdown, waiting until the ledger is closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let ended = self.server.stop_within(SHUTDOWN_WITHIN);
        assert!(
            ended == Ended::Done || std::thread::panicking(),
            "the gateway did not shut down cleanly within {SHUTDOWN_WITHIN:?}: {ended:?}"
        );
    }

    /// POSTs a webhook body signed with the test secret.
    pub fn webhook(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
        let sig = orcastrate_testkit::github::signature(SECRET, body);
        self.raw_webhook(
            "/webhook",
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &sig),
            ],
            body,
        )
    }

    /// POSTs `body` with exactly these headers.
    pub fn raw_webhook(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let mut req = http::client().post(format!("{}{path}", self.http));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        http::answer(req.send(body))
    }

    /// GET with the admin token.
    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        http::get_bearer(&format!("{}{path}", self.http), ADMIN)
    }

    /// POST JSON with the admin token.
    pub fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        http::post_bearer(&format!("{}{path}", self.http), ADMIN, &body)
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        metrics_of(&self.http)
    }

    /// Opens the ledger read-only.
    pub fn ledger(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir.join("ledger.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// A count from the ledger.
    pub fn count(&self, sql: &str) -> i64 {
        self.ledger().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Connects a test MQTT client as the probe-free admin of this broker (client `web-2`).
    pub fn mqtt(&self, user: &str, token: &str) -> Mqtt {
        Mqtt::connect(self.mqtt_port, "", user, token).expect("login accepted")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub use orcastrate_testkit::github::fixture;

/// The `/metrics` text of the gateway at `http`.
pub fn metrics_of(http: &str) -> String {
    let (code, text) = http::get_text(&format!("{http}/metrics"));
    assert_eq!(code, 200, "{text}");
    text
}

/// A push of `sha` to `branch` of the fixture repo, made from a real payload (a new body
/// each call, as each of GitHub's pushes is).
pub fn push_of(sha: &str, branch: &str) -> Vec<u8> {
    serde_json::to_vec(&orcastrate_testkit::github::push(sha, branch)).unwrap()
}

/// GitHub's fixture of a closed pull request, marked merged, and its merge commit's sha.
pub fn merged_pull_request() -> (Value, String) {
    let mut pr: Value =
        serde_json::from_slice(&fixture("pull_request__closed.payload.json")).unwrap();
    pr["pull_request"]["merged"] = true.into();
    let merge_sha = pr["pull_request"]["merge_commit_sha"]
        .as_str()
        .unwrap()
        .to_owned();
    (pr, merge_sha)
}

/// A status of `agent` for our repo/env in `state`, on order 1 (`sha(1)`), stamped now and
/// not yet sealed: tests change what they need and seal it with `sign::seal_status`.
pub fn agent_status(agent: &str, state: AgentState) -> AgentStatus {
    AgentStatus {
        session: "s1".into(),
        state,
        seq: Some(1),
        sha: Some(sha(1)),
        running_sha: Some(sha(1)),
        ..AgentStatus::idle(agent, "h", REPO, ENV, "t")
    }
}

/// A sha made from a number.
pub fn sha(n: u64) -> String {
    format!("{n:040x}")
}

pub use orcastrate_testkit::mqtt::Mqtt;

pub use orcastrate_testkit::eventually;

/// A private CA and a server certificate for localhost/127.0.0.1 it signed, made with the
/// openssl CLI as a user would: returns `(ca.pem, cert.pem, key.pem)`.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile leaf.ext -out cert.pem
"#;
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("sh and openssl are installed");
    assert!(out.status.success(), "openssl: {out:?}");
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}
