//! The outbox under a receiver outage: 1,000 orders while GitHub's API (a local stand-in)
//! is down, then up: are all deployments delivered, in order, and does the webhook p99
//! during the outage stay what it is without any destination? And what a destination costs
//! each agent status on the sequencer's path.
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_outbox -- --orders 1000
//! ```
//!
//! 1. Status cost (in-process, no gateway): `--agents` agents of one repo/env each report
//!    `deploying` then `healthy` for one order, recorded in sequencer-sized transactions
//!    on a real ledger, with and without the outbox's facts (`on_status`): statuses/s each.
//! 2. The real gateway binary (built with this example's profile) with `[github] token` and
//!    `api_url` pointing at a stand-in of GitHub's REST API (the test kit's recording
//!    receiver answering 201 with a deployment id), up: `--orders` signed pushes over
//!    `--connections` connections, webhook p50/p99 while deliveries run; waits until every
//!    deployment arrived.
//! 3. Outage: the stand-in is stopped, `--orders` more pushes, alternating in chunks of
//!    [`CHUNK`] with as many to a second gateway without any destination: webhook p50/p99
//!    of each, and how many messages wait in the outbox (the ledger, and
//!    `orcastrate_outbox_pending` as of the worker's last try).
//! 4. The stand-in comes back on the same port: the time until every deployment arrived,
//!    and a check that they came in order (`payload.seq` increasing) and once each.
//!
//! Every webhook of every phase must be answered 202 with an order (checked before waiting
//! for the deployments: a refused one would never arrive).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Parser;
use orcastrate_broker::{AgentState, AgentStatus, DeployOrder};
use orcastrate_gateway::{ledger, outbox};
use orcastrate_testkit::receiver::{Answer, Receiver, Request};
use serde_json::json;

#[path = "support/mod.rs"]
mod support;
use support::*;

#[derive(Debug, Parser)]
struct Args {
    /// Orders in each phase (no destination, receiver up, receiver down).
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Concurrent webhook connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Agents of the status-cost measure (0: skip it).
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Only the status-cost measure (no gateway).
    #[arg(long)]
    statuses_only: bool,
    /// Gateway binary to measure; by default it is built with cargo first.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
}

/// Statuses per ledger transaction in the status-cost measure: a sequencer batch under a
/// fleet's burst (it takes up to 512).
const BATCH: usize = 64;
/// Runs of the status-cost measure, with and without facts alternating.
const ROUNDS: usize = 5;
/// Webhooks per turn when the outage and the gateway without a destination alternate.
const CHUNK: usize = 100;
/// How long the deployments may take to arrive, from the receiver up.
const DRAIN_WITHIN: Duration = Duration::from_secs(300);

fn github(r: &Request, n: usize) -> Answer {
    let _ = r;
    (201, vec![], format!("{{\"id\": {}}}", n + 1))
}

/// p50 and p99 in ms; fails unless every webhook got its 202 with an order.
fn p(samples: &[Sample], phase: &str) -> anyhow::Result<(f64, f64)> {
    let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    lat.sort();
    let refused: Vec<String> = samples
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Accepted(Some(_)) => None,
            Outcome::Accepted(None) => Some(format!("#{}: no order", s.index)),
            Outcome::Status(code, body) => {
                Some(format!("#{}: {code} {}", s.index, truncate(body, 200)))
            }
            Outcome::Io(e) => Some(format!("#{}: {e}", s.index)),
        })
        .collect();
    ensure!(
        refused.is_empty(),
        "{phase}: {} of {} webhooks got no order, first: {}",
        refused.len(),
        samples.len(),
        refused[0]
    );
    Ok((ms(percentile(&lat, 50.0)), ms(percentile(&lat, 99.0))))
}

