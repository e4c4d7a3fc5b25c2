//! `Agents`: the latest verified status of every agent.

use orcastrate_broker::AgentStatus;

use super::command::{internal, Command, Ctx, Staged};
use super::DeskError;
use crate::ledger;

/// The agents of one repo and/or env, or all.
pub(super) struct Agents {
    pub repo: Option<String>,
    pub env: Option<String>,
}

impl Command for Agents {
    type Reply = Vec<AgentStatus>;
    const WRITES: bool = false;

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<Vec<AgentStatus>, DeskError> {
        ledger::statuses(cx.conn, self.repo.as_deref(), self.env.as_deref()).map_err(internal)
    }
}
