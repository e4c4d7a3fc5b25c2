//! Run with
//!
//! ```text
//! cargo run --release -p orcastrate-agent --example bench_proxy [-- ROLLBACKS]
//! ```
//!
//! What `[proxy]` costs and buys (issue 16), with the agent in-process against a real
//! embedded broker, a real git origin and the trivial Node test service:
//!
//! - requests/s and p50/p99 latency of one request per new connection (4 clients), direct
//!   to the app's private port and through the agent's proxy, in the same run;
//! - failed or refused requests of those 4 clients during ROLLBACKS (default 20) back-to-back
//!   rollbacks, without `[proxy]` (the old app is stopped before the new one starts) and
//!   with it (blue/green), and the median order → `healthy` time of a switch.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orcastrate_agent::config::ProxyFile;
use orcastrate_broker::OrderKind;
use orcastrate_testkit::app::http_get;
use orcastrate_testkit::{app, free_port};

#[path = "support/orders.rs"]
mod orders;
#[path = "support/mod.rs"]
mod support;

use orders::{summary_row, Bench, Setup};

const CLIENTS: usize = 4;
const REQUESTS: usize = 2000;

/// `CLIENTS` threads sending one request per new connection to `port` until stopped;
/// returns (ok, failed, latencies in µs).
fn load(
    port: u16,
    stop: Arc<AtomicBool>,
    limit: Option<usize>,
) -> std::thread::JoinHandle<(usize, usize, Vec<u64>)> {
    std::thread::spawn(move || {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut lat) = (0, 0, Vec::new());
                    while !stop.load(Ordering::SeqCst) && limit.is_none_or(|l| ok + failed < l) {
                        let t = Instant::now();
                        match http_get(port, "/") {
                            Some((200, _)) => ok += 1,
                            _ => failed += 1,
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    (ok, failed, lat)
                })
            })
            .collect();
        let mut all = (0, 0, Vec::new());
        for c in clients {
            let (ok, failed, lat) = c.join().unwrap();
            all.0 += ok;
            all.1 += failed;
            all.2.extend(lat);
        }
        all
    })
}

/// Requests/s, p50 and p99 (ms) of `REQUESTS` requests per client to `port`.
fn throughput(port: u16) -> (f64, f64, f64) {
    let t = Instant::now();
    let (ok, _, mut lat) = load(port, Arc::new(AtomicBool::new(false)), Some(REQUESTS))
        .join()
        .unwrap();
    let rps = ok as f64 / t.elapsed().as_secs_f64();
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    (rps, at(0.5), at(0.99))
}

/// Runs the agent (proxied if `public`), deploys v1 and v2, then `rollbacks` switches
/// between them under load; returns (failed requests, ok requests, median switch ms).
async fn switches(
    dir: &Path,
    public: Option<u16>,
    rollbacks: usize,
    measure: bool,
) -> anyhow::Result<(usize, usize, f64)> {
    let mut bench = Bench::start(
        dir,
        Setup {
            root: dir.join("root"),
            logins: &[],
            install: "",
            health: match public {
                Some(_) => |_| "http://127.0.0.1:{port}/health".to_owned(),
                None => |port| format!("http://127.0.0.1:{port}/health"),
            },
            proxy: public.map(|p| ProxyFile {
                listen: Some(format!("127.0.0.1:{p}")),
                drain_s: Some(5),
                ..ProxyFile::default()
            }),
        },
    )
    .await?;
    let app_port = bench.app_port;
    let v1 = app::commit(&bench.origin, "v1", app_port, &[]);
    let v2 = app::commit(&bench.origin, "v2", app_port, &[]);
    for sha in [&v1, &v2] {
        bench.order(sha, OrderKind::Push).await?;
    }
    let port = public.unwrap_or(app_port);
    if measure {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("root/state.json"))?)?;
        let private = state["app"]["port"]
            .as_u64()
            .context("the app's private port")? as u16;
        let (d_rps, d50, d99) = throughput(private);
        let (p_rps, p50, p99) = throughput(port);
        println!("one request per new connection, {CLIENTS} clients x {REQUESTS}:");
        println!(
            "  direct to the app     {d_rps:>7.0} req/s   p50 {d50:>6.2} ms   p99 {d99:>6.2} ms"
        );
        println!(
            "  through the proxy     {p_rps:>7.0} req/s   p50 {p50:>6.2} ms   p99 {p99:>6.2} ms"
        );
        summary_row(
            "agent proxy: latency added per request (p50, new connection each)",
            &format!("{:.2} ms ({:.0} vs {:.0} req/s)", p50 - d50, p_rps, d_rps),
            "small",
            true,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, stop.clone(), None);
    let mut times = Vec::new();
    for i in 0..rollbacks {
        let sha = if i % 2 == 0 { &v1 } else { &v2 };
        let (t, _) = bench.order(sha, OrderKind::Rollback).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, _) = clients.join().unwrap();
    bench.stop().await?;
    times.sort_by(f64::total_cmp);
    Ok((failed, ok, times[times.len() / 2]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rollbacks: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let without = tempfile::tempdir()?;
    let (f0, ok0, t0) = switches(without.path(), None, rollbacks, false).await?;
    let with = tempfile::tempdir()?;
    let (f1, ok1, t1) = switches(with.path(), Some(free_port()), rollbacks, true).await?;
    println!("{rollbacks} back-to-back rollbacks under load ({CLIENTS} clients):");
    println!("  without [proxy]   {f0:>5} failed of {:>6} requests   switch (order -> healthy) median {t0:>6.0} ms", f0 + ok0);
    println!("  with [proxy]      {f1:>5} failed of {:>6} requests   switch (order -> healthy) median {t1:>6.0} ms", f1 + ok1);
    summary_row(
        &format!("agent proxy: failed requests during {rollbacks} rollbacks (without: {f0})"),
        &f1.to_string(),
        "0",
        f1 == 0,
    );
    Ok(())
}
