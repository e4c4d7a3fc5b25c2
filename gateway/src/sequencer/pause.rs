//! `Pause`: pauses or resumes a repo/env the gateway deploys.

use super::command::{internal, Command, Ctx, Staged};
use super::order::known;
use super::DeskError;
use crate::ledger;

/// Pauses (`paused`) or resumes a repo/env.
pub(super) struct Pause {
    pub repo: String,
    pub env: String,
    pub paused: bool,
}

impl Command for Pause {
    type Reply = ();

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<(), DeskError> {
        // A ledger error is the gateway's failure (500), not an unknown repo/env (404).
        if !known(cx, &self.repo, &self.env)? {
            return Err(DeskError::UnknownRepoEnv {
                repo: self.repo,
                env: self.env,
            });
        }
        ledger::set_paused(cx.conn, &self.repo, &self.env, self.paused).map_err(internal)?;
        if cx.outbox {
            crate::outbox::on_pause(cx.conn, &self.repo, &self.env, self.paused)
                .map_err(internal)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequencer::command::testing::{temp_ledger, Parts};

    fn pause(cx: &Ctx<'_>) -> Result<(), DeskError> {
        let cmd = Pause {
            repo: "acme/web".into(),
            env: "prod".into(),
            paused: true,
        };
        cmd.apply(cx, &mut Staged::default())
    }

    #[test]
    fn a_ledger_error_is_a_failure_not_an_unknown_repo_env() {
        let (_dir, conn) = temp_ledger();
        let parts = Parts::new();
        let err = pause(&parts.cx(&conn)).unwrap_err();
        assert!(
            matches!(err, DeskError::UnknownRepoEnv { .. }),
            "a repo/env neither configured nor ordered is unknown: {err:?}"
        );
        // A real ledger that cannot answer whether the repo/env was ever ordered.
        conn.execute_batch("DROP TABLE orders").unwrap();
        let err = pause(&parts.cx(&conn)).unwrap_err();
        assert!(
            matches!(err, DeskError::Internal(_)),
            "a ledger error must be a 500, not a 404: {err:?}"
        );
    }
}
