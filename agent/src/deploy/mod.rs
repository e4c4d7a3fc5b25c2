//! One deploy, in the design's sequence: fetch and check out (or find the complete release
//! on disk), link `[shared]`, decrypt the config, `install`, `build`, mark complete, stop the
//! old app, switch `current`, start, check health; and the rollback when that fails.
//!
//! Until the old app is stopped the deploy can be cancelled by a newer order; a failure up
//! to there removes the half-built release and leaves the old app serving (`failed`). After
//! it, a failure switches back to the newest release recorded healthy (`rolled_back`).
//!
//! - `build`: fetch, checkout, `[shared]`, config, `install`, `build`, the marker.
//! - `rollback`: a failure after the switch.
//! - `switch`: the blue/green switch behind `[proxy]`, and the health wait both use.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use orcastrate_broker::{AgentState, DeployOrder, OrderKind, Step};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connection::Bus;
use crate::git::{FetchError, Git};
use crate::outcome::{self, Record};
use crate::release::{self, Layout};
use crate::state::{self, HealthyRelease, LastOutcome, Pending, SharedState};
use crate::status::StatusBoard;
use crate::steps::{Sink, StepError};
use crate::supervisor::Supervisor;

mod build;
mod rollback;
mod switch;

/// Everything a deploy works with, shared with the agent loop.
pub(crate) struct Ctx {
    pub(crate) settings: Settings,
    pub(crate) layout: Layout,
    pub(crate) git: Git,
    pub(crate) state: SharedState,
    pub(crate) supervisor: Supervisor,
    /// The public socket, with `[proxy]`.
    pub(crate) proxy: Option<crate::proxy::Proxy>,
    pub(crate) status: StatusBoard,
    pub(crate) bus: Bus,
}

impl Ctx {
    /// The sha of a release, from its completion marker.
    pub(crate) fn sha_of(&self, release: &str) -> Option<String> {
        self.layout
            .list()
            .ok()?
            .into_iter()
            .find(|r| r.name == release)
            .and_then(|r| r.marker)
            .map(|m| m.sha)
    }

    /// The sha `current` points to, if its app is running.
    pub(crate) fn running_sha(&self) -> Option<String> {
        if !self.supervisor.alive() {
            return None;
        }
        self.sha_of(&self.layout.current_release()?)
    }

    /// Deletes releases beyond `keep_releases` (never `current` or the newest healthy one)
    /// and the cache refs of commits no release needs.
    pub(crate) async fn prune(&self) {
        let current = self.layout.current_release();
        let (newest_healthy, healthy_shas) = {
            let st = state::lock(&self.state);
            let s = st.get();
            (
                s.newest_healthy().map(|h| h.release.clone()),
                s.healthy
                    .iter()
                    .rev()
                    .take(self.settings.keep_releases)
                    .map(|h| h.sha.clone())
                    .collect::<Vec<_>>(),
            )
        };
        let protect: Vec<&str> = [current.as_deref(), newest_healthy.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        match self.layout.prune(self.settings.keep_releases, &protect) {
            Ok(removed) if !removed.is_empty() => tracing::info!(?removed, "pruned old releases"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not prune old releases"),
        }
        let on_disk = self.layout.list().unwrap_or_default();
        let names: Vec<String> = on_disk.iter().map(|r| r.name.clone()).collect();
        crate::app_log::prune(&self.layout.logs(), &names);
        let mut keep: Vec<String> = on_disk
            .into_iter()
            .filter_map(|r| r.marker.map(|m| m.sha))
            .collect();
        keep.extend(healthy_shas);
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        self.git.forget_except(&keep).await;
        prune_logs(&self.layout);
    }
}

/// Deploy logs kept beyond the releases on disk.
const KEEP_LOGS: usize = 50;

fn prune_logs(layout: &Layout) {
    let Ok(dir) = std::fs::read_dir(layout.logs()) else {
        return;
    };
    let mut logs: Vec<(u64, std::path::PathBuf)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".log")?.to_owned();
            let (seq, _) = release::parse_name(&name)?;
            Some((seq, e.path()))
        })
        .collect();
    logs.sort();
    let excess = logs.len().saturating_sub(KEEP_LOGS);
    for (_, path) in logs.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

