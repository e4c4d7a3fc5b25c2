//! A bad push caught by the canary: how fast the fleet-wide revert goes out, and how many
//! agents ever started the bad sha.
//!
//! Run with, from anywhere in the workspace:
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_revert -- --agents 200
//! ```
//!
//! What it does:
//!
//! 1. Starts the gateway binary (built with cargo unless `--gateway-bin PATH`) on free
//!    loopback ports with a fresh `data_dir`, one `[[clients]]` entry per simulated agent,
//!    and `[repos.rollout.production] waves = ["bench-agent-00000", "100%"]`: agent 0 is the
//!    canary.
//! 2. Connects `--agents` simulated agents (rumqttc, the options real agents use). Each one
//!    follows the retained order as a real agent does: it verifies the signature with the
//!    gateway's public key, computes its own sha (`targets`/`base_sha`), and reports a
//!    MAC'd status: `deploying` at a sha it has not run yet, then `healthy`; an order for
//!    the sha it runs is reported `healthy` at once. The canary fails the bad sha: it
//!    reports `rolled_back` 50 ms after `deploying`.
//! 3. An operator's `deploy --now` of a good sha brings every agent to it; then ONE signed
//!    push of the bad sha. It measures the time from the canary's `rolled_back` status to
//!    the `rollback` order (`issued_by` = `rollout`) reaching the canary, and counts the
//!    agents that ever reported `deploying` at the bad sha.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use orcastrate_broker::{sign, AgentState, DeployOrder, OrderKind, OrderVerifier};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;

#[path = "support/mod.rs"]
mod support;
use support::*;

const REPO: &str = "codertocat/hello-world";
const ENV: &str = "production";
const ADMIN: &str = "bench-admin-token-0123456789";

/// Target for the revert: well under a second from the canary's failure.
const TARGET_REVERT_MS: f64 = 1_000.0;

#[derive(Debug, Parser)]
struct Args {
    /// Simulated agents; agent 0 is the canary.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Gateway binary to measure; by default it is built with cargo first.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
}

/// What the simulated agents tell the benchmark.
enum Report {
    Subscribed,
    /// Agent `i` reported `state` at `sha`, at `at`.
    Status(usize, AgentState, String, Instant),
    /// Agent `i` received a revert order, at `at`.
    Revert(usize, Instant),
}

/// One simulated agent's identity and what it runs.
struct Sim {
    index: usize,
    name: String,
    token: String,
    bad: Arc<Mutex<Option<String>>>,
    verifier: OrderVerifier,
}

fn status(sim: &Sim, session: &str, state: AgentState, order: &DeployOrder, sha: &str) -> Vec<u8> {
    let mut s = agent_status(&sim.name, (REPO, ENV), session, state);
    s.seq = Some(order.seq);
    s.sha = Some(sha.into());
    s.running_sha = Some(sha.into());
    s.error = (state == AgentState::RolledBack).then(|| "health check failed".into());
    sign::seal_status(&sim.token, &mut s);
    serde_json::to_vec(&s).expect("statuses serialize")
}

