//! Sustained load soak: a steady stream of signed push webhooks against the real gateway
//! binary with many connected agents, then checks that nothing was lost and memory is flat.
//!
//! Run with, from anywhere in the workspace:
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example soak -- --seconds 60 --rate 50 --agents 200
//! ```
//!
//! What it does:
//!
//! 1. Builds the gateway and agent binaries with the same cargo, profile and target
//!    directory (as `bench_webhooks` does; `--gateway-bin`/`--agent-bin` skip that) and
//!    starts the gateway on free loopback ports with a fresh temporary `data_dir` and a
//!    generated config file: the webhook secret, an admin token, `--repos` repos
//!    `soak-org/svc-N` each mapping `main` → `production` and `develop` → `staging`, and one
//!    `[[clients]]` entry per agent, scoped to the one repo/env it follows.
//! 2. Reads the gateway's idle RSS, then starts one real `orcastrate-agent` process against
//!    it (on a repo/env that gets no orders) and reads its RSS once it is connected, its
//!    `idle` status is in the gateway, and its new-host settle wait is over.
//! 3. Connects `--agents` simulated agents (rumqttc, one task each, the options real agents
//!    use, the last will an `offline` status) spread evenly over the repo/envs. Each
//!    subscribes to its `desired` topic at QoS 1 and, like the real agent, verifies every
//!    order's Ed25519 signature with the gateway's public key, ignores orders at or below the
//!    newest `seq` it took, and publishes a retained, MAC'd `AgentStatus` (`healthy` at the
//!    order's seq and sha) for each order it takes.
//! 4. For `--seconds`, sends signed GitHub push deliveries (GitHub's push example, a
//!    distinct `after` sha and delivery each) at a steady `--rate` per second, round-robin
//!    over the repo/envs, on `--connections` keep-alive connections, and samples the
//!    gateway's RSS every `--sample-every` seconds.
//! 5. Waits (up to `--settle` seconds) until the gateway's `/api/v1/agents` shows every
//!    simulated agent at the newest order of its repo/env (per `/api/v1/deployments`).
//! 6. Kills the gateway with SIGKILL and opens its SQLite ledger read-only: every delivery
//!    answered 202 must have its delivery row (same seq and sha) and its order.
//!
//! It prints one table and exits non-zero if a check fails: a webhook not accepted, an
//! accepted delivery missing from the ledger, an agent not at its newest order, a bad order
//! signature, or gateway RSS growth: above 50 MB, or still rising over the second half of the
//! load by more than 1 MB a minute (least-squares slope of the samples; the first half is
//! warm-up). The load generator, the simulated agents and the gateway share the machine's
//! cores.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use orcastrate_broker::sign::seal_status;
use orcastrate_broker::{AgentState, AgentStatus, DeployOrder, OrderVerifier, Topics};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use rusqlite::OptionalExtension;
use tokio::sync::mpsc;

#[path = "support/mod.rs"]
mod support;
use support::*;

const OWNER: &str = "soak-org";
/// Branch → env of every soak repo.
const BRANCHES: [(&str, &str); 2] = [("main", "production"), ("develop", "staging")];
/// The repo/env of the real, idle agent: no webhook ever targets it.
const IDLE_REPO: &str = "soak-org/idle";
const IDLE_ENV: &str = "idle";
const IDLE_AGENT: &str = "soak-idle";
/// RSS limits the check applies.
const RSS_LIMIT_MB: f64 = 50.0;
/// Largest RSS slope over the second half of the load still counted as flat.
const GROWTH_MB_PER_MIN: f64 = 1.0;

/// Sustained load soak (see the example's documentation).
#[derive(Debug, Parser)]
struct Args {
    /// Length of the load phase.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Signed push webhooks per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Simulated agents, spread evenly over the repo/envs.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Repos; each has two envs (production, staging).
    #[arg(long, default_value_t = 4)]
    repos: usize,
    /// Keep-alive HTTP connections the webhooks are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds between RSS samples during the load.
    #[arg(long, default_value_t = 5)]
    sample_every: u64,
    /// Longest wait after the load for every agent's status to reach the newest order.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Gateway binary to run; by default it is built with cargo first.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Agent binary for the idle-RSS reading; by default it is built with cargo first.
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Skip the real idle agent.
    #[arg(long)]
    no_agent: bool,
    /// Keep the temporary directory (ledger, gateway and agent logs).
    #[arg(long)]
    keep: bool,
}

/// One repo/env the load targets.
struct Target {
    repo: String,
    env: String,
    /// The signed body with `PLACEHOLDER_SHA` where the `after` sha goes.
    template: String,
}

const PLACEHOLDER_SHA: &str = "5050505050505050505050505050505050505050";

/// One simulated agent's identity.
#[derive(Clone)]
struct Sim {
    index: usize,
    name: String,
    token: String,
    target: usize,
}

