//! The app process: started in its own process group from the `current` release, restarted
//! with backoff when it dies, stopped with SIGTERM then SIGKILL, and adopted after an agent
//! restart when the recorded process group (pgid + start time) still lives.
//!
//! The app's stdout and stderr go straight to `{root}/logs/app.log`, never through a pipe to
//! the agent: a pipe would break (SIGPIPE) when the agent dies, killing the app it should
//! keep serving.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procs::{self, Stopped};
use crate::release::Layout;
use crate::state::{self, AppRecord, ProcRecord, SharedState};
use crate::steps::Cmd;
use crate::users::RunAs;

/// First pause before restarting an app that died; doubled on each quick death.
const RESTART_MIN: Duration = Duration::from_millis(500);
/// Longest pause between restarts.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// An app that ran this long before dying is restarted after the shortest pause again.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);
/// How often an adopted app (not our child, so it cannot be waited for) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// What the supervisor runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppInfo {
    pub(crate) release: String,
    pub(crate) proc: ProcRecord,
    /// How often it was restarted after dying.
    pub(crate) restarts: u32,
}

struct Running {
    info: Arc<Mutex<AppInfo>>,
    /// Tells the watch task to stop the app; the task owns the process.
    stop: CancellationToken,
    /// The watch task; awaited by [`Supervisor::stop`], aborted by [`Supervisor::detach`].
    task: JoinHandle<Stopped>,
}

/// Runs at most one app at a time.
pub(crate) struct Supervisor {
    start_cmd: String,
    /// `run_as`.
    user: Option<RunAs>,
    stop_timeout: Duration,
    layout: Layout,
    state: SharedState,
    running: Mutex<Option<Running>>,
}

enum Process {
    Own(tokio::process::Child),
    Adopted,
}

