//! Load test of the gateway's webhook path: signed GitHub push deliveries in, durable orders out.
//!
//! Run with, from anywhere in the workspace:
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_webhooks -- --requests 20000 --connections 32
//! ```
//!
//! What it does:
//!
//! 1. Builds the real gateway binary with the same cargo, profile and target directory
//!    (`cargo build --release -p orcastrate-gateway --bin orcastrate-gateway`; a no-op when it
//!    is up to date), so the measured gateway is exactly what ships and runs in its own
//!    process, whose memory is not mixed with the load generator's. `--gateway-bin PATH`
//!    skips the build and measures that binary instead.
//! 2. Starts it on free loopback ports with a fresh temporary `data_dir`, configured from the
//!    environment alone: `GITHUB_SECRET`, and
//!    `ORCASTRATE_REPOS=codertocat/hello-world@master=production`. It waits for `/healthz`
//!    (HTTP, ledger and MQTT all up) and reads its idle RSS.
//! 3. Pre-builds every request from GitHub's own push example
//!    (`gateway/tests/fixtures/github/push__with-new-branch.payload.json`, a push to
//!    `refs/heads/master` of Codertocat/Hello-World): each gets a distinct `after` sha, a
//!    distinct `X-GitHub-Delivery` and its own `X-Hub-Signature-256` (HMAC-SHA256), so every
//!    one should be accepted as a new order (202 with a `seq`).
//! 4. Sends them over `--connections` keep-alive HTTP/1.1 connections, one request in flight
//!    per connection, timing each request from write to complete response.
//! 5. Prints throughput, latency percentiles and the gateway's RSS beside the targets, then
//!    kills the gateway with SIGKILL (a crash: no clean shutdown) and opens its SQLite ledger
//!    read-only to check that every delivery answered 202 has its delivery row and its order.
//!
//! The load generator shares the machine's cores with the gateway, so on a small machine the
//! figures are a lower bound. The temporary `data_dir` is deleted at the end unless `--keep`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use rusqlite::OptionalExtension;

#[path = "support/mod.rs"]
mod support;
use support::*;

/// The repo/env the fixture's push deploys to.
const REPO: &str = "codertocat/hello-world";
const ENV: &str = "production";

/// The targets printed beside the measured figures.
const TARGET_RPS: f64 = 3_500.0;
const TARGET_P99_MS: f64 = 30.0;
const TARGET_RSS_MB: f64 = 50.0;

/// Load test of the gateway's webhook path (see the example's documentation).
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    load: support::WebhookLoad,
    /// GitHub push payload to send (default: the push__with-new-branch fixture).
    #[arg(long)]
    payload: Option<PathBuf>,
    /// Webhook route.
    #[arg(long, default_value = "/webhook")]
    path: String,
    /// Keep the temporary data_dir (ledger and gateway log) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// The p50, p99 and max latency, in milliseconds.
fn latency_ms(samples: &[Sample]) -> (f64, f64, f64) {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let p50 = ms(percentile(&latencies, 50.0));
    let p99 = ms(percentile(&latencies, 99.0));
    let max = ms(latencies.last().copied().unwrap_or_default());
    (p50, p99, max)
}

/// The accepted requests (index, seq) and the errors by kind.
fn tally(samples: &[Sample]) -> (Vec<(usize, u64)>, BTreeMap<String, usize>) {
    let accepted: Vec<(usize, u64)> = samples
        .iter()
        .filter_map(|s| match s.outcome {
            Outcome::Accepted(seq) => Some((s.index, seq?)),
            _ => None,
        })
        .collect();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        match &s.outcome {
            Outcome::Accepted(_) => {}
            Outcome::Status(code, body) => {
                *errors
                    .entry(format!("HTTP {code}: {}", truncate(body, 160)))
                    .or_default() += 1;
            }
            Outcome::Io(e) => *errors.entry(format!("I/O: {e}")).or_default() += 1,
        }
    }
    (accepted, errors)
}