/// Counters shared by the simulated agents.
#[derive(Default)]
struct SimStats {
    orders: AtomicU64,
    taken: AtomicU64,
    stale: AtomicU64,
    bad_signature: AtomicU64,
    statuses: AtomicU64,
    publish_failed: AtomicU64,
    connection_errors: AtomicU64,
}

/// What one webhook got.
struct Sent {
    target: usize,
    delivery: String,
    sha: String,
    latency: Duration,
    status: u16,
    seq: Option<u64>,
    error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    let targets = targets(&args)?;
    let gateway_bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => build_gateway()?,
    };
    let agent_bin = match (&args.agent_bin, args.no_agent) {
        (_, true) => None,
        (Some(path), false) => Some(path.clone()),
        (None, false) => Some(build_binary("orcastrate-agent", "orcastrate-agent")?),
    };

    let dir = tempfile::Builder::new()
        .prefix("orcastrate-soak-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let run_id = std::process::id();
    let secret = format!("soak-secret-{run_id}");
    let admin_token = format!("soak-admin-token-{run_id:08x}");
    let idle_token = format!("soak-token-{run_id}-idle");
    let http_addr = free_addr();
    let mqtt_addr = free_addr();
    let data_dir = dir.path().join("data");
    let sims = sims(&args, &targets, run_id);
    let config = gateway_config(
        &args,
        &targets,
        &sims,
        &data_dir,
        (http_addr, mqtt_addr),
        [&secret, &admin_token, &idle_token],
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config)?;

    let log_path = dir.path().join("gateway.log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut gateway = start_gateway(&runtime, &gateway_bin, &log_path, http_addr, |command| {
        command.arg("--config").arg(&config_path);
    })?;
    let pid = gateway.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let rss_gateway_idle = proc_status_kb(pid, "VmRSS")?;
    let public_key = public_key(&gateway_bin, &config_path)?;
    print_banner(
        &args,
        targets.len(),
        &gateway_bin,
        pid,
        (http_addr, mqtt_addr),
    );

    let soak = Soak {
        args: &args,
        dir: dir.path(),
        agent_bin: agent_bin.as_deref(),
        url: format!("mqtt://{mqtt_addr}"),
        idle_token: &idle_token,
        verifier: Arc::new(OrderVerifier::new(&[&public_key])?),
        public_key: &public_key,
        api: Api {
            addr: http_addr,
            token: admin_token.clone(),
        },
        sims: &sims,
        targets: &targets,
        pid,
        http_addr,
        secret: &secret,
        run_id,
    };
    let o = match runtime.block_on(soak.run()) {
        Ok(o) => o,
        Err(e) => bail!(
            "{e:#}\n--- last lines of {} ---\n{}",
            log_path.display(),
            tail(&log_path, 20)
        ),
    };

    // A crash, not a clean shutdown: what was answered 202 must already be in the ledger.
    gateway.0.kill().context("cannot kill the gateway")?;
    gateway.0.wait()?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    let ledger_path = data_dir.join("ledger.db");
    let ledger = check_ledger(&ledger_path, &targets, &o.sent)
        .with_context(|| format!("cannot check the ledger {}", ledger_path.display()))?;
    let failed = o.report(&args, targets.len(), &ledger, rss_gateway_idle);
    if args.keep {
        let kept = dir.keep();
        println!("  kept {} (ledger, gateway.log, agent.log)", kept.display());
    }
    ensure!(failed.is_empty(), "soak FAILED: {}", failed.join("; "));
    println!("  soak PASSED");
    Ok(())
}

fn print_banner(
    args: &Args,
    targets: usize,
    gateway_bin: &Path,
    pid: u32,
    (http_addr, mqtt_addr): (SocketAddr, SocketAddr),
) {
    println!("orcastrate soak");
    println!(
        "  gateway   {} (pid {pid}), http {http_addr}, mqtt {mqtt_addr}",
        gateway_bin.display()
    );
    println!(
        "  load      {} s at {} webhooks/s over {} connections; {} agents on {} repo/envs ({} each)",
        args.seconds,
        args.rate,
        args.connections,
        args.agents,
        targets,
        args.agents.div_ceil(targets)
    );
}

/// The simulated agents, spread over the targets.
fn sims(args: &Args, targets: &[Target], run_id: u32) -> Vec<Sim> {
    (0..args.agents)
        .map(|i| Sim {
            index: i,
            name: format!("soak-agent-{i:04}"),
            token: format!("soak-token-{run_id}-{i:04}"),
            target: i % targets.len(),
        })
        .collect()
}

/// Refuses arguments that cannot run, and raises the descriptor limit for the agents.
fn check_args(args: &Args) -> anyhow::Result<()> {
    ensure!(args.seconds > 0, "--seconds must be at least 1");
    ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(args.repos > 0, "--repos must be at least 1");
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.sample_every > 0, "--sample-every must be at least 1");
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise RLIMIT_NOFILE")?;
    ensure!(
        nofile as usize > args.agents + args.connections + 100,
        "RLIMIT_NOFILE is {nofile}: too few descriptors for {} agents",
        args.agents
    );

    Ok(())
}

