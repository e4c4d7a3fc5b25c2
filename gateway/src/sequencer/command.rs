//! What every sequencer command shares: the context it runs in, what it stages for after the
//! commit, and the queued form that carries its reply.
//!
//! A command is one type implementing [`Command`]; the batch loop in `mod.rs` never names a
//! command, so adding one touches only its own file and the handle method that sends it.

use std::sync::RwLock;

use orcastrate_broker::{OrderSigner, Topics};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::DeskError;
use crate::config::Access;
use crate::ledger::StoredOrder;

/// What a command may use while it runs inside the batch's transaction.
pub(super) struct Ctx<'a> {
    pub conn: &'a Connection,
    pub signer: &'a OrderSigner,
    pub access: &'a RwLock<Access>,
    pub topics: &'a Topics,
    /// Whether outbox facts are written: only with a destination (`[github] token` or a
    /// `[[notify]]`), so a gateway without one spends nothing on them per status.
    pub outbox: bool,
}

/// Something to publish after the commit.
pub(super) struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What a command staged: published and made the newest only if its savepoint commits.
#[derive(Default)]
pub(super) struct Staged {
    pub publish: Vec<Publish>,
    pub new_orders: Vec<StoredOrder>,
    /// Rollouts started or changed, for the fleet summaries.
    pub rollouts: Vec<crate::rollout::Rollout>,
}

impl Staged {
    pub(super) fn extend(&mut self, other: Staged) {
        self.publish.extend(other.publish);
        self.new_orders.extend(other.new_orders);
        self.rollouts.extend(other.rollouts);
    }
}

/// One sequencer command: it runs inside the batch's transaction and yields its reply.
///
/// Any `Err` rolls back the command's savepoint (the batch loop decides that, not the
/// command), so a failed command never leaves half its writes behind.
pub(super) trait Command: Send + 'static {
    type Reply: Send + 'static;

    /// Whether the command may change what the ledger holds: a batch with one wakes the
    /// board's live streams ([`super::Sequencer::changes`]); reads say `false`.
    const WRITES: bool = true;

    fn apply(self, cx: &Ctx<'_>, out: &mut Staged) -> Result<Self::Reply, DeskError>;
}

/// A queued command, its reply channel erased so that one queue carries every command.
pub(super) trait Job: Send {
    /// Runs the command; `false` if it failed and its writes must be rolled back.
    fn apply(&mut self, cx: &Ctx<'_>, out: &mut Staged) -> bool;

    /// Replaces the answer by a ledger failure (the savepoint or the batch did not commit).
    fn fail(&mut self, e: &str);

    /// Sends the answer, once the batch is committed and published.
    fn answer(self: Box<Self>);

    /// [`Command::WRITES`] of the command.
    fn writes(&self) -> bool;
}

/// A command with its reply channel (`None`: fire and forget) and, once run, its answer.
pub(super) struct Pending<C: Command> {
    cmd: Option<C>,
    reply: Option<oneshot::Sender<Result<C::Reply, DeskError>>>,
    result: Result<C::Reply, DeskError>,
}

impl<C: Command> Pending<C> {
    pub(super) fn new(cmd: C, reply: Option<oneshot::Sender<Result<C::Reply, DeskError>>>) -> Self {
        Self {
            cmd: Some(cmd),
            reply,
            result: Err(DeskError::Stopped),
        }
    }
}

impl<C: Command> Job for Pending<C> {
    fn apply(&mut self, cx: &Ctx<'_>, out: &mut Staged) -> bool {
        if let Some(cmd) = self.cmd.take() {
            self.result = cmd.apply(cx, out);
        }
        self.result.is_ok()
    }

    fn fail(&mut self, e: &str) {
        self.result = Err(DeskError::Internal(e.to_owned()));
    }

    fn writes(&self) -> bool {
        C::WRITES
    }

    fn answer(self: Box<Self>) {
        // A dropped receiver means the HTTP client went away; the decision stands.
        if let Some(reply) = self.reply {
            drop(reply.send(self.result));
        }
    }
}

/// A ledger error, as the 500 it is.
pub(super) fn internal(e: impl std::fmt::Display) -> DeskError {
    DeskError::Internal(e.to_string())
}

/// A context over a real ledger for the commands' unit tests.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::RwLock;

    use orcastrate_broker::{OrderSigner, Topics};
    use rusqlite::Connection;

    use super::Ctx;
    use crate::config::Access;

    /// A fresh ledger in a temporary folder, which lives as long as the folder is kept.
    pub(in crate::sequencer) fn temp_ledger() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::ledger::open(&dir.path().join("ledger.db")).unwrap();
        (dir, conn)
    }

    /// What a [`Ctx`] borrows, with nothing configured.
    pub(in crate::sequencer) struct Parts {
        pub(in crate::sequencer) signer: OrderSigner,
        pub(in crate::sequencer) access: RwLock<Access>,
        pub(in crate::sequencer) topics: Topics,
    }

    impl Parts {
        pub(in crate::sequencer) fn new() -> Self {
            Self {
                signer: OrderSigner::generate(),
                access: RwLock::new(Access::default()),
                topics: Topics::new("orcastrate"),
            }
        }

        pub(in crate::sequencer) fn cx<'a>(&'a self, conn: &'a Connection) -> Ctx<'a> {
            Ctx {
                conn,
                signer: &self.signer,
                access: &self.access,
                topics: &self.topics,
                outbox: true,
            }
        }
    }
}
