//! Run with
//!
//! ```text
//! cargo build --release -p orcastrate-agent
//! cargo run --release -p orcastrate-agent --example bench_refusals [-- ORDERS]
//! ```
//!
//! What a flood of forged orders costs the agent (issue 10, finding 11): the release agent
//! binary against a real embedded broker, and a client with a token that publishes ORDERS
//! (default 76,600) forged orders on the agent's `desired` topic as fast as it can, nine in
//! ten signed by an unknown key and one in ten with the gateway's key id and a signature
//! over other fields (which costs a verification). Prints the agent's CPU time (from
//! `/proc`), how many orders it refused (its log counts them) and how many WARN lines that
//! took.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use orcastrate_broker::embedded::EmbeddedBroker;
use orcastrate_broker::{AgentState, AgentStatus, DeployOrder, OrderKind, OrderSigner, Topics};
use orcastrate_testkit::free_port;

#[path = "support/mod.rs"]
mod support;

const REPO: &str = "bench/web";
const ENV: &str = "production";
const AGENT: &str = "bench-1";
const TOKEN: &str = "bench-token";
const ATTACKER: &str = "attacker";

/// User + system CPU time of `pid`, from `/proc/{pid}/stat` (in clock ticks of 10 ms).
fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// (WARN lines about refusals, refusals they account for).
fn tally(log: &Path) -> (usize, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (lines, refused) = orcastrate_testkit::logs::tally(&text, "WARN", "refused");
    (lines.len(), refused)
}

/// The release agent, configured with `gateway`'s key, logging to `dir/agent.log`.
fn spawn_agent(
    binary: &Path,
    dir: &Path,
    mqtt_port: u16,
    gateway: &OrderSigner,
) -> anyhow::Result<std::process::Child> {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{AGENT}\"\nserver = \"mqtt://127.0.0.1:{mqtt_port}\"\ntoken = \"{TOKEN}\"\n\
             repo = \"{REPO}\"\nenv = \"{ENV}\"\nroot = \"root\"\ngit_url = \"/nonexistent\"\n\
             gateway_public_keys = [\"{}\"]\n",
            gateway.public_key_base64()
        ),
    )?;
    let log = dir.join("agent.log");
    let agent = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "orcastrate_agent=info,warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    Ok(agent)
}

/// Two forged orders: one signed by an unknown key, one whose signature no longer matches.
fn forged_orders(gateway: &OrderSigner) -> (DeployOrder, DeployOrder) {
    let mut forged = DeployOrder {
        git_ref: Some("refs/heads/main".into()),
        ..DeployOrder::new(0, REPO, ENV, &"ab".repeat(20), OrderKind::Manual)
    };
    let mut unknown_key = forged.clone();
    OrderSigner::generate().sign(&mut unknown_key);
    gateway.sign(&mut forged);
    let mut bad_signature = forged;
    bad_signature.sha = "cd".repeat(20);

    (unknown_key, bad_signature)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orders: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(76_600);
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/orcastrate-agent");
    if !binary.exists() {
        bail!(
            "{} is missing: cargo build --release -p orcastrate-agent",
            binary.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let mqtt_port = free_port();
    let EmbeddedBroker {
        mut publisher,
        mut receiver,
        ..
    } = support::open_broker(mqtt_port, &[(AGENT, TOKEN), (ATTACKER, TOKEN)])?;
    let topics = Topics::default();
    publisher.subscribe(&topics.status(REPO, ENV, AGENT))?;
    let (idle_tx, idle) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut idle_tx = Some(idle_tx);
        while let Ok(msg) = receiver.recv().await {
            if let Ok(s) = serde_json::from_slice::<AgentStatus>(&msg.payload) {
                if s.state == AgentState::Idle {
                    if let Some(tx) = idle_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });

    let gateway = OrderSigner::generate();
    let mut agent = spawn_agent(&binary, dir.path(), mqtt_port, &gateway)?;
    let pid = agent.id();
    tokio::time::timeout(Duration::from_secs(30), idle)
        .await
        .context("the agent did not report idle")??;
    // Past the settle wait of a new host.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (unknown_key, bad_signature) = forged_orders(&gateway);

    let options = orcastrate_broker::mqtt::client_options(
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        ATTACKER,
        ATTACKER,
        TOKEN,
    )?;
    let (client, mut eventloop) = orcastrate_broker::mqtt::async_client(options, 10_000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let desired = topics.desired(REPO, ENV);
    let cpu_before = cpu(pid)?;
    let began = Instant::now();
    for i in 0..orders {
        let mut order = if i % 10 == 0 {
            bad_signature.clone()
        } else {
            unknown_key.clone()
        };
        order.seq = 10_000_000 + i;
        client
            .publish(
                &desired,
                rumqttc::QoS::AtMostOnce,
                false,
                serde_json::to_vec(&order)?,
            )
            .await?;
    }
    let sent_in = began.elapsed();
    // Until the agent is done: its CPU time stops growing.
    let mut last = cpu(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = cpu(pid)?;
        if now == last {
            break;
        }
        last = now;
    }
    let used = last - cpu_before;
    let (lines, refused) = tally(&dir.path().join("agent.log"));
    let _ = agent.kill();
    let _ = agent.wait();

    println!("orcastrate-agent: a flood of forged orders (release binary, embedded broker)");
    println!("  forged orders published   {orders} in {sent_in:.2?} (QoS 0)");
    println!(
        "  refused by the agent      {refused} (the broker drops what a slow subscriber misses)"
    );
    println!("  agent CPU time            {used:.2?}");
    if refused > 0 {
        println!(
            "  per refusal               {:.1} µs",
            used.as_secs_f64() * 1e6 / refused as f64
        );
    }
    println!("  WARN lines about them     {lines}");
    Ok(())
}