/// The push payload, one template per repo/env.
fn targets(args: &Args) -> anyhow::Result<Vec<Target>> {
    let payload_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/push__with-new-branch.payload.json");
    let payload: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&payload_path)
            .with_context(|| format!("cannot read {}", payload_path.display()))?,
    )?;
    let mut targets = Vec::new();
    for r in 0..args.repos {
        let name = format!("svc-{r}");
        for (branch, env) in BRANCHES {
            let mut body = payload.clone();
            body["ref"] = format!("refs/heads/{branch}").into();
            body["after"] = PLACEHOLDER_SHA.into();
            body["head_commit"]["id"] = PLACEHOLDER_SHA.into();
            body["repository"]["name"] = name.clone().into();
            body["repository"]["full_name"] = format!("{OWNER}/{name}").into();
            targets.push(Target {
                repo: format!("{OWNER}/{name}"),
                env: env.to_owned(),
                template: serde_json::to_string(&body)?,
            });
        }
    }

    Ok(targets)
}

/// The config: repos, admin token, one scoped client per agent and one for the idle agent.
fn gateway_config(
    args: &Args,
    targets: &[Target],
    sims: &[Sim],
    data_dir: &Path,
    (http_addr, mqtt_addr): (SocketAddr, SocketAddr),
    [secret, admin_token, idle_token]: [&str; 3],
) -> String {
    let mut config = format!(
        "data_dir = {:?}\n[http]\nlisten = \"{http_addr}\"\n[mqtt]\nlisten = \"{mqtt_addr}\"\n\
         [github]\nsecret = \"{secret}\"\n[admin]\ntokens = [\"{admin_token}\"]\n",
        data_dir.display().to_string()
    );
    for r in 0..args.repos {
        let branches: Vec<String> = BRANCHES
            .iter()
            .map(|(branch, env)| format!("{branch} = \"{env}\""))
            .collect();
        config.push_str(&format!(
            "[[repos]]\nname = \"{OWNER}/svc-{r}\"\nbranches = {{ {} }}\n",
            branches.join(", ")
        ));
    }
    for sim in sims {
        let t = &targets[sim.target];
        config.push_str(&format!(
            "[[clients]]\nname = \"{}\"\ntoken = \"{}\"\nscopes = [\"{}/{}\"]\n",
            sim.name, sim.token, t.repo, t.env
        ));
    }
    config.push_str(&format!(
        "[[clients]]\nname = \"{IDLE_AGENT}\"\ntoken = \"{idle_token}\"\nscopes = [\"{IDLE_REPO}/{IDLE_ENV}\"]\n"
    ));
    config
}

