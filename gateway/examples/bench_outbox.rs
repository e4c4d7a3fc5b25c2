//! The outbox under a receiver outage: 1,000 orders while GitHub's API (a local stand-in)
//! is down, then up: are all deployments delivered, in order, and does the webhook p99
//! during the outage stay what it is with the receiver up?
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_outbox -- --orders 1000
//! ```
//!
//! 1. Starts the real gateway binary (built with this example's profile) with `[github]
//!    token` and `api_url` pointing at a stand-in of GitHub's REST API (the test kit's
//!    recording receiver answering 201 with a deployment id).
//! 2. Baseline: `--orders` signed pushes over `--connections` connections with the stand-in
//!    up: webhook p50/p99; waits until every deployment arrived.
//! 3. Outage: the stand-in is stopped, `--orders` more pushes: webhook p50/p99 and how many
//!    messages wait in the outbox (`orcastrate_outbox_pending`).
//! 4. The stand-in comes back on the same port: the time until every deployment arrived,
//!    and a check that they came in order (`payload.seq` increasing) and once each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use orcastrate_testkit::receiver::{Answer, Receiver, Request};

#[path = "support/mod.rs"]
mod support;
use support::*;

#[derive(Debug, Parser)]
struct Args {
    /// Orders in each phase (baseline, outage).
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Concurrent webhook connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

fn github(r: &Request, n: usize) -> Answer {
    let _ = r;
    (201, vec![], format!("{{\"id\": {}}}", n + 1))
}

fn p(samples: &[Sample]) -> (f64, f64, usize) {
    let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    lat.sort();
    let ok = samples
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Accepted(Some(_))))
        .count();
    (ms(percentile(&lat, 50.0)), ms(percentile(&lat, 99.0)), ok)
}

fn wait_for(rx: &Receiver, n: usize, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while rx.got().len() < n {
        ensure!(
            start.elapsed() < within,
            "only {} of {n} deployments arrived within {within:?}",
            rx.got().len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.orders > 0 && args.connections > 0,
        "--orders and --connections must be at least 1"
    );
    let (payload, after) = push_payload(None)?;
    let bin = build_gateway()?;
    let dir = tempfile::tempdir()?;
    let (http, mqtt, api) = (free_addr(), free_addr(), free_addr());
    let secret = "bench-outbox-secret";
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[github]\nsecret = \"{secret}\"\ntoken = \"bench-token\"\napi_url = \"http://{api}\"\n\
             [[repos]]\nname = \"codertocat/hello-world\"\nbranches = {{ master = \"production\" }}\n",
            dir.path().join("data").display()
        ),
    )?;
    let log = dir.path().join("gateway.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut gw = spawn_gateway(&bin, &log, |c| {
        c.arg("--config").arg(&config).args([
            "--http-listen",
            &http.to_string(),
            "--mqtt-listen",
            &mqtt.to_string(),
        ]);
    })?;
    rt.block_on(wait_ready(http, &mut gw.0))
        .with_context(|| tail(&log, 20))?;
    let wire = |from: usize| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (from..from + args.orders)
                .map(|i| {
                    numbered_push(i, std::process::id(), &payload, &after, secret, "/webhook").wire
                })
                .collect(),
        )
    };

    let rx = Receiver::start(api.port(), github);
    let (base, _) = rt.block_on(run_load(http, wire(0), args.connections))?;
    wait_for(&rx, args.orders, Duration::from_secs(600))?;
    drop(rx);

    let (outage, _) = rt.block_on(run_load(http, wire(args.orders), args.connections))?;
    std::thread::sleep(Duration::from_secs(1));
    let (_, metrics) = rt.block_on(get(http, "/metrics"))?;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let pending = metrics
        .lines()
        .find(|l| l.starts_with("orcastrate_outbox_pending{"))
        .unwrap_or("orcastrate_outbox_pending (none)")
        .to_owned();

    let back = Instant::now();
    let rx = Receiver::start(api.port(), github);
    let drained = wait_for(&rx, args.orders, Duration::from_secs(600))?;
    std::thread::sleep(Duration::from_secs(1));
    let got = rx.got();
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|r| r.json()["payload"]["seq"].as_u64())
        .collect();
    let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
    let (b50, b99, bok) = p(&base);
    let (o50, o99, ook) = p(&outage);
    println!(
        "orders per phase: {}, connections: {}",
        args.orders, args.connections
    );
    println!("webhooks, receiver up:   p50 {b50:.2} ms, p99 {b99:.2} ms, {bok} accepted");
    println!("webhooks, receiver down: p50 {o50:.2} ms, p99 {o99:.2} ms, {ook} accepted");
    println!("outbox at the end of the outage: {pending}");
    println!(
        "after the receiver came back: {} deployments in {:.1} s ({:.1} s since it was up), in order: {in_order}, exactly once: {}",
        got.len(),
        drained.as_secs_f64(),
        back.elapsed().as_secs_f64(),
        got.len() == args.orders
    );
    ensure!(
        bok == args.orders && ook == args.orders,
        "not every webhook was accepted"
    );
    ensure!(
        in_order && got.len() == args.orders,
        "deployments out of order or repeated"
    );
    Ok(())
}
