//! Run with
//!
//! ```text
//! cargo build --release -p orcastrate-agent            # for the idle RSS line (optional)
//! cargo run --release -p orcastrate-agent --example bench_rollback [-- ROUNDS]
//! ```
//!
//! Benchmarks the agent against a real embedded broker, a real git origin and a trivial
//! Node service (`npm install` with no dependencies, `node server.js`):
//!
//! - push order → `healthy` for a new (cold) release, split into the agent's own work
//!   (order handling, fetch and checkout, stop, switch, statuses) and the user's own steps
//!   (`install`, `build`, the app's start until its health check passes);
//! - rollback order → previous (warm) release started, and → `healthy`.
//!
//! Times are measured where a watcher sees them: from publishing the order on the broker to
//! receiving the agent's status. With the release binary built, it also prints the idle RSS
//! of the `orcastrate-agent` process and the binary's size.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use orcastrate_broker::{AgentState, AgentStatus, OrderKind, OrderSigner, Step};
use orcastrate_testkit::app;

#[path = "support/orders.rs"]
mod orders;
#[path = "support/mod.rs"]
mod support;

use orders::{summary_row, Bench, Setup, REPO, TOKEN};

const INSTALL: &str = "npm install --no-audit --no-fund";

fn first_at(
    statuses: &[(Instant, AgentStatus)],
    pred: impl Fn(&AgentStatus) -> bool,
) -> Option<Instant> {
    statuses.iter().find(|(_, s)| pred(s)).map(|(t, _)| *t)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints a row of the figures; returns the median.
fn summary(name: &str, values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = values[values.len() / 2];
    println!(
        "  {name:<44} median {median:>7.1} ms   min {:>7.1}   max {:>7.1}",
        values[0],
        values[values.len() - 1]
    );
    median
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let mut bench = Bench::start(
        dir.path(),
        Setup {
            root: dir.path().join("root"),
            logins: &[("bench-idle", TOKEN)],
            install: INSTALL,
            health: |port| format!("http://127.0.0.1:{port}/"),
            proxy: None,
        },
    )
    .await?;
    let app_port = bench.app_port;

    // The first deploy (a new host: includes the 2 s settle) is not measured.
    let first = app::commit(&bench.origin, "v0", app_port, &[]);
    bench.order(&first, OrderKind::Push).await?;

    let (mut push_total, mut push_agent, mut push_fetch) = (Vec::new(), Vec::new(), Vec::new());
    let (mut push_install, mut push_app) = (Vec::new(), Vec::new());
    let (mut rb_started, mut rb_healthy) = (Vec::new(), Vec::new());
    let mut previous = first;
    for round in 1..=rounds {
        // Push a new commit: a cold release.
        let sha = app::commit(&bench.origin, &format!("v{round}"), app_port, &[]);
        let (t0, st) = bench.order(&sha, OrderKind::Push).await?;
        let at = |step: Step| first_at(&st, |x| x.step == Some(step));
        let done = first_at(&st, |x| x.state == AgentState::Healthy).unwrap();
        let fetch = at(Step::Fetch).unwrap();
        let config = at(Step::Config).unwrap();
        let install = at(Step::Install).unwrap();
        let start = at(Step::Start).unwrap();
        let health = at(Step::Health).unwrap();
        let total = done - t0;
        let user = (start - install) + (done - health);
        push_total.push(ms(total));
        push_fetch.push(ms(config - fetch));
        push_install.push(ms(start - install));
        push_app.push(ms(done - health));
        push_agent.push(ms(total.saturating_sub(user)));

        // Roll back to the previous release (complete on disk).
        let (t0, st) = bench.order(&previous, OrderKind::Rollback).await?;
        let started = first_at(&st, |x| x.step == Some(Step::Health)).unwrap();
        let done = first_at(&st, |x| x.state == AgentState::Healthy).unwrap();
        rb_started.push(ms(started - t0));
        rb_healthy.push(ms(done - t0));

        // Forward again so the next rollback has a previous release too.
        bench.order(&sha, OrderKind::Manual).await?;
        previous = sha;
    }

    println!(
        "orcastrate-agent benchmark: {rounds} rounds, trivial Node app, install = `{INSTALL}`"
    );
    println!(
        "push order -> healthy (new release: fetch, checkout, install, switch, start, health):"
    );
    summary("total", &mut push_total);
    summary("agent overhead (all but the user's steps)", &mut push_agent);
    summary("  of which git fetch + checkout", &mut push_fetch);
    summary("user's steps: install + build", &mut push_install);
    summary("user's steps: app start until health passes", &mut push_app);
    println!("rollback order -> previous release (warm, no fetch or install):");
    let rollback = summary("order -> previous release started", &mut rb_started);
    summary("order -> healthy", &mut rb_healthy);
    summary_row(
        "agent: rollback order → previous release started (median, warm release)",
        &format!("{rollback:.0} ms"),
        "< 1 s",
        rollback < 1000.0,
    );

    idle_rss(bench.mqtt_port, dir.path(), &bench.signer).await;
    bench.stop().await
}

/// Runs the release binary (if built) idle against the broker and prints its RSS.
async fn idle_rss(mqtt_port: u16, dir: &Path, signer: &OrderSigner) {
    let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("orcastrate-agent")))
        .filter(|p| p.exists())
    else {
        println!("(build the binary with `cargo build --release -p orcastrate-agent` for its size and idle RSS)");
        return;
    };
    let root = dir.join("idle-root");
    let mut child = match Command::new(&bin)
        .env("ORCASTRATE_SERVER", format!("mqtt://127.0.0.1:{mqtt_port}"))
        .env("CONNECT_TOKEN", TOKEN)
        .env("REPO_NAME", REPO)
        .env("ENVIRONMENT", "idle")
        .env("ORCASTRATE_NAME", "bench-idle")
        .env("ORCASTRATE_ROOT", &root)
        .env("ORCASTRATE_GATEWAY_KEYS", signer.public_key_base64())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("cannot run {}: {e}", bin.display());
            return;
        }
    };
    // Connected, subscribed, past the settle wait, idle.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_owned();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let rss_kb: Option<u64> = rss.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    println!(
        "agent binary: {} ({:.1} MiB); idle {}",
        bin.display(),
        size as f64 / 1048576.0,
        rss.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
    if let Some(kb) = rss_kb {
        let mb = kb as f64 / 1024.0;
        summary_row(
            "agent idle RSS (connected, subscribed)",
            &format!("{mb:.1} MB"),
            "< 10 MB",
            mb < 10.0,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