/// A simulated agent: follows the retained order and reports as described above.
async fn run_sim(sim: Sim, url: String, tx: mpsc::UnboundedSender<Report>) -> anyhow::Result<()> {
    let options = orcastrate_broker::mqtt::client_options(&url, &sim.name, &sim.name, &sim.token)?;
    let (client, mut events) = AsyncClient::new(options, 64);
    let desired = orcastrate_broker::topics::Topics::default().desired(REPO, ENV);
    let status_topic = format!("orcastrate/{REPO}/{ENV}/status/{}", sim.name);
    let session = format!("bench-{}", sim.index);
    let mut running: Option<String> = None;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.subscribe(&desired, QoS::AtLeastOnce).await?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = tx.send(Report::Subscribed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired => {
                let Ok(order) = serde_json::from_slice::<DeployOrder>(&p.payload) else {
                    continue;
                };
                if sim.verifier.verify(&order).is_err() {
                    continue;
                }
                if order.kind == OrderKind::Rollback {
                    let _ = tx.send(Report::Revert(sim.index, Instant::now()));
                }
                let Some(sha) = order.sha_for(&sim.name).map(str::to_owned) else {
                    continue;
                };
                let publish = |state: AgentState| {
                    let _ = tx.send(Report::Status(
                        sim.index,
                        state,
                        sha.clone(),
                        Instant::now(),
                    ));
                    status(&sim, &session, state, &order, &sha)
                };
                if running.as_deref() != Some(sha.as_str()) {
                    let payload = publish(AgentState::Deploying);
                    client
                        .publish(&status_topic, QoS::AtLeastOnce, true, payload)
                        .await?;
                    let fails =
                        sim.index == 0 && sim.bad.lock().unwrap().as_deref() == Some(sha.as_str());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if fails {
                        let payload = publish(AgentState::RolledBack);
                        client
                            .publish(&status_topic, QoS::AtLeastOnce, true, payload)
                            .await?;
                        continue;
                    }
                }
                running = Some(sha.clone());
                let payload = publish(AgentState::Healthy);
                client
                    .publish(&status_topic, QoS::AtLeastOnce, true, payload)
                    .await?;
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// What one measurement needs.
struct Run<'a> {
    agents: usize,
    names: &'a [(String, String)],
    verifier: &'a OrderVerifier,
    url: String,
    http_addr: std::net::SocketAddr,
    /// The bad push.
    push: Push,
}

/// Connects the agents, brings them to a good sha, then pushes the bad one: the time from
/// the canary's failure to the revert reaching it, and how many started the bad sha.
async fn measure(run: &Run<'_>) -> anyhow::Result<(Duration, usize)> {
    let bad: Arc<Mutex<Option<String>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (index, (name, token)) in run.names.iter().enumerate() {
        let sim = Sim {
            index,
            name: name.clone(),
            token: token.clone(),
            bad: bad.clone(),
            verifier: run.verifier.clone(),
        };
        tokio::spawn(run_sim(sim, run.url.clone(), tx.clone()));
        if index % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut subscribed = 0;
    while subscribed < run.agents {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Report::Subscribed)) => subscribed += 1,
            Ok(Some(_)) => {}
            _ => bail!("only {subscribed} agents subscribed within 60 s"),
        }
    }

    // Everyone on a good sha first, at once.
    let good = format!("{:040x}", 0xfeed_u64);
    let api = Api {
        addr: run.http_addr,
        token: ADMIN.into(),
    };
    api.deploy_now(REPO, ENV, &good)
        .await
        .context("deploy --now of the good sha")?;
    let mut conn = Conn::connect(run.http_addr).await?;
    let mut healthy = HashSet::new();
    while healthy.len() < run.agents {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Report::Status(i, AgentState::Healthy, sha, _))) if sha == good => {
                healthy.insert(i);
            }
            Ok(Some(_)) => {}
            _ => bail!(
                "only {} agents healthy on the good sha within 30 s",
                healthy.len()
            ),
        }
    }
    // Let the gateway record the last statuses before the push.
    tokio::time::sleep(Duration::from_millis(500)).await;

    push_bad(run, &bad, &mut rx, &mut conn).await
}