/// The gateway's order-signing key, from `orcastrate-gateway public-key`.
fn public_key(gateway_bin: &Path, config_path: &Path) -> anyhow::Result<String> {
    let out = Command::new(gateway_bin)
        .arg("public-key")
        .arg("--config")
        .arg(config_path)
        .output()?;
    ensure!(
        out.status.success(),
        "orcastrate-gateway public-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A run against the started gateway.
struct Soak<'a> {
    args: &'a Args,
    dir: &'a Path,
    agent_bin: Option<&'a Path>,
    url: String,
    idle_token: &'a str,
    public_key: &'a str,
    verifier: Arc<OrderVerifier>,
    api: Api,
    sims: &'a [Sim],
    targets: &'a [Target],
    pid: u32,
    http_addr: SocketAddr,
    secret: &'a str,
    run_id: u32,
}

/// The load's figures.
struct Load {
    sent: Vec<Sent>,
    elapsed: Duration,
    cpu_load: f64,
    rss_samples: Vec<(Duration, u64)>,
}

impl Soak<'_> {
    async fn run(&self) -> anyhow::Result<Outcome> {
        let (idle_agent, rss_agent_idle) = self.start_idle_agent().await?;
        let stats = Arc::new(SimStats::default());
        let (tasks, connect_time) = self.connect_sims(&stats).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_connected = proc_status_kb(self.pid, "VmRSS")?;
        let Load {
            sent,
            elapsed,
            cpu_load,
            rss_samples,
        } = self.load(rss_connected).await?;
        let (newest, newest_agrees) = self.newest(&sent).await?;
        let settle_started = Instant::now();
        let (at_newest, not_at_newest) = self.settle(&newest).await?;
        let settle_time = settle_started.elapsed();
        let idle_status_ok = if idle_agent.is_some() {
            let statuses = self.api.agents(Some((IDLE_REPO, IDLE_ENV))).await?;
            Some(
                statuses
                    .iter()
                    .any(|s| s.agent == IDLE_AGENT && s.state == AgentState::Idle),
            )
        } else {
            None
        };
        let rss_end = proc_status_kb(self.pid, "VmRSS")?;
        let rss_hwm = proc_status_kb(self.pid, "VmHWM")?;
        let rss_agent_end = match &idle_agent {
            Some(child) => Some(proc_status_kb(child.0.id(), "VmRSS")?),
            None => None,
        };
        for task in &tasks {
            task.abort();
        }
        drop(idle_agent);
        Ok(Outcome {
            rss_agent_idle,
            rss_agent_end,
            idle_status_ok,
            connect_time,
            rss_connected,
            rss_samples,
            rss_end,
            rss_hwm,
            cpu_load,
            sent,
            elapsed,
            newest_agrees,
            at_newest,
            not_at_newest,
            settle_time,
            stats,
        })
    }

    /// The real agent, idle: started, and its RSS once it is.
    async fn start_idle_agent(&self) -> anyhow::Result<(Option<ChildGuard>, Option<u64>)> {
        let Some(bin) = self.agent_bin else {
            return Ok((None, None));
        };
        let (dir, url, api) = (self.dir, &self.url, &self.api);
        let (idle_token, public_key) = (self.idle_token, self.public_key);
        let agent_log = dir.join("agent.log");
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("ORCASTRATE_SERVER", url)
            .env("CONNECT_TOKEN", idle_token)
            .env("REPO_NAME", IDLE_REPO)
            .env("ENVIRONMENT", IDLE_ENV)
            .env("ORCASTRATE_NAME", IDLE_AGENT)
            .env("ORCASTRATE_ROOT", dir.join("agent-root"))
            .env("ORCASTRATE_GATEWAY_KEYS", public_key)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&agent_log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut child = ChildGuard(child);
        let started = Instant::now();
        loop {
            if let Some(status) = child.0.try_wait()? {
                bail!("the agent exited with {status}\n{}", tail(&agent_log, 20));
            }
            let statuses = api.agents(Some((IDLE_REPO, IDLE_ENV))).await?;
            if statuses
                .iter()
                .any(|s| s.agent == IDLE_AGENT && s.state == AgentState::Idle)
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "the agent's idle status did not reach the gateway within 20 s\n{}",
                    tail(&agent_log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Past the new-host settle wait (2 s after subscribing): idle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = proc_status_kb(child.0.id(), "VmRSS")?;
        Ok((Some(child), Some(rss)))
    }

    /// The simulated agents, in batches (rumqttd's listen backlog is 128), all subscribed.
    async fn connect_sims(
        &self,
        stats: &Arc<SimStats>,
    ) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Duration)> {
        let (sims, targets, url, verifier) = (self.sims, self.targets, &self.url, &self.verifier);
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(sims.len());
        let connect_started = Instant::now();
        let mut ready = 0;
        for batch in sims.chunks(100) {
            for sim in batch {
                let t = &targets[sim.target];
                tasks.push(spawn_sim(
                    sim.clone(),
                    url,
                    t.repo.clone(),
                    t.env.clone(),
                    verifier.clone(),
                    stats.clone(),
                    ready_tx.clone(),
                )?);
            }
            let want = tasks.len();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while ready < want {
                match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                    Ok(Some(())) => ready += 1,
                    Ok(None) => bail!("every simulated agent stopped"),
                    Err(_) => bail!("only {ready} of {want} agents subscribed within 60 s"),
                }
            }
        }
        let connect_time = connect_started.elapsed();
        Ok((tasks, connect_time))
    }

    /// The load, with RSS samples.
    async fn load(&self, rss_connected: u64) -> anyhow::Result<Load> {
        let (pid, args) = (self.pid, self.args);
        let (http_addr, targets, secret, run_id) =
            (self.http_addr, self.targets, self.secret, self.run_id);
        let load_started = Instant::now();
        let cpu_before = proc_cpu_seconds(&format!("/proc/{pid}/stat"))?;
        let mut rss_samples = vec![(Duration::ZERO, rss_connected)];
        let (sent, elapsed) = {
            let load = send_load(http_addr, targets, secret, run_id, args);
            tokio::pin!(load);
            let mut sampler = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(args.sample_every),
                Duration::from_secs(args.sample_every),
            );
            loop {
                tokio::select! {
                    result = &mut load => break result?,
                    _ = sampler.tick() => {
                        rss_samples.push((load_started.elapsed(), proc_status_kb(pid, "VmRSS")?));
                    }
                }
            }
        };
        let cpu_load = proc_cpu_seconds(&format!("/proc/{pid}/stat"))? - cpu_before;
        rss_samples.push((load_started.elapsed(), proc_status_kb(pid, "VmRSS")?));

        Ok(Load {
            sent,
            elapsed,
            cpu_load,
            rss_samples,
        })
    }

    /// The newest order of every repo/env, per the gateway, and how many agree with the
    /// 202 answers.
    async fn newest(&self, sent: &[Sent]) -> anyhow::Result<(Vec<Option<DeployOrder>>, usize)> {
        let (targets, api) = (self.targets, &self.api);
        let mut newest = Vec::with_capacity(targets.len());
        for t in targets {
            newest.push(api.newest_order(&t.repo, &t.env).await?);
        }
        let mut answered_newest: Vec<Option<(u64, &str)>> = vec![None; targets.len()];
        for s in sent {
            if let (Some(seq), 202) = (s.seq, s.status) {
                let slot = &mut answered_newest[s.target];
                if slot.is_none_or(|(n, _)| seq > n) {
                    *slot = Some((seq, s.sha.as_str()));
                }
            }
        }
        let newest_agrees = newest
            .iter()
            .zip(&answered_newest)
            .filter(|(n, a)| n.as_ref().map(|o| (o.seq, o.sha.as_str())) == **a)
            .count();

        Ok((newest, newest_agrees))
    }

    /// Waits (up to `--settle`) until every simulated agent is at its repo/env's newest
    /// order, per the gateway: how many are, and who is not.
    async fn settle(&self, newest: &[Option<DeployOrder>]) -> anyhow::Result<(usize, Vec<String>)> {
        let (sims, args, api) = (self.sims, self.args, &self.api);
        let settle_started = Instant::now();
        let mut at_newest;
        let mut not_at_newest: Vec<String>;
        loop {
            let statuses = api.agents(None).await?;
            let by_name: HashMap<&str, &AgentStatus> =
                statuses.iter().map(|s| (s.agent.as_str(), s)).collect();
            not_at_newest = Vec::new();
            at_newest = 0;
            for sim in sims {
                let want = newest[sim.target].as_ref();
                let ok = by_name.get(sim.name.as_str()).is_some_and(|s| {
                    s.state == AgentState::Healthy
                        && want.is_some_and(|o| {
                            s.seq == Some(o.seq) && s.sha.as_deref() == Some(o.sha.as_str())
                        })
                });
                if ok {
                    at_newest += 1;
                } else {
                    not_at_newest.push(sim.name.clone());
                }
            }
            if not_at_newest.is_empty()
                || settle_started.elapsed() > Duration::from_secs(args.settle)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok((at_newest, not_at_newest))
    }
}

