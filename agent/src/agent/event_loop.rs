//! The agent loop's I/O: it waits for the next event (a bus event, the settle deadline, a
//! deploy ending, the health tick, a health report, the refusal log's flush, the `--once`
//! wake-up or shutdown), hands it to the [`Machine`], and does what the machine decides:
//! starting and cancelling deploys, running health checks, recording outcomes.

use std::sync::Arc;

use orcastrate_broker::{AgentState, DeployOrder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::machine::{self, Accepted, Machine, Resume};
use super::RunOutcome;
use crate::accept::{self, Refusal, RefusalLog};
use crate::connection::BusEvent;
use crate::deploy::{self, Control, Ctx, Outcome};
use crate::outcome::{self, Record};
use crate::state::{self, LastOutcome};

/// A deploy task and the handle to cancel it.
struct Running {
    order: DeployOrder,
    control: Arc<Control>,
    handle: JoinHandle<Outcome>,
}

struct HealthReport {
    result: Result<(), String>,
    /// The check after starting the current release at start-up (not a periodic one).
    boot: bool,
}

/// The loop: the machine plus the tasks and timers it drives.
struct EventLoop<'a> {
    ctx: &'a Arc<Ctx>,
    machine: Machine,
    /// The deploy task the machine counts as running.
    current: Option<Running>,
    refusals: RefusalLog,
    /// Health check tasks report here; the loop holds a sender to clone for each check.
    health_tx: mpsc::UnboundedSender<HealthReport>,
    health_tick: Interval,
    /// The health check tasks, joined when the loop ends so no check (and no process it
    /// runs) outlives the loop; `checks_cancel` stops them first.
    checks: TaskTracker,
    /// Stops the health checks when the loop ends; a child of shutdown.
    checks_cancel: CancellationToken,
}

/// Runs the loop until shutdown (or, with `--once`, until it is done).
pub(super) async fn run(
    ctx: &Arc<Ctx>,
    mut events: mpsc::UnboundedReceiver<BusEvent>,
    shutdown: &CancellationToken,
    started_at_boot: bool,
) -> RunOutcome {
    let settings = &ctx.settings;
    let (floor, pending) = {
        let st = state::lock(&ctx.state);
        (st.get().floor, st.get().pending.clone())
    };
    let machine = Machine::new(
        floor.is_none() && pending.is_none(),
        settings.once,
        Instant::now() + settings.connect_timeout,
    );
    let (health_tx, mut health_rx) = mpsc::unbounded_channel::<HealthReport>();
    let mut health_tick = tokio::time::interval_at(
        Instant::now() + settings.health.interval,
        settings.health.interval,
    );
    health_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lp = EventLoop {
        ctx,
        machine,
        current: None,
        refusals: RefusalLog::default(),
        health_tx,
        health_tick,
        checks: TaskTracker::new(),
        checks_cancel: shutdown.child_token(),
    };
    if let Some(p) = pending {
        lp.resume(machine::resume(p));
    }
    if started_at_boot {
        lp.boot_check();
    }

    loop {
        if let Some((order, attempt)) = lp.machine.next_deploy() {
            lp.current = Some(start_deploy(ctx, order, attempt));
        }
        if let Some(verdict) = lp.machine.verdict(Instant::now()) {
            lp.join_checks().await;
            return lp.finish(verdict);
        }
        let once_wake = lp.machine.once_wake();
        let settle_deadline = lp.machine.settle_deadline();
        let flush_at = lp.refusals.next_flush();

        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                lp.on_bus_event(event);
            }
            () = sleep_until(settle_deadline) => lp.on_settle_deadline(),
            outcome = join(&mut lp.current) => lp.on_deploy_finished(outcome).await,
            _ = lp.health_tick.tick() => lp.on_health_tick(),
            Some(report) = health_rx.recv() => lp.on_health_report(report),
            () = sleep_until(flush_at) => lp.on_flush(),
            () = sleep_until(once_wake) => {}
        }
    }
    lp.stop().await;
    lp.join_checks().await;
    RunOutcome::Stopped
}

