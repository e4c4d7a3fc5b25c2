//! `History`: orders newest first, each with its outcome (deployed, failed, reverted and
//! why, ...) so an operator sees what became of it.

use orcastrate_broker::{AgentState, DeployOrder};
use rusqlite::Connection;
use serde::Serialize;

use super::command::{internal, Command, Ctx, Staged};
use super::DeskError;
use crate::ledger;
use crate::rollout::{store, RolloutState};

/// One order of the history and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderEntry {
    #[serde(flatten)]
    pub order: DeployOrder,
    /// `deployed`, `rolling out`, `failed`, `reverted`, `aborted`, `superseded` or `pending`.
    pub outcome: String,
    /// Why, where there is more to say (a revert's reason, an agent's error).
    pub reason: Option<String>,
}

/// Up to `limit` orders, newest first, of one repo and/or env or of all.
pub(super) struct History {
    pub repo: Option<String>,
    pub env: Option<String>,
    pub limit: u32,
}

impl Command for History {
    type Reply = Vec<OrderEntry>;
    const WRITES: bool = false;

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<Vec<OrderEntry>, DeskError> {
        let orders = ledger::history(
            cx.conn,
            self.repo.as_deref(),
            self.env.as_deref(),
            self.limit,
        )
        .map_err(internal)?;
        orders
            .into_iter()
            .map(|o| {
                let (outcome, reason) = outcome(cx.conn, &o.order).map_err(internal)?;
                Ok(OrderEntry {
                    order: o.order,
                    outcome: outcome.to_owned(),
                    reason,
                })
            })
            .collect()
    }
}

/// What became of an order: its rollout's end if it was part of one, else what the agents
/// reported for it.
fn outcome(
    conn: &Connection,
    o: &DeployOrder,
) -> Result<(&'static str, Option<String>), ledger::LedgerError> {
    if let Some(r) = store::of_seq(conn, &o.repo, &o.env, o.seq)? {
        let outcome = match r.state {
            RolloutState::Running => "rolling out",
            RolloutState::Completed => "deployed",
            RolloutState::Reverted => "reverted",
            RolloutState::Halted => "failed",
            RolloutState::Superseded => "superseded",
            RolloutState::Aborted => "aborted",
        };
        let reason = match r.state {
            RolloutState::Running => {
                Some(format!("wave {} of {}", r.wave + 1, r.policy.waves.len()))
            }
            _ => r.reason,
        };
        return Ok((outcome, reason));
    }
    let healthy = conn
        .prepare_cached(
            "SELECT 1 FROM healthy WHERE repo = ?1 AND env = ?2 AND seq = ?3 AND sha = ?4",
        )?
        .exists(rusqlite::params![
            o.repo,
            o.env,
            i64::try_from(o.seq).unwrap_or(i64::MAX),
            o.sha
        ])?;
    if healthy {
        return Ok(("deployed", None));
    }
    let failed = ledger::statuses(conn, Some(&o.repo), Some(&o.env))?
        .into_iter()
        .find(|s| {
            s.seq == Some(o.seq) && matches!(s.state, AgentState::Failed | AgentState::RolledBack)
        });
    if let Some(s) = failed {
        let why = s.error.unwrap_or_default();
        return Ok((
            "failed",
            Some(format!("{} {}: {why}", s.agent, s.state.as_str())),
        ));
    }
    let newer = ledger::newest_order(conn, &o.repo, &o.env)?.is_some_and(|n| n.order.seq > o.seq);
    Ok((if newer { "superseded" } else { "pending" }, None))
}