impl Outcome {
    /// Prints the figures and checks; returns the checks that failed.
    fn report(
        &self,
        args: &Args,
        targets: usize,
        ledger: &LedgerCheck,
        rss_gateway_idle: u64,
    ) -> Vec<&'static str> {
        let o = self;
        let accepted = o
            .sent
            .iter()
            .filter(|s| s.status == 202 && s.seq.is_some())
            .count();
        let mut refused: BTreeMap<String, usize> = BTreeMap::new();
        for s in o
            .sent
            .iter()
            .filter(|s| !(s.status == 202 && s.seq.is_some()))
        {
            let what = match &s.error {
                Some(e) => format!("HTTP {}: {}", s.status, truncate(e, 120)),
                None => format!("HTTP {}", s.status),
            };
            *refused.entry(what).or_default() += 1;
        }
        let mut latencies: Vec<Duration> = o.sent.iter().map(|s| s.latency).collect();
        latencies.sort_unstable();
        let rss_max = o
            .rss_samples
            .iter()
            .map(|&(_, kb)| mb(kb))
            .fold(mb(o.rss_end), f64::max);
        let half = o.elapsed / 2;
        let late: Vec<(f64, f64)> = o
            .rss_samples
            .iter()
            .filter(|(t, _)| *t >= half)
            .map(|&(t, kb)| (t.as_secs_f64() / 60.0, mb(kb)))
            .collect();
        let slope = slope(&late);
        let growth = slope > GROWTH_MB_PER_MIN;
        let rss_ok = !growth && rss_max < RSS_LIMIT_MB;
        let stats = &o.stats;
        let bad_signatures = stats.bad_signature.load(Ordering::Relaxed);
        let all_accepted = accepted == o.sent.len();
        let ledger_ok = ledger.missing == 0 && ledger.accepted_without_order == 0;
        let statuses_ok = o.not_at_newest.is_empty() && o.newest_agrees == targets;

