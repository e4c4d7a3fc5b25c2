//! Rollouts: a push reaches a repo/env's agents in waves with a health gate, and a commit
//! that fails on more than `max_failed` agents is reverted for the whole fleet (design:
//! "Rollouts"). Without a `[repos.rollout.ENV]` table a push is one wave of every agent,
//! and the revert still applies.
//!
//! - `config`: the table as written and its validated [`config::Policy`].
//! - `plan`: the pure decisions (wave targets, what a running rollout does next).
//! - `store`: the `rollouts` table of the ledger.
//!
//! The sequencer applies the decisions (`sequencer/rollout.rs`), so a rollout's orders are
//! numbered, committed and published like every other order.

pub mod config;
pub mod plan;
pub mod store;

use orcastrate_broker::message::FleetRollout;
use orcastrate_broker::OrderKind;
use serde::{Deserialize, Serialize};

use config::Policy;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waves are going out, or the last one is not all healthy yet.
    Running,
    /// Every agent of the last wave reported healthy.
    Completed,
    /// Failed agents or a timed-out wave: a `rollback` to `base_sha` went to everyone.
    Reverted,
    /// It failed but was not reverted (a manual deploy, or nothing healthy to go back to).
    Halted,
    /// A newer order took over.
    Superseded,
    /// An operator aborted it (which reverts it).
    Aborted,
}

impl RolloutState {
    /// The name in the ledger and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Reverted => "reverted",
            Self::Halted => "halted",
            Self::Superseded => "superseded",
            Self::Aborted => "aborted",
        }
    }

    /// Parses the ledger's name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "completed" => Self::Completed,
            "reverted" => Self::Reverted,
            "halted" => Self::Halted,
            "superseded" => Self::Superseded,
            "aborted" => Self::Aborted,
            _ => return None,
        })
    }
}

/// One rollout as the ledger keeps it (and the API shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub id: i64,
    pub repo: String,
    pub env: String,
    pub sha: String,
    /// What agents outside the wave run, and what a revert goes back to.
    pub base_sha: Option<String>,
    pub kind: OrderKind,
    /// The seq of the first wave's order: statuses from then on count.
    pub first_seq: u64,
    /// The seq of the current wave's order.
    pub wave_seq: u64,
    /// The current wave, 0-based.
    pub wave: usize,
    /// The policy when the rollout started (a reload does not change a running one).
    pub policy: Policy,
    /// The current wave's agents; `None`: every agent.
    pub targets: Option<Vec<String>>,
    pub state: RolloutState,
    /// Why it ended as it did (reverted, halted, superseded, aborted).
    pub reason: Option<String>,
    /// When the current wave's order was published (Unix ms).
    pub wave_started_ms: u64,
    /// Since when the current wave has been all healthy (Unix ms): the hold timer.
    pub hold_from_ms: Option<u64>,
    /// Offline agents a wave stopped waiting for after `wave_timeout_s`.
    pub left_out: Vec<String>,
    pub started_at: String,
    pub updated_at: String,
}

impl Rollout {
    /// The compact form in `FleetSummary.rollout`.
    pub fn fleet_view(&self) -> FleetRollout {
        FleetRollout {
            id: self.id,
            sha: self.sha.clone(),
            base_sha: self.base_sha.clone(),
            wave: self.wave + 1,
            waves: self.policy.waves.len(),
            state: self.state.as_str().to_owned(),
        }
    }

    /// Whether a failure of this rollout reverts it (push and merge; manual ones are the
    /// operator's call).
    pub fn reverts(&self) -> bool {
        matches!(self.kind, OrderKind::Push | OrderKind::Merge)
    }
}
