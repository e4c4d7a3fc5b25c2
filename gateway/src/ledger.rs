//! The durable ledger in SQLite: deliveries, orders, bad shas, pause flags, agent statuses.
//!
//! One connection, owned by the [`crate::sequencer`]; WAL with `synchronous=FULL`, so a
//! committed transaction survives a power cut. Each function runs inside the caller's
//! transaction so a whole group of webhooks commits with one fsync.

use std::path::Path;

use orcastrate_broker::{AgentStatus, DeployOrder};
use rusqlite::{params, Connection, OptionalExtension};

/// A ledger operation failed.
#[derive(Debug, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(#[from] rusqlite::Error);

type Result<T> = std::result::Result<T, LedgerError>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    repo TEXT,
    env TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    seq INTEGER,
    sha TEXT,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    repo TEXT NOT NULL,
    env TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sha TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (repo, env, seq)
);
CREATE TABLE IF NOT EXISTS bad_shas (
    repo TEXT NOT NULL,
    env TEXT NOT NULL,
    sha TEXT NOT NULL,
    marked_at TEXT NOT NULL,
    PRIMARY KEY (repo, env, sha)
);
CREATE TABLE IF NOT EXISTS paused (
    repo TEXT NOT NULL,
    env TEXT NOT NULL,
    PRIMARY KEY (repo, env)
);
CREATE TABLE IF NOT EXISTS statuses (
    repo TEXT NOT NULL,
    env TEXT NOT NULL,
    agent TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (repo, env, agent)
);
CREATE TABLE IF NOT EXISTS healthy (
    repo TEXT NOT NULL,
    env TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sha TEXT NOT NULL,
    PRIMARY KEY (repo, env, seq)
);
";

/// Schema changes after the first release, applied in order to a ledger whose
/// `PRAGMA user_version` is below their number (a new ledger gets [`SCHEMA`] and then all of
/// them, so both paths end in the same schema).
const MIGRATIONS: &[&str] = &[
    // 1: the SHA-256 of each signed webhook body, so a captured body re-sent with a new
    // delivery id is a duplicate (the signature does not cover `X-GitHub-Delivery`).
    // Deliveries recorded before have none (NULL, which a UNIQUE index allows many times).
    "ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT;
     CREATE UNIQUE INDEX IF NOT EXISTS deliveries_body_sha256 ON deliveries (body_sha256);",
    // 2: the newest `updated_at` taken from each agent, so an older status cannot be
    // replayed after a restart either (the held status may be a last will, which carries
    // the time its connection began). NULL for statuses recorded before: their own time.
    "ALTER TABLE statuses ADD COLUMN newest_at TEXT;",
    // 3: rollouts (waves, their health gate and the fleet-wide revert; see
    // `crate::rollout::store`), and why a sha was marked bad.
    "CREATE TABLE IF NOT EXISTS rollouts (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         repo TEXT NOT NULL,
         env TEXT NOT NULL,
         sha TEXT NOT NULL,
         base_sha TEXT,
         kind TEXT NOT NULL,
         first_seq INTEGER NOT NULL,
         wave_seq INTEGER NOT NULL,
         wave INTEGER NOT NULL,
         policy TEXT NOT NULL,
         targets TEXT,
         state TEXT NOT NULL,
         reason TEXT,
         wave_started_ms INTEGER NOT NULL,
         hold_from_ms INTEGER,
         left_out TEXT NOT NULL,
         started_at TEXT NOT NULL,
         updated_at TEXT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS rollouts_repo_env ON rollouts (repo, env, id);
     CREATE INDEX IF NOT EXISTS rollouts_state ON rollouts (state);
     ALTER TABLE bad_shas ADD COLUMN reason TEXT;",
    // 4: the outbox (see `crate::outbox`): facts written with the change that causes them,
    // each destination's cursor, what could not be delivered, and GitHub's deployment ids.
    "CREATE TABLE IF NOT EXISTS outbox (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         fact TEXT NOT NULL,
         created_at TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS outbox_cursor (
         dest TEXT PRIMARY KEY,
         last_id INTEGER NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         last_error TEXT
     );
     CREATE TABLE IF NOT EXISTS outbox_failed (
         dest TEXT NOT NULL,
         id INTEGER NOT NULL,
         fact TEXT NOT NULL,
         error TEXT NOT NULL,
         failed_at TEXT NOT NULL,
         PRIMARY KEY (dest, id)
     );
     CREATE TABLE IF NOT EXISTS outbox_marks (
         repo TEXT NOT NULL,
         env TEXT NOT NULL,
         seq INTEGER NOT NULL,
         state TEXT NOT NULL,
         PRIMARY KEY (repo, env, seq, state)
     );
     CREATE TABLE IF NOT EXISTS github_deployments (
         repo TEXT NOT NULL,
         env TEXT NOT NULL,
         seq INTEGER NOT NULL,
         id INTEGER NOT NULL,
         PRIMARY KEY (repo, env, seq)
     );",
];