        let summary = Summary {
            accepted,
            latencies,
            rss_max,
            late,
            slope,
            growth,
            checks: Checks {
                all_accepted,
                bad_signatures,
                ledger_ok,
                statuses_ok,
                rss_ok,
            },
            targets,
            ledger,
            rss_gateway_idle,
        };
        self.print_figures(args, &summary);
        self.print_memory(&summary);
        for (what, n) in &refused {
            println!("  not accepted x{n}: {what}");
        }
        self.print_not_at_newest();
        summary.checks.failed(o.idle_status_ok)
    }

    /// The webhooks, orders, statuses and ledger rows.
    fn print_figures(&self, args: &Args, s: &Summary<'_>) {
        let o = self;
        let stats = &o.stats;
        let (accepted, latencies, targets, ledger) =
            (s.accepted, &s.latencies, s.targets, s.ledger);
        let rss_gateway_idle = s.rss_gateway_idle;
        let Checks {
            all_accepted,
            bad_signatures,
            ledger_ok,
            ..
        } = s.checks;
        println!();
        println!("  {:<40} {:<34} check", "", "measured");
        line(
            "idle RSS: gateway / one real agent",
            match o.rss_agent_idle {
                Some(agent) => format!("{:.1} MB / {:.1} MB", mb(rss_gateway_idle), mb(agent)),
                None => format!("{:.1} MB / (--no-agent)", mb(rss_gateway_idle)),
            },
            None,
        );
        line(
            "agents connected and subscribed",
            format!("{} in {:.1} s", args.agents, o.connect_time.as_secs_f64()),
            None,
        );
        line(
            "webhooks sent / accepted (202 + seq)",
            format!(
                "{} / {} in {:.1} s ({:.1}/s)",
                o.sent.len(),
                accepted,
                o.elapsed.as_secs_f64(),
                o.sent.len() as f64 / o.elapsed.as_secs_f64()
            ),
            Some(all_accepted),
        );
        line(
            "webhook latency p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                ms(percentile(latencies, 50.0)),
                ms(percentile(latencies, 99.0)),
                ms(latencies.last().copied().unwrap_or_default())
            ),
            None,
        );
        line(
            "orders received / taken by agents",
            format!(
                "{} / {} ({} stale skipped)",
                stats.orders.load(Ordering::Relaxed),
                stats.taken.load(Ordering::Relaxed),
                stats.stale.load(Ordering::Relaxed)
            ),
            None,
        );
        line(
            "orders with a bad signature",
            bad_signatures.to_string(),
            Some(bad_signatures == 0),
        );
        line(
            "statuses published (MAC'd, retained)",
            format!(
                "{} ({} not queued, {} conn. errors)",
                stats.statuses.load(Ordering::Relaxed),
                stats.publish_failed.load(Ordering::Relaxed),
                stats.connection_errors.load(Ordering::Relaxed)
            ),
            None,
        );
        line(
            "ledger: 202 answers durable",
            format!(
                "{} / {} ({} deliveries, {} orders)",
                accepted - ledger.missing.min(accepted),
                accepted,
                ledger.deliveries,
                ledger.orders
            ),
            Some(ledger_ok),
        );
        line(
            "newest order: API agrees with 202s",
            format!("{} / {} repo/envs", o.newest_agrees, targets),
            Some(o.newest_agrees == targets),
        );
        self.print_statuses(args, s);
    }

    /// Where the agents are, per the gateway.
    fn print_statuses(&self, args: &Args, s: &Summary<'_>) {
        let o = self;
        let statuses_ok = s.checks.statuses_ok;
        line(
            "agent statuses at the newest order",
            format!(
                "{} / {} after {:.1} s",
                o.at_newest,
                args.agents,
                o.settle_time.as_secs_f64()
            ),
            Some(statuses_ok),
        );
        if let Some(ok) = o.idle_status_ok {
            line(
                "real agent: idle status, RSS at end",
                format!(
                    "{} , {:.1} MB",
                    if ok { "idle" } else { "missing" },
                    mb(o.rss_agent_end.unwrap_or_default())
                ),
                Some(ok),
            );
        }
    }

    /// The gateway's memory and CPU over the run.
    fn print_memory(&self, s: &Summary<'_>) {
        let o = self;
        let (rss_max, slope, late, growth, rss_ok) =
            (s.rss_max, s.slope, &s.late, s.growth, s.checks.rss_ok);
        line(
            "gateway RSS start / max / end",
            format!(
                "{:.1} / {:.1} / {:.1} MB (peak {:.1})",
                mb(o.rss_connected),
                rss_max,
                mb(o.rss_end),
                mb(o.rss_hwm)
            ),
            Some(rss_ok),
        );
        line(
            "gateway RSS trend, second half",
            format!(
                "{slope:+.1} MB/min ({} samples){}",
                late.len(),
                if growth { "  GROWTH" } else { "  flat" }
            ),
            Some(!growth),
        );
        line(
            "gateway CPU during the load",
            format!(
                "{:.1} s ({:.0} % of one core)",
                o.cpu_load,
                o.cpu_load * 100.0 / o.elapsed.as_secs_f64()
            ),
            None,
        );
        let curve: Vec<String> = o
            .rss_samples
            .iter()
            .map(|(t, kb)| format!("{:.0}s {:.1}", t.as_secs_f64(), mb(*kb)))
            .collect();
        println!("  RSS curve (MB): {}", curve.join(", "));
    }

    fn print_not_at_newest(&self) {
        let o = self;
        if !o.not_at_newest.is_empty() {
            println!(
                "  not at the newest order: {}{}",
                o.not_at_newest
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if o.not_at_newest.len() > 10 {
                    ", …"
                } else {
                    ""
                }
            );
        }
    }
}

/// A row of the table.
fn line(what: &str, measured: String, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "",
    };
    println!("  {what:<40} {measured:<34} {verdict}");
}