/// Lets the agent cancel a deploy, but only before it stops the old app.
#[derive(Debug, Default)]
pub(crate) struct Control {
    cancel: CancellationToken,
    /// Set once the deploy is past the point where it stops the old app.
    committed: Mutex<bool>,
}

impl Control {
    /// Cancels the deploy if it has not yet stopped the old app; `false` if it has.
    pub(crate) fn try_cancel(&self) -> bool {
        let committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if *committed {
            false
        } else {
            self.cancel.cancel();
            true
        }
    }

    /// Passes the point of no return unless already cancelled.
    fn commit(&self) -> bool {
        let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if self.cancel.is_cancelled() {
            false
        } else {
            *committed = true;
            true
        }
    }
}

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Healthy,
    Failed,
    RolledBack,
    Skipped,
    /// Superseded by a newer order (or the agent stopping) before the old app was stopped.
    Cancelled,
}

/// Runs one deploy of `order` (`attempt` counts tries of this order, for the retry-once).
pub(crate) async fn deploy(
    ctx: Arc<Ctx>,
    order: DeployOrder,
    attempt: u32,
    control: Arc<Control>,
) -> Outcome {
    let began = Instant::now();
    let name = release::release_name(order.seq, &order.sha);
    let previous_sha = ctx.layout.current_release().and_then(|r| ctx.sha_of(&r));
    state::update(&ctx.state, |s| {
        s.floor = Some(s.floor.unwrap_or(0).max(order.seq));
        s.pending = Some(Pending {
            order: order.clone(),
            attempts: attempt,
        });
    });
    let sink = Sink::new(
        ctx.bus.clone(),
        Some(order.seq),
        Some(&ctx.layout.logs().join(format!("{name}.log"))),
    );
    let running_sha = ctx.running_sha();
    let job = Job {
        ctx: &ctx,
        order: &order,
        sink: &sink,
        control: &control,
        began,
        previous_sha: previous_sha.clone(),
    };
    let newest_healthy = state::lock(&ctx.state).get().newest_healthy().cloned();
    if let Some(healthy) = newest_healthy.filter(|h| job.already_serving(h)) {
        return job.nothing_to_do(&healthy);
    }
    ctx.status.update(|s| {
        s.state = AgentState::Deploying;
        s.step = Some(Step::Fetch);
        s.seq = Some(order.seq);
        s.sha = Some(order.sha.clone());
        s.release = Some(name.clone());
        s.running_sha.clone_from(&running_sha);
        s.previous_sha.clone_from(&previous_sha);
        s.deploy_ms = None;
        s.error = None;
    });
    sink.note(
        Some(Step::Fetch),
        &format!(
            "deploying {} (seq {}, {}{})",
            order.sha,
            order.seq,
            order.kind.as_str(),
            if attempt > 1 {
                ", retried after a restart"
            } else {
                ""
            }
        ),
    );
    job.run(&name).await
}

struct Job<'a> {
    ctx: &'a Arc<Ctx>,
    order: &'a DeployOrder,
    sink: &'a Arc<Sink>,
    control: &'a Control,
    began: Instant,
    previous_sha: Option<String>,
}

/// A failure before the switch, and whether it was a cancellation.
enum Early {
    Cancelled,
    Failed(String),
}

impl From<StepError> for Early {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Cancelled => Early::Cancelled,
            other => Early::Failed(other.to_string()),
        }
    }
}

impl From<FetchError> for Early {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Step(s) => s.into(),
            other => Early::Failed(other.to_string()),
        }
    }
}

