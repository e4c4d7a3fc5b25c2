//! Test harness: a real embedded broker, a real git "GitHub" (a bare origin and a work
//! clone), a gateway stand-in that signs orders and publishes them retained on `desired`,
//! the real agent binary, and a tiny Node HTTP service as the app.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use orcastrate_broker::auth::Credentials;
use orcastrate_broker::embedded::{EmbeddedBroker, EmbeddedSettings, LinkPublisher};
use orcastrate_broker::{
    AgentState, AgentStatus, DeployOrder, LogLine, OrderKind, OrderSigner, Topics,
};

pub(crate) const REPO: &str = "octo-org/web";
pub(crate) const ENV: &str = "production";
pub(crate) const AGENT: &str = "web-1";
pub(crate) const TOKEN: &str = "agent-token-7f3a9c";
/// A second login, for the tests' own MQTT clients (a watcher, or an attacker with a token).
pub(crate) const WATCHER: &str = "watcher";
pub(crate) const WATCHER_TOKEN: &str = "watcher-token-51c0de";

/// Default bound of every wait.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) use orcastrate_testkit::free_port;

/// Polls `f` until it returns `Some`, at most `limit`.
#[track_caller]
pub(crate) fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the test's "mosquitto_sub" saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) statuses: Vec<AgentStatus>,
    pub(crate) logs: Vec<LogLine>,
}

/// The broker with the gateway's link: publishes orders, collects statuses and logs.
pub(crate) struct Bus {
    pub(crate) port: u16,
    publisher: tokio::sync::Mutex<LinkPublisher>,
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) signer: OrderSigner,
    topics: Topics,
}

impl Bus {
    pub(crate) async fn start() -> Self {
        Self::start_on(free_port(), OrderSigner::generate().seed()).await
    }

    /// A broker on `port` whose gateway signs with the key of `seed`.
    pub(crate) async fn start_on(port: u16, seed: [u8; 32]) -> Self {
        let creds = Credentials::new([
            (AGENT.to_owned(), TOKEN.to_owned()),
            (WATCHER.to_owned(), WATCHER_TOKEN.to_owned()),
        ]);
        let broker = EmbeddedBroker::start(
            &EmbeddedSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                tls: None,
                topics: Topics::default(),
                quotas: Default::default(),
            },
            Arc::new(RwLock::new(creds)),
            Arc::new(orcastrate_broker::guard::OpenPolicy),
        )
        .expect("embedded broker starts");
        let EmbeddedBroker {
            mut publisher,
            mut receiver,
            ..
        } = broker;
        let topics = Topics::default();
        publisher
            .subscribe(&topics.status(REPO, ENV, AGENT))
            .unwrap();
        publisher.subscribe(&topics.log(REPO, ENV, AGENT)).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let status_topic = topics.status(REPO, ENV, AGENT);
        tokio::spawn(async move {
            while let Ok(msg) = receiver.recv().await {
                let mut seen = sink.lock().unwrap();
                if msg.topic == status_topic {
                    let status: AgentStatus =
                        serde_json::from_slice(&msg.payload).expect("status is JSON");
                    assert!(msg.payload.len() < 4096, "status over 4 KiB");
                    assert!(
                        orcastrate_broker::sign::verify_status(TOKEN, &status),
                        "status MAC does not verify: {status:?}"
                    );
                    seen.statuses.push(status);
                } else if let Ok(line) = serde_json::from_slice::<LogLine>(&msg.payload) {
                    seen.logs.push(line);
                }
            }
        });
        Self {
            port,
            publisher: tokio::sync::Mutex::new(publisher),
            seen,
            signer: OrderSigner::from_seed(&seed).unwrap(),
            topics,
        }
    }

    pub(crate) fn signer_seed(&self) -> [u8; 32] {
        self.signer.seed()
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A signed order as the gateway makes it.
    pub(crate) fn order(&self, seq: u64, sha: &str, kind: OrderKind) -> DeployOrder {
        let mut o = DeployOrder {
            v: 1,
            seq,
            repo: REPO.into(),
            env: ENV.into(),
            sha: sha.into(),
            git_ref: Some("refs/heads/main".into()),
            kind,
            delivery: Some(format!("d-{seq}")),
            issued_at: orcastrate_broker::time::now(),
            issued_by: None,
            key_id: String::new(),
            targets: None,
            base_sha: None,
            sig: String::new(),
        };
        self.signer.sign(&mut o);
        o
    }

    /// Publishes an order retained on the agent's `desired` topic.
    pub(crate) async fn publish(&self, order: &DeployOrder) {
        self.publish_raw(serde_json::to_vec(order).unwrap()).await;
    }

    pub(crate) async fn publish_raw(&self, payload: Vec<u8>) {
        self.publisher
            .lock()
            .await
            .publish(&self.topics.desired(REPO, ENV), payload, true)
            .await
            .unwrap();
    }

    pub(crate) fn statuses(&self) -> Vec<AgentStatus> {
        self.seen.lock().unwrap().statuses.clone()
    }

    pub(crate) fn logs(&self) -> Vec<LogLine> {
        self.seen.lock().unwrap().logs.clone()
    }

    /// Waits for a status matching `pred` (among all seen so far) and returns it.
    pub(crate) async fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&AgentStatus) -> bool,
    ) -> AgentStatus {
        self.wait_status_for(what, WAIT, pred).await
    }

    pub(crate) async fn wait_status_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&AgentStatus) -> bool,
    ) -> AgentStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.statuses().into_iter().find(|s| pred(s)) {
                return s;
            }
            if Instant::now() >= deadline {
                let all: Vec<String> = self
                    .statuses()
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {:?} seq={:?} err={:?}",
                            s.state.as_str(),
                            s.step,
                            s.seq,
                            s.error
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for status {what}; seen:\n{}",
                    all.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a final state (anything but deploying/idle/offline) of order `seq`.
    pub(crate) async fn wait_outcome(&self, seq: u64) -> AgentStatus {
        self.wait_status(&format!("outcome of seq {seq}"), |s| {
            s.seq == Some(seq)
                && !matches!(
                    s.state,
                    AgentState::Deploying | AgentState::Idle | AgentState::Offline
                )
        })
        .await
    }
}

