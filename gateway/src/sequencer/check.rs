//! `Check`: a trivial query through the ledger, for `/healthz`.

use super::command::{internal, Command, Ctx, Staged};
use super::DeskError;

/// Proves the ledger answers, in the sequencer's turn like any other command.
pub(super) struct Check;

impl Command for Check {
    type Reply = ();
    const WRITES: bool = false;

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<(), DeskError> {
        cx.conn
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(internal)
    }
}