/// The bad push and what follows it (see [`measure`]).
async fn push_bad(
    run: &Run<'_>,
    bad: &Mutex<Option<String>>,
    rx: &mut mpsc::UnboundedReceiver<Report>,
    conn: &mut Conn,
) -> anyhow::Result<(Duration, usize)> {
    let push = &run.push;
    *bad.lock().unwrap() = Some(push.sha.clone());
    let (code, answer) = conn.exchange(&push.wire).await?;
    ensure!(
        code == 202,
        "the push got {code}: {}",
        String::from_utf8_lossy(&answer)
    );
    let mut started_bad = HashSet::new();
    let mut failed_at = None;
    let mut reverted = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reverted.is_none() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Report::Status(i, state, sha, at))) if sha == push.sha => {
                if state == AgentState::Deploying {
                    started_bad.insert(i);
                }
                if state == AgentState::RolledBack {
                    failed_at = Some(at);
                }
            }
            Ok(Some(Report::Revert(0, at))) => reverted = Some(at),
            Ok(Some(_)) => {}
            _ => bail!("no revert within 30 s"),
        }
    }
    // Anyone starting the bad sha late would show up now.
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(r)) = tokio::time::timeout_at(settle, rx.recv()).await {
        if let Report::Status(i, AgentState::Deploying, sha, _) = r {
            if sha == push.sha {
                started_bad.insert(i);
            }
        }
    }
    let failed_at = failed_at.context("the canary never reported rolled_back")?;
    anyhow::Ok((reverted.unwrap() - failed_at, started_bad.len()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.agents >= 2, "--agents must be at least 2");
    raise_nofile(args.agents)?;
    let (payload, original_after) = push_payload(None)?;
    let gateway_bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => build_gateway()?,
    };
    let dir = tempfile::Builder::new()
        .prefix("orcastrate-bench-revert-")
        .tempdir()?;
    let run_id = std::process::id();
    let secret = format!("bench-secret-{run_id}");
    let (http_addr, mqtt_addr) = (free_addr(), free_addr());
    let names = bench_clients(args.agents, run_id);
    let mut config = format!(
        "data_dir = {:?}\n[http]\nlisten = \"{http_addr}\"\n[mqtt]\nlisten = \"{mqtt_addr}\"\n\
         [github]\nsecret = \"{secret}\"\n[admin]\ntokens = [\"{ADMIN}\"]\n\
         [[repos]]\nname = \"{REPO}\"\nbranches = {{ master = \"{ENV}\" }}\n\
         [repos.rollout.{ENV}]\nwaves = [\"{}\", \"100%\"]\nhold_s = 600\n",
        dir.path().join("data").display().to_string(),
        names[0].0
    );
    config.push_str(&clients_toml(&names));
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.path().join("gateway.log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let gateway = start_gateway(&runtime, &gateway_bin, &log_path, http_addr, |c| {
        c.arg("--config").arg(&config_path);
    })?;
    // The key the gateway created on its first start, as an operator gets it.
    let key = std::process::Command::new(&gateway_bin)
        .args(["public-key", "--config"])
        .arg(&config_path)
        .output()?;
    ensure!(key.status.success(), "public-key failed: {key:?}");
    let verifier = OrderVerifier::new(&[String::from_utf8(key.stdout)?.trim()])?;
    let run = Run {
        agents: args.agents,
        names: &names,
        verifier: &verifier,
        url: format!("mqtt://{mqtt_addr}"),
        http_addr,
        push: numbered_push(0, run_id, &payload, &original_after, &secret, "/webhook"),
    };
    let (revert, started) = measure_then_stop(runtime, gateway, &log_path, measure(&run))?;
    let revert_ms = ms(revert);
    println!(
        "fleet-wide revert: a bad push fails on the canary of {} simulated agents",
        args.agents
    );
    println!("  canary rolled_back → revert order at the canary   {revert_ms:.1} ms");
    println!(
        "  agents that ever started the bad sha               {started} of {}",
        args.agents
    );
    summary_row(
        &format!(
            "revert order after the canary fails ({} agents)",
            args.agents
        ),
        &format!("{revert_ms:.0} ms"),
        &format!("< {TARGET_REVERT_MS:.0} ms"),
        Some(revert_ms < TARGET_REVERT_MS),
    );
    summary_row(
        &format!("agents that started the bad sha (of {})", args.agents),
        &started.to_string(),
        "1 (the canary)",
        Some(started == 1),
    );
    Ok(())
}
