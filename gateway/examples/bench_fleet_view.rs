//! The fleet view under a burst: N agents report at once, and all N are in the retained
//! `fleet` summary and in `GET /api/v1/agents`, run after run.
//!
//! Run with, from anywhere in the workspace:
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_fleet_view -- --agents 2000 --runs 10
//! ```
//!
//! What it does:
//!
//! 1. Starts the gateway binary (built with cargo unless `--gateway-bin PATH`) on free
//!    loopback ports with a fresh `data_dir`, an admin token, one `[[clients]]` entry per
//!    simulated agent and a `role = "watcher"` client. rumqttd's router-log warnings are on
//!    (`rumqttd::segments=warn`) and counted afterwards: each is a subscriber that fell more
//!    than its filter's log behind and skipped to the oldest message kept.
//! 2. Connects `--agents` simulated agents, `--batch` at a time, with the options real agents
//!    use (rumqttc, one task each, each subscribed to the repo/env's `desired` topic and
//!    re-publishing its status on every ConnAck), and the watcher, subscribed to the
//!    repo/env's retained `fleet` summary.
//! 3. Each of `--runs` runs: a `deploy --now` of a new sha through the admin API; then one
//!    signal releases every agent at once, and each publishes a retained, MAC'd `healthy`
//!    status at that order's seq and sha (QoS 1). From that release it measures the time
//!    until a `fleet` summary the watcher receives lists all N healthy at the sha, and until
//!    `GET /api/v1/agents` (polled every 100 ms) does. A view still short after
//!    `--timeout-s` fails the run, naming the agents it lacks.
//! 4. Prints each run, the median and worst times, and exits non-zero if a run failed.
//!
//! The simulated agents, the watcher and the gateway share the machine's cores.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use orcastrate_broker::sign::seal_status;
use orcastrate_broker::{AgentState, FleetSummary, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{mpsc, watch};

#[path = "support/mod.rs"]
mod support;
use support::*;

const REPO: &str = "codertocat/hello-world";
const ENV: &str = "production";
const ADMIN: &str = "bench-admin-token-0123456789";
const WATCHER: &str = "bench-watcher";
/// How often `/api/v1/agents` is asked during a run.
const API_POLL: Duration = Duration::from_millis(100);
/// rumqttd's warning when a subscriber's cursor is older than its filter's log.
const ROUTER_LOG_JUMP: &str = "jumping to head";

/// The fleet view under a burst (see the example's documentation).
#[derive(Debug, Parser)]
struct Args {
    /// Simulated agents, all reporting at once in every run.
    #[arg(long, default_value_t = 2_000)]
    agents: usize,
    /// Bursts, one after the other (each a new order and sha).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Seconds a run's views may take to list every agent before the run fails.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Agents connecting at once (rumqttd's listen backlog is 128).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Gateway binary to measure; by default it is built with cargo first.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
}

/// What every agent reports in a run: the run's order.
#[derive(Debug, Clone)]
struct Burst {
    seq: u64,
    sha: String,
}

impl Burst {
    /// Whether an agent's entry is `healthy` at this order.
    fn reached(&self, state: AgentState, seq: Option<u64>, sha: Option<&str>) -> bool {
        state == AgentState::Healthy
            && seq == Some(self.seq)
            && sha.is_some_and(|s| self.sha.starts_with(s))
    }
}

/// How far one view got in one run.
#[derive(Debug)]
enum Reached {
    /// Every agent, this long after the release.
    Complete(Duration),
    /// Only these agents by the timeout.
    Short(HashSet<String>),
}

/// One run's outcome.
struct RunResult {
    fleet: Reached,
    api: Reached,
}

/// What the simulated agents share.
struct Agents {
    url: String,
    /// Each run's order, sent to every agent at once: the release of a burst.
    go: watch::Sender<Option<Burst>>,
    /// Each agent's first SubAck.
    subscribed: mpsc::UnboundedSender<()>,
    errors: Arc<AtomicUsize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.agents > 0, "--agents must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    raise_nofile(args.agents + 1)?;
    let gateway_bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => build_gateway()?,
    };
    let dir = tempfile::Builder::new()
        .prefix("orcastrate-bench-fleet-view-")
        .tempdir()?;
    let run_id = std::process::id();
    let (http_addr, mqtt_addr) = (free_addr(), free_addr());
    let names = bench_clients(args.agents, run_id);
    let watcher_token = format!("bench-watcher-token-{run_id}");
    let config_path = write_config(dir.path(), (http_addr, mqtt_addr), &names, &watcher_token)?;
    let log_path = dir.path().join("gateway.log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let gateway = start_gateway(&runtime, &gateway_bin, &log_path, http_addr, |c| {
        c.arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info,rumqttd=off,rumqttd::segments=warn");
    })?;
    println!(
        "orcastrate-gateway fleet view: {} agents report at once, {} runs",
        args.agents, args.runs
    );
    println!(
        "  gateway   {} (pid {}), http {http_addr}, mqtt {mqtt_addr}",
        gateway_bin.display(),
        gateway.0.id()
    );
    let url = format!("mqtt://{mqtt_addr}");
    let api = Api {
        addr: http_addr,
        token: ADMIN.into(),
    };
    let work = measure(&args, &names, &url, &api, &watcher_token);
    let results = measure_then_stop(runtime, gateway, &log_path, work)?;
    let jumps = std::fs::read_to_string(&log_path)?
        .matches(ROUTER_LOG_JUMP)
        .count();
    report(&args, &results, jumps)
}

