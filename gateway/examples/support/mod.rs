//! Helpers shared by the gateway benchmarks (`bench_webhooks`, `bench_peer`, `bench_fanout`,
//! `bench_revert`, `bench_fleet_view`, `soak`): building, starting and guarding the gateway
//! process, raw keep-alive HTTP/1.1, signed push requests, the admin API, simulated agents'
//! logins and statuses, the read-only ledger check, percentiles and `/proc` readings. Each
//! example includes it with `#[path = "support/mod.rs"] mod support;`.

// Not every example uses every helper.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use orcastrate_broker::{AgentState, AgentStatus, DeployOrder};
use rusqlite::{Connection, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// Environment variables of the gateway that must not leak from the caller's shell.
pub(crate) const GATEWAY_ENV: &[&str] = &[
    "GITHUB_SECRET",
    "TOKENS",
    "TRUSTED_NAMES",
    "PORT",
    "ORCASTRATE_REPOS",
    "ORCASTRATE_ADMIN_TOKEN",
    "ORCASTRATE_CONFIG",
    "ORCASTRATE_DATA_DIR",
    "ORCASTRATE_HTTP_LISTEN",
    "ORCASTRATE_MQTT_LISTEN",
    "ORCASTRATE_LOG_FORMAT",
    "RUST_LOG",
];

/// How a webhook benchmark loads a server (flattened into its arguments).
#[derive(Debug, clap::Args)]
pub(crate) struct WebhookLoad {
    /// Webhook deliveries to send (to each server measured).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) requests: usize,
    /// Concurrent keep-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// Gateway binary to measure; by default it is built with cargo first.
    #[arg(long)]
    pub(crate) gateway_bin: Option<PathBuf>,
}

impl WebhookLoad {
    /// Refuses an empty load.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.requests > 0, "--requests must be at least 1");
        ensure!(self.connections > 0, "--connections must be at least 1");
        Ok(())
    }

    /// The gateway binary to measure: `--gateway-bin`, or built with cargo.
    pub(crate) fn gateway_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.gateway_bin {
            Some(path) => Ok(path.clone()),
            None => build_gateway(),
        }
    }
}

/// Kills the gateway if the benchmark stops early.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A keep-alive HTTP/1.1 connection with a hand-written request/response exchange.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads one response: status and body.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(response) = self.take_response()? {
                return Ok(response);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A complete response from the front of the buffer, if there is one.
    pub(crate) fn take_response(&mut self) -> std::io::Result<Option<(u16, Vec<u8>)>> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| invalid("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let mut length = 0;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("bad content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid("chunked responses are not supported"));
            }
        }
        let end = head_end + 4 + length;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = self.buf[head_end + 4..end].to_vec();
        self.buf.drain(..end);
        Ok(Some((status, body)))
    }
}

/// Builds the gateway binary with this example's cargo and profile; returns its path.
pub(crate) fn build_gateway() -> anyhow::Result<PathBuf> {
    build_binary("orcastrate-gateway", "orcastrate-gateway")
}

/// Builds binary `bin` of workspace package `package` with this example's cargo, profile and
/// target directory (a no-op when it is up to date); returns its path.
pub(crate) fn build_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench_webhooks
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("release")
        .to_owned();
    if profile == "debug" {
        eprintln!("warning: this is a debug build; add --release for meaningful figures");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--message-format", "json-render-diagnostics"]);
    if profile != "debug" {
        command.args(["--profile", &profile]);
    }
    // `cargo run` gives this process the example's own CARGO_MANIFEST_DIR, CARGO_PKG_*, ...;
    // some build scripts (ring's) track those, so passing them on would rebuild half the tree.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            command.env_remove(name);
        }
    }
    eprintln!("building {bin}: cargo build --profile {profile} -p {package} --bin {bin}");
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run cargo: pass the path of a built {bin}"))?;
    ensure!(
        output.status.success(),
        "building {bin} failed (see above); or pass the path of a built one"
    );
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == bin {
            if let Some(path) = message["executable"].as_str() {
                return Ok(PathBuf::from(path));
            }
        }
    }
    bail!("cargo built no {bin} executable: pass the path of a built one")
}

/// Waits until `/healthz` answers 200 (HTTP, ledger and MQTT login all work).
pub(crate) async fn wait_ready(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    wait_answering(addr, "/healthz", &[200], child).await
}

