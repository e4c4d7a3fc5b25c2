//! Facts and the hooks that write them inside the sequencer's transaction.
//!
//! A deployment's states are marked once each (`outbox_marks`), so a status sent again, or
//! by each of many agents, yields one `in_progress`, one `success` or `failure`.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use orcastrate_broker::{time, AgentState, AgentStatus, DeployOrder, OrderKind};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::ledger::{self, LedgerError, StoredOrder};

/// Longest error text a fact keeps (it travels in every message).
const MAX_ERROR: usize = 300;

/// Something that happened, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A new order: a new GitHub deployment.
    Order {
        repo: String,
        env: String,
        seq: u64,
        sha: String,
        kind: String,
        issued_by: Option<String>,
        why: String,
    },
    /// The fleet moved on an order: `in_progress`, `success` or `failure`.
    State {
        repo: String,
        env: String,
        seq: u64,
        sha: String,
        state: String,
        kind: String,
        issued_by: Option<String>,
        error: Option<String>,
    },
    /// Deploys of a repo/env were paused or resumed.
    Pause {
        repo: String,
        env: String,
        paused: bool,
    },
}

/// Why an order was issued, as people read it.
fn why(order: &DeployOrder) -> String {
    let by = order.issued_by.as_deref();
    match (order.kind, by) {
        (OrderKind::Rollback, Some("rollout")) => "revert: the rollout failed".to_owned(),
        (OrderKind::Rollback, _) => format!("rollback by {}", by.unwrap_or("an operator")),
        (OrderKind::Manual, _) => format!("manual deploy by {}", by.unwrap_or("an operator")),
        (OrderKind::Merge, _) => "merge of a pull request".to_owned(),
        (OrderKind::Push, _) => "push".to_owned(),
    }
}

fn insert(conn: &Connection, fact: &Fact) -> Result<(), LedgerError> {
    let json = serde_json::to_string(fact).expect("facts serialize");
    conn.prepare_cached("INSERT INTO outbox (fact, created_at) VALUES (?1, ?2)")?
        .execute(params![json, time::now()])?;
    Ok(())
}

/// Writes the fact of a new order; a revert also fails the order it replaces.
///
/// # Errors
///
/// When the ledger cannot be written (the order's transaction then fails too).
pub fn on_order(
    conn: &Connection,
    order: &DeployOrder,
    previous: Option<&StoredOrder>,
) -> Result<(), LedgerError> {
    let revert = order.kind == OrderKind::Rollback && order.issued_by.as_deref() == Some("rollout");
    if let (true, Some(p)) = (revert, previous) {
        mark(
            conn,
            &p.order,
            "failure",
            Some("reverted by the rollout".into()),
        )?;
    }
    insert(
        conn,
        &Fact::Order {
            repo: order.repo.clone(),
            env: order.env.clone(),
            seq: order.seq,
            sha: order.sha.clone(),
            kind: order.kind.as_str().to_owned(),
            issued_by: order.issued_by.clone(),
            why: why(order),
        },
    )
}

/// Writes the fact of a pause or resume.
///
/// # Errors
///
/// When the ledger cannot be written.
pub fn on_pause(conn: &Connection, repo: &str, env: &str, paused: bool) -> Result<(), LedgerError> {
    insert(
        conn,
        &Fact::Pause {
            repo: repo.to_owned(),
            env: env.to_owned(),
            paused,
        },
    )
}

/// Whether `order` has ended (`success` or `failure` marked): nothing is marked after.
fn ended(conn: &Connection, order: &DeployOrder) -> Result<bool, LedgerError> {
    let seq = i64::try_from(order.seq).unwrap_or(i64::MAX);
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM outbox_marks WHERE repo = ?1 AND env = ?2 AND seq = ?3
             AND state IN ('success', 'failure')",
        )?
        .query_row(params![order.repo, order.env, seq], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Marks `state` of `order` once; `success` and `failure` end it (nothing after them).
fn mark(
    conn: &Connection,
    order: &DeployOrder,
    state: &str,
    error: Option<String>,
) -> Result<(), LedgerError> {
    if ended(conn, order)? {
        return Ok(());
    }
    mark_open(conn, order, state, error)
}

/// [`mark`] of an order known not to have ended.
fn mark_open(
    conn: &Connection,
    order: &DeployOrder,
    state: &str,
    error: Option<String>,
) -> Result<(), LedgerError> {
    let seq = i64::try_from(order.seq).unwrap_or(i64::MAX);
    let added = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO outbox_marks (repo, env, seq, state) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![order.repo, order.env, seq, state])?;
    if added == 0 {
        return Ok(());
    }
    let error = error.map(|mut e| {
        if e.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
        e
    });
    insert(
        conn,
        &Fact::State {
            repo: order.repo.clone(),
            env: order.env.clone(),
            seq: order.seq,
            sha: order.sha.clone(),
            state: state.to_owned(),
            kind: order.kind.as_str().to_owned(),
            issued_by: order.issued_by.clone(),
            error,
        },
    )
}

