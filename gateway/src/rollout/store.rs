//! The `rollouts` table (ledger migration 3): one row per rollout, its wave, timers and end.
//! Every function runs inside the sequencer's transaction.

use orcastrate_broker::OrderKind;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::config::Policy;
use super::{Rollout, RolloutState};
use crate::ledger::LedgerError;

type Result<T> = std::result::Result<T, LedgerError>;

const COLUMNS: &str = "id, repo, env, sha, base_sha, kind, first_seq, wave_seq, wave, policy, \
     targets, state, reason, wave_started_ms, hold_from_ms, left_out, started_at, updated_at";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("rollout fields serialize")
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Option<Rollout>> {
    let kind: String = r.get(5)?;
    let policy: String = r.get(9)?;
    let targets: Option<String> = r.get(10)?;
    let state: String = r.get(11)?;
    let left_out: String = r.get(15)?;
    // A row this version cannot read is skipped, not fatal (a newer gateway wrote it).
    let (Some(kind), Ok(policy), Some(state)) = (
        OrderKind::parse(&kind),
        serde_json::from_str::<Policy>(&policy),
        RolloutState::parse(&state),
    ) else {
        return Ok(None);
    };
    Ok(Some(Rollout {
        id: r.get(0)?,
        repo: r.get(1)?,
        env: r.get(2)?,
        sha: r.get(3)?,
        base_sha: r.get(4)?,
        kind,
        first_seq: to_u64(r.get(6)?),
        wave_seq: to_u64(r.get(7)?),
        wave: usize::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
        policy,
        targets: targets.and_then(|t| serde_json::from_str(&t).ok()),
        state,
        reason: r.get(12)?,
        wave_started_ms: to_u64(r.get(13)?),
        hold_from_ms: r.get::<_, Option<i64>>(14)?.map(to_u64),
        left_out: serde_json::from_str(&left_out).unwrap_or_default(),
        started_at: r.get(16)?,
        updated_at: r.get(17)?,
    }))
}

fn query(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Rollout>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row?);
    }
    Ok(out)
}

/// Stores a new rollout (its first wave's order not yet made) and returns it with its id.
pub fn insert(conn: &Connection, mut r: Rollout) -> Result<Rollout> {
    conn.prepare_cached(
        "INSERT INTO rollouts (repo, env, sha, base_sha, kind, first_seq, wave_seq, wave, policy,
             targets, state, reason, wave_started_ms, hold_from_ms, left_out, started_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        r.repo,
        r.env,
        r.sha,
        r.base_sha,
        r.kind.as_str(),
        to_i64(r.first_seq),
        to_i64(r.wave_seq),
        i64::try_from(r.wave).unwrap_or(0),
        json(&r.policy),
        r.targets.as_ref().map(json),
        r.state.as_str(),
        r.reason,
        to_i64(r.wave_started_ms),
        r.hold_from_ms.map(to_i64),
        json(&r.left_out),
        r.started_at,
        r.updated_at,
    ])?;
    r.id = conn.last_insert_rowid();
    Ok(r)
}

/// Writes back what changes while a rollout runs.
pub fn update(conn: &Connection, r: &Rollout) -> Result<()> {
    conn.prepare_cached(
        "UPDATE rollouts SET first_seq = ?2, wave_seq = ?3, wave = ?4, targets = ?5, state = ?6,
             reason = ?7, wave_started_ms = ?8, hold_from_ms = ?9, left_out = ?10, updated_at = ?11
         WHERE id = ?1",
    )?
    .execute(params![
        r.id,
        to_i64(r.first_seq),
        to_i64(r.wave_seq),
        i64::try_from(r.wave).unwrap_or(0),
        r.targets.as_ref().map(json),
        r.state.as_str(),
        r.reason,
        to_i64(r.wave_started_ms),
        r.hold_from_ms.map(to_i64),
        json(&r.left_out),
        r.updated_at,
    ])?;
    Ok(())
}

/// Every running rollout.
pub fn running(conn: &Connection) -> Result<Vec<Rollout>> {
    query(
        conn,
        &format!("SELECT {COLUMNS} FROM rollouts WHERE state = 'running' ORDER BY id"),
        [],
    )
}

/// The running rollout of a repo/env, if any.
pub fn running_of(conn: &Connection, repo: &str, env: &str) -> Result<Option<Rollout>> {
    Ok(query(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM rollouts WHERE repo = ?1 AND env = ?2 AND state = 'running'
             ORDER BY id DESC LIMIT 1"
        ),
        [repo, env],
    )?
    .pop())
}

/// Rollouts newest first, optionally filtered.
pub fn list(
    conn: &Connection,
    repo: Option<&str>,
    env: Option<&str>,
    limit: u32,
) -> Result<Vec<Rollout>> {
    query(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM rollouts
             WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR env = ?2)
             ORDER BY id DESC LIMIT ?3"
        ),
        params![repo, env, limit],
    )
}

/// The newest rollout of every repo/env (for the fleet summaries at start-up).
pub fn all_latest(conn: &Connection) -> Result<Vec<Rollout>> {
    query(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM rollouts
             WHERE id IN (SELECT MAX(id) FROM rollouts GROUP BY repo, env)"
        ),
        [],
    )
}

/// The rollout whose orders include `seq` of a repo/env, if any: for each order's outcome.
pub fn of_seq(conn: &Connection, repo: &str, env: &str, seq: u64) -> Result<Option<Rollout>> {
    Ok(query(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM rollouts
             WHERE repo = ?1 AND env = ?2 AND first_seq <= ?3 AND wave_seq >= ?3
             ORDER BY id DESC LIMIT 1"
        ),
        params![repo, env, to_i64(seq)],
    )?
    .pop())
}

/// Why a sha was marked bad, if it was and a reason was kept.
pub fn bad_reason(conn: &Connection, repo: &str, env: &str, sha: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT reason FROM bad_shas WHERE repo = ?1 AND env = ?2 AND sha = ?3")?
        .query_row([repo, env, sha], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

/// Marks a sha bad with the reason (a revert or an abort).
pub fn mark_bad(
    conn: &Connection,
    repo: &str,
    env: &str,
    sha: &str,
    at: &str,
    reason: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO bad_shas (repo, env, sha, marked_at, reason) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (repo, env, sha) DO UPDATE SET reason = excluded.reason",
    )?
    .execute([repo, env, sha, at, reason])?;
    Ok(())
}