impl EventLoop<'_> {
    fn resume(&mut self, resume: Resume) {
        match resume {
            Resume::Retry(order, attempt) => {
                tracing::warn!(
                    seq = order.seq,
                    "an order was interrupted by a restart; retrying it once"
                );
                self.machine.queue(order, attempt);
            }
            Resume::GiveUp(order, error) => {
                tracing::error!("{error}");
                let ctx = self.ctx;
                outcome::record(
                    &ctx.state,
                    &ctx.status,
                    Record {
                        last: LastOutcome {
                            state: AgentState::Failed,
                            seq: Some(order.seq),
                            sha: Some(order.sha.clone()),
                            release: None,
                            previous_sha: None,
                            deploy_ms: None,
                            error: Some(error),
                        },
                        healthy: None,
                        running_sha: ctx.running_sha(),
                        keep_status_release: true,
                    },
                );
            }
        }
    }

    /// The check after starting the current release at start-up.
    fn boot_check(&mut self) {
        self.machine.on_boot_check();
        let tx = self.health_tx.clone();
        let ctx = self.ctx.clone();
        let cancel = self.checks_cancel.clone();
        self.checks.spawn(async move {
            let check =
                crate::config::health_on(&ctx.settings, ctx.supervisor.info().and_then(|i| i.port));
            let result = crate::health::wait_healthy(
                &check,
                &ctx.layout.current(),
                ctx.settings.health.timeout,
                || ctx.supervisor.alive(),
                ctx.settings.run_as.as_ref(),
                &cancel,
            )
            .await;
            let _ = tx.send(HealthReport { result, boot: true });
        });
    }

    /// `--once` is done.
    fn finish(&self, verdict: RunOutcome) -> RunOutcome {
        match verdict {
            RunOutcome::NoConnection => tracing::error!(
                timeout_s = self.ctx.settings.connect_timeout.as_secs(),
                "no MQTT server could be reached"
            ),
            RunOutcome::UpToDate => tracing::info!("up to date"),
            _ => {}
        }
        verdict
    }

    fn on_bus_event(&mut self, event: BusEvent) {
        match event {
            BusEvent::Connected => self.machine.on_connected(),
            BusEvent::Disconnected => {}
            BusEvent::Subscribed => {
                if self.machine.on_subscribed(Instant::now()) {
                    tracing::info!("new host: waiting 2 s for the newest order before acting");
                }
            }
            BusEvent::Order(payload) => self.on_order(&payload),
        }
    }

    fn on_settle_deadline(&mut self) {
        match self.machine.on_settle_deadline() {
            Some(order) => {
                tracing::info!(seq = order.seq, sha = %order.sha, "taking the newest order seen");
            }
            None => tracing::info!("no order yet; waiting for one"),
        }
    }

    fn on_order(&mut self, payload: &[u8]) {
        let ctx = self.ctx;
        let stored = state::lock(&ctx.state).get().floor;
        let floor = self.machine.floor(stored);
        let order = match accept::check(payload, &ctx.settings, floor) {
            Ok(order) => order,
            Err(Refusal::Empty) => {
                tracing::debug!("the retained order was cleared");
                return;
            }
            Err(Refusal::Stale { seq, floor }) if seq == floor => {
                tracing::debug!(seq, "order already started");
                return;
            }
            Err(refusal) => {
                self.refusals.refused(&refusal, Instant::now());
                return;
            }
        };
        tracing::info!(seq = order.seq, sha = %order.sha, kind = order.kind.as_str(), "order accepted");
        let newer = order.seq;
        let Accepted::Queued {
            supersedes: Some(_),
        } = self.machine.on_accepted(order)
        else {
            return;
        };
        let Some(run) = &self.current else { return };
        if run.control.try_cancel() {
            tracing::info!(
                cancelled = run.order.seq,
                newer,
                "a newer order supersedes the deploy in progress"
            );
        } else {
            tracing::info!(
                running = run.order.seq,
                newer,
                "the deploy in progress has stopped the old app; the newer order follows it"
            );
        }
    }

    async fn on_deploy_finished(&mut self, outcome: Result<Outcome, tokio::task::JoinError>) {
        let finished = self.current.take();
        let outcome = outcome.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the deploy task failed");
            Outcome::Failed
        });
        if let Some(f) = finished {
            tracing::info!(seq = f.order.seq, ?outcome, "deploy finished");
        }
        if self.machine.on_deploy_finished(outcome) {
            self.ctx.prune().await;
        }
        self.health_tick.reset();
    }

    fn on_health_tick(&mut self) {
        let ctx = self.ctx;
        if !self.machine.on_health_tick(ctx.status.get().state) {
            return;
        }
        let tx = self.health_tx.clone();
        let check =
            crate::config::health_on(&ctx.settings, ctx.supervisor.info().and_then(|i| i.port));
        let dir = ctx.layout.current();
        let alive = ctx.supervisor.alive();
        let user = ctx.settings.run_as.clone();
        let cancel = self.checks_cancel.clone();
        // A failure right after the app died says how it died (it is being restarted).
        let died = ctx.supervisor.recent_exit(ctx.settings.health.interval);
        self.checks.spawn(async move {
            // Dropping the check on shutdown stops its command, as its own timeout does.
            let result = tokio::select! {
                r = crate::health::check_once(&check, &dir, alive, user.as_ref()) => r,
                () = cancel.cancelled() => return,
            };
            let result = result.map_err(|e| match died {
                Some(x) => format!("{e}; the app died ({}){}", x.status, x.stderr_part()),
                None => e,
            });
            let _ = tx.send(HealthReport {
                result,
                boot: false,
            });
        });
    }

    fn on_health_report(&mut self, report: HealthReport) {
        if self.machine.on_health_report() {
            apply_health(self.ctx, report);
        }
    }

    fn on_flush(&mut self) {
        if self.refusals.flush(Instant::now()) {
            // The flood may have pushed the true order out of the broker's backlog for
            // us: ask for the retained one again.
            self.ctx.bus.resubscribe();
        }
    }

    /// Shutdown: cancels the deploy in progress if it can still be, else waits for it.
    /// Stops the health checks still running and waits for them.
    async fn join_checks(&self) {
        self.checks_cancel.cancel();
        self.checks.close();
        self.checks.wait().await;
    }

    async fn stop(&mut self) {
        let Some(run) = self.current.take() else {
            return;
        };
        if run.control.try_cancel() {
            tracing::info!(
                seq = run.order.seq,
                "stopping: cancelling the deploy in progress (retried after restart)"
            );
        } else {
            tracing::info!(
                seq = run.order.seq,
                "stopping: waiting for the deploy in progress to finish"
            );
        }
        let _ = run.handle.await;
    }
}