/// Writes the gateway's config; returns its path.
fn write_config(
    dir: &Path,
    (http_addr, mqtt_addr): (SocketAddr, SocketAddr),
    names: &[(String, String)],
    watcher_token: &str,
) -> anyhow::Result<PathBuf> {
    let config = format!(
        "data_dir = {:?}\n[http]\nlisten = \"{http_addr}\"\n[mqtt]\nlisten = \"{mqtt_addr}\"\n\
         [github]\nsecret = \"bench-secret\"\n[admin]\ntokens = [\"{ADMIN}\"]\n\
         [[repos]]\nname = \"{REPO}\"\nbranches = {{ master = \"{ENV}\" }}\n{}\
         [[clients]]\nname = \"{WATCHER}\"\ntoken = \"{watcher_token}\"\nrole = \"watcher\"\n",
        dir.join("data").display().to_string(),
        clients_toml(names)
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Connects the agents and the watcher, then runs every burst.
async fn measure(
    args: &Args,
    names: &[(String, String)],
    url: &str,
    api: &Api,
    watcher_token: &str,
) -> anyhow::Result<Vec<RunResult>> {
    let (subscribed, mut subscribed_rx) = mpsc::unbounded_channel();
    let agents = Agents {
        url: url.to_owned(),
        go: watch::Sender::new(None),
        subscribed,
        errors: Arc::default(),
    };
    let started = Instant::now();
    let mut connected = 0;
    for (offset, batch) in names.chunks(args.batch).enumerate() {
        for (i, (name, token)) in batch.iter().enumerate() {
            agents.spawn(offset * args.batch + i, name, token)?;
        }
        connected += batch.len();
        for done in 0..batch.len() {
            if tokio::time::timeout(Duration::from_secs(60), subscribed_rx.recv())
                .await
                .ok()
                .flatten()
                .is_none()
            {
                bail!(
                    "only {} of {connected} agents subscribed within 60 s ({} connection errors)",
                    connected - batch.len() + done,
                    agents.errors.load(Ordering::Relaxed)
                );
            }
        }
    }
    println!(
        "  agents    {} connected and subscribed in {:.1} s ({} connection errors retried)",
        names.len(),
        started.elapsed().as_secs_f64(),
        agents.errors.load(Ordering::Relaxed)
    );
    let mut summaries = spawn_watcher(url, watcher_token)?;
    let timeout = Duration::from_secs(args.timeout_s);
    let mut results = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let sha = format!("{:08x}{run:04x}{:028x}", std::process::id(), 0xf1ee7);
        let seq = api
            .deploy_now(REPO, ENV, &sha)
            .await
            .with_context(|| format!("deploy --now of run {run}"))?
            .seq;
        // The order reaches the agents (who only follow it) before the burst.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while summaries.try_recv().is_ok() {}
        let errors = agents.errors.load(Ordering::Relaxed);
        let burst = Burst { seq, sha };
        let released = Instant::now();
        agents.go.send_replace(Some(burst.clone()));
        let (fleet_view, api_view) = tokio::join!(
            fleet_complete(&mut summaries, &burst, names, released, timeout),
            api_complete(api, &burst, names, released, timeout)
        );
        let result = RunResult {
            fleet: fleet_view?,
            api: api_view?,
        };
        println!(
            "  run {run:>2}/{}  order {seq} at {}  fleet view {}  /api/v1/agents {}{}",
            args.runs,
            &burst.sha[..12],
            shown(&result.fleet, names),
            shown(&result.api, names),
            match agents.errors.load(Ordering::Relaxed) - errors {
                0 => String::new(),
                n => format!("  ({n} connection errors)"),
            }
        );
        results.push(result);
    }
    Ok(results)
}

impl Agents {
    /// One simulated agent: connects (again after an error, with a capped backoff),
    /// subscribes to `desired` and re-publishes its status on every ConnAck, and reports
    /// each burst's status as soon as it is released.
    fn spawn(&self, index: usize, name: &str, token: &str) -> anyhow::Result<()> {
        let options = orcastrate_broker::mqtt::client_options(&self.url, name, name, token)?;
        let topics = Topics::default();
        let desired = topics.desired(REPO, ENV);
        let status_topic = topics.status(REPO, ENV, name);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        // The status last reported, sent again on every ConnAck as agents do.
        let current: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let mut go = self.go.subscribe();
        let (reporter, topic, sent) = (client.clone(), status_topic.clone(), current.clone());
        let (name, token) = (name.to_owned(), token.to_owned());
        let session = format!("{:08x}{index:05x}", std::process::id());
        tokio::spawn(async move {
            while go.changed().await.is_ok() {
                let Some(burst) = go.borrow_and_update().clone() else {
                    continue;
                };
                let mut status = agent_status(&name, (REPO, ENV), &session, AgentState::Healthy);
                status.seq = Some(burst.seq);
                status.release = Some(format!("{}-{}", burst.seq, &burst.sha[..12]));
                status.sha = Some(burst.sha.clone());
                status.running_sha = Some(burst.sha);
                seal_status(&token, &mut status);
                let payload = serde_json::to_vec(&status).expect("a status serializes");
                *sent.lock().expect("status lock") = Some(payload.clone());
                if reporter
                    .publish(topic.as_str(), QoS::AtLeastOnce, true, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let (subscribed, errors) = (self.subscribed.clone(), self.errors.clone());
        tokio::spawn(async move {
            let mut reported = false;
            let mut backoff = Backoff::new();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        let _ = client.try_subscribe(desired.as_str(), QoS::AtLeastOnce);
                        let again = current.lock().expect("status lock").clone();
                        if let Some(payload) = again {
                            let _ = client.try_publish(
                                status_topic.as_str(),
                                QoS::AtLeastOnce,
                                true,
                                payload,
                            );
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) if !reported => {
                        reported = true;
                        let _ = subscribed.send(());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        backoff.wait().await;
                    }
                }
            }
        });
        Ok(())
    }
}

/// The watcher: every `fleet` summary of the repo/env it receives, and when.
fn spawn_watcher(
    url: &str,
    token: &str,
) -> anyhow::Result<mpsc::UnboundedReceiver<(Instant, FleetSummary)>> {
    let options = orcastrate_broker::mqtt::client_options(url, WATCHER, WATCHER, token)?;
    let topic = Topics::default().fleet(REPO, ENV);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    let at = Instant::now();
                    if let Ok(summary) = serde_json::from_slice::<FleetSummary>(&p.payload) {
                        if tx.send((at, summary)).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    Ok(rx)
}

/// Waits for a `fleet` summary that lists every agent at the burst's order.
async fn fleet_complete(
    summaries: &mut mpsc::UnboundedReceiver<(Instant, FleetSummary)>,
    burst: &Burst,
    names: &[(String, String)],
    released: Instant,
    timeout: Duration,
) -> anyhow::Result<Reached> {
    let deadline = tokio::time::Instant::from_std(released + timeout);
    let mut listed = HashSet::new();
    loop {
        match tokio::time::timeout_at(deadline, summaries.recv()).await {
            Ok(Some((at, summary))) => {
                listed = summary
                    .agents
                    .into_iter()
                    .filter(|a| burst.reached(a.state, a.seq, a.sha12.as_deref()))
                    .map(|a| a.agent)
                    .collect();
                if listed.len() == names.len() {
                    return Ok(Reached::Complete(at.saturating_duration_since(released)));
                }
            }
            Ok(None) => bail!("the watcher stopped"),
            Err(_) => return Ok(Reached::Short(listed)),
        }
    }
}

/// Polls `/api/v1/agents` until it lists every agent at the burst's order.
async fn api_complete(
    api: &Api,
    burst: &Burst,
    names: &[(String, String)],
    released: Instant,
    timeout: Duration,
) -> anyhow::Result<Reached> {
    loop {
        let listed: HashSet<String> = api
            .agents(Some((REPO, ENV)))
            .await?
            .into_iter()
            .filter(|a| burst.reached(a.state, a.seq, a.sha.as_deref()))
            .map(|a| a.agent)
            .collect();
        let elapsed = released.elapsed();
        if listed.len() == names.len() {
            return Ok(Reached::Complete(elapsed));
        }
        if elapsed > timeout {
            return Ok(Reached::Short(listed));
        }
        tokio::time::sleep(API_POLL).await;
    }
}

/// A view's outcome in a run: `N/N after T s`, or what it lacked.
fn shown(reached: &Reached, names: &[(String, String)]) -> String {
    match reached {
        Reached::Complete(after) => {
            format!(
                "{n}/{n} after {:.2} s",
                after.as_secs_f64(),
                n = names.len()
            )
        }
        Reached::Short(listed) => {
            let missing: Vec<&str> = names
                .iter()
                .map(|(name, _)| name.as_str())
                .filter(|name| !listed.contains(*name))
                .collect();
            format!(
                "{}/{} MISSED (lacks {}{})",
                listed.len(),
                names.len(),
                missing[..missing.len().min(5)].join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            )
        }
    }
}

/// Prints the runs' figures and the `SUMMARY|` row; an error if any run was incomplete.
fn report(args: &Args, results: &[RunResult], jumps: usize) -> anyhow::Result<()> {
    let times = |view: fn(&RunResult) -> &Reached| -> Vec<Duration> {
        let mut t: Vec<Duration> = results
            .iter()
            .filter_map(|r| match view(r) {
                Reached::Complete(d) => Some(*d),
                Reached::Short(_) => None,
            })
            .collect();
        t.sort_unstable();
        t
    };
    let (fleet, api) = (times(|r| &r.fleet), times(|r| &r.api));
    let complete = results
        .iter()
        .filter(|r| {
            matches!(
                (&r.fleet, &r.api),
                (Reached::Complete(_), Reached::Complete(_))
            )
        })
        .count();
    // Times of the runs in which a view was complete; "-" where none was.
    let secs = |t: &[Duration], p: f64| match t.is_empty() {
        true => "-".to_owned(),
        false => format!("{:.2} s", percentile(t, p).as_secs_f64()),
    };
    println!();
    println!(
        "fleet view: {} agents report `healthy` at once, {} runs",
        args.agents, args.runs
    );
    println!(
        "  runs with all {} in the fleet view and in /api/v1/agents   {complete} / {}",
        args.agents, args.runs
    );
    println!(
        "  release → complete fleet view      median {}, worst {}",
        secs(&fleet, 50.0),
        secs(&fleet, 100.0)
    );
    println!(
        "  release → complete /api/v1/agents  median {}, worst {} (polled every {} ms)",
        secs(&api, 50.0),
        secs(&api, 100.0),
        API_POLL.as_millis()
    );
    println!("  router-log jumps (rumqttd warnings) {jumps}");
    let all = complete == args.runs;
    let fewest = results
        .iter()
        .flat_map(|r| [&r.fleet, &r.api])
        .map(|view| match view {
            Reached::Complete(_) => args.agents,
            Reached::Short(listed) => listed.len(),
        })
        .min()
        .unwrap_or_default();
    summary_row(
        &format!(
            "fleet view and /api/v1/agents after {} agents report at once",
            args.agents
        ),
        &format!(
            "complete in {complete}/{} runs (fewest listed {fewest}/{}); worst {} (fleet) / {} (API)",
            args.runs,
            args.agents,
            secs(&fleet, 100.0),
            secs(&api, 100.0),
        ),
        &format!("every run, within {} s", args.timeout_s),
        Some(all),
    );
    ensure!(
        all,
        "the fleet view was incomplete in {} of {} runs",
        args.runs - complete,
        args.runs
    );
    Ok(())
}
