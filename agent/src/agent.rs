//! The agent loop: recovery at start-up, orders from the bus, one deploy at a time (with
//! supersede), the settle wait of a new host, the retry-once, periodic health, `--once`,
//! and the graceful shutdown.

use std::sync::{Arc, Mutex};

use orcastrate_broker::{AgentState, DeployOrder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::accept::{self, Refusal, RefusalLog};
use crate::config::{OnShutdown, Settings, SETTLE};
use crate::connection::{BusEvent, Connection};
use crate::deploy::{self, Control, Ctx, Outcome};
use crate::git::Git;
use crate::outcome::{self, Record};
use crate::release::Layout;
use crate::state::{
    self, AppRecord, HealthyRelease, LastOutcome, Loaded, ProcRecord, SharedState, StateStore,
};
use crate::status::{self, StatusBoard};
use crate::supervisor::Supervisor;

/// An order is tried at most this often: once, and once more after a restart interrupted it.
const MAX_ATTEMPTS: u32 = 2;

/// How the agent finished; [`RunOutcome::exit_code`] maps it to the documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Stopped by a signal or the caller.
    Stopped,
    /// `--once`: no new order.
    UpToDate,
    /// `--once`: the order deployed and is healthy.
    Healthy,
    /// `--once`: the order was skipped (an ancestor of what runs).
    Skipped,
    /// `--once`: the deploy failed before the switch.
    Failed,
    /// `--once`: the deploy failed after the switch and the previous release was restored.
    RolledBack,
    /// `--once`: no server could be reached.
    NoConnection,
}

impl RunOutcome {
    /// The process exit code: 0 healthy or up to date, 1 failed or rolled back, 3 no
    /// connection (2, bad config, is decided before the agent runs).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Stopped | Self::UpToDate | Self::Healthy | Self::Skipped => 0,
            Self::Failed | Self::RolledBack => 1,
            Self::NoConnection => 3,
        }
    }
}