/// Waits until a GET of `path` answers one of the statuses in `ready`, for up to 30 s, or
/// `child` exits.
pub(crate) async fn wait_answering(
    addr: SocketAddr,
    path: &str,
    ready: &[u16],
    child: &mut Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the process exited with {status}");
        }
        match get(addr, path).await {
            Ok((status, _)) if ready.contains(&status) => return Ok(()),
            Ok((status, body)) if Instant::now() > deadline => {
                bail!(
                    "{path} answers {status}: {}",
                    String::from_utf8_lossy(&body)
                )
            }
            Err(e) if Instant::now() > deadline => bail!("{path}: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts `bin serve` with the gateway's variables of the caller's shell removed, whatever
/// `configure` adds (arguments, variables), no colour, and stderr to `log`.
pub(crate) fn spawn_gateway(
    bin: &Path,
    log: &Path,
    configure: impl FnOnce(&mut Command),
) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(bin);
    command.arg("serve");
    for name in GATEWAY_ENV {
        command.env_remove(name);
    }
    configure(&mut command);
    command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(ChildGuard(child))
}

/// [`spawn_gateway`], then waits on `runtime` until it is ready; if it is not, the error
/// carries the end of its log.
pub(crate) fn start_gateway(
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    log: &Path,
    http_addr: SocketAddr,
    configure: impl FnOnce(&mut Command),
) -> anyhow::Result<ChildGuard> {
    let mut gateway = spawn_gateway(bin, log, configure)?;
    runtime
        .block_on(wait_ready(http_addr, &mut gateway.0))
        .with_context(|| {
            format!(
                "the gateway did not become ready; end of {}:\n{}",
                log.display(),
                tail(log, 40)
            )
        })?;
    Ok(gateway)
}

/// The push fixture's repo and branch, deployed to `production`.
const PUSH_REPOS: &str = "codertocat/hello-world@master=production";

/// A gateway configured by flags and the environment only, as the Node tool was
/// (`GITHUB_SECRET`, `ORCASTRATE_REPOS`), for [`start_gateway`].
pub(crate) fn env_configured<'a>(
    data_dir: &'a Path,
    (http_addr, mqtt_addr): (SocketAddr, SocketAddr),
    secret: &'a str,
) -> impl FnOnce(&mut Command) + 'a {
    move |command| {
        command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-listen")
            .arg(http_addr.to_string())
            .arg("--mqtt-listen")
            .arg(mqtt_addr.to_string())
            .env("GITHUB_SECRET", secret)
            .env("ORCASTRATE_REPOS", PUSH_REPOS);
    }
}

/// A complete `POST` of a GitHub `push` delivery, signed with `X-Hub-Signature-256` as
/// GitHub signs it (HMAC-SHA256 of the body under the webhook secret).
pub(crate) fn signed_push(path: &str, delivery: &str, body: &str, secret: &str) -> Vec<u8> {
    let signature = orcastrate_testkit::github::signature(secret, body.as_bytes());
    let mut wire = format!(
        "POST {path} HTTP/1.1\r\n\
         Host: orcastrate-bench\r\n\
         User-Agent: GitHub-Hookshot/bench\r\n\
         Accept: */*\r\n\
         Content-Type: application/json\r\n\
         X-GitHub-Event: push\r\n\
         X-GitHub-Delivery: {delivery}\r\n\
         X-GitHub-Hook-ID: 1\r\n\
         X-Hub-Signature-256: {signature}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(body.as_bytes());
    wire
}

/// Push delivery `i` of a benchmark run, as the webhook benchmarks number them.
pub(crate) struct Push {
    /// `X-GitHub-Delivery`: `<run_id>-be0c-4000-8000-<i + 1>`.
    pub(crate) delivery: String,
    /// The `after` sha: `i + 1` in 40 hex digits.
    pub(crate) sha: String,
    /// The signed request, as [`signed_push`] writes it.
    pub(crate) wire: Vec<u8>,
}

/// Push delivery `i` of run `run_id` to `path`: `payload` with its `after` sha
/// (`original_after`) replaced by a distinct one, a distinct delivery id, signed with `secret`.
pub(crate) fn numbered_push(
    i: usize,
    run_id: u32,
    payload: &str,
    original_after: &str,
    secret: &str,
    path: &str,
) -> Push {
    let sha = format!("{:040x}", i + 1);
    let delivery = format!("{run_id:08x}-be0c-4000-8000-{:012x}", i + 1);
    // The fixture names its `after` sha in `after`, `compare` and `head_commit.id`.
    let body = payload.replace(original_after, &sha);
    let wire = signed_push(path, &delivery, &body, secret);
    Push {
        delivery,
        sha,
        wire,
    }
}

/// The last `n` lines of a file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback address with a port nothing listens on, from the test kit (below the
/// ephemeral range, never the same twice).
pub(crate) fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], orcastrate_testkit::free_port()))
}

