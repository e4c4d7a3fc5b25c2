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

use anyhow::Context as _;
use orcastrate_agent::config::{FileConfig, HealthFile, ServerList, StepsFile};
use orcastrate_agent::{Cli, Settings};
use orcastrate_broker::embedded::EmbeddedBroker;
use orcastrate_broker::{AgentState, AgentStatus, OrderKind, OrderSigner, Step, Topics};
use orcastrate_testkit::git::Origin;
use orcastrate_testkit::{app, free_port};
use tokio_util::sync::CancellationToken;

#[path = "support/orders.rs"]
mod orders;
#[path = "support/mod.rs"]
mod support;

use orders::{summary_row, Orders, Watch};

const REPO: &str = "bench/web";
const ENV: &str = "production";
const AGENT: &str = "bench-1";
const TOKEN: &str = "bench-token";
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

/// The benchmarked agent's config: the app from `origin`, health on `app_port`.
fn agent_file(
    dir: &Path,
    mqtt_port: u16,
    origin: &Origin,
    app_port: u16,
    signer: &OrderSigner,
) -> FileConfig {
    FileConfig {
        name: Some(AGENT.into()),
        server: Some(ServerList::One(format!("mqtt://127.0.0.1:{mqtt_port}"))),
        token: Some(TOKEN.into()),
        repo: Some(REPO.into()),
        env: Some(ENV.into()),
        git_url: Some(origin.bare.display().to_string()),
        root: Some(dir.join("root")),
        keep_releases: Some(3),
        gateway_public_keys: Some(vec![signer.public_key_base64()]),
        on_shutdown: Some("stop".into()),
        steps: Some(StepsFile {
            install: Some(INSTALL.into()),
            build: Some(String::new()),
            start: Some("exec node server.js".into()),
            stop_timeout_s: Some(5),
        }),
        health: Some(HealthFile {
            http: Some(format!("http://127.0.0.1:{app_port}/")),
            command: None,
            timeout_s: Some(30),
            interval_s: Some(60),
        }),
        ..FileConfig::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let mqtt_port = free_port();
    let EmbeddedBroker {
        mut publisher,
        receiver,
        ..
    } = support::open_broker(mqtt_port, &[(AGENT, TOKEN), ("bench-idle", TOKEN)])?;
    let topics = Topics::default();
    publisher.subscribe(&topics.status(REPO, ENV, AGENT))?;
    let mut watch = Watch::spawn(receiver);

    let origin = Origin::new(dir.path());
    let app_port = free_port();

    let signer = OrderSigner::generate();
    let file = agent_file(dir.path(), mqtt_port, &origin, app_port, &signer);
    let env = orcastrate_agent::config::Environment::current();
    let settings = Settings::merge(&Cli::default(), &file, "bench", &env).context("settings")?;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(orcastrate_agent::run(settings, shutdown.clone()));

    let mut orders = Orders {
        repo: REPO,
        env: ENV,
        signer: &signer,
        seq: orcastrate_broker::time::unix_ms(),
    };
    let mut publish = |sha: &str, kind: OrderKind| orders.next(sha, kind);
    let desired = topics.desired(REPO, ENV);

    // The first deploy (a new host: includes the 2 s settle) is not measured.
    let first = app::commit(&origin, "v0", app_port, &[]);
    let (s, payload) = publish(&first, OrderKind::Push);
    publisher.publish(&desired, payload, true).await?;
    watch.until_done(s).await?;

    let (mut push_total, mut push_agent, mut push_fetch) = (Vec::new(), Vec::new(), Vec::new());
    let (mut push_install, mut push_app) = (Vec::new(), Vec::new());
    let (mut rb_started, mut rb_healthy) = (Vec::new(), Vec::new());
    let mut previous = first;
    for round in 1..=rounds {
        // Push a new commit: a cold release.
        let sha = app::commit(&origin, &format!("v{round}"), app_port, &[]);
        let (s, payload) = publish(&sha, OrderKind::Push);
        let t0 = Instant::now();
        publisher.publish(&desired, payload, true).await?;
        let st = watch.until_done(s).await?;
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
        let (s, payload) = publish(&previous, OrderKind::Rollback);
        let t0 = Instant::now();
        publisher.publish(&desired, payload, true).await?;
        let st = watch.until_done(s).await?;
        let started = first_at(&st, |x| x.step == Some(Step::Health)).unwrap();
        let done = first_at(&st, |x| x.state == AgentState::Healthy).unwrap();
        rb_started.push(ms(started - t0));
        rb_healthy.push(ms(done - t0));

        // Forward again so the next rollback has a previous release too.
        let (s, payload) = publish(&sha, OrderKind::Manual);
        publisher.publish(&desired, payload, true).await?;
        watch.until_done(s).await?;
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

    idle_rss(mqtt_port, dir.path(), &signer).await;

    shutdown.cancel();
    agent.await??;
    Ok(())
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
