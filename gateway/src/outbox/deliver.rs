//! The delivery workers: one thread per destination (bounded concurrency, in order per
//! destination), each with its own ledger connection and blocking `ureq` calls, so that
//! delivery never waits in the sequencer's or the HTTP server's way.
//!
//! A fact is retried with capped exponential backoff and jitter, or after `Retry-After`
//! (GitHub's secondary rate limits answer 403 or 429 with it); a 4xx other than 408/429
//! and a fact still undelivered after [`MAX_ATTEMPTS`] go to `outbox_failed`.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{GithubTarget, NotifyTarget, OutboxConfig};
use super::facts::Fact;
use super::metrics::OutboxMetrics;
use crate::ledger::{self, LedgerError};

/// Attempts before a fact is dead-lettered: about a day at the backoff's cap.
pub const MAX_ATTEMPTS: u32 = 10_000;
/// The first retry's delay and the backoff's cap. The cap bounds how long a receiver that
/// is back waits for its messages (at most 1.25 × the cap after any outage); a retry every
/// 10 s costs a receiver that is down nothing it would notice.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How long a worker waits for the sequencer's write lock: longer than the ledger's
/// default, since a cursor not moved means a message sent twice.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// A receiver's `Retry-After` is obeyed up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How often an idle worker looks for new facts.
const POLL: Duration = Duration::from_millis(200);
/// Bytes of a receiver's answer read at most.
const MAX_ANSWER: u64 = 64 * 1024;

/// What one delivery attempt came to.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered (with the receiver's JSON answer, if any).
    Done(Option<serde_json::Value>),
    /// Worth another try, after `after` if the receiver said.
    Retry {
        after: Option<Duration>,
        error: String,
    },
    /// Refused for good (a 4xx other than 408/429).
    Failed(String),
}

fn header_secs(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// How long a 403/429 asks us to wait: `Retry-After`, else the primary limit's reset time,
/// else a minute (GitHub's advice for secondary limits).
fn rate_wait(r: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    if let Some(s) = header_secs(r, "retry-after") {
        return Some(Duration::from_secs(s));
    }
    if header_secs(r, "x-ratelimit-remaining") == Some(0) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let reset = header_secs(r, "x-ratelimit-reset").unwrap_or(now + 60);
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    None
}

/// POSTs `body` with `headers` and sorts the answer into an [`Outcome`].
pub(super) fn send(url: &str, headers: &[(&str, String)], body: &[u8]) -> Outcome {
    // One agent for every worker: its TLS roots are loaded once, its connections reused.
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent("orcastrate-gateway")
            .build()
            .into()
    });
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut r = match req.send(body) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Retry {
                after: None,
                error: format!("cannot reach the receiver: {e}"),
            }
        }
    };
    let code = r.status().as_u16();
    let wait = rate_wait(&r);
    let text = r
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .unwrap_or_default();
    let short: String = text.chars().take(200).collect();
    match code {
        200..=299 => Outcome::Done(serde_json::from_str(&text).ok()),
        403 if wait.is_some() || text.contains("rate limit") => Outcome::Retry {
            after: wait.or(Some(Duration::from_secs(60))),
            error: format!("rate limited (403): {short}"),
        },
        408 | 429 | 500..=599 => Outcome::Retry {
            after: wait,
            error: format!("HTTP {code}: {short}"),
        },
        _ => Outcome::Failed(format!("HTTP {code}: {short}")),
    }
}

/// One place facts go.
#[derive(Clone, Debug)]
enum Dest {
    Github(GithubTarget),
    Notify(NotifyTarget),
}

impl Dest {
    /// The cursor's name; a URL may hold a secret (Slack's do), so only its hash is kept.
    fn name(&self) -> String {
        match self {
            Self::Github(_) => "github".to_owned(),
            Self::Notify(n) => format!(
                "notify-{}",
                &hex::encode(Sha256::digest(n.url.as_bytes()))[..12]
            ),
        }
    }

    fn deliver(&self, conn: &Connection, id: i64, fact: &Fact) -> Outcome {
        match self {
            Self::Github(g) => super::github::deliver(g, conn, fact),
            Self::Notify(n) => super::notify::deliver(n, id, fact),
        }
    }
}