/// An order as stored: the parsed order and the exact bytes that were published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub order: DeployOrder,
    pub payload: String,
}

/// One webhook delivery and what was decided.
#[derive(Debug, Clone)]
pub struct DeliveryRecord<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub repo: Option<&'a str>,
    pub env: Option<&'a str>,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub seq: Option<u64>,
    pub sha: Option<&'a str>,
    pub received_at: &'a str,
    /// SHA-256 (hex) of the signed body as received.
    pub body_sha256: &'a str,
}

/// Opens (creating if needed) the ledger at `path`.
///
/// # Errors
///
/// When the file cannot be opened or the schema not created.
pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Applies the [`MIGRATIONS`] this ledger has not had yet, each in its own transaction
/// with its `user_version`, so a crash leaves a ledger at one version or the next.
fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let to = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if version >= to {
            continue;
        }
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql} PRAGMA user_version = {to}; COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        tracing::info!(version = to, "ledger schema migrated");
    }
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_order(payload: String) -> Option<StoredOrder> {
    let order = serde_json::from_str(&payload).ok()?;
    Some(StoredOrder { order, payload })
}

/// Whether a delivery id was seen before.
pub fn delivery_exists(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM deliveries WHERE id = ?1")?
        .exists([id])?)
}

/// The delivery id under which a webhook body (by its SHA-256, hex) was recorded, if it was.
pub fn delivery_of_body(conn: &Connection, body_sha256: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT id FROM deliveries WHERE body_sha256 = ?1")?
        .query_row([body_sha256], |r| r.get(0))
        .optional()?)
}

/// Records a delivery.
pub fn record_delivery(conn: &Connection, d: &DeliveryRecord<'_>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO deliveries (id, event, repo, env, outcome, reason, seq, sha, received_at, body_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        d.id,
        d.event,
        d.repo,
        d.env,
        d.outcome,
        d.reason,
        d.seq.map(to_i64),
        d.sha,
        d.received_at,
        d.body_sha256
    ])?;
    Ok(())
}

/// The newest order of a repo/env.
pub fn newest_order(conn: &Connection, repo: &str, env: &str) -> Result<Option<StoredOrder>> {
    let payload: Option<String> = conn
        .prepare_cached(
            "SELECT payload FROM orders WHERE repo = ?1 AND env = ?2 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([repo, env], |r| r.get(0))
        .optional()?;
    Ok(payload.and_then(parse_order))
}

/// The newest order of every repo/env.
pub fn all_newest(conn: &Connection) -> Result<Vec<StoredOrder>> {
    let mut stmt = conn.prepare(
        "SELECT o.payload FROM orders o
         JOIN (SELECT repo, env, MAX(seq) AS seq FROM orders GROUP BY repo, env) m
         ON o.repo = m.repo AND o.env = m.env AND o.seq = m.seq",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(parse_order(row?));
    }
    Ok(out)
}

/// Stores an order with the exact payload that is published.
pub fn insert_order(conn: &Connection, order: &DeployOrder, payload: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO orders (repo, env, seq, sha, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        order.repo,
        order.env,
        to_i64(order.seq),
        order.sha,
        order.kind.as_str(),
        payload
    ])?;
    Ok(())
}

/// How many orders are recorded.
pub fn order_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Orders newest first, optionally filtered.
pub fn history(
    conn: &Connection,
    repo: Option<&str>,
    env: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredOrder>> {
    let mut stmt = conn.prepare_cached(
        "SELECT payload FROM orders
         WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR env = ?2)
         ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![repo, env, limit], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(parse_order(row?));
    }
    Ok(out)
}

/// Whether a sha is marked bad for a repo/env.
pub fn is_bad(conn: &Connection, repo: &str, env: &str, sha: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM bad_shas WHERE repo = ?1 AND env = ?2 AND sha = ?3")?
        .exists([repo, env, sha])?)
}

/// Marks a sha bad (it was rolled back from).
pub fn mark_bad(conn: &Connection, repo: &str, env: &str, sha: &str, at: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO bad_shas (repo, env, sha, marked_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute([repo, env, sha, at])?;
    Ok(())
}

/// Whether a repo/env is paused.
pub fn is_paused(conn: &Connection, repo: &str, env: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM paused WHERE repo = ?1 AND env = ?2")?
        .exists([repo, env])?)
}

/// Pauses or resumes a repo/env.
pub fn set_paused(conn: &Connection, repo: &str, env: &str, paused: bool) -> Result<()> {
    if paused {
        conn.execute(
            "INSERT OR IGNORE INTO paused (repo, env) VALUES (?1, ?2)",
            [repo, env],
        )?;
    } else {
        conn.execute(
            "DELETE FROM paused WHERE repo = ?1 AND env = ?2",
            [repo, env],
        )?;
    }
    Ok(())
}

