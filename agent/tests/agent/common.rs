//! Test harness: a real embedded broker, a real git "GitHub" (a bare origin and a work
//! clone), a gateway stand-in that signs orders and publishes them retained on `desired`,
//! the real agent binary, and a tiny Node HTTP service as the app.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orcastrate_broker::embedded::{EmbeddedBroker, LinkPublisher};
use orcastrate_broker::{
    AgentState, AgentStatus, DeployOrder, LogLine, OrderKind, OrderSigner, Topics,
};

/// The agent benchmarks' helpers: one place starts an open embedded broker.
#[path = "../../examples/support/mod.rs"]
mod support;

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

pub(crate) use orcastrate_testkit::eventually;

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
        let broker = support::open_broker(port, &[(AGENT, TOKEN), (WATCHER, WATCHER_TOKEN)])
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
            git_ref: Some("refs/heads/main".into()),
            delivery: Some(format!("d-{seq}")),
            ..DeployOrder::new(seq, REPO, ENV, sha, kind)
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

pub(crate) use orcastrate_testkit::app::http_get;
pub(crate) use orcastrate_testkit::git::{git, Origin};

/// What the app answers on `/`: (version, pid).
pub(crate) fn app_identity(port: u16) -> Option<(String, u32)> {
    let (version, pid) = orcastrate_testkit::app::identity(port)?;
    Some((version, u32::try_from(pid).ok()?))
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
        let mut files = vec![("install.sh", Some(install))];
        files.extend_from_slice(extra);
        orcastrate_testkit::app::commit(&self.origin, version, self.app_port, &files)
    }

    /// The usual start: commits `v1` with `install`, orders it, starts the agent and waits
    /// until it is healthy on it. Returns the sha, the order's seq and the agent run.
    pub(crate) async fn start_healthy_on_v1(&mut self, install: &str) -> (String, u64, usize) {
        let sha = self.commit("v1", install);
        let seq = self.order(&sha, OrderKind::Push).await;
        let n = self.start_until_healthy(seq).await;
        (sha, seq, n)
    }

    /// Starts the agent and waits until it is healthy on order `seq` (the failure shows its
    /// log); returns the agent run.
    pub(crate) async fn start_until_healthy(&mut self, seq: u64) -> usize {
        let n = self.start_agent();
        self.until_healthy(n, seq).await;
        n
    }

    /// Waits until agent run `n` is healthy on order `seq` (the failure shows its log).
    pub(crate) async fn until_healthy(&self, n: usize, seq: u64) {
        let out = self.bus.wait_outcome(seq).await;
        assert_eq!(
            out.state,
            AgentState::Healthy,
            "{out:?}\n{}",
            self.agent_log(n)
        );
    }

    /// `plain` encrypted with `key` as `orcastrate-crypt encrypt` writes
    /// `encrypted_production.{ext}`, to commit as the service's config.
    pub(crate) fn encrypted(&self, key: &orcastrate_crypt::Key, ext: &str, plain: &str) -> String {
        let plain_path = self.dir.path().join(format!("decrypted_production.{ext}"));
        std::fs::write(&plain_path, plain).unwrap();
        let encrypted = self.dir.path().join(format!("encrypted_production.{ext}"));
        orcastrate_crypt::encrypt_file(&plain_path, &encrypted, key, false).unwrap();
        std::fs::remove_file(&plain_path).unwrap();
        std::fs::read_to_string(&encrypted).unwrap()
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

    /// Starts the agent binary configured the way the original Node tool was, from its five
    /// variables (`ORCASTRATE_SERVER`, `CONNECT_TOKEN`, `REPO_NAME`, `ENVIRONMENT`,
    /// `CONFIG_KEY`), plus what is new (the gateway's key, the name its token is paired
    /// with) and the test's own paths.
    pub(crate) fn spawn_node_tool_agent(&mut self, key: &orcastrate_crypt::Key) -> usize {
        let root = self.root.display().to_string();
        let origin = self.origin.bare.display().to_string();
        let server = self.bus.url();
        let gateway_key = self.bus.signer.public_key_base64();
        let key_b64 = key.to_base64().to_string();
        self.spawn_agent(
            &[],
            &[
                ("ORCASTRATE_SERVER", &server),
                ("CONNECT_TOKEN", TOKEN),
                ("REPO_NAME", REPO),
                ("ENVIRONMENT", ENV),
                ("CONFIG_KEY", &key_b64),
                ("ORCASTRATE_GATEWAY_KEYS", &gateway_key),
                ("ORCASTRATE_NAME", AGENT),
                ("ORCASTRATE_ROOT", &root),
                ("ORCASTRATE_GIT_URL", &origin),
                ("npm_config_update_notifier", "false"),
                ("npm_config_audit", "false"),
                ("npm_config_fund", "false"),
            ],
        )
    }

    /// Commits `v1` with `files` (the service's encrypted config), orders it and starts the
    /// agent from the Node tool's variables with `key`; returns the agent run once `v1` is
    /// healthy and serving.
    pub(crate) async fn node_tool_deploys_v1(
        &mut self,
        key: &orcastrate_crypt::Key,
        files: &[(&str, Option<&str>)],
    ) -> usize {
        let a = self.commit_with("v1", "true\n", files);
        let s1 = self.order(&a, OrderKind::Push).await;
        let n = self.spawn_node_tool_agent(key);
        self.until_healthy(n, s1).await;
        self.wait_app("v1");
        n
    }

    /// Deploys with `exec node {script}` as the start command instead of the sample app's.
    pub(crate) fn start_with_script(&self, script: &str) {
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace("exec node server.js", &format!("exec node {script}"));
        std::fs::write(&self.config, text).unwrap();
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

    /// Runs `cmd` (the agent binary as the caller set it up) as the next agent run, its
    /// stderr to that run's log; killed with the world.
    pub(crate) fn push_agent(&mut self, mut cmd: Command) -> usize {
        let n = self.agents.len();
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{n}.log"))).unwrap();
        self.agents.push(cmd.stderr(log).spawn().unwrap());
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
        eventually(WAIT, "agent exit", || child.try_wait().unwrap()).code()
    }

    /// Waits for agent run `n` to exit by itself; returns its code.
    pub(crate) fn wait_exit(&mut self, n: usize) -> Option<i32> {
        let child = &mut self.agents[n];
        eventually(WAIT, "agent exit", || child.try_wait().unwrap()).code()
    }

    /// Waits until the app answers with `version`; returns its pid.
    pub(crate) fn wait_app(&self, version: &str) -> u32 {
        eventually(WAIT, &format!("app version {version}"), || {
            app_identity(self.app_port)
                .filter(|(v, _)| v == version)
                .map(|(_, pid)| pid)
        })
    }

    /// The release `current` points to.
    pub(crate) fn current(&self) -> String {
        orcastrate_testkit::files::link_name(&self.root.join("current"))
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

pub(crate) use orcastrate_testkit::procs::under as processes_under;

impl Drop for World {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Whatever the agents started (apps, steps) must not outlive the test.
        orcastrate_testkit::procs::kill_all_under(&self.root);
        if std::thread::panicking() {
            for n in 0..self.agents.len() {
                eprintln!("---- agent run {n} ----\n{}", self.agent_log(n));
            }
            for entry in std::fs::read_dir(self.root.join("logs/app"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let app = std::fs::read_to_string(entry.path()).unwrap_or_default();
                eprintln!("---- {} ----\n{app}", entry.path().display());
            }
        }
    }
}

/// A watcher (logged in as [`WATCHER`]) recording every message under `orcastrate/#`.
pub(crate) fn watcher(port: u16) -> Recorder {
    let client_id = format!("{WATCHER}:t{}", free_port());
    Recorder::start(
        Mqtt::options(port, &client_id, WATCHER, WATCHER_TOKEN),
        "orcastrate/#",
    )
    .expect("the watcher's SUBACK")
}

pub(crate) use orcastrate_testkit::files::under as files_under;
use orcastrate_testkit::mqtt::{Mqtt, Recorder};

/// Reads a key=value file into a map (for decrypted dotenv configs).
pub(crate) fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