/// A bare "GitHub" origin and a work clone to commit and push from.
pub(crate) struct Origin {
    pub(crate) bare: PathBuf,
    work: PathBuf,
}

impl Origin {
    pub(crate) fn new(dir: &Path) -> Self {
        let bare = dir.join("origin.git");
        let work = dir.join("work");
        git(
            dir,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git(dir, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        Self { bare, work }
    }

    /// Writes `files` (path, content; content `None` deletes), commits, pushes; returns the sha.
    pub(crate) fn commit(&self, message: &str, files: &[(&str, Option<&str>)]) -> String {
        for (path, content) in files {
            let p = self.work.join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, c).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
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
                "--allow-empty",
                "-m",
                message,
            ],
        );
        git(
            &self.work,
            &[
                "push",
                "-q",
                self.bare.to_str().unwrap(),
                "HEAD:refs/heads/main",
            ],
        );
        git_out(&self.work, &["rev-parse", "HEAD"])
    }
}

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The test service: answers `/` with its version and pid, `/health` with 200 (500 if the
/// release has a file `UNHEALTHY`), `/env` with its environment; listens after `DELAY` ms.
pub(crate) const SERVER_JS: &str = r#"
const http = require('http');
const fs = require('fs');
const version = fs.readFileSync('VERSION', 'utf8').trim();
const port = +fs.readFileSync('PORT', 'utf8').trim();
const delay = fs.existsSync('DELAY') ? +fs.readFileSync('DELAY', 'utf8') : 0;
const server = http.createServer((q, s) => {
  if (q.url === '/health') { s.statusCode = fs.existsSync('UNHEALTHY') ? 500 : 200; return s.end('ok'); }
  if (q.url === '/env') { s.setHeader('content-type', 'application/json'); return s.end(JSON.stringify(process.env)); }
  s.end(JSON.stringify({ version, pid: process.pid }));
});
setTimeout(() => server.listen(port, '127.0.0.1'), delay);
"#;

/// Files of a release of the test service; `install` is the content of install.sh.
pub(crate) fn app_files(version: &str, port: u16, install: &str) -> Vec<(String, Option<String>)> {
    vec![
        ("server.js".into(), Some(SERVER_JS.into())),
        ("VERSION".into(), Some(format!("{version}\n"))),
        ("PORT".into(), Some(format!("{port}\n"))),
        ("install.sh".into(), Some(install.into())),
        (
            "package.json".into(),
            Some(r#"{"name":"web","version":"1.0.0","private":true,"scripts":{"start":"node server.js"}}"#.into()),
        ),
    ]
}

pub(crate) fn as_refs(files: &[(String, Option<String>)]) -> Vec<(&str, Option<&str>)> {
    files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_deref()))
        .collect()
}