/// One GET on a fresh connection.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: orcastrate-bench\r\n\r\n");
    conn.exchange(request.as_bytes()).await
}

pub(crate) fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User plus system CPU time of a process from its `/proc/.../stat`, in seconds.
pub(crate) fn proc_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    // USER_HZ is 100 on every Linux platform Orcastrate supports.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the parenthesised command name start at field 3 (state).
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short stat")?
            .parse::<u64>()
            .context("bad stat field")? as f64)
    };
    // utime is field 14 and stime field 15, i.e. indexes 11 and 12 here.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM).
pub(crate) fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// The gateway's SQLite ledger at `path`, opened read-only (to check it after a run).
pub(crate) fn open_ledger(path: &Path) -> anyhow::Result<Connection> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?)
}

/// The count a `SELECT COUNT(*) ...` answers.
pub(crate) fn ledger_count(conn: &Connection, sql: &str) -> anyhow::Result<u64> {
    let n: i64 = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Accepted deliveries without the order they made (same repo, env, seq and sha).
pub(crate) fn accepted_without_order(conn: &Connection) -> anyhow::Result<u64> {
    ledger_count(
        conn,
        "SELECT COUNT(*) FROM deliveries d WHERE d.outcome = 'accepted' AND NOT EXISTS
           (SELECT 1 FROM orders o WHERE o.repo = d.repo AND o.env = d.env
              AND o.seq = d.seq AND o.sha = d.sha)",
    )
}

pub(crate) fn seq_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["seq"].as_u64()
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One row of the combined table `scripts/bench.sh` prints (it sets `ORCASTRATE_BENCH_SUMMARY`
/// and collects the `SUMMARY|` lines of every benchmark); nothing otherwise.
pub(crate) fn summary_row(what: &str, measured: &str, target: &str, met: Option<bool>) {
    if std::env::var_os("ORCASTRATE_BENCH_SUMMARY").is_none() {
        return;
    }
    let verdict = match met {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "",
    };
    println!("SUMMARY| {what} | {measured} | {target} | {verdict} |");
}

/// What one request got.
pub(crate) enum Outcome {
    /// The gateway's 202 with the order's `seq`, or the peer's 200 (its hook ran): `None`.
    Accepted(Option<u64>),
    /// Any other answer.
    Status(u16, String),
    Io(String),
}

pub(crate) struct Sample {
    /// Which request of the load.
    pub(crate) index: usize,
    pub(crate) latency: Duration,
    pub(crate) outcome: Outcome,
}

/// Sends every request over `connections` connections; returns the samples and the wall time.
pub(crate) async fn run_load(
    addr: SocketAddr,
    wire: Arc<Vec<Vec<u8>>>,
    connections: usize,
) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let conn = Conn::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let (wire, next, start) = (wire.clone(), next.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Some(conn);
            let mut samples = Vec::with_capacity(wire.len() / connections + 1);
            start.wait().await;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= wire.len() {
                    break;
                }
                let started = Instant::now();
                let result = match conn.as_mut() {
                    Some(c) => c.exchange(&wire[index]).await,
                    None => match Conn::connect(addr).await {
                        Ok(c) => conn.insert(c).exchange(&wire[index]).await,
                        Err(e) => Err(e),
                    },
                };
                let latency = started.elapsed();
                let outcome = match result {
                    Ok((202, body)) => match seq_of(&body) {
                        Some(seq) => Outcome::Accepted(Some(seq)),
                        None => Outcome::Status(202, String::from_utf8_lossy(&body).into()),
                    },
                    // The peer's answer when its hook ran.
                    Ok((200, _)) => Outcome::Accepted(None),
                    Ok((status, body)) => {
                        Outcome::Status(status, String::from_utf8_lossy(&body).into())
                    }
                    Err(e) => {
                        // Reconnect for the next request.
                        conn = None;
                        Outcome::Io(e.to_string())
                    }
                };
                samples.push(Sample {
                    index,
                    latency,
                    outcome,
                });
            }
            samples
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(wire.len());
    for task in tasks {
        samples.extend(task.await?);
    }
    Ok((samples, started.elapsed()))
}

/// A GitHub push payload and its `after` sha (which [`numbered_push`] replaces): the file at
/// `path`, or by default the real push fixture of the gateway's tests.
pub(crate) fn push_payload(path: Option<&Path>) -> anyhow::Result<(String, String)> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/push__with-new-branch.payload.json");
    let path = path.unwrap_or(&fixture);
    let payload = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the push payload {}: pass a GitHub push example",
            path.display()
        )
    })?;
    let after = serde_json::from_str::<serde_json::Value>(&payload)
        .with_context(|| format!("{} is not JSON", path.display()))?["after"]
        .as_str()
        .with_context(|| {
            format!(
                "{} has no \"after\" sha: pass a GitHub push payload",
                path.display()
            )
        })?
        .to_owned();
    Ok((payload, after))
}

