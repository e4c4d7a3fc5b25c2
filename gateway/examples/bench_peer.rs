//! The gateway's webhook path beside a peer: the same signed push load against the
//! orcastrate gateway and against `adnanh/webhook` (Debian package `webhook`), one table.
//!
//! Run with, from anywhere in the workspace:
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_peer -- --requests 20000 --connections 32
//! ```
//!
//! What it does:
//!
//! 1. Builds the gateway binary (as `bench_webhooks` does; `--gateway-bin PATH` skips it),
//!    starts it on free loopback ports with a fresh temporary `data_dir`
//!    (`GITHUB_SECRET`, `ORCASTRATE_REPOS=codertocat/hello-world@master=production`) and
//!    sends `--requests` signed push deliveries over `--connections` keep-alive connections
//!    (GitHub's push example, a distinct `after` sha and `X-GitHub-Delivery` each). Every
//!    answer counted as a success is a 202 with a `seq`: a durable, published order.
//! 2. Starts `webhook -hooks hooks.json -port P -ip 127.0.0.1` (`--webhook-bin`, default
//!    `/usr/bin/webhook`; `apt-get install -y webhook`) with an equivalent hook: a
//!    `payload-hmac-sha256` trigger rule on `X-Hub-Signature-256` with the same secret, and
//!    `execute-command: /bin/true`; and sends the very same requests to `/hooks/<id>`
//!    (success: 200).
//! 3. Prints both side by side: req/s, p50, p99, max, errors, RSS after the run, and the
//!    ratios gateway/peer for req/s and p99, beside the targets (at least the peer's req/s,
//!    at most half its p99).
//!
//! Both servers share the machine's cores with the load generator, and run one after the
//! other, never at the same time.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Parser;

#[path = "support/mod.rs"]
mod support;
use support::*;

/// The repo/env the fixture's push deploys to.
/// The peer's hook id (URL `/hooks/<id>`).
const HOOK_ID: &str = "orcastrate-bench";

/// The gateway beside adnanh/webhook (see the example's documentation).
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    load: support::WebhookLoad,
    /// The peer's binary (Debian package `webhook`).
    #[arg(long, default_value = "/usr/bin/webhook")]
    webhook_bin: PathBuf,
}

/// Figures of one server under the load.
struct Figures {
    requests: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    rps: f64,
    p50: f64,
    p99: f64,
    max: f64,
    rss_idle_mb: f64,
    rss_after_mb: f64,
    cpu: f64,
}

/// Starts `webhook` with a hook equivalent to the gateway's push route, once it answers.
fn start_peer(
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    dir: &std::path::Path,
    secret: &str,
    peer_addr: SocketAddr,
) -> anyhow::Result<ChildGuard> {
    let hooks_path = dir.join("hooks.json");
    let hooks = serde_json::json!([{
        "id": HOOK_ID,
        "execute-command": "/bin/true",
        "trigger-rule": {"match": {
            "type": "payload-hmac-sha256",
            "secret": secret,
            "parameter": {"source": "header", "name": "X-Hub-Signature-256"}
        }}
    }]);
    std::fs::write(&hooks_path, serde_json::to_vec_pretty(&hooks)?)?;
    let peer_log = dir.join("webhook.log");
    let mut peer = ChildGuard(
        Command::new(&args.webhook_bin)
            .arg("-hooks")
            .arg(&hooks_path)
            .arg("-port")
            .arg(peer_addr.port().to_string())
            .arg("-ip")
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&peer_log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", args.webhook_bin.display()))?,
    );
    // The peer has no health route: an unknown hook answers 404 once it listens.
    if let Err(e) = runtime.block_on(wait_answering(
        peer_addr,
        "/hooks/none",
        &[200, 404],
        &mut peer.0,
    )) {
        bail!(
            "webhook did not become ready: {e:#}\n{}",
            std::fs::read_to_string(&peer_log).unwrap_or_default()
        );
    }
    Ok(peer)
}

/// Both servers' figures side by side, with the targets.
fn print_table(args: &Args, g: &Figures, p: &Figures) {
    println!();
    println!(
        "signed push webhooks: {} requests over {} connections to each server, one after the other",
        args.load.requests, args.load.connections
    );
    println!(
        "  gateway: 202 with seq = durable (SQLite) and published order; webhook {}: 200 = hook ran /bin/true",
        args.webhook_bin.display()
    );
    println!();
    println!(
        "  {:<24} {:>12} {:>12} {:>10}",
        "", "orcastrate", "webhook", "ratio"
    );
    let line = |what: &str, a: String, b: String, ratio: String| {
        println!("  {what:<24} {a:>12} {b:>12} {ratio:>10}");
    };
    line(
        "ok / requests",
        format!("{}/{}", g.ok, g.requests),
        format!("{}/{}", p.ok, p.requests),
        String::new(),
    );
    line(
        "errors",
        g.errors.values().sum::<usize>().to_string(),
        p.errors.values().sum::<usize>().to_string(),
        String::new(),
    );
    // A figure of each server with `digits` decimals, and their ratio if it means something.
    let figure = |what: &str, g: f64, p: f64, digits: usize, ratio: bool| {
        let ratio = if ratio {
            format!("{:.2}", g / p)
        } else {
            String::new()
        };
        line(
            what,
            format!("{g:.digits$}"),
            format!("{p:.digits$}"),
            ratio,
        );
    };
    figure("req/s", g.rps, p.rps, 0, true);
    figure("p50 (ms)", g.p50, p.p50, 2, true);
    figure("p99 (ms)", g.p99, p.p99, 2, true);
    figure("max (ms)", g.max, p.max, 2, false);
    figure("RSS idle (MB)", g.rss_idle_mb, p.rss_idle_mb, 1, false);
    figure("RSS after (MB)", g.rss_after_mb, p.rss_after_mb, 1, true);
    figure("server CPU (s)", g.cpu, p.cpu, 2, false);
    print_targets(g, p);
}

