//! Facts and the hooks that write them inside the sequencer's transaction.
//!
//! A deployment's states are marked once each (`outbox_marks`), so a status sent again, or
//! by each of many agents, yields one `in_progress`, one `success` or `failure`.

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

/// Marks `state` of `order` once; `success` and `failure` end it (nothing after them).
fn mark(
    conn: &Connection,
    order: &DeployOrder,
    state: &str,
    error: Option<String>,
) -> Result<(), LedgerError> {
    let seq = i64::try_from(order.seq).unwrap_or(i64::MAX);
    let ended: Option<String> = conn
        .prepare_cached(
            "SELECT state FROM outbox_marks WHERE repo = ?1 AND env = ?2 AND seq = ?3
             AND state IN ('success', 'failure')",
        )?
        .query_row(params![order.repo, order.env, seq], |r| r.get(0))
        .optional()?;
    if ended.is_some() {
        return Ok(());
    }
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
/// (`success`). Statuses about older orders, or another sha, change nothing.
///
/// # Errors
///
/// When the ledger cannot be read or written.
pub fn on_status(conn: &Connection, status: &AgentStatus) -> Result<(), LedgerError> {
    let Some(seq) = status.seq else {
        return Ok(());
    };
    let Some(newest) = ledger::newest_order(conn, &status.repo, &status.env)? else {
        return Ok(());
    };
    let order = &newest.order;
    if order.seq != seq || status.sha.as_deref() != Some(order.sha.as_str()) {
        return Ok(());
    }
    match status.state {
        AgentState::Deploying => mark(conn, order, "in_progress", None),
        AgentState::Failed | AgentState::RolledBack => {
            mark(conn, order, "in_progress", None)?;
            let error = status
                .error
                .clone()
                .unwrap_or_else(|| format!("{} is {}", status.agent, status.state.as_str()));
            mark(
                conn,
                order,
                "failure",
                Some(format!("{}: {error}", status.agent)),
            )
        }
        AgentState::Healthy => {
            mark(conn, order, "in_progress", None)?;
            if all_healthy(conn, order)? {
                mark(conn, order, "success", None)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether every known agent the order targets, and not offline, is healthy at it.
fn all_healthy(conn: &Connection, order: &DeployOrder) -> Result<bool, LedgerError> {
    let statuses = ledger::statuses(conn, Some(&order.repo), Some(&order.env))?;
    Ok(statuses
        .iter()
        .filter(|s| order.targets.as_ref().is_none_or(|t| t.contains(&s.agent)))
        .filter(|s| s.state != AgentState::Offline)
        .all(|s| {
            s.state == AgentState::Healthy
                && s.seq == Some(order.seq)
                && s.sha.as_deref() == Some(order.sha.as_str())
        }))
}