/// The gateway's admin API with a bearer token, one request per fresh connection.
pub(crate) struct Api {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
}

impl Api {
    /// `method path` with an optional JSON body; the answer's JSON, which must come with
    /// a 2xx status.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut conn = Conn::connect(self.addr).await?;
        let body = body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: orcastrate-bench\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        let (status, answer) = conn.exchange(request.as_bytes()).await?;
        ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(serde_json::from_slice(&answer)?)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call("GET", path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        self.call("POST", path, Some(body)).await
    }

    /// `/api/v1/agents`, optionally for one repo/env.
    pub(crate) async fn agents(
        &self,
        filter: Option<(&str, &str)>,
    ) -> anyhow::Result<Vec<AgentStatus>> {
        let path = match filter {
            Some((repo, env)) => format!("/api/v1/agents?repo={repo}&env={env}"),
            None => "/api/v1/agents".to_owned(),
        };
        let mut value = self.get(&path).await?;
        Ok(serde_json::from_value(value["agents"].take())?)
    }

    /// The newest order of a repo/env, from `/api/v1/deployments`.
    pub(crate) async fn newest_order(
        &self,
        repo: &str,
        env: &str,
    ) -> anyhow::Result<Option<DeployOrder>> {
        let mut value = self
            .get(&format!(
                "/api/v1/deployments?repo={repo}&env={env}&limit=1"
            ))
            .await?;
        let orders: Vec<DeployOrder> = serde_json::from_value(value["deployments"].take())?;
        Ok(orders.into_iter().next())
    }

    /// `POST /api/v1/deploy` of `sha` to every agent at once (`deploy --now`): the order.
    pub(crate) async fn deploy_now(
        &self,
        repo: &str,
        env: &str,
        sha: &str,
    ) -> anyhow::Result<DeployOrder> {
        let body = format!(r#"{{"repo":"{repo}","env":"{env}","sha":"{sha}","now":true}}"#);
        let mut value = self.post("/api/v1/deploy", &body).await?;
        Ok(serde_json::from_value(value["order"].take())?)
    }
}

/// The (name, token) of `n` simulated agents, `bench-agent-00000` on; tokens unique per run.
pub(crate) fn bench_clients(n: usize, run_id: u32) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("bench-agent-{i:05}"),
                format!("bench-token-{run_id}-{i:05}"),
            )
        })
        .collect()
}

/// The gateway config's `[[clients]]` entries (agents) for `clients`.
pub(crate) fn clients_toml(clients: &[(String, String)]) -> String {
    clients
        .iter()
        .map(|(name, token)| format!("[[clients]]\nname = \"{name}\"\ntoken = \"{token}\"\n"))
        .collect()
}

/// A status as agent `name` reports it before `seal_status` (its MAC): `state` now, in
/// session `session`; a benchmark sets the order's fields (`seq`, `sha`, ...) it reports.
pub(crate) fn agent_status(
    name: &str,
    (repo, env): (&str, &str),
    session: &str,
    state: AgentState,
) -> AgentStatus {
    AgentStatus {
        session: session.into(),
        state,
        ..AgentStatus::idle(name, "bench", repo, env, "bench")
    }
}

/// Raises `RLIMIT_NOFILE` to its hard limit; an error if that leaves too few descriptors
/// for `connections` (the broker needs about one per client, plus a few).
pub(crate) fn raise_nofile(connections: usize) -> anyhow::Result<u64> {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise RLIMIT_NOFILE")?;
    ensure!(
        nofile as usize > connections + 100,
        "RLIMIT_NOFILE is {nofile}: too few descriptors for {connections} connections"
    );
    Ok(nofile)
}

/// Runs `work` on `runtime` against the started `gateway`, then stops both; a failure
/// carries the last lines of the gateway's log at `log`.
pub(crate) fn measure_then_stop<T>(
    runtime: tokio::runtime::Runtime,
    mut gateway: ChildGuard,
    log: &Path,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let value = runtime.block_on(work).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n--- last lines of the gateway log ---\n{}",
            tail(log, 20)
        )
    })?;
    gateway.0.kill()?;
    gateway.0.wait()?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(value)
}

/// A simulated client's wait before it reconnects or asks again: 50 ms, doubling up to
/// 2 s, back to 50 ms once the broker answers.
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Self {
        Self(Self::FIRST)
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// Waits the current time, then doubles it.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}