/// The figures derived from an [`Outcome`], and its verdicts.
struct Summary<'a> {
    accepted: usize,
    latencies: Vec<Duration>,
    rss_max: f64,
    late: Vec<(f64, f64)>,
    slope: f64,
    growth: bool,
    checks: Checks,
    targets: usize,
    ledger: &'a LedgerCheck,
    rss_gateway_idle: u64,
}

/// The pass/fail verdicts of a soak.
#[derive(Clone, Copy)]
struct Checks {
    all_accepted: bool,
    bad_signatures: u64,
    ledger_ok: bool,
    statuses_ok: bool,
    rss_ok: bool,
}

impl Checks {
    fn failed(&self, idle_status_ok: Option<bool>) -> Vec<&'static str> {
        let Checks {
            all_accepted,
            bad_signatures,
            ledger_ok,
            statuses_ok,
            rss_ok,
        } = *self;
        let o_idle_status_ok = idle_status_ok;
        let mut failed = Vec::new();
        for (ok, what) in [
            (all_accepted, "webhooks not accepted"),
            (bad_signatures == 0, "orders with a bad signature"),
            (ledger_ok, "accepted deliveries missing from the ledger"),
            (statuses_ok, "agents not at their newest order"),
            (
                o_idle_status_ok != Some(false),
                "the real agent's idle status is missing",
            ),
            (rss_ok, "gateway RSS grew or exceeded the limit"),
        ] {
            if !ok {
                failed.push(what);
            }
        }
        failed
    }
}

/// Least-squares slope of `(x, y)` points; 0 for fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if points.len() < 2 || sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Everything the async part measured.
struct Outcome {
    rss_agent_idle: Option<u64>,
    rss_agent_end: Option<u64>,
    idle_status_ok: Option<bool>,
    connect_time: Duration,
    rss_connected: u64,
    rss_samples: Vec<(Duration, u64)>,
    rss_end: u64,
    rss_hwm: u64,
    cpu_load: f64,
    sent: Vec<Sent>,
    elapsed: Duration,
    newest_agrees: usize,
    at_newest: usize,
    not_at_newest: Vec<String>,
    settle_time: Duration,
    stats: Arc<SimStats>,
}

/// Sends `rate × seconds` webhooks at a steady pace, round-robin over the targets and the
/// connections; returns what each got and the wall time.
async fn send_load(
    addr: SocketAddr,
    targets: &[Target],
    secret: &str,
    run_id: u32,
    args: &Args,
) -> anyhow::Result<(Vec<Sent>, Duration)> {
    let total = (args.rate * args.seconds as f64).round() as usize;
    let mut queues = Vec::with_capacity(args.connections);
    let mut workers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let mut conn = Conn::connect(addr)
            .await
            .context("cannot connect to the gateway")?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, String, Vec<u8>)>();
        queues.push(tx);
        workers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            while let Some((target, delivery, sha, wire)) = rx.recv().await {
                let started = Instant::now();
                let result = conn.exchange(&wire).await;
                let latency = started.elapsed();
                let (status, seq, error) = match result {
                    Ok((status, body)) => {
                        let seq = if status == 202 { seq_of(&body) } else { None };
                        let error =
                            (seq.is_none()).then(|| String::from_utf8_lossy(&body).into_owned());
                        (status, seq, error)
                    }
                    Err(e) => {
                        if let Ok(c) = Conn::connect(addr).await {
                            conn = c;
                        }
                        (0, None, Some(e.to_string()))
                    }
                };
                sent.push(Sent {
                    target,
                    delivery,
                    sha,
                    latency,
                    status,
                    seq,
                    error,
                });
            }
            sent
        }));
    }
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticker = tokio::time::interval(period);
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let target = i % targets.len();
        let sha = format!("{run_id:08x}{:032x}", i + 1);
        let delivery = format!("{run_id:08x}-50a4-4000-8000-{:012x}", i + 1);
        let body = targets[target].template.replace(PLACEHOLDER_SHA, &sha);
        let wire = signed_push("/webhook", &delivery, &body, secret);
        queues[i % queues.len()]
            .send((target, delivery, sha, wire))
            .ok()
            .context("a connection worker stopped")?;
    }
    drop(queues);
    let mut sent = Vec::with_capacity(total);
    for worker in workers {
        sent.extend(worker.await?);
    }
    Ok((sent, started.elapsed()))
}

