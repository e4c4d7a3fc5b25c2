//! `Status`: records an agent's verified status in the ledger.

use orcastrate_broker::AgentStatus;

use super::command::{internal, Command, Ctx, Staged};
use super::DeskError;
use crate::ledger;

/// A verified status and its payload as received.
pub(super) struct Status {
    pub status: AgentStatus,
    pub payload: String,
}

impl Command for Status {
    type Reply = ();

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<(), DeskError> {
        // Nobody waits for this answer: say it here. The status is sent again on its next change.
        ledger::record_status(cx.conn, &self.status, &self.payload)
            .and_then(|()| match cx.outbox {
                true => crate::outbox::on_status(cx.conn, &self.status),
                false => Ok(()),
            })
            .map_err(|e| {
                tracing::warn!(error = %e, agent = %self.status.agent, "status not recorded");
                internal(e)
            })
    }
}