fn destinations(cfg: &OutboxConfig) -> Vec<Dest> {
    cfg.github
        .iter()
        .cloned()
        .map(Dest::Github)
        .chain(cfg.notify.iter().cloned().map(Dest::Notify))
        .collect()
}

/// The running workers; dropping [`Outbox::stop`]'s senders ends them.
pub struct Outbox {
    stops: Vec<mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Sets the cursors up: a new destination starts at the newest fact (no history replayed),
/// a removed one is forgotten, and facts every destination has passed are deleted.
fn prepare(conn: &Connection, names: &[String]) -> Result<(), LedgerError> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let mut keep = std::collections::HashSet::new();
    for n in names {
        keep.insert(n.clone());
        tx.execute(
            "INSERT OR IGNORE INTO outbox_cursor (dest, last_id)
             VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM outbox))",
            [n],
        )?;
    }
    let all: Vec<String> = {
        let mut s = tx.prepare("SELECT dest FROM outbox_cursor")?;
        let rows = s.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for d in all.iter().filter(|d| !keep.contains(*d)) {
        tx.execute("DELETE FROM outbox_cursor WHERE dest = ?1", [d])?;
    }
    tx.execute(
        "DELETE FROM outbox WHERE id <= COALESCE((SELECT MIN(last_id) FROM outbox_cursor),
             (SELECT MAX(id) FROM outbox))",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

impl Outbox {
    /// Starts one worker per destination of `cfg` on the ledger at `path`.
    ///
    /// # Errors
    ///
    /// When the ledger cannot be opened or its cursors set up.
    pub fn start(
        path: &Path,
        cfg: &OutboxConfig,
        metrics: &OutboxMetrics,
    ) -> Result<Self, LedgerError> {
        let dests = destinations(cfg);
        let names: Vec<String> = dests.iter().map(Dest::name).collect();
        prepare(&ledger::open(path)?, &names)?;
        let mut out = Self {
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for (dest, name) in dests.into_iter().zip(names) {
            let conn = ledger::open(path)?;
            // A cursor lost to a power cut only sends a message again (the delivery id
            // tells); an fsync per delivery would cap delivery at the disk's fsync rate.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.busy_timeout(LOCK_WAIT)?;
            let (tx, rx) = mpsc::channel();
            let metrics = metrics.clone();
            out.stops.push(tx);
            out.threads.push(std::thread::spawn(move || {
                work(&conn, &dest, &name, &rx, &metrics)
            }));
        }
        Ok(out)
    }

    /// Ends the workers (a delivery under way ends first, within its 30 s timeout).
    pub fn stop(self) {
        drop(self.stops);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Waits `d`; `false` when the worker is to stop.
fn pause(rx: &mpsc::Receiver<()>, d: Duration) -> bool {
    !matches!(
        rx.recv_timeout(d),
        Err(mpsc::RecvTimeoutError::Disconnected) | Ok(())
    )
}

fn next(conn: &Connection, dest: &str) -> rusqlite::Result<Option<(i64, String, u32)>> {
    conn.query_row(
        "SELECT o.id, o.fact, c.attempts FROM outbox_cursor c JOIN outbox o ON o.id > c.last_id
         WHERE c.dest = ?1 ORDER BY o.id LIMIT 1",
        [dest],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

fn backoff(attempts: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempts.saturating_sub(1).min(16));
    let d = exp.min(BACKOFF_CAP);
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    // 75 % to 125 % of the delay, so many gateways do not retry in step.
    d.mul_f64(0.75 + f64::from(b[0]) / 510.0)
}

fn work(conn: &Connection, dest: &Dest, name: &str, rx: &mpsc::Receiver<()>, m: &OutboxMetrics) {
    let label = OutboxMetrics::dest(name);
    loop {
        if let Ok(n) = depth_of(conn, name) {
            m.pending.get_or_create(&label).set(n);
        }
        let (id, json, attempts) = match next(conn, name) {
            Ok(Some(row)) => row,
            Ok(None) => {
                if pause(rx, POLL) {
                    continue;
                } else {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(dest = name, error = %e, "outbox: cannot read the ledger");
                if pause(rx, BACKOFF_CAP) {
                    continue;
                } else {
                    return;
                }
            }
        };
        let outcome = match serde_json::from_str::<Fact>(&json) {
            Ok(fact) => dest.deliver(conn, id, &fact),
            Err(e) => Outcome::Failed(format!("unreadable fact: {e}")),
        };
        let wait = match outcome {
            Outcome::Done(_) => {
                m.delivered.get_or_create(&label).inc();
                advance(conn, name, id, None, &json);
                None
            }
            Outcome::Failed(error) => {
                m.failed.get_or_create(&label).inc();
                tracing::warn!(dest = name, id, %error, "outbox: delivery refused; recorded as failed");
                advance(conn, name, id, Some(&error), &json);
                None
            }
            Outcome::Retry { error, .. } if attempts + 1 >= MAX_ATTEMPTS => {
                m.failed.get_or_create(&label).inc();
                tracing::warn!(dest = name, id, %error, "outbox: giving up after {MAX_ATTEMPTS} attempts");
                advance(conn, name, id, Some(&error), &json);
                None
            }
            Outcome::Retry { after, error } => {
                m.retries.get_or_create(&label).inc();
                let _ = conn.execute(
                    "UPDATE outbox_cursor SET attempts = attempts + 1, last_error = ?2 WHERE dest = ?1",
                    params![name, error],
                );
                let wait = after.map_or_else(|| backoff(attempts + 1), |a| a.min(MAX_RETRY_AFTER));
                tracing::info!(dest = name, id, %error, wait_ms = wait.as_millis(), "outbox: will retry");
                Some(wait)
            }
        };
        if let Some(w) = wait {
            if !pause(rx, w) {
                return;
            }
        }
    }
}

/// Moves the cursor past `id`, dead-lettering it when `error` is given.
fn advance(conn: &Connection, dest: &str, id: i64, error: Option<&str>, fact: &str) {
    let r = (|| -> rusqlite::Result<()> {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        if let Some(e) = error {
            tx.execute(
                "INSERT OR REPLACE INTO outbox_failed (dest, id, fact, error, failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![dest, id, fact, e, orcastrate_broker::time::now()],
            )?;
        }
        tx.execute(
            "UPDATE outbox_cursor SET last_id = ?2, attempts = 0, last_error = NULL WHERE dest = ?1",
            params![dest, id],
        )?;
        tx.commit()
    })();
    if let Err(e) = r {
        tracing::warn!(dest, id, error = %e, "outbox: cannot move the cursor; the fact will be sent again");
    }
}

/// A pending or failed message, for `orcastrate-gateway outbox`.
#[derive(Debug, Serialize)]
pub struct PendingRow {
    pub dest: String,
    pub id: i64,
    pub state: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub fact: serde_json::Value,
}

/// Every destination's undelivered facts (newest 100 each) and the failed ones.
///
/// # Errors
///
/// When the ledger cannot be read.
pub fn pending(conn: &Connection) -> Result<Vec<PendingRow>, LedgerError> {
    let mut out = Vec::new();
    let mut s = conn.prepare(
        "SELECT c.dest, o.id, c.attempts, c.last_error, o.fact FROM outbox_cursor c
         JOIN outbox o ON o.id > c.last_id ORDER BY c.dest, o.id LIMIT 1000",
    )?;
    let rows = s.query_map([], |r| {
        Ok(PendingRow {
            dest: r.get(0)?,
            id: r.get(1)?,
            state: "pending".into(),
            attempts: r.get(2)?,
            error: r.get(3)?,
            fact: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    let mut s = conn.prepare(
        "SELECT dest, id, error, fact FROM outbox_failed ORDER BY failed_at DESC LIMIT 1000",
    )?;
    let rows = s.query_map([], |r| {
        Ok(PendingRow {
            dest: r.get(0)?,
            id: r.get(1)?,
            state: "failed".into(),
            attempts: 0,
            error: r.get(2)?,
            fact: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

/// Facts not yet delivered to `dest` (its queue depth).
fn depth_of(conn: &Connection, dest: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM outbox_cursor c JOIN outbox o ON o.id > c.last_id WHERE c.dest = ?1",
        [dest],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However long a receiver was down, its next try comes soon after it is back: the
    /// wait never grows past the cap and its jitter (it once grew to 75 s).
    #[test]
    fn the_next_try_after_any_outage_comes_within_12_5_s() {
        let waits: Vec<Duration> = (1..=64).chain([MAX_ATTEMPTS]).map(backoff).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(12_500)),
            "{waits:?}"
        );
        assert!(waits[0] >= Duration::from_millis(750), "{waits:?}");
    }
}