fn wait_for(rx: &Receiver, n: usize, log: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while rx.got().len() < n {
        ensure!(
            start.elapsed() < DRAIN_WITHIN,
            "only {} of {n} deployments arrived within {DRAIN_WITHIN:?}; the gateway's log ends:\n{}",
            rx.got().len(),
            tail(log, 20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// A running gateway binary and what the load needs.
struct Gateway {
    http: std::net::SocketAddr,
    log: std::path::PathBuf,
    _child: ChildGuard,
}

/// Starts a gateway in `dir` whose `[github]` section ends with `github`.
fn start_in(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    secret: &str,
    github: &str,
) -> anyhow::Result<Gateway> {
    let (http, mqtt) = (free_addr(), free_addr());
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[github]\nsecret = \"{secret}\"\n{github}\
             [[repos]]\nname = \"codertocat/hello-world\"\nbranches = {{ master = \"production\" }}\n",
            dir.join("data").display()
        ),
    )?;
    let log = dir.join("gateway.log");
    let gw = start_gateway(rt, bin, &log, http, |c| {
        c.arg("--config").arg(&config).args([
            "--http-listen",
            &http.to_string(),
            "--mqtt-listen",
            &mqtt.to_string(),
        ]);
    })?;
    Ok(Gateway {
        http,
        log,
        _child: gw,
    })
}

/// What the status-cost measure found: statuses per second without and with facts.
struct StatusCost {
    without: f64,
    with: f64,
}

impl StatusCost {
    fn overhead_pct(&self) -> f64 {
        (self.without / self.with - 1.0) * 100.0
    }
}

/// `agents` agents report `deploying` then `healthy` for one order, recorded as the
/// sequencer records them (ledger, transactions of [`BATCH`]), with or without the
/// outbox's facts; the best of [`ROUNDS`] runs each, in statuses per second.
fn status_cost(agents: usize, fsync: bool) -> anyhow::Result<StatusCost> {
    let order: DeployOrder = serde_json::from_value(json!({
        "v": 1, "seq": 1, "repo": "acme/web", "env": "production", "sha": "a".repeat(40),
        "ref": "refs/heads/main", "kind": "push", "delivery": "d-1",
        "issued_at": "2026-11-30T00:00:00.000Z", "issued_by": "octocat", "key_id": "k",
        "sig": "s".repeat(88),
    }))?;
    let mut statuses = Vec::with_capacity(2 * agents);
    for state in [AgentState::Deploying, AgentState::Healthy] {
        for i in 0..agents {
            let status: AgentStatus = serde_json::from_value(json!({
                "v": 1, "agent": format!("web-{i:05}"), "host": format!("host-{i:05}"),
                "repo": "acme/web", "env": "production", "session": "s1", "state": state,
                "seq": 1, "sha": "a".repeat(40), "running_sha": "a".repeat(40),
                "updated_at": "2026-11-30T00:00:01.000Z", "version": "bench", "mac": "m".repeat(64),
            }))?;
            let payload = serde_json::to_string(&status)?;
            statuses.push((status, payload));
        }
    }
    let run = |facts: bool| -> anyhow::Result<Duration> {
        let dir = tempfile::tempdir()?;
        let mut conn = ledger::open(&dir.path().join("ledger.db"))?;
        if !fsync {
            conn.pragma_update(None, "synchronous", "OFF")?;
        }
        ledger::insert_order(&conn, &order, &serde_json::to_string(&order)?)?;
        let start = Instant::now();
        for chunk in statuses.chunks(BATCH) {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (status, payload) in chunk {
                ledger::record_status(&tx, status, payload)?;
                if facts {
                    outbox::on_status(&tx, status)?;
                }
            }
            tx.commit()?;
        }
        let took = start.elapsed();
        if facts {
            let success = ledger_count(
                &conn,
                "SELECT COUNT(*) FROM outbox WHERE fact LIKE '%\"state\":\"success\"%'",
            )?;
            ensure!(
                success == 1,
                "the order's success was written {success} times, not once"
            );
        }
        Ok(took)
    };
    // Alternating runs, the best of each: the disk's fsync time (one per transaction)
    // varies more between runs than the facts cost.
    let (mut without, mut with) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        without = without.min(run(false)?);
        with = with.min(run(true)?);
    }
    let per_s = |d: Duration| statuses.len() as f64 / d.as_secs_f64();
    Ok(StatusCost {
        without: per_s(without),
        with: per_s(with),
    })
}

/// What the outage run found.
struct Outage {
    none: (f64, f64),
    up: (f64, f64),
    down: (f64, f64),
    pending: String,
    drained: Duration,
    delivered: usize,
    in_order: bool,
}

fn outage(args: &Args) -> anyhow::Result<Outage> {
    let (payload, after) = push_payload(None)?;
    let bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => build_gateway()?,
    };
    let secret = "bench-outbox-secret";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let wire = |from: usize| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (from..from + args.orders)
                .map(|i| {
                    numbered_push(i, std::process::id(), &payload, &after, secret, "/webhook").wire
                })
                .collect(),
        )
    };

    let dir = tempfile::tempdir()?;
    let api = free_addr();
    let token = format!("token = \"bench-token\"\napi_url = \"http://{api}\"\n");
    let gw = start_in(&rt, &bin, dir.path(), secret, &token)?;
    let rx = Receiver::start(api.port(), github);
    let (up, _) = rt.block_on(run_load(gw.http, wire(0), args.connections))?;
    let up = p(&up, "receiver up")?;
    wait_for(&rx, args.orders, &gw.log)?;
    drop(rx);

    // The outage and a gateway without a destination, in alternating chunks, so that both
    // see the same machine (other work on it moves the figures more than the outbox does).
    let plain_dir = tempfile::tempdir()?;
    let plain = start_in(&rt, &bin, plain_dir.path(), secret, "")?;
    // Its first requests (a new process and ledger) would count against it otherwise.
    let warm = Arc::new(wire(2 * args.orders)[..CHUNK.min(args.orders)].to_vec());
    p(
        &rt.block_on(run_load(plain.http, warm, args.connections))?.0,
        "warm-up",
    )?;
    let (none_wire, down_wire) = (wire(0), wire(args.orders));
    let (mut none, mut down) = (Vec::new(), Vec::new());
    for from in (0..args.orders).step_by(CHUNK) {
        let to = (from + CHUNK).min(args.orders);
        for (addr, wire, into) in [
            (plain.http, &none_wire, &mut none),
            (gw.http, &down_wire, &mut down),
        ] {
            let chunk = Arc::new(wire[from..to].to_vec());
            into.extend(rt.block_on(run_load(addr, chunk, args.connections))?.0);
        }
    }
    drop(plain);
    let none = p(&none, "no destination")?;
    let down = p(&down, "receiver down")?;
    std::thread::sleep(Duration::from_secs(1));
    let (_, metrics) = rt.block_on(get(gw.http, "/metrics"))?;
    let gauge = String::from_utf8_lossy(&metrics)
        .lines()
        .find(|l| l.starts_with("orcastrate_outbox_pending{"))
        .unwrap_or("orcastrate_outbox_pending (none)")
        .to_owned();
    // The gauge is set at each try, so it may lag by one backoff; the ledger tells now.
    let waiting = ledger_count(
        &open_ledger(&dir.path().join("data/ledger.db"))?,
        "SELECT COUNT(*) FROM outbox o JOIN outbox_cursor c ON o.id > c.last_id",
    )?;
    let pending = format!("{waiting} messages in the ledger; /metrics at the last try: {gauge}");

    let rx = Receiver::start(api.port(), github);
    let drained = wait_for(&rx, args.orders, &gw.log)?;
    std::thread::sleep(Duration::from_secs(1));
    let seqs: Vec<u64> = rx
        .got()
        .iter()
        .filter_map(|r| r.json()["payload"]["seq"].as_u64())
        .collect();
    Ok(Outage {
        none,
        up,
        down,
        pending,
        drained,
        delivered: seqs.len(),
        in_order: seqs.windows(2).all(|w| w[0] < w[1]),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.orders > 0 && args.connections > 0,
        "--orders and --connections must be at least 1"
    );
    if args.agents > 0 {
        let c = status_cost(args.agents, true)?;
        let overhead = c.overhead_pct();
        println!(
            "statuses of {} agents (deploying, healthy), {BATCH} per transaction: {:.0}/s without a destination, {:.0}/s with one ({overhead:+.1} %)",
            args.agents, c.without, c.with
        );
        // Without the fsync per transaction: what the facts cost the CPU alone.
        let cpu = status_cost(args.agents, false)?;
        let extra_us = (1.0 / cpu.with - 1.0 / cpu.without) * 1e6;
        println!(
            "the same without fsync: {:.0}/s without, {:.0}/s with ({:+.1} %, {extra_us:.1} µs per status)",
            cpu.without,
            cpu.with,
            cpu.overhead_pct()
        );
        summary_row(
            &format!(
                "outbox: status cost with a destination, {} agents",
                args.agents
            ),
            &format!(
                "{:.0} vs {:.0} statuses/s ({overhead:+.1} %); {extra_us:.1} µs of CPU per status",
                c.with, c.without
            ),
            "≤ 10 %",
            Some(overhead <= 10.0),
        );
    }
    if args.statuses_only {
        return Ok(());
    }
    let o = outage(&args)?;
    let n = args.orders;
    println!("orders per phase: {n}, connections: {}", args.connections);
    for (what, (p50, p99)) in [
        ("no destination", o.none),
        ("receiver up", o.up),
        ("receiver down", o.down),
    ] {
        println!("webhooks, {what:<15} p50 {p50:.2} ms, p99 {p99:.2} ms, {n} accepted");
    }
    println!("outbox at the end of the outage: {}", o.pending);
    let once = o.delivered == n;
    println!(
        "after the receiver came back: {} deployments in {:.1} s, in order: {}, exactly once: {once}",
        o.delivered,
        o.drained.as_secs_f64(),
        o.in_order
    );
    summary_row(
        &format!("outbox: {n} orders during a receiver outage, then up"),
        &format!(
            "{} delivered{}, {:.1} s after it came back",
            o.delivered,
            if o.in_order {
                " in order"
            } else {
                " OUT OF ORDER"
            },
            o.drained.as_secs_f64()
        ),
        "all, in order, once",
        Some(once && o.in_order),
    );
    let (none99, down99) = (o.none.1, o.down.1);
    // Identical phases differ by up to that much between runs on a shared 2-core machine.
    summary_row(
        "outbox: webhook p99 during the outage vs no destination",
        &format!("{down99:.2} vs {none99:.2} ms"),
        "unchanged (≤ 1.5×)",
        Some(down99 <= none99 * 1.5),
    );
    ensure!(
        o.in_order && once,
        "deployments out of order, lost or repeated"
    );
    Ok(())
}