/// `GET http://127.0.0.1:{port}{path}`: status and body, or `None` if nothing answers.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// What the app answers on `/`: (version, pid).
pub(crate) fn app_identity(port: u16) -> Option<(String, u32)> {
    let (code, body) = http_get(port, "/")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((v["version"].as_str()?.to_owned(), v["pid"].as_u64()? as u32))
}

/// A test world: temp dir, broker, origin, app port, agent config.
pub(crate) struct World {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bus: Bus,
    pub(crate) origin: Origin,
    pub(crate) app_port: u16,
    pub(crate) root: PathBuf,
    pub(crate) config: PathBuf,
    agents: Vec<Child>,
    seq: u64,
}

/// Extra config (TOML appended under the top level, before the tables) and table overrides.
#[derive(Default, Clone)]
pub(crate) struct Options {
    pub(crate) install: Option<String>,
    pub(crate) health_timeout_s: Option<u64>,
    pub(crate) extra_top: String,
    pub(crate) config_key: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) on_shutdown: Option<String>,
    /// Replaces the local origin as `git_url`.
    pub(crate) git_url: Option<String>,
    /// TOML tables appended at the end (e.g. `[git]`).
    pub(crate) extra_tables: String,
}

impl World {
    pub(crate) async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub(crate) async fn with(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::start().await;
        let origin = Origin::new(dir.path());
        let root = dir.path().join("root");
        let app_port = free_port();
        let config = dir.path().join("agent.toml");
        let w = Self {
            dir,
            bus,
            origin,
            app_port,
            root,
            config,
            agents: Vec::new(),
            seq: 1_000,
        };
        w.write_config(&opts);
        w
    }

    pub(crate) fn write_config(&self, opts: &Options) {
        let git_url = opts
            .git_url
            .clone()
            .unwrap_or_else(|| self.origin.bare.display().to_string());
        let key_line = match &opts.config_key {
            Some(k) => format!("config_key = \"{k}\"\n"),
            None => String::new(),
        };
        let text = format!(
            r#"name = "{AGENT}"
server = ["{server}"]
{token_line}repo = "Octo-Org/Web"
env = "{ENV}"
git_url = "{git_url}"
root = "{root}"
keep_releases = 3
gateway_public_keys = ["{key}"]
on_shutdown = "{on_shutdown}"
{key_line}{extra}
[steps]
install = "{install}"
build = "echo built > BUILT"
start = "exec node server.js"
stop_timeout_s = 5

[shared]
files = [".env"]
dirs = ["uploads"]

[health]
http = "http://127.0.0.1:{port}/health"
timeout_s = {timeout}
interval_s = 1
{extra_tables}
"#,
            server = self.bus.url(),
            token_line = match opts.token.as_deref() {
                Some("") => String::new(),
                t => format!("token = \"{}\"\n", t.unwrap_or(TOKEN)),
            },
            extra_tables = opts.extra_tables,
            root = self.root.display(),
            key = self.bus.signer.public_key_base64(),
            extra = opts.extra_top,
            install = opts.install.as_deref().unwrap_or("sh install.sh"),
            port = self.app_port,
            timeout = opts.health_timeout_s.unwrap_or(15),
            on_shutdown = opts.on_shutdown.as_deref().unwrap_or("stop"),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Commits a version of the test service with the given install script; returns the sha.
    pub(crate) fn commit(&self, version: &str, install: &str) -> String {
        self.commit_with(version, install, &[])
    }

    pub(crate) fn commit_with(
        &self,
        version: &str,
        install: &str,
        extra: &[(&str, Option<&str>)],
    ) -> String {
        let files = app_files(version, self.app_port, install);
        let mut refs = as_refs(&files);
        refs.extend_from_slice(extra);
        self.origin.commit(version, &refs)
    }

    /// The next order number.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Signs and publishes an order for `sha`; returns its seq.
    pub(crate) async fn order(&mut self, sha: &str, kind: OrderKind) -> u64 {
        let seq = self.next_seq();
        let o = self.bus.order(seq, sha, kind);
        self.bus.publish(&o).await;
        seq
    }

    /// Starts the agent binary with the config file.
    pub(crate) fn start_agent(&mut self) -> usize {
        self.start_agent_with(&[], &[])
    }

    pub(crate) fn start_agent_with(&mut self, args: &[&str], env: &[(&str, &str)]) -> usize {
        let config = self.config.display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        self.spawn_agent(&all, env)
    }

    /// Starts the agent binary with exactly these arguments and extra environment.
    pub(crate) fn spawn_agent(&mut self, args: &[&str], env: &[(&str, &str)]) -> usize {
        self.spawn_agent_as(args, env, None)
    }

    /// The pid of agent run `n`.
    pub(crate) fn agent_pid(&self, n: usize) -> u32 {
        self.agents[n].id()
    }

    /// Like [`World::spawn_agent`], as user `uid` (group `uid` too) when given.
    pub(crate) fn spawn_agent_as(
        &mut self,
        args: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
    ) -> usize {
        let n = self.agents.len();
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{n}.log"))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcastrate-agent"));
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt as _;
            cmd.uid(uid).gid(uid);
        }
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "orcastrate_agent=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.agents.push(cmd.spawn().unwrap());
        n
    }

    /// The stderr of agent run `n`.
    pub(crate) fn agent_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{n}.log"))).unwrap_or_default()
    }

    pub(crate) fn kill9(&mut self, n: usize) {
        let _ = self.agents[n].kill();
        let _ = self.agents[n].wait();
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub(crate) fn terminate(&mut self, n: usize) -> Option<i32> {
        let pid = self.agents[n].id() as i32;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let child = &mut self.agents[n];
        poll("agent exit", WAIT, || child.try_wait().unwrap()).code()
    }

    /// Waits for agent run `n` to exit by itself; returns its code.
    pub(crate) fn wait_exit(&mut self, n: usize) -> Option<i32> {
        let child = &mut self.agents[n];
        poll("agent exit", WAIT, || child.try_wait().unwrap()).code()
    }

    /// Waits until the app answers with `version`; returns its pid.
    pub(crate) fn wait_app(&self, version: &str) -> u32 {
        poll(&format!("app version {version}"), WAIT, || {
            app_identity(self.app_port)
                .filter(|(v, _)| v == version)
                .map(|(_, pid)| pid)
        })
    }

    /// The release `current` points to.
    pub(crate) fn current(&self) -> String {
        std::fs::read_link(self.root.join("current"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub(crate) fn release_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("releases"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub(crate) fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.root.join("state.json")).unwrap()).unwrap()
    }

    /// Live processes whose working directory is inside this world's root.
    pub(crate) fn processes_in_root(&self) -> Vec<(i32, String)> {
        processes_under(&self.root)
    }

    /// Pids of live `node server.js` processes of this world.
    pub(crate) fn app_pids(&self) -> Vec<i32> {
        self.processes_in_root()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("server.js"))
            .map(|(pid, _)| pid)
            .collect()
    }
}