/// Where the figures come from, the ledger's group commits, and the errors.
fn print_notes(pid: u32, requests: usize, metrics: &str, errors: &BTreeMap<String, usize>) {
    println!("  (MB = 2^20 bytes, from /proc/{pid}/status VmRSS and VmHWM; CPU = utime + stime)");
    if let (Some(sum), Some(count)) = (
        metric(metrics, "orcastrate_ledger_commit_seconds_sum"),
        metric(metrics, "orcastrate_ledger_commit_seconds_count"),
    ) {
        if count > 0.0 {
            println!(
                "  ledger group commits: {count:.0} groups, {:.1} webhooks per group, {:.2} ms per group on average",
                requests as f64 / count,
                sum * 1e3 / count
            );
        }
    }
    for (what, n) in errors {
        println!("  error x{n}: {what}");
    }
}

/// What one run measured, printed as the table of figures.
struct Report<'a> {
    samples: &'a [Sample],
    elapsed: Duration,
    idle_rss: u64,
    rss_after: u64,
    rss_peak: u64,
    gateway_cpu: f64,
    client_cpu: f64,
    pid: u32,
    metrics: &'a str,
}

impl Report<'_> {
    /// Prints the figures beside the targets; returns the accepted requests (index, seq).
    fn print(&self, args: &Args) -> Vec<(usize, u64)> {
        let Self {
            samples,
            elapsed,
            idle_rss,
            rss_after,
            rss_peak,
            gateway_cpu,
            client_cpu,
            pid,
            metrics,
        } = *self;
        let (accepted, errors) = tally(samples);
        let error_count: usize = errors.values().sum();
        let rps = samples.len() as f64 / elapsed.as_secs_f64();
        let (p50, p99, max) = latency_ms(samples);
        let rss_after_mb = mb(rss_after);

        println!();
        row("", "measured", "target", None);
        row("requests", &samples.len().to_string(), "", None);
        row("connections", &args.load.connections.to_string(), "", None);
        row(
            "accepted (202 with seq)",
            &accepted.len().to_string(),
            &format!("{}", samples.len()),
            Some(accepted.len() == samples.len()),
        );
        row(
            "errors",
            &error_count.to_string(),
            "0",
            Some(error_count == 0),
        );
        row(
            "duration (s)",
            &format!("{:.2}", elapsed.as_secs_f64()),
            "",
            None,
        );
        row(
            "throughput (req/s)",
            &format!("{rps:.0}"),
            &format!(">= {TARGET_RPS:.0}"),
            Some(rps >= TARGET_RPS),
        );
        row("latency p50 (ms)", &format!("{p50:.2}"), "", None);
        row(
            "latency p99 (ms)",
            &format!("{p99:.2}"),
            &format!("< {TARGET_P99_MS:.0}"),
            Some(p99 < TARGET_P99_MS),
        );
        row("latency max (ms)", &format!("{max:.2}"), "", None);
        row(
            "gateway RSS idle (MB)",
            &format!("{:.1}", mb(idle_rss)),
            "",
            None,
        );
        row(
            "gateway RSS after (MB)",
            &format!("{rss_after_mb:.1}"),
            &format!("< {TARGET_RSS_MB:.0}"),
            Some(rss_after_mb < TARGET_RSS_MB),
        );
        row(
            "gateway RSS peak (MB)",
            &format!("{:.1}", mb(rss_peak)),
            "",
            None,
        );
        row("gateway CPU (s)", &format!("{gateway_cpu:.2}"), "", None);
        row(
            "gateway CPU per request (us)",
            &format!("{:.0}", gateway_cpu * 1e6 / samples.len() as f64),
            "",
            None,
        );
        row(
            "load generator CPU (s)",
            &format!("{client_cpu:.2}"),
            "",
            None,
        );
        summary_row(
            "signed pushes → durable order: req/s, p50 / p99",
            &format!("{rps:.0} req/s, {p50:.1} / {p99:.1} ms"),
            &format!("≥ {TARGET_RPS:.0} req/s, p99 < {TARGET_P99_MS:.0} ms"),
            Some(rps >= TARGET_RPS && p99 < TARGET_P99_MS && error_count == 0),
        );
        summary_row(
            "gateway RSS idle / after that load",
            &format!("{:.1} / {rss_after_mb:.1} MB", mb(idle_rss)),
            &format!("< 30 / < {TARGET_RSS_MB:.0} MB"),
            Some(mb(idle_rss) < 30.0 && rss_after_mb < TARGET_RSS_MB),
        );
        print_notes(pid, samples.len(), metrics, &errors);
        accepted
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.load.validate()?;

    let (payload, original_after) = push_payload(args.payload.as_deref())?;

    let gateway_bin = args.load.gateway_bin()?;

    let data = tempfile::Builder::new()
        .prefix("orcastrate-bench-")
        .tempdir()
        .context("cannot create a temporary data_dir")?;
    let data_dir = data.path().join("data");
    let log_path = data.path().join("gateway.log");
    let http_addr = free_addr();
    let mqtt_addr = free_addr();
    let secret = format!("bench-secret-{}", std::process::id());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut gateway = start_gateway(
        &runtime,
        &gateway_bin,
        &log_path,
        http_addr,
        env_configured(&data_dir, (http_addr, mqtt_addr), &secret),
    )?;
    let pid = gateway.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = proc_status_kb(pid, "VmRSS")?;

    println!("orcastrate-gateway webhook benchmark");
    println!("  gateway   {} (pid {pid})", gateway_bin.display());
    println!("  listens   http {http_addr}, mqtt {mqtt_addr}");
    println!("  data_dir  {}", data_dir.display());
    println!(
        "  payload   {} ({} bytes), a distinct after sha and X-GitHub-Delivery per request, HMAC-SHA256 signed",
        args.payload.as_deref().map_or_else(
            || "the push fixture".to_owned(),
            |p| p.display().to_string()
        ),
        payload.len()
    );

    let prepare_started = Instant::now();
    let run_id = std::process::id();
    let mut requests: Vec<Push> = (0..args.load.requests)
        .map(|i| numbered_push(i, run_id, &payload, &original_after, &secret, &args.path))
        .collect();
    println!(
        "  prepared  {} requests in {:.1} s; sending over {} connections",
        requests.len(),
        prepare_started.elapsed().as_secs_f64(),
        args.load.connections
    );
    let wire: Arc<Vec<Vec<u8>>> = Arc::new(
        requests
            .iter_mut()
            .map(|r| std::mem::take(&mut r.wire))
            .collect(),
    );

    let gateway_cpu_before = proc_cpu_seconds(&format!("/proc/{pid}/stat"))?;
    let client_cpu_before = proc_cpu_seconds("/proc/self/stat")?;
    let (samples, elapsed) = runtime.block_on(run_load(http_addr, wire, args.load.connections))?;
    let gateway_cpu = proc_cpu_seconds(&format!("/proc/{pid}/stat"))? - gateway_cpu_before;
    let client_cpu = proc_cpu_seconds("/proc/self/stat")? - client_cpu_before;
    let rss_after = proc_status_kb(pid, "VmRSS")?;
    let rss_peak = proc_status_kb(pid, "VmHWM")?;
    let metrics = runtime
        .block_on(get(http_addr, "/metrics"))
        .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default();

    // A crash, not a clean shutdown: what was answered 202 must already be in the ledger.
    gateway.0.kill().context("cannot kill the gateway")?;
    gateway.0.wait()?;

    let report = Report {
        samples: &samples,
        elapsed,
        idle_rss,
        rss_after,
        rss_peak,
        gateway_cpu,
        client_cpu,
        pid,
        metrics: &metrics,
    };
    let accepted = report.print(&args);
    let (warnings, log_errors, desired_rewrites) = scan_log(&log_path)?;
    println!(
        "  gateway log: {warnings} warnings ({desired_rewrites} \"desired topic differs from the ledger\"), {log_errors} errors"
    );

    let durable = print_durability(&data_dir, &requests, &accepted)?;

    if args.keep {
        let kept = data.keep();
        println!("  kept {} (ledger and gateway.log)", kept.display());
    }
    ensure!(durable, "durability check failed");
    Ok(())
}