/// Records a verified status, and the newest `updated_at` of its agent; a `healthy` one
/// also counts as a rollback target.
pub fn record_status(conn: &Connection, status: &AgentStatus, payload: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO statuses (repo, env, agent, payload, newest_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (repo, env, agent) DO UPDATE SET payload = excluded.payload,
             newest_at = MAX(COALESCE(statuses.newest_at, ''), excluded.newest_at)",
    )?
    .execute([
        &status.repo,
        &status.env,
        &status.agent,
        payload,
        &status.updated_at,
    ])?;
    if status.state == orcastrate_broker::AgentState::Healthy {
        if let (Some(seq), Some(sha)) = (status.seq, &status.sha) {
            // Only at the order's own sha: an agent outside a rollout wave reports the
            // wave's seq with the base sha it kept running.
            conn.prepare_cached(
                "INSERT OR IGNORE INTO healthy (repo, env, seq, sha)
                 SELECT repo, env, seq, sha FROM orders
                 WHERE repo = ?1 AND env = ?2 AND seq = ?3 AND sha = ?4",
            )?
            .execute(params![status.repo, status.env, to_i64(seq), sha])?;
        }
    }
    Ok(())
}

/// The latest verified status of every agent, optionally filtered.
pub fn statuses(
    conn: &Connection,
    repo: Option<&str>,
    env: Option<&str>,
) -> Result<Vec<AgentStatus>> {
    let mut stmt = conn.prepare_cached(
        "SELECT payload FROM statuses
         WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR env = ?2)
         ORDER BY repo, env, agent",
    )?;
    let rows = stmt.query_map(params![repo, env], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(s) = serde_json::from_str(&row?) {
            out.push(s);
        }
    }
    Ok(out)
}

/// A status as the fleet view starts from it: the latest one and the newest `updated_at`
/// its agent reported (later than the status's own when that is a last will).
#[derive(Debug, Clone)]
pub struct RecordedStatus {
    pub status: AgentStatus,
    pub newest_at: String,
}

/// Every recorded status with its agent's newest `updated_at`.
pub fn recorded_statuses(conn: &Connection) -> Result<Vec<RecordedStatus>> {
    let mut stmt = conn.prepare("SELECT payload, newest_at FROM statuses")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (payload, newest_at) = row?;
        if let Ok(status) = serde_json::from_str::<AgentStatus>(&payload) {
            let newest_at = newest_at.unwrap_or_default().max(status.updated_at.clone());
            out.push(RecordedStatus { status, newest_at });
        }
    }
    Ok(out)
}

/// The default rollback target: the sha of the newest order below `below_seq` that is not
/// marked bad, is not `from_sha`, and that an agent reported healthy for its own seq.
pub fn rollback_target(
    conn: &Connection,
    repo: &str,
    env: &str,
    below_seq: u64,
    from_sha: &str,
) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT o.sha FROM orders o
             JOIN healthy h ON h.repo = o.repo AND h.env = o.env AND h.seq = o.seq AND h.sha = o.sha
             WHERE o.repo = ?1 AND o.env = ?2 AND o.seq < ?3 AND o.sha <> ?4
               AND NOT EXISTS (SELECT 1 FROM bad_shas b
                               WHERE b.repo = o.repo AND b.env = o.env AND b.sha = o.sha)
             ORDER BY o.seq DESC LIMIT 1",
        )?
        .query_row(params![repo, env, to_i64(below_seq), from_sha], |r| {
            r.get(0)
        })
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_of_the_first_release_is_migrated_and_keeps_its_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(SCHEMA).unwrap();
            old.execute(
                "INSERT INTO deliveries (id, event, outcome, received_at)
                 VALUES ('old-1', 'push', 'accepted', '2026-01-01T00:00:00.000Z')",
                [],
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        assert!(delivery_exists(&conn, "old-1").unwrap());
        let record = |id: &'static str| DeliveryRecord {
            id,
            event: "push",
            repo: None,
            env: None,
            outcome: "ignored",
            reason: None,
            seq: None,
            sha: None,
            received_at: "2026-01-01T00:00:01.000Z",
            body_sha256: "ab",
        };
        record_delivery(&conn, &record("new-1")).unwrap();
        assert_eq!(
            delivery_of_body(&conn, "ab").unwrap().as_deref(),
            Some("new-1")
        );
        // One body, one delivery: the index refuses a second.
        assert!(record_delivery(&conn, &record("new-2")).is_err());
        drop(conn);
        // Opening again applies nothing twice.
        let conn = open(&path).unwrap();
        assert!(delivery_exists(&conn, "new-1").unwrap());
    }
}