/// Writes what a recorded status changes for the newest order: its first agent deploying
/// (`in_progress`), an agent failing (`failure`), every known targeted agent healthy at it
/// (`success`). Statuses about older orders, or another sha, or an order that has ended,
/// change nothing.
///
/// # Errors
///
/// When the ledger cannot be read or written.
pub fn on_status(conn: &Connection, status: &AgentStatus) -> Result<(), LedgerError> {
    let Some(seq) = status.seq else {
        return Ok(());
    };
    if !matches!(
        status.state,
        AgentState::Deploying | AgentState::Failed | AgentState::RolledBack | AgentState::Healthy
    ) {
        return Ok(());
    }
    let Some(newest) = newest(conn, &status.repo, &status.env, seq, status.sha.as_deref())? else {
        return Ok(());
    };
    if newest.ended {
        return Ok(());
    }
    let order = &*newest.order;
    if !newest.in_progress {
        mark_open(conn, order, "in_progress", None)?;
    }
    match status.state {
        AgentState::Deploying => Ok(()),
        AgentState::Failed | AgentState::RolledBack => {
            let error = status
                .error
                .clone()
                .unwrap_or_else(|| format!("{} is {}", status.agent, status.state.as_str()));
            mark_open(
                conn,
                order,
                "failure",
                Some(format!("{}: {error}", status.agent)),
            )
        }
        _ => {
            if all_healthy(conn, order)? {
                mark_open(conn, order, "success", None)?;
            }
            Ok(())
        }
    }
}

/// A map per repo/env kept between statuses (see [`NEWEST`] and [`NOT_YET`]).
type PerEnv<T> = std::sync::Mutex<Option<HashMap<(String, String), T>>>;

/// The newest order of each repo/env as last parsed. Used only while the ledger's newest
/// has its `seq` and sha (an index lookup), so a status costs no parse of the signed order.
static NEWEST: PerEnv<Arc<DeployOrder>> = std::sync::Mutex::new(None);

/// The newest order of a repo/env and which of its marks are written.
struct Newest {
    order: Arc<DeployOrder>,
    /// `success` or `failure`: nothing more is marked.
    ended: bool,
    in_progress: bool,
}

/// The newest order of `repo`/`env` if it is order `seq` of `sha` (one indexed lookup with
/// its marks; the order is parsed once).
fn newest(
    conn: &Connection,
    repo: &str,
    env: &str,
    seq: u64,
    sha: Option<&str>,
) -> Result<Option<Newest>, LedgerError> {
    let head: Option<(i64, String, bool, bool)> = conn
        .prepare_cached(
            "SELECT o.seq, o.sha,
               EXISTS (SELECT 1 FROM outbox_marks m WHERE m.repo = o.repo AND m.env = o.env
                       AND m.seq = o.seq AND m.state IN ('success', 'failure')),
               EXISTS (SELECT 1 FROM outbox_marks m WHERE m.repo = o.repo AND m.env = o.env
                       AND m.seq = o.seq AND m.state = 'in_progress')
             FROM orders o WHERE o.repo = ?1 AND o.env = ?2 ORDER BY o.seq DESC LIMIT 1",
        )?
        .query_row([repo, env], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((newest_seq, newest_sha, ended, in_progress)) = head else {
        return Ok(None);
    };
    if i64::try_from(seq).ok() != Some(newest_seq) || sha != Some(newest_sha.as_str()) {
        return Ok(None);
    }
    let key = (repo.to_owned(), env.to_owned());
    let mut cache = NEWEST.lock().unwrap_or_else(PoisonError::into_inner);
    let cache = cache.get_or_insert_with(HashMap::new);
    let order = match cache
        .get(&key)
        .filter(|o| o.seq == seq && o.sha == newest_sha)
    {
        Some(o) => o.clone(),
        None => {
            let Some(stored) = ledger::newest_order(conn, repo, env)? else {
                return Ok(None);
            };
            let order = Arc::new(stored.order);
            cache.insert(key, order.clone());
            order
        }
    };
    Ok(Some(Newest {
        order,
        ended,
        in_progress,
    }))
}

/// The fields of a recorded status that [`all_healthy`] reads (not the whole status).
#[derive(Deserialize)]
struct Health<'a> {
    state: AgentState,
    seq: Option<u64>,
    #[serde(borrow)]
    sha: Option<std::borrow::Cow<'a, str>>,
}

/// Per repo/env: the order last asked about and an agent not yet healthy at it, where the
/// next look starts. While that agent is not healthy, a `healthy` status of another costs
/// one row instead of a scan of the fleet (which made a fleet's statuses cost the square of
/// its size). Only a hint: the answer always comes from the ledger.
static NOT_YET: PerEnv<(u64, String)> = std::sync::Mutex::new(None);