/// Checks the ledger after the SIGKILL and prints what it holds; true if every accepted
/// delivery has its order.
fn print_durability(
    data_dir: &Path,
    requests: &[Push],
    accepted: &[(usize, u64)],
) -> anyhow::Result<bool> {
    let ledger_path = data_dir.join("ledger.db");
    let check = check_ledger(&ledger_path, requests, accepted)
        .with_context(|| format!("cannot check the ledger {}", ledger_path.display()))?;
    println!();
    println!(
        "  ledger after SIGKILL ({}, opened read-only)",
        ledger_path.display()
    );
    println!(
        "    deliveries {} (accepted {}), orders {} for {REPO}/{ENV}",
        check.deliveries, check.accepted_rows, check.orders
    );
    println!(
        "    accepted deliveries without their order row: {}",
        check.accepted_without_order
    );
    println!(
        "    202 answers not in the ledger with the same seq and sha: {}",
        check.answered_missing
    );
    let durable = check.accepted_without_order == 0 && check.answered_missing == 0;
    println!(
        "    check: {}",
        if durable {
            "PASS - every accepted delivery has its order"
        } else {
            "FAIL - accepted deliveries are missing from the ledger"
        }
    );
    Ok(durable)
}

fn row(what: &str, measured: &str, target: &str, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "",
    };
    println!("  {what:<28} {measured:>10}   {target:<10} {verdict}");
}