fn start_deploy(ctx: &Arc<Ctx>, order: DeployOrder, attempt: u32) -> Running {
    let control = Arc::new(Control::default());
    let handle = tokio::spawn(deploy::deploy(
        ctx.clone(),
        order.clone(),
        attempt,
        control.clone(),
    ));
    Running {
        order,
        control,
        handle,
    }
}

fn apply_health(ctx: &Ctx, report: HealthReport) {
    let state = ctx.status.get().state;
    let running = ctx.running_sha();
    match report.result {
        Ok(()) => {
            if state == AgentState::Unhealthy
                || (report.boot && matches!(state, AgentState::Idle | AgentState::Healthy))
            {
                tracing::info!("healthy");
                ctx.status.update(|s| {
                    s.state = AgentState::Healthy;
                    s.running_sha = running;
                    s.error = None;
                });
            }
        }
        Err(e) => {
            if state == AgentState::Healthy || report.boot {
                tracing::warn!(error = %e, "health check failed");
                ctx.status.update(|s| {
                    s.state = AgentState::Unhealthy;
                    s.running_sha = running;
                    s.error = Some(e);
                });
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn join(current: &mut Option<Running>) -> Result<Outcome, tokio::task::JoinError> {
    match current {
        Some(run) => (&mut run.handle).await,
        None => std::future::pending().await,
    }
}