impl Supervisor {
    pub(crate) fn new(
        start_cmd: &str,
        user: Option<RunAs>,
        stop_timeout: Duration,
        layout: Layout,
        state: SharedState,
    ) -> Self {
        Self {
            start_cmd: start_cmd.to_owned(),
            user,
            stop_timeout,
            layout,
            state,
            running: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What runs now, if anything.
    pub(crate) fn info(&self) -> Option<AppInfo> {
        self.lock()
            .as_ref()
            .map(|r| r.info.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Whether the app's process group has a live process.
    pub(crate) fn alive(&self) -> bool {
        self.info().is_some_and(|i| procs::group_alive(i.proc.pgid))
    }

    /// Adopts the app a previous agent started, if that very process group still lives.
    pub(crate) fn adopt(&self, record: &AppRecord) -> bool {
        if !procs::same_group_alive(record.proc.pgid, record.proc.start_time) {
            return false;
        }
        self.watch(
            AppInfo {
                release: record.release.clone(),
                proc: record.proc,
                restarts: 0,
            },
            Process::Adopted,
        );
        true
    }

    /// Starts the app from release `release` (nothing may be running).
    ///
    /// # Errors
    ///
    /// When the start command cannot be spawned.
    pub(crate) fn start(&self, release: &str) -> std::io::Result<ProcRecord> {
        let (child, proc) = self.spawn(release)?;
        self.watch(
            AppInfo {
                release: release.to_owned(),
                proc,
                restarts: 0,
            },
            Process::Own(child),
        );
        Ok(proc)
    }

    /// Stops the app (SIGTERM to its group, SIGKILL after `stop_timeout_s`); `None` when
    /// nothing was running.
    pub(crate) async fn stop(&self) -> Option<Stopped> {
        let running = self.lock().take()?;
        running.stop.cancel();
        let pgid = running
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .proc
            .pgid;
        let how = match running.task.await {
            Ok(how) => how,
            // The task panicked: stop the group here.
            Err(_) => procs::stop_group(pgid, self.stop_timeout).await,
        };
        state::update(&self.state, |s| s.app = None);
        Some(how)
    }

    /// Lets go of the app without stopping it (`on_shutdown = "keep"`): it keeps serving and
    /// the next agent adopts it.
    pub(crate) fn detach(&self) {
        if let Some(running) = self.lock().take() {
            running.task.abort();
        }
    }

    fn spawn(&self, release: &str) -> std::io::Result<(tokio::process::Child, ProcRecord)> {
        spawn_app(
            &self.start_cmd,
            self.user.as_ref(),
            &self.layout,
            release,
            &self.state,
        )
    }

    fn watch(&self, info: AppInfo, process: Process) {
        let info = Arc::new(Mutex::new(info));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_task(
            WatchCtx {
                start_cmd: self.start_cmd.clone(),
                user: self.user.clone(),
                stop_timeout: self.stop_timeout,
                layout: self.layout.clone(),
                state: self.state.clone(),
            },
            info.clone(),
            stop.clone(),
            process,
        ));
        let previous = self.lock().replace(Running { info, stop, task });
        if let Some(p) = previous {
            // Callers stop before starting; a leftover watcher must not restart its app.
            p.stop.cancel();
        }
    }
}

struct WatchCtx {
    start_cmd: String,
    user: Option<RunAs>,
    stop_timeout: Duration,
    layout: Layout,
    state: SharedState,
}

/// Spawns the start command of `release`, its output appended to `logs/app.log`, and
/// records its process group in `state.json`.
fn spawn_app(
    start_cmd: &str,
    user: Option<&RunAs>,
    layout: &Layout,
    release: &str,
    state: &SharedState,
) -> std::io::Result<(tokio::process::Child, ProcRecord)> {
    let dir: PathBuf = layout.release(release);
    let log = crate::steps::open_log(&layout.logs().join("app.log"))?;
    let mut command = Cmd::in_release(start_cmd, &dir, user).command();
    command
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let child = command.spawn()?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let start_time = procs::stat(pgid).map(|s| s.start_time).unwrap_or(0);
    let proc = ProcRecord { pgid, start_time };
    state::update(state, |s| {
        s.app = Some(AppRecord {
            proc,
            release: release.to_owned(),
        });
    });
    tracing::info!(release, pgid, command = %start_cmd, "app started");
    Ok((child, proc))
}

async fn watch_task(
    ctx: WatchCtx,
    info: Arc<Mutex<AppInfo>>,
    stop: CancellationToken,
    mut process: Process,
) -> Stopped {
    let mut pause = RESTART_MIN;
    loop {
        let (proc, release) = {
            let i = info.lock().unwrap_or_else(|p| p.into_inner());
            (i.proc, i.release.clone())
        };
        let started = tokio::time::Instant::now();
        let died = match &mut process {
            Process::Own(child) => tokio::select! {
                status = child.wait() => Some(status.map(crate::steps::describe).unwrap_or_else(|e| e.to_string())),
                () = stop.cancelled() => None,
            },
            Process::Adopted => loop {
                tokio::select! {
                    () = tokio::time::sleep(ADOPTED_POLL) => {
                        if !procs::same_group_alive(proc.pgid, proc.start_time) {
                            break Some("exited".to_owned());
                        }
                    }
                    () = stop.cancelled() => break None,
                }
            },
        };
        let Some(how) = died else {
            let how = procs::stop_group(proc.pgid, ctx.stop_timeout).await;
            if let Process::Own(child) = &mut process {
                let _ = child.wait().await;
            }
            tracing::info!(release, pgid = proc.pgid, ?how, "app stopped");
            return how;
        };
        // The leader died; whatever is left of its group would hold the port.
        procs::kill_group(proc.pgid).await;
        if started.elapsed() >= RESTART_RESET_AFTER {
            pause = RESTART_MIN;
        }
        tracing::warn!(release, pgid = proc.pgid, status = %how, restart_in_ms = pause.as_millis() as u64, "app died; restarting");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return Stopped::NotRunning,
        }
        pause = (pause * 2).min(RESTART_MAX);
        match spawn_app(
            &ctx.start_cmd,
            ctx.user.as_ref(),
            &ctx.layout,
            &release,
            &ctx.state,
        ) {
            Ok((child, new)) => {
                let mut i = info.lock().unwrap_or_else(|p| p.into_inner());
                i.proc = new;
                i.restarts += 1;
                drop(i);
                process = Process::Own(child);
            }
            Err(e) => {
                tracing::error!(release, error = %e, "app could not be restarted");
                // Keep the dead record: the loop sees it dead again and retries after a pause.
            }
        }
    }
}