/// The ratios beside the targets, and what went wrong.
fn print_targets(g: &Figures, p: &Figures) {
    println!();
    let rps_ok = g.rps >= p.rps;
    let p99_ok = g.p99 <= p.p99 / 2.0;
    println!(
        "  target req/s >= peer's:        {:.2}x  {}",
        g.rps / p.rps,
        if rps_ok { "ok" } else { "MISSED" }
    );
    println!(
        "  target p99 <= half the peer's: {:.2}x  {}",
        g.p99 / p.p99,
        if p99_ok { "ok" } else { "MISSED" }
    );
    summary_row(
        "signed pushes → durable order: req/s, gateway vs adnanh/webhook",
        &format!("{:.0} vs {:.0} ({:.2}×)", g.rps, p.rps, g.rps / p.rps),
        "≥ the peer's",
        Some(rps_ok),
    );
    summary_row(
        "the same: p50 / p99, gateway vs peer",
        &format!(
            "{:.1} / {:.1} ms vs {:.1} / {:.1} ms ({:.2}× the p99)",
            g.p50,
            g.p99,
            p.p50,
            p.p99,
            g.p99 / p.p99
        ),
        "p99 ≤ half the peer's",
        Some(p99_ok),
    );
    summary_row(
        "gateway RSS idle / after that load (peer after)",
        &format!(
            "{:.1} / {:.1} MB ({:.1} MB)",
            g.rss_idle_mb, g.rss_after_mb, p.rss_after_mb
        ),
        "< 30 / < 50 MB",
        Some(g.rss_idle_mb < 30.0 && g.rss_after_mb < 50.0),
    );
    for (who, f) in [("orcastrate", g), ("webhook", p)] {
        for (what, n) in &f.errors {
            println!("  {who} error x{n}: {what}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.load.validate()?;
    ensure!(
        args.webhook_bin.exists(),
        "{} not found: apt-get install -y webhook, or pass --webhook-bin",
        args.webhook_bin.display()
    );

    let (payload, original_after) = push_payload(None)?;
    let gateway_bin = args.load.gateway_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("orcastrate-bench-peer-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let secret = format!("bench-secret-{}", std::process::id());
    let run_id = std::process::id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // The gateway.
    let http_addr = free_addr();
    let mqtt_addr = free_addr();
    let peer_addr = free_addr();
    let log_path = dir.path().join("gateway.log");
    let data_dir = dir.path().join("data");
    let mut gateway = start_gateway(
        &runtime,
        &gateway_bin,
        &log_path,
        http_addr,
        env_configured(&data_dir, (http_addr, mqtt_addr), &secret),
    )?;
    let wire: Vec<Vec<u8>> = (0..args.load.requests)
        .map(|i| numbered_push(i, run_id, &payload, &original_after, &secret, "/webhook").wire)
        .collect();
    let gateway_figures = measure(&runtime, &mut gateway.0, http_addr, wire, &args)?;
    gateway.0.kill()?;
    gateway.0.wait()?;

    // The peer.
    let mut peer = start_peer(&runtime, &args, dir.path(), &secret, peer_addr)?;
    let path = format!("/hooks/{HOOK_ID}");
    let wire: Vec<Vec<u8>> = (0..args.load.requests)
        .map(|i| numbered_push(i, run_id, &payload, &original_after, &secret, &path).wire)
        .collect();
    let peer_figures = measure(&runtime, &mut peer.0, peer_addr, wire, &args)?;
    peer.0.kill()?;
    peer.0.wait()?;

    print_table(&args, &gateway_figures, &peer_figures);
    Ok(())
}

/// Sends the load to one running server and reads its figures.
fn measure(
    runtime: &tokio::runtime::Runtime,
    child: &mut Child,
    addr: SocketAddr,
    wire: Vec<Vec<u8>>,
    args: &Args,
) -> anyhow::Result<Figures> {
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let rss_idle = proc_status_kb(pid, "VmRSS")?;
    let cpu_before = proc_cpu_seconds(&format!("/proc/{pid}/stat"))?;
    let (samples, elapsed) =
        runtime.block_on(run_load(addr, Arc::new(wire), args.load.connections))?;
    let cpu = proc_cpu_seconds(&format!("/proc/{pid}/stat"))? - cpu_before;
    let rss_after = proc_status_kb(pid, "VmRSS")?;
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = 0;
    for s in &samples {
        match &s.outcome {
            Outcome::Accepted(_) => ok += 1,
            Outcome::Status(code, body) => {
                *errors
                    .entry(format!("HTTP {code}: {}", truncate(body, 160)))
                    .or_default() += 1;
            }
            Outcome::Io(e) => *errors.entry(format!("I/O: {e}")).or_default() += 1,
        }
    }
    Ok(Figures {
        requests: samples.len(),
        ok,
        errors,
        rps: samples.len() as f64 / elapsed.as_secs_f64(),
        p50: ms(percentile(&latencies, 50.0)),
        p99: ms(percentile(&latencies, 99.0)),
        max: ms(latencies.last().copied().unwrap_or_default()),
        rss_idle_mb: mb(rss_idle),
        rss_after_mb: mb(rss_after),
        cpu,
    })
}