impl Job<'_> {
    fn step(&self, step: Step) {
        self.ctx.status.update(|s| s.step = Some(step));
    }

    async fn run(&self, name: &str) -> Outcome {
        let ctx = self.ctx;
        let cancel = &self.control.cancel;
        // The newest healthy sha, for the ancestor skip.
        let newest_healthy = state::lock(&ctx.state).get().newest_healthy().cloned();

        if matches!(self.order.kind, OrderKind::Push | OrderKind::Merge) {
            if let Some(healthy) = &newest_healthy {
                match self.skip_check(healthy).await {
                    Ok(true) => return self.skipped(healthy),
                    Ok(false) => {}
                    Err(Early::Cancelled) => return self.cancelled(None),
                    Err(Early::Failed(e)) => return self.failed_early(None, e),
                }
            }
        }

        let warm = ctx.layout.complete_release_of(&self.order.sha);
        let release = match &warm {
            Some(r) => {
                self.sink.note(
                    Some(Step::Fetch),
                    &format!(
                        "release {} is complete on disk: switching without fetch or install",
                        r.name
                    ),
                );
                ctx.status.update(|s| s.release = Some(r.name.clone()));
                r.name.clone()
            }
            None => {
                if let Err(e) = self.build(name).await {
                    let _ = release::remove_dir(&ctx.layout.release(name));
                    return match e {
                        Early::Cancelled => self.cancelled(Some(name)),
                        Early::Failed(e) => self.failed_early(Some(name), e),
                    };
                }
                name.to_owned()
            }
        };

        if !self.control.commit() || cancel.is_cancelled() {
            return self.cancelled(warm.is_none().then_some(name));
        }
        // Point of no return: from here the deploy finishes even if a newer order arrives.
        self.step(Step::Start);
        self.switch_and_start(&release).await
    }

    /// Whether the order asks for the sha that serves now from the newest healthy release,
    /// so it needs no restart: a rollout wave or revert for an agent that never left that
    /// sha, or that went back to it by itself (`failed` before the switch, `rolled_back`
    /// after it; design: Rollouts). An operator's `manual` deploy always redeploys.
    fn already_serving(&self, healthy: &HealthyRelease) -> bool {
        self.order.kind != OrderKind::Manual
            && healthy.sha == self.order.sha
            && matches!(
                self.ctx.status.get().state,
                AgentState::Healthy | AgentState::Failed | AgentState::RolledBack
            )
            && self.ctx.running_sha().as_deref() == Some(self.order.sha.as_str())
            && self.ctx.layout.current_release().as_deref() == Some(healthy.release.as_str())
    }

    /// Reports the order healthy without touching the release that serves it.
    fn nothing_to_do(&self, healthy: &HealthyRelease) -> Outcome {
        self.sink.note(
            None,
            &format!(
                "{} already serves healthy from {}: nothing to do",
                healthy.sha, healthy.release
            ),
        );
        self.record(Record {
            last: self.last(AgentState::Healthy, Some(&healthy.release), Some(0), None),
            healthy: None,
            running_sha: Some(self.order.sha.clone()),
            keep_status_release: false,
        });
        Outcome::Healthy
    }

    /// Whether a push/merge order's sha is an ancestor of the newest healthy sha.
    async fn skip_check(&self, healthy: &HealthyRelease) -> Result<bool, Early> {
        let ctx = self.ctx;
        if healthy.sha == self.order.sha {
            return Ok(true);
        }
        if !ctx.git.has_commit(&self.order.sha).await {
            self.fetch_sha().await?;
        }
        Ok(ctx.git.is_ancestor(&self.order.sha, &healthy.sha).await == Some(true))
    }

    /// Fetches the order's sha into the cache, cancelled with the deploy.
    async fn fetch_sha(&self) -> Result<(), Early> {
        let ctx = self.ctx;
        ctx.git
            .fetch(
                &self.order.sha,
                self.sink,
                &ctx.state,
                &ctx.status,
                &self.control.cancel,
            )
            .await?;
        Ok(())
    }

    /// Stops the old app, switches `current`, starts the new release and checks its health.
    async fn switch_and_start(&self, release: &str) -> Outcome {
        let ctx = self.ctx;
        if let Some(proxy) = &ctx.proxy {
            return self.blue_green(proxy, release).await;
        }
        if let Some(how) = ctx.supervisor.stop().await {
            self.sink
                .note(Some(Step::Start), &format!("stopped the old app ({how:?})"));
        }
        if let Err(e) = ctx.layout.switch_current(release) {
            return self
                .failed_after(release, format!("cannot switch current to {release}: {e}"))
                .await;
        }
        self.sink.note(
            Some(Step::Start),
            &format!(
                "current -> releases/{release}; starting `{}`",
                ctx.settings.steps.start
            ),
        );
        if let Err(e) = ctx.supervisor.start(release, None) {
            return self
                .failed_after(
                    release,
                    format!("`{}` did not start: {e}", ctx.settings.steps.start),
                )
                .await;
        }
        ctx.status
            .update(|s| s.running_sha = Some(self.order.sha.clone()));
        self.step(Step::Health);
        let health = self
            .wait_health(
                &ctx.settings.health.check,
                release,
                || ctx.supervisor.alive(),
                ctx.supervisor.first_exit(),
            )
            .await;
        match health {
            Ok(()) => self.healthy(release),
            Err(e) => self.failed_after(release, e).await,
        }
    }

    fn healthy(&self, release: &str) -> Outcome {
        let ms = self.began.elapsed().as_millis() as u64;
        self.sink
            .note(Some(Step::Health), &format!("healthy after {ms} ms"));
        self.record(Record {
            last: self.last(AgentState::Healthy, Some(release), Some(ms), None),
            healthy: Some(HealthyRelease {
                seq: self.order.seq,
                sha: self.order.sha.clone(),
                release: release.to_owned(),
                at: orcastrate_broker::time::now(),
            }),
            running_sha: Some(self.order.sha.clone()),
            keep_status_release: false,
        });
        Outcome::Healthy
    }

    fn record(&self, record: Record) {
        outcome::record(&self.ctx.state, &self.ctx.status, record);
    }

    fn last(
        &self,
        state: AgentState,
        release: Option<&str>,
        deploy_ms: Option<u64>,
        error: Option<String>,
    ) -> LastOutcome {
        LastOutcome {
            state,
            seq: Some(self.order.seq),
            sha: Some(self.order.sha.clone()),
            release: release.map(str::to_owned),
            previous_sha: self.previous_sha.clone(),
            deploy_ms,
            error,
        }
    }

    fn skipped(&self, healthy: &HealthyRelease) -> Outcome {
        let reason = format!(
            "{} is an ancestor of {}, which already ran healthy (push delivered out of order)",
            self.order.sha, healthy.sha
        );
        self.sink.note(None, &format!("skipped: {reason}"));
        self.record(Record {
            last: self.last(AgentState::Skipped, None, None, Some(reason)),
            healthy: None,
            running_sha: self.ctx.running_sha(),
            keep_status_release: false,
        });
        Outcome::Skipped
    }

    fn cancelled(&self, removed: Option<&str>) -> Outcome {
        if let Some(name) = removed {
            let _ = release::remove_dir(&self.ctx.layout.release(name));
        }
        self.sink.note(
            None,
            "cancelled before the old app was stopped; it keeps serving",
        );
        Outcome::Cancelled
    }

    fn failed_early(&self, removed: Option<&str>, error: String) -> Outcome {
        let ctx = self.ctx;
        if let Some(name) = removed {
            let _ = release::remove_dir(&ctx.layout.release(name));
        }
        let ms = self.began.elapsed().as_millis() as u64;
        self.sink.note(
            None,
            &format!("failed: {error}; the old release keeps serving"),
        );
        tracing::warn!(seq = self.order.seq, error = %error, "deploy failed before the switch");
        self.record(Record {
            last: self.last(AgentState::Failed, None, Some(ms), Some(error)),
            healthy: None,
            running_sha: ctx.running_sha(),
            keep_status_release: true,
        });
        Outcome::Failed
    }
}
