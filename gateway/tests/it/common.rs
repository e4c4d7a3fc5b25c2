//! Test helpers: a gateway on free loopback ports, signed webhooks, MQTT clients.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orcastrate_gateway::config::{FileConfig, Overrides, Settings};
use orcastrate_gateway::{github, Gateway};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

pub const SECRET: &str = "test-webhook-secret";
pub const ADMIN: &str = "admin-token-0123456789";
pub const REPO: &str = "codertocat/hello-world";
pub const ENV: &str = "production";

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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway on `data_dir` with the default test config.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, "")
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
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let gateway = Gateway::start(settings, listener).await.unwrap();
                ready_tx
                    .send((
                        gateway.http_addr,
                        gateway.mqtt_addr,
                        gateway.public_key.clone(),
                    ))
                    .unwrap();
                let _ = stop_rx.await;
                gateway.shutdown().await.unwrap();
            });
        });
        let (addr, mqtt_addr, public_key) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway started");
        let mqtt_port = mqtt_addr.map_or(0, |a| a.port());
        Self {
            http: format!("http://{addr}"),
            mqtt_port,
            data_dir: data_dir.to_owned(),
            public_key,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Graceful shutdown, waiting until the ledger is closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// POSTs a webhook body signed with the test secret.
    pub fn webhook(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
        let sig = github::sign(SECRET, body);
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
        let mut req = http_agent().post(format!("{}{path}", self.http));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        answer(req.send(body))
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

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = result.expect("request sent");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A fixture payload's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github")
            .join(name),
    )
    .unwrap()
}

/// A push of `sha` to `branch` of the fixture repo, made from a real payload. Each call
/// makes a new body, as each of GitHub's pushes is (`repository.pushed_at` differs): the
/// gateway answers a body it has seen as a duplicate, whatever its delivery id.
pub fn push_of(sha: &str, branch: &str) -> Vec<u8> {
    static PUSHED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut v: Value =
        serde_json::from_slice(&fixture("push__with-new-branch.payload.json")).unwrap();
    v["after"] = sha.into();
    v["ref"] = format!("refs/heads/{branch}").into();
    v["repository"]["pushed_at"] =
        (1_700_000_000 + PUSHED_AT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).into();
    serde_json::to_vec(&v).unwrap()
}

/// A sha made from a number.
pub fn sha(n: u64) -> String {
    format!("{n:040x}")
}

/// A connected MQTT test client.
pub struct Mqtt {
    pub client: Client,
    connection: Connection,
}

impl Mqtt {
    /// Connects and waits for the CONNACK; `Err` if the broker refuses or drops the login.
    pub fn connect(port: u16, client_id: &str, user: &str, token: &str) -> Result<Self, String> {
        Self::connect_with(Self::options(port, client_id, user, token))
    }

    /// The options `connect` uses, to add to (a last will, ...).
    pub fn options(port: u16, client_id: &str, user: &str, token: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if !user.is_empty() {
            options.set_credentials(user, token);
        }
        options
    }

    /// Connects with `options` and waits for the CONNACK; `Err` says why not (a refused
    /// login's return code shows as `ConnectionRefused(...)`).
    pub fn connect_with(options: MqttOptions) -> Result<Self, String> {
        let (client, mut connection) = Client::new(options, 100);
        match connection.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => Ok(Self { client, connection }),
            Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("no answer: {e:?}")),
        }
    }

    /// Subscribes at QoS 1.
    pub fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    }

    /// Subscribes to `filters` at QoS 1 in one SUBSCRIBE and returns the SUBACK's codes;
    /// `Err` if the connection ends first.
    pub fn subscribe_acked(
        &mut self,
        filters: &[&str],
    ) -> Result<Vec<rumqttc::SubscribeReasonCode>, String> {
        let filters = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => return Ok(ack.return_codes),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        Err("no SUBACK within 10 s".to_owned())
    }

    /// Whether the connection still answers a ping-sized round trip: a QoS 1 subscribe to
    /// `filter` gets its SUBACK.
    pub fn alive(&mut self, filter: &str) -> bool {
        self.subscribe_acked(&[filter]).is_ok()
    }

    /// Waits for a publish whose topic and payload satisfy `f`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&str, &[u8]) -> bool,
    ) -> Option<(String, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                    if f(&p.topic, &p.payload) {
                        return Some((p.topic, p.payload.to_vec()));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
                Err(_) => return None,
            }
        }
        None
    }

    /// Everything that arrives within `window`.
    pub fn collect(&mut self, window: Duration) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let _ = self.wait_for(window, |t, p| {
            out.push((t.to_owned(), p.to_vec()));
            false
        });
        out
    }

    /// Publishes, driving the connection while the request queue is full (a blocking
    /// `publish` with nobody polling would wait forever).
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        while self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.clone())
            .is_err()
        {
            if let Ok(Err(e)) = self.connection.recv_timeout(Duration::from_millis(50)) {
                panic!("MQTT connection failed: {e}");
            }
        }
    }

    /// Publishes at QoS 0, as fast as the connection takes it.
    pub fn publish_qos0(&mut self, topic: &str, payload: Vec<u8>) {
        while self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, payload.clone())
            .is_err()
        {
            if let Ok(Err(e)) = self.connection.recv_timeout(Duration::from_millis(50)) {
                panic!("MQTT connection failed: {e}");
            }
        }
    }

    /// Drives the connection for a moment so queued publishes go out.
    pub fn flush(&mut self) {
        let _ = self.collect(Duration::from_millis(300));
    }
}

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