/// Live (not zombie) processes with a working directory under `dir`, with their cmdline.
pub(crate) fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(dir) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next())
            .unwrap_or(None);
        if matches!(state, Some('Z') | Some('X') | None) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, cmd));
    }
    out
}

impl Drop for World {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Whatever the agents started (apps, steps) must not outlive the test.
        for _ in 0..50 {
            let left = processes_under(&self.root);
            if left.is_empty() {
                break;
            }
            for (pid, _) in left {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            for n in 0..self.agents.len() {
                eprintln!("---- agent run {n} ----\n{}", self.agent_log(n));
            }
            if let Ok(app) = std::fs::read_to_string(self.root.join("logs/app.log")) {
                eprintln!("---- app.log ----\n{app}");
            }
        }
    }
}

/// A test MQTT client (rumqttc, logged in as [`WATCHER`]) that records every message under
/// `orcastrate/#` as (topic, payload text).
pub(crate) struct Watcher {
    pub(crate) client: rumqttc::AsyncClient,
    pub(crate) seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Watcher {
    pub(crate) async fn connect(port: u16) -> Self {
        let options = orcastrate_broker::mqtt::client_options(
            &format!("mqtt://127.0.0.1:{port}"),
            &format!("{WATCHER}:t{}", free_port()),
            WATCHER,
            WATCHER_TOKEN,
        )
        .unwrap();
        let (client, mut eventloop) = orcastrate_broker::mqtt::async_client(options, 10_000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        client
            .subscribe("orcastrate/#", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock().unwrap().push((
                            p.topic.clone(),
                            String::from_utf8_lossy(&p.payload).into_owned(),
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed)
            .await
            .expect("the watcher's SUBACK")
            .unwrap();
        Self { client, seen }
    }

    /// Every message seen so far, as `topic payload` lines.
    pub(crate) fn text(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(t, p)| format!("{t} {p}\n"))
            .collect()
    }
}

/// Every file under `dir` (recursively, not following links) and its content.
pub(crate) fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(files_under(&e.path()));
        } else if meta.is_file() {
            out.push((e.path(), std::fs::read(e.path()).unwrap_or_default()));
        }
    }
    out
}

/// Reads a key=value file into a map (for decrypted dotenv configs).
pub(crate) fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
