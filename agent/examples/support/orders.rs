//! What the agent benchmarks that deploy (`bench_rollback`, `bench_proxy`) share: the agent
//! in-process against an embedded broker, signed orders, a watcher of the agent's statuses,
//! and the rows of `scripts/bench.sh`'s table.

// Not every benchmark uses every part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use orcastrate_agent::config::{FileConfig, HealthFile, ProxyFile, ServerList, StepsFile};
use orcastrate_agent::{AgentError, Cli, RunOutcome, Settings};
use orcastrate_broker::embedded::{EmbeddedBroker, LinkPublisher, LinkReceiver};
use orcastrate_broker::{AgentState, AgentStatus, DeployOrder, OrderKind, OrderSigner, Topics};
use orcastrate_testkit::free_port;
use orcastrate_testkit::git::Origin;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) const REPO: &str = "bench/web";
pub(crate) const ENV: &str = "production";
pub(crate) const AGENT: &str = "bench-1";
pub(crate) const TOKEN: &str = "bench-token";

/// How a benchmark sets its agent up.
pub(crate) struct Setup<'a> {
    /// The agent's root.
    pub(crate) root: PathBuf,
    /// Who else the broker lets in (the agent is let in anyway).
    pub(crate) logins: &'a [(&'a str, &'a str)],
    /// The `install` step.
    pub(crate) install: &'a str,
    /// The health check's URL, given the app's port.
    pub(crate) health: fn(u16) -> String,
    /// `[proxy]`, if any.
    pub(crate) proxy: Option<ProxyFile>,
}

/// The benchmarked agent, in-process against an embedded broker whose link publishes its
/// orders and watches its statuses; the app (the trivial Node service) from a git origin.
pub(crate) struct Bench {
    pub(crate) mqtt_port: u16,
    pub(crate) origin: Origin,
    /// The port the app listens on (its private one behind the proxy).
    pub(crate) app_port: u16,
    pub(crate) signer: OrderSigner,
    publisher: LinkPublisher,
    desired: String,
    watch: Watch,
    /// The `seq` of the last order sent.
    seq: u64,
    /// Stops the agent; [`Bench::stop`] cancels it and joins `agent`.
    shutdown: CancellationToken,
    agent: JoinHandle<Result<RunOutcome, AgentError>>,
}

impl Bench {
    /// Starts the broker, the origin in `dir` and the agent as `setup` says.
    pub(crate) async fn start(dir: &Path, setup: Setup<'_>) -> anyhow::Result<Self> {
        let mqtt_port = free_port();
        let logins: Vec<_> = [(AGENT, TOKEN)]
            .iter()
            .chain(setup.logins)
            .copied()
            .collect();
        let EmbeddedBroker {
            mut publisher,
            receiver,
            ..
        } = crate::support::open_broker(mqtt_port, &logins)?;
        let topics = Topics::default();
        publisher.subscribe(&topics.status(REPO, ENV, AGENT))?;
        let watch = Watch::spawn(receiver);
        let origin = Origin::new(dir);
        let app_port = free_port();
        let signer = OrderSigner::generate();
        let file = FileConfig {
            name: Some(AGENT.into()),
            server: Some(ServerList::One(format!("mqtt://127.0.0.1:{mqtt_port}"))),
            token: Some(TOKEN.into()),
            repo: Some(REPO.into()),
            env: Some(ENV.into()),
            git_url: Some(origin.bare.display().to_string()),
            root: Some(setup.root),
            keep_releases: Some(3),
            gateway_public_keys: Some(vec![signer.public_key_base64()]),
            on_shutdown: Some("stop".into()),
            steps: Some(StepsFile {
                install: Some(setup.install.into()),
                build: Some(String::new()),
                start: Some("exec node server.js".into()),
                stop_timeout_s: Some(5),
            }),
            health: Some(HealthFile {
                http: Some((setup.health)(app_port)),
                command: None,
                timeout_s: Some(30),
                interval_s: Some(60),
            }),
            proxy: setup.proxy,
            ..FileConfig::default()
        };
        let env = orcastrate_agent::config::Environment::current();
        let settings =
            Settings::merge(&Cli::default(), &file, "bench", &env).context("settings")?;
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(orcastrate_agent::run(settings, shutdown.clone()));
        Ok(Self {
            mqtt_port,
            origin,
            app_port,
            signer,
            publisher,
            desired: topics.desired(REPO, ENV),
            watch,
            seq: orcastrate_broker::time::unix_ms(),
            shutdown,
            agent,
        })
    }

    /// Publishes the next signed order for `sha` and waits for its final state; returns
    /// when it was published and every status of it with its arrival time.
    pub(crate) async fn order(
        &mut self,
        sha: &str,
        kind: OrderKind,
    ) -> anyhow::Result<(Instant, Vec<(Instant, AgentStatus)>)> {
        self.seq += 1;
        let mut order = DeployOrder {
            git_ref: Some("refs/heads/main".into()),
            ..DeployOrder::new(self.seq, REPO, ENV, sha, kind)
        };
        self.signer.sign(&mut order);
        let payload = serde_json::to_vec(&order)?;
        let t0 = Instant::now();
        self.publisher.publish(&self.desired, payload, true).await?;
        Ok((t0, self.watch.until_done(self.seq).await?))
    }

    /// Stops the agent and waits for it.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.agent.await??;
        Ok(())
    }
}

/// Statuses as the watcher received them.
struct Watch {
    rx: mpsc::UnboundedReceiver<(Instant, AgentStatus)>,
    seen: Vec<(Instant, AgentStatus)>,
}

impl Watch {
    /// Collects the statuses the link receives, stamped with their arrival.
    fn spawn(mut receiver: LinkReceiver) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(msg) = receiver.recv().await {
                if let Ok(s) = serde_json::from_slice::<AgentStatus>(&msg.payload) {
                    let _ = tx.send((Instant::now(), s));
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the final state of `seq`; returns every status of it with its arrival time.
    async fn until_done(&mut self, seq: u64) -> anyhow::Result<Vec<(Instant, AgentStatus)>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let of_seq: Vec<_> = self
                .seen
                .iter()
                .filter(|(_, s)| s.seq == Some(seq))
                .cloned()
                .collect();
            if let Some((_, last)) = of_seq.last() {
                if !matches!(
                    last.state,
                    AgentState::Deploying | AgentState::Idle | AgentState::Offline
                ) {
                    if last.state != AgentState::Healthy {
                        bail!("seq {seq} ended {:?}: {:?}", last.state, last.error);
                    }
                    return Ok(of_seq);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(item)) => self.seen.push(item),
                _ => bail!("timed out waiting for seq {seq}"),
            }
        }
    }
}

/// A row of the combined table `scripts/bench.sh` prints (it sets `ORCASTRATE_BENCH_SUMMARY`);
/// nothing otherwise.
pub(crate) fn summary_row(what: &str, measured: &str, target: &str, met: bool) {
    if std::env::var_os("ORCASTRATE_BENCH_SUMMARY").is_none() {
        return;
    }
    let verdict = if met { "ok" } else { "MISSED" };
    println!("SUMMARY| {what} | {measured} | {target} | {verdict} |");
}