/// Whether every known agent the order targets, and not offline, is healthy at it.
fn all_healthy(conn: &Connection, order: &DeployOrder) -> Result<bool, LedgerError> {
    let key = (order.repo.clone(), order.env.clone());
    let hint = {
        let hints = NOT_YET.lock().unwrap_or_else(PoisonError::into_inner);
        hints
            .as_ref()
            .and_then(|h| h.get(&key))
            .filter(|(seq, _)| *seq == order.seq)
            .map(|(_, agent)| agent.clone())
            .unwrap_or_default()
    };
    // From the hint to the end, then the agents before it.
    let found = match not_healthy_from(conn, order, &hint, true)? {
        Some(agent) => Some(agent),
        None => not_healthy_from(conn, order, &hint, false)?,
    };
    let mut hints = NOT_YET.lock().unwrap_or_else(PoisonError::into_inner);
    let hints = hints.get_or_insert_with(HashMap::new);
    Ok(match found {
        Some(agent) => {
            hints.insert(key, (order.seq, agent));
            false
        }
        None => {
            hints.remove(&key);
            true
        }
    })
}

/// The first agent (by name) from `from` on (`after`), or before it, that the order
/// targets, is not offline and is not healthy at the order.
fn not_healthy_from(
    conn: &Connection,
    order: &DeployOrder,
    from: &str,
    after: bool,
) -> Result<Option<String>, LedgerError> {
    let sql = if after {
        "SELECT agent, payload FROM statuses WHERE repo = ?1 AND env = ?2 AND agent >= ?3
         ORDER BY agent"
    } else {
        "SELECT agent, payload FROM statuses WHERE repo = ?1 AND env = ?2 AND agent < ?3
         ORDER BY agent"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![order.repo, order.env, from])?;
    while let Some(row) = rows.next()? {
        let agent: String = row.get(0)?;
        let payload: String = row.get(1)?;
        let Ok(s) = serde_json::from_str::<Health<'_>>(&payload) else {
            continue;
        };
        let targeted = order.targets.as_ref().is_none_or(|t| t.contains(&agent));
        let healthy = s.state == AgentState::Healthy
            && s.seq == Some(order.seq)
            && s.sha.as_deref() == Some(order.sha.as_str());
        if targeted && s.state != AgentState::Offline && !healthy {
            return Ok(Some(agent));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(seq: u64, sha: &str, targets: Option<Vec<&str>>) -> DeployOrder {
        serde_json::from_value(json!({
            "v": 1, "seq": seq, "repo": "acme/web", "env": "prod", "sha": sha, "ref": null,
            "kind": "push", "delivery": null, "issued_at": "2026-11-30T00:00:00.000Z",
            "issued_by": null, "key_id": "k", "targets": targets, "sig": "s",
        }))
        .unwrap()
    }

    fn report(conn: &Connection, agent: &str, state: AgentState, o: &DeployOrder) {
        let status: AgentStatus = serde_json::from_value(json!({
            "v": 1, "agent": agent, "host": "h", "repo": "acme/web", "env": "prod",
            "session": "s", "state": state, "seq": o.seq, "sha": o.sha,
            "updated_at": "2026-11-30T00:00:01.000Z", "version": "t", "mac": "m",
        }))
        .unwrap();
        let payload = serde_json::to_string(&status).unwrap();
        ledger::record_status(conn, &status, &payload).unwrap();
        on_status(conn, &status).unwrap();
    }

    fn successes(conn: &Connection, seq: u64) -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE fact LIKE '%\"state\":\"success\"%'
             AND fact LIKE ?1",
            [format!("%\"seq\":{seq},%")],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// `success` comes once, with the last targeted agent that is not offline to become
    /// healthy, whatever order they report in (the hint of who is not yet healthy moves).
    #[test]
    fn success_comes_once_with_the_last_targeted_agent_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let conn = ledger::open(&dir.path().join("ledger.db")).unwrap();
        let first = order(1, &"a".repeat(40), None);
        ledger::insert_order(&conn, &first, &serde_json::to_string(&first).unwrap()).unwrap();
        for agent in ["c", "a", "e", "b", "d"] {
            report(&conn, agent, AgentState::Deploying, &first);
        }
        report(&conn, "e", AgentState::Offline, &first);
        for agent in ["b", "d", "c"] {
            report(&conn, agent, AgentState::Healthy, &first);
            assert_eq!(successes(&conn, 1), 0, "after {agent}");
        }
        report(&conn, "a", AgentState::Healthy, &first);
        report(&conn, "a", AgentState::Healthy, &first);
        assert_eq!(successes(&conn, 1), 1);

        // A wave of `b` and `d`: the others do not count.
        let wave = order(2, &"b".repeat(40), Some(vec!["b", "d"]));
        ledger::insert_order(&conn, &wave, &serde_json::to_string(&wave).unwrap()).unwrap();
        report(&conn, "d", AgentState::Healthy, &wave);
        assert_eq!(successes(&conn, 2), 0);
        report(&conn, "b", AgentState::Healthy, &wave);
        assert_eq!(successes(&conn, 2), 1);
    }
}