/// A sample's value from Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Counts warnings, errors and desired-topic rewrites in the gateway's log.
fn scan_log(path: &Path) -> anyhow::Result<(usize, usize, usize)> {
    let (mut warnings, mut errors, mut rewrites) = (0, 0, 0);
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        // Human log format; colour codes may surround the level.
        if line.contains(" WARN") {
            warnings += 1;
        }
        if line.contains(" ERROR") {
            errors += 1;
        }
        if line.contains("desired topic differs from the ledger") {
            rewrites += 1;
        }
    }
    Ok((warnings, errors, rewrites))
}

struct LedgerCheck {
    deliveries: u64,
    accepted_rows: u64,
    orders: u64,
    accepted_without_order: u64,
    answered_missing: u64,
}

/// Checks that every 202 answer is durable: its delivery row, with the same seq and sha,
/// and the order that delivery made.
fn check_ledger(
    path: &Path,
    requests: &[Push],
    accepted: &[(usize, u64)],
) -> anyhow::Result<LedgerCheck> {
    let conn = open_ledger(path)?;
    let count = |sql: &str| ledger_count(&conn, sql);
    let deliveries = count("SELECT COUNT(*) FROM deliveries")?;
    let accepted_rows = count("SELECT COUNT(*) FROM deliveries WHERE outcome = 'accepted'")?;
    let orders = count(&format!(
        "SELECT COUNT(*) FROM orders WHERE repo = '{REPO}' AND env = '{ENV}'"
    ))?;
    let accepted_without_order = accepted_without_order(&conn)?;
    let mut delivery = conn.prepare("SELECT seq, sha FROM deliveries WHERE id = ?1")?;
    let mut order = conn
        .prepare("SELECT 1 FROM orders WHERE repo = ?1 AND env = ?2 AND seq = ?3 AND sha = ?4")?;
    let mut answered_missing = 0;
    for &(index, seq) in accepted {
        let request = &requests[index];
        let seq = i64::try_from(seq)?;
        let row: Option<(Option<i64>, Option<String>)> = delivery
            .query_row([&request.delivery], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let recorded = row
            .is_some_and(|(s, sha)| s == Some(seq) && sha.as_deref() == Some(request.sha.as_str()));
        let ordered = order.exists(rusqlite::params![REPO, ENV, seq, request.sha])?;
        if !(recorded && ordered) {
            answered_missing += 1;
        }
    }
    Ok(LedgerCheck {
        deliveries,
        accepted_rows,
        orders,
        accepted_without_order,
        answered_missing,
    })
}
