//! A failure after the switch: back to the newest release recorded healthy, or a final
//! failure when there is none or it does not come back.

use orcastrate_broker::{AgentState, Step};
use tokio_util::sync::CancellationToken;

use super::{Job, Outcome};
use crate::outcome::Record;
use crate::state::{self, HealthyRelease};

impl Job<'_> {
    /// After the switch: back to the newest release recorded healthy.
    pub(super) async fn failed_after(&self, failed_release: &str, error: String) -> Outcome {
        let ctx = self.ctx;
        self.sink.note(
            Some(Step::Health),
            &format!("failed after the switch: {error}"),
        );
        tracing::warn!(seq = self.order.seq, error = %error, "deploy failed after the switch; rolling back");
        let target = {
            let st = state::lock(&ctx.state);
            st.get()
                .healthy
                .iter()
                .rev()
                .filter(|h| h.release != failed_release && h.sha != self.order.sha)
                .find_map(|h| {
                    // The release recorded may have been rebuilt under another name.
                    let on_disk = ctx.layout.complete_release_of(&h.sha)?;
                    Some(HealthyRelease {
                        release: on_disk.name,
                        ..h.clone()
                    })
                })
        };
        let ms = || self.began.elapsed().as_millis() as u64;
        let Some(target) = target else {
            let error = format!("{error}; no earlier healthy release to roll back to");
            return self.final_failure(failed_release, error, ms());
        };
        ctx.supervisor.stop().await;
        let restored = async {
            ctx.layout
                .switch_current(&target.release)
                .map_err(|e| format!("cannot switch current back to {}: {e}", target.release))?;
            ctx.supervisor
                .start(&target.release, None)
                .map_err(|e| format!("`{}` did not start: {e}", ctx.settings.steps.start))?;
            crate::health::wait_healthy(
                &ctx.settings.health.check,
                &ctx.layout.release(&target.release),
                ctx.settings.health.timeout,
                || ctx.supervisor.alive(),
                ctx.settings.run_as.as_ref(),
                &CancellationToken::new(),
            )
            .await
        }
        .await;
        match restored {
            Ok(()) => {
                let ms = ms();
                self.sink.note(
                    Some(Step::Health),
                    &format!("rolled back to {} ({})", target.release, target.sha),
                );
                self.record(Record {
                    last: self.last(
                        AgentState::RolledBack,
                        Some(&target.release),
                        Some(ms),
                        Some(error),
                    ),
                    healthy: None,
                    running_sha: Some(target.sha.clone()),
                    keep_status_release: false,
                });
                Outcome::RolledBack
            }
            Err(e) => {
                let error = format!(
                    "{error}; rolling back to {} failed too: {e}",
                    target.release
                );
                self.final_failure(&target.release, error, ms())
            }
        }
    }

    fn final_failure(&self, release: &str, error: String, ms: u64) -> Outcome {
        self.sink.note(None, &format!("failed: {error}"));
        self.record(Record {
            last: self.last(AgentState::Failed, Some(release), Some(ms), Some(error)),
            healthy: None,
            running_sha: self.ctx.running_sha(),
            keep_status_release: false,
        });
        Outcome::Failed
    }
}
