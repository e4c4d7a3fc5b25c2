//! `History`: orders newest first.

use orcastrate_broker::DeployOrder;

use super::command::{internal, Command, Ctx, Staged};
use super::DeskError;
use crate::ledger;

/// Up to `limit` orders, newest first, of one repo and/or env or of all.
pub(super) struct History {
    pub repo: Option<String>,
    pub env: Option<String>,
    pub limit: u32,
}

impl Command for History {
    type Reply = Vec<DeployOrder>;

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<Vec<DeployOrder>, DeskError> {
        ledger::history(
            cx.conn,
            self.repo.as_deref(),
            self.env.as_deref(),
            self.limit,
        )
        .map(|v| v.into_iter().map(|o| o.order).collect())
        .map_err(internal)
    }
}