/// A failure that stops the agent at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "cannot prepare the agent's directory {path}: {source} (check root and its permissions)"
    )]
    Layout {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown` is cancelled (or, with `--once`, until it is done).
///
/// # Errors
///
/// When the directory layout under `root` cannot be created.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<RunOutcome, AgentError> {
    let layout = Layout::new(&settings.root);
    layout.create().map_err(|source| AgentError::Layout {
        path: settings.root.display().to_string(),
        source,
    })?;
    let (store, loaded) = StateStore::load(&settings.root);
    let state: SharedState = Arc::new(Mutex::new(store));
    recover(&layout, &state, &loaded).await;

    let supervisor = Supervisor::new(
        &settings.steps.start,
        settings.run_as.clone(),
        settings.steps.stop_timeout,
        layout.clone(),
        state.clone(),
    );
    let mut started_at_boot = false;
    let app = state::lock(&state).get().app.clone();
    if let Some(app) = app {
        if supervisor.adopt(&app) {
            tracing::info!(pgid = app.proc.pgid, release = %app.release, "adopted the running app");
        } else {
            tracing::info!(
                pgid = app.proc.pgid,
                "the app recorded in state.json is gone"
            );
            state::update(&state, |s| s.app = None);
        }
    }
    adopt_or_kill_strays(&layout, &state, &supervisor).await;
    if supervisor.info().is_none() {
        if let Some(current) = layout.current_release() {
            if layout
                .list()
                .unwrap_or_default()
                .iter()
                .any(|r| r.name == current && r.marker.is_some())
            {
                match supervisor.start(&current) {
                    Ok(_) => {
                        tracing::info!(release = %current, "started the current release");
                        started_at_boot = true;
                    }
                    Err(e) => {
                        tracing::error!(release = %current, error = %e, "cannot start the current release")
                    }
                }
            }
        }
    }

    let mut initial = status::initial(&settings);
    if let Some(last) = state::lock(&state).get().last.clone() {
        initial.state = last.state;
        initial.seq = last.seq;
        initial.sha = last.sha;
        initial.release = last.release;
        initial.previous_sha = last.previous_sha;
        initial.deploy_ms = last.deploy_ms;
        initial.error = last.error;
    }
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let connection = Connection::start(&settings, initial.clone(), events_tx);
    let git = Git::new(
        &layout.cache(),
        &settings.git_url,
        &settings.root,
        &settings.git,
    );
    let ctx = Arc::new(Ctx {
        settings,
        layout,
        git,
        state,
        supervisor,
        status: StatusBoard::new(connection.bus.clone(), initial),
        bus: connection.bus.clone(),
    });
    let running = ctx.running_sha();
    ctx.status.update(|s| s.running_sha = running);

    let outcome = main_loop(&ctx, events_rx, &shutdown, started_at_boot).await;

    match ctx.settings.on_shutdown {
        OnShutdown::Stop => {
            if ctx.supervisor.stop().await.is_some() {
                tracing::info!("stopped the app (on_shutdown = \"stop\")");
            }
            ctx.status.update(|s| s.running_sha = None);
        }
        OnShutdown::Keep => ctx.supervisor.detach(),
    }
    connection.close().await;
    Ok(outcome)
}

/// Start-up recovery: floor from the release names if `state.json` is lost, a step a crash
/// left running, half-built releases.
async fn recover(layout: &Layout, state: &SharedState, loaded: &Loaded) {
    match loaded {
        Loaded::Corrupt(aside, why) => {
            tracing::warn!(moved_to = %aside.display(), error = %why, "state.json was unreadable; rebuilding it")
        }
        Loaded::Missing | Loaded::Found => {}
    }
    let releases = layout.list().unwrap_or_default();
    let (floor, has_history) = {
        let st = state::lock(state);
        (st.get().floor, !st.get().healthy.is_empty())
    };
    if floor.is_none() {
        // Every release directory was started, complete or not.
        if let Some(max) = releases.iter().map(|r| r.seq).max() {
            tracing::info!(floor = max, "floor taken from the release directories");
            state::update(state, |s| s.floor = Some(max));
        }
    }
    if !has_history {
        // Without a history, the release `current` points to is the best rollback target.
        if let Some(current) = layout.current_release() {
            if let Some(marker) = releases
                .iter()
                .find(|r| r.name == current)
                .and_then(|r| r.marker.clone())
            {
                state::update(state, |s| {
                    s.push_healthy(HealthyRelease {
                        seq: marker.seq,
                        sha: marker.sha,
                        release: current,
                        at: orcastrate_broker::time::now(),
                    });
                });
            }
        }
    }
    let step = state::lock(state).get().step;
    if let Some(step) = step {
        if crate::procs::same_group_alive(step.pgid, step.start_time) {
            tracing::warn!(
                pgid = step.pgid,
                "killing a step a previous agent left running"
            );
            crate::procs::kill_group(step.pgid).await;
        }
        state::update(state, |s| s.step = None);
    }
    match layout.remove_incomplete() {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(?removed, "deleted incomplete releases")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not delete incomplete releases"),
    }
    let _ = std::fs::remove_dir_all(layout.tmp());
    let _ = std::fs::create_dir_all(layout.tmp());
}

/// Processes running from a release that `state.json` does not know (it was lost, or a crash
/// hit between starting the app and recording it): the group running from `current` is
/// adopted as the app, any other is killed, so the app is never doubled.
async fn adopt_or_kill_strays(layout: &Layout, state: &SharedState, supervisor: &Supervisor) {
    let current = layout.current_release().map(|name| layout.release(&name));
    let adopted = supervisor.info().map(|i| i.proc.pgid);
    for (pgid, cwd) in crate::procs::groups_under(&layout.releases()) {
        if Some(pgid) == adopted {
            continue;
        }
        let from_current = current.as_ref().is_some_and(|c| cwd.starts_with(c));
        let leader = crate::procs::start_time(pgid);
        if let (true, None, Some(start_time)) = (from_current, supervisor.info(), leader) {
            let release = layout.current_release().unwrap_or_default();
            let record = AppRecord {
                proc: ProcRecord { pgid, start_time },
                release,
            };
            if supervisor.adopt(&record) {
                tracing::info!(pgid, release = %record.release, "adopted an app running from current that state.json did not record");
                state::update(state, |s| s.app = Some(record));
                continue;
            }
        }
        tracing::warn!(pgid, cwd = %cwd.display(), "killing a stray process group running from a release");
        crate::procs::kill_group(pgid).await;
    }
}

/// The settle wait of a host with no floor.
enum Settle {
    /// Collecting orders; the deadline starts when the subscription is acknowledged.
    Waiting {
        deadline: Option<Instant>,
        best: Option<Box<DeployOrder>>,
    },
    Done,
}

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

async fn main_loop(
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
    let mut settle = if floor.is_none() && pending.is_none() {
        Settle::Waiting {
            deadline: None,
            best: None,
        }
    } else {
        Settle::Done
    };
    let mut current: Option<Running> = None;
    let mut queued: Option<(DeployOrder, u32)> = None;
    let mut refusals = RefusalLog::default();

    if let Some(p) = pending {
        if p.attempts < MAX_ATTEMPTS {
            tracing::warn!(
                seq = p.order.seq,
                "an order was interrupted by a restart; retrying it once"
            );
            queued = Some((p.order, p.attempts + 1));
        } else {
            let error = format!(
                "gave up on seq {}: interrupted {} times by a restart of the agent",
                p.order.seq, p.attempts
            );
            tracing::error!("{error}");
            outcome::record(
                &ctx.state,
                &ctx.status,
                Record {
                    last: LastOutcome {
                        state: AgentState::Failed,
                        seq: Some(p.order.seq),
                        sha: Some(p.order.sha.clone()),
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

    let (health_tx, mut health_rx) = mpsc::unbounded_channel::<HealthReport>();
    let mut health_tick = tokio::time::interval_at(
        Instant::now() + settings.health.interval,
        settings.health.interval,
    );
    health_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut check_in_flight = false;
    if started_at_boot {
        check_in_flight = true;
        let tx = health_tx.clone();
        let ctx2 = ctx.clone();
        tokio::spawn(async move {
            let result = crate::health::wait_healthy(
                &ctx2.settings.health.check,
                &ctx2.layout.current(),
                ctx2.settings.health.timeout,
                || ctx2.supervisor.alive(),
                ctx2.settings.run_as.as_ref(),
                &CancellationToken::new(),
            )
            .await;
            let _ = tx.send(HealthReport { result, boot: true });
        });
    }

    let once = settings.once;
    let mut ever_connected = false;
    let connect_deadline = Instant::now() + settings.connect_timeout;
    let mut decide_at: Option<Instant> = None;
    let mut last_outcome: Option<Outcome> = None;

    loop {
        if current.is_none() {
            if let Some((order, attempt)) = queued.take() {
                current = Some(start_deploy(ctx, order, attempt));
            }
        }
        let settling = matches!(settle, Settle::Waiting { .. });
        if once && current.is_none() && queued.is_none() {
            let now = Instant::now();
            if !ever_connected && now >= connect_deadline {
                tracing::error!(
                    timeout_s = settings.connect_timeout.as_secs(),
                    "no MQTT server could be reached"
                );
                return RunOutcome::NoConnection;
            }
            if decide_at.is_some_and(|d| now >= d) && !settling {
                return match last_outcome {
                    None => {
                        tracing::info!("up to date");
                        RunOutcome::UpToDate
                    }
                    Some(Outcome::Healthy) => RunOutcome::Healthy,
                    Some(Outcome::Skipped) => RunOutcome::Skipped,
                    Some(Outcome::RolledBack) => RunOutcome::RolledBack,
                    Some(Outcome::Failed | Outcome::Cancelled) => RunOutcome::Failed,
                };
            }
        }
        let once_wake = if !once {
            None
        } else if !ever_connected {
            Some(connect_deadline)
        } else {
            decide_at
        };
        let settle_deadline = match &settle {
            Settle::Waiting { deadline, .. } => *deadline,
            Settle::Done => None,
        };

        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    BusEvent::Connected => ever_connected = true,
                    BusEvent::Disconnected => {}
                    BusEvent::Subscribed => {
                        if let Settle::Waiting { deadline: deadline @ None, .. } = &mut settle {
                            tracing::info!("new host: waiting 2 s for the newest order before acting");
                            *deadline = Some(Instant::now() + SETTLE);
                        }
                        if once && decide_at.is_none() {
                            // Retained orders arrive right after the subscription is acknowledged.
                            decide_at = Some(Instant::now() + SETTLE);
                        }
                    }
                    BusEvent::Order(payload) => {
                        handle_order(ctx, &payload, &mut settle, current.as_ref(), &mut queued, &mut refusals);
                    }
                }
            }
            () = sleep_until(settle_deadline) => {
                if let Settle::Waiting { best, .. } = std::mem::replace(&mut settle, Settle::Done) {
                    match best {
                        Some(order) => {
                            tracing::info!(seq = order.seq, sha = %order.sha, "taking the newest order seen");
                            queued = Some((*order, 1));
                        }
                        None => tracing::info!("no order yet; waiting for one"),
                    }
                }
            }
            outcome = join(&mut current) => {
                let finished = current.take();
                let outcome = outcome.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "the deploy task failed");
                    Outcome::Failed
                });
                if let Some(f) = finished {
                    tracing::info!(seq = f.order.seq, ?outcome, "deploy finished");
                }
                if outcome != Outcome::Cancelled {
                    last_outcome = Some(outcome);
                    ctx.prune().await;
                }
                health_tick.reset();
            }
            _ = health_tick.tick() => {
                let state = ctx.status.get().state;
                if current.is_none() && !check_in_flight && matches!(state, AgentState::Healthy | AgentState::Unhealthy) {
                    check_in_flight = true;
                    let tx = health_tx.clone();
                    let check = settings.health.check.clone();
                    let dir = ctx.layout.current();
                    let alive = ctx.supervisor.alive();
                    let user = settings.run_as.clone();
                    tokio::spawn(async move {
                        let result = crate::health::check_once(&check, &dir, alive, user.as_ref()).await;
                        let _ = tx.send(HealthReport { result, boot: false });
                    });
                }
            }
            Some(report) = health_rx.recv() => {
                check_in_flight = false;
                if current.is_none() {
                    apply_health(ctx, report);
                }
            }
            () = sleep_until(refusals.next_flush()) => {
                if refusals.flush(Instant::now()) {
                    // The flood may have pushed the true order out of the broker's backlog
                    // for us: ask for the retained one again.
                    ctx.bus.resubscribe();
                }
            }
            () = sleep_until(once_wake) => {}
        }
    }

    if let Some(run) = current.take() {
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
    RunOutcome::Stopped
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

fn handle_order(
    ctx: &Ctx,
    payload: &[u8],
    settle: &mut Settle,
    current: Option<&Running>,
    queued: &mut Option<(DeployOrder, u32)>,
    refusals: &mut RefusalLog,
) {
    let stored = state::lock(&ctx.state).get().floor;
    let floor = [
        stored,
        current.map(|r| r.order.seq),
        queued.as_ref().map(|q| q.0.seq),
    ]
    .into_iter()
    .flatten()
    .max();
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
            refusals.refused(&refusal, Instant::now());
            return;
        }
    };
    tracing::info!(seq = order.seq, sha = %order.sha, kind = order.kind.as_str(), "order accepted");
    if let Settle::Waiting { best, .. } = settle {
        if best.as_ref().is_none_or(|b| order.seq > b.seq) {
            *best = Some(Box::new(order));
        }
        return;
    }
    if let Some(run) = current {
        if run.control.try_cancel() {
            tracing::info!(
                cancelled = run.order.seq,
                newer = order.seq,
                "a newer order supersedes the deploy in progress"
            );
        } else {
            tracing::info!(
                running = run.order.seq,
                newer = order.seq,
                "the deploy in progress has stopped the old app; the newer order follows it"
            );
        }
    }
    *queued = Some((order, 1));
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