/// One simulated agent: connects with an `offline` last will, subscribes on every ConnAck
/// and re-publishes its status, takes every valid newer order and reports it `healthy`.
fn spawn_sim(
    sim: Sim,
    url: &str,
    repo: String,
    env: String,
    verifier: Arc<OrderVerifier>,
    stats: Arc<SimStats>,
    ready: mpsc::UnboundedSender<()>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let topics = Topics::default();
    let desired = topics.desired(&repo, &env);
    let status_topic = topics.status(&repo, &env, &sim.name);
    let mut options =
        orcastrate_broker::mqtt::client_options(url, &sim.name, &sim.name, &sim.token)?;
    let mut status = AgentStatus {
        host: "soak-host".into(),
        version: "soak".into(),
        ..agent_status(
            &sim.name,
            (&repo, &env),
            &session(sim.index, 0),
            AgentState::Idle,
        )
    };
    options.set_last_will(last_will(&status_topic, &status, &sim.token));
    Ok(tokio::spawn(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut reported = false;
        let mut connections = 0;
        let mut backoff = Backoff::new();
        let publish = |status: &mut AgentStatus| {
            status.updated_at = orcastrate_broker::time::now();
            seal_status(&sim.token, status);
            let payload = serde_json::to_vec(&*status).expect("a status serializes");
            match client.try_publish(status_topic.as_str(), QoS::AtLeastOnce, true, payload) {
                Ok(()) => stats.statuses.fetch_add(1, Ordering::Relaxed),
                Err(_) => stats.publish_failed.fetch_add(1, Ordering::Relaxed),
            };
        };
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    let _ = client.try_subscribe(desired.as_str(), QoS::AtLeastOnce);
                    publish(&mut status);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !reported {
                        reported = true;
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired => {
                    stats.orders.fetch_add(1, Ordering::Relaxed);
                    let Ok(order) = serde_json::from_slice::<DeployOrder>(&p.payload) else {
                        stats.bad_signature.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if order.validate().is_err()
                        || verifier.verify(&order).is_err()
                        || order.repo != status.repo
                        || order.env != status.env
                    {
                        stats.bad_signature.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if status.seq.is_some_and(|floor| order.seq <= floor) {
                        stats.stale.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    stats.taken.fetch_add(1, Ordering::Relaxed);
                    status.previous_sha = status.running_sha.take();
                    status.state = AgentState::Healthy;
                    status.release = Some(format!("{}-{}", order.seq, &order.sha[..12]));
                    status.running_sha = Some(order.sha.clone());
                    status.sha = Some(order.sha);
                    status.seq = Some(order.seq);
                    status.deploy_ms = Some(0);
                    publish(&mut status);
                }
                Ok(_) => {}
                Err(_) => {
                    stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                    backoff.wait().await;
                    // A new connection: a new session, and a last will that carries it.
                    connections += 1;
                    status.session = session(sim.index, connections);
                    eventloop.mqtt_options.set_last_will(last_will(
                        &status_topic,
                        &status,
                        &sim.token,
                    ));
                }
            }
        }
    }))
}

/// A session id, unique per agent and connection.
fn session(index: usize, connection: u64) -> String {
    format!("{:08x}{index:04x}{connection:04x}", std::process::id())
}

/// The `offline` last will for a status's session.
fn last_will(topic: &str, status: &AgentStatus, token: &str) -> LastWill {
    let mut will = status.clone();
    will.state = AgentState::Offline;
    will.step = None;
    will.updated_at = orcastrate_broker::time::now();
    seal_status(token, &mut will);
    let payload = serde_json::to_vec(&will).expect("a status serializes");
    LastWill::new(topic, payload, QoS::AtLeastOnce, true)
}

struct LedgerCheck {
    deliveries: u64,
    orders: u64,
    accepted_without_order: u64,
    /// 202 answers without their delivery row (same seq and sha) and order.
    missing: usize,
}

/// Checks that every 202 answer is durable: its delivery row, with the same seq and sha,
/// and the order that delivery made.
fn check_ledger(path: &Path, targets: &[Target], sent: &[Sent]) -> anyhow::Result<LedgerCheck> {
    let conn = open_ledger(path)?;
    let count = |sql: &str| ledger_count(&conn, sql);
    let deliveries = count("SELECT COUNT(*) FROM deliveries")?;
    let orders = count("SELECT COUNT(*) FROM orders")?;
    let accepted_without_order = accepted_without_order(&conn)?;
    let mut delivery = conn.prepare(
        "SELECT repo, env, seq, sha FROM deliveries WHERE id = ?1 AND outcome = 'accepted'",
    )?;
    let mut order = conn
        .prepare("SELECT 1 FROM orders WHERE repo = ?1 AND env = ?2 AND seq = ?3 AND sha = ?4")?;
    let mut missing = 0;
    for s in sent {
        let (Some(seq), 202) = (s.seq, s.status) else {
            continue;
        };
        let t = &targets[s.target];
        let seq = i64::try_from(seq)?;
        type Row = (Option<String>, Option<String>, Option<i64>, Option<String>);
        let row: Option<Row> = delivery
            .query_row([&s.delivery], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let recorded = row.is_some_and(|(repo, env, dseq, sha)| {
            repo.as_deref() == Some(t.repo.as_str())
                && env.as_deref() == Some(t.env.as_str())
                && dseq == Some(seq)
                && sha.as_deref() == Some(s.sha.as_str())
        });
        let ordered = order.exists(rusqlite::params![t.repo, t.env, seq, s.sha])?;
        if !(recorded && ordered) {
            missing += 1;
        }
    }
    Ok(LedgerCheck {
        deliveries,
        orders,
        accepted_without_order,
        missing,
    })
}
