//! The app process: started in its own process group from the `current` release, restarted
//! with backoff when it dies, stopped with SIGTERM then SIGKILL, and adopted after an agent
//! restart when the recorded process group (pgid + start time) still lives.
//!
//! The app's stdout and stderr go to its release's log file through a log writer that is not
//! the agent (see [`crate::app_log`]): a pipe to the agent would break (SIGPIPE) when the
//! agent dies, killing the app it should keep serving.
//!
//! The first time the app dies after a start, [`FirstExit`] says how (exit code or signal)
//! and what it last printed to stderr, so a deploy waiting for health fails at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app_log::{self, AppLogLimits, Writer};
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
/// How long the log writer of an adopted app (not ours to wait for) is given to write the
/// app's last lines after it died.
const ADOPTED_DRAIN: Duration = Duration::from_millis(300);
/// How often an adopted app (not our child, so it cannot be waited for) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// What the supervisor runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppInfo {
    pub(crate) release: String,
    pub(crate) proc: ProcRecord,
    /// How often it was restarted after dying.
    pub(crate) restarts: u32,
    /// Its private port behind `[proxy]`.
    pub(crate) port: Option<u16>,
}

/// How the app died the first time after it was started (announced as it happens), and the
/// last time (for the periodic health check's `error`).
#[derive(Debug, Default)]
pub(crate) struct FirstExit {
    how: Mutex<Option<AppExit>>,
    latest: Mutex<Option<(AppExit, tokio::time::Instant)>>,
    /// Cancelled once `how` is set; the watch task fires it, deploys wait on it.
    fired: CancellationToken,
}

/// How the app died, and its last stderr lines (redacted, bounded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AppExit {
    /// `exit code 1`, `killed by signal 9`, or `exited` for an adopted app.
    pub(crate) status: String,
    pub(crate) stderr: Vec<String>,
}

/// Most of a crash reason's room for the app's stderr: the status `error` is cut at
/// 2000 bytes, and the newest lines matter most.
const REASON_STDERR_BYTES: usize = 1500;

impl AppExit {
    /// `` `npm run start` exited during the health check (exit code 1); its last stderr:
    /// a | b `` — the newest lines that fit, oldest first, on one line.
    pub(crate) fn reason(&self, start_cmd: &str) -> String {
        format!(
            "`{start_cmd}` exited during the health check ({}){}",
            self.status,
            self.stderr_part()
        )
    }

    /// `; its last stderr: a | b`, or that it printed nothing there.
    pub(crate) fn stderr_part(&self) -> String {
        let mut reason = String::new();
        let mut kept: Vec<&str> = Vec::new();
        let mut room = REASON_STDERR_BYTES;
        for line in self.stderr.iter().rev() {
            if line.len() + 3 > room {
                break;
            }
            room -= line.len() + 3;
            kept.push(line);
        }
        kept.reverse();
        if kept.is_empty() {
            reason.push_str("; it printed nothing to stderr");
        } else {
            reason.push_str("; its last stderr: ");
            reason.push_str(&kept.join(" | "));
        }
        reason
    }
}

impl FirstExit {
    /// Waits until the app died once, and says how.
    pub(crate) async fn wait(&self) -> AppExit {
        self.fired.cancelled().await;
        self.how
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    fn fire(&self, exit: AppExit) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((exit.clone(), tokio::time::Instant::now()));
        let mut how = self.how.lock().unwrap_or_else(|p| p.into_inner());
        if how.is_none() {
            *how = Some(exit);
            self.fired.cancel();
        }
    }
}

/// Where the app's output goes.
#[derive(Debug, Clone)]
pub(crate) struct AppLogs {
    /// Size cap and rotation.
    pub(crate) limits: AppLogLimits,
    /// The agent binary, to run the log writer as its own process (else a thread).
    pub(crate) writer: Option<PathBuf>,
    /// The variable that tells the app its private port (`[proxy] port_var`).
    pub(crate) port_var: Option<String>,
}

/// One supervised app.
pub(crate) struct Running {
    info: Arc<Mutex<AppInfo>>,
    /// Whether it is the app `state.json` records (a blue/green candidate is not, until
    /// promoted: after a crash the agent adopts the app that served).
    recorded: Arc<AtomicBool>,
    /// Fired by the watch task when the app first dies.
    first_exit: Arc<FirstExit>,
    /// Tells the watch task to stop the app; the task owns the process.
    stop: CancellationToken,
    /// The watch task; awaited by [`Supervisor::stop`], aborted by [`Supervisor::detach`].
    task: JoinHandle<Stopped>,
}

impl Running {
    /// Its private port behind `[proxy]`.
    pub(crate) fn port(&self) -> Option<u16> {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).port
    }
}

/// Runs one app, and behind `[proxy]` a second one (the candidate of a blue/green switch)
/// while it proves healthy.
pub(crate) struct Supervisor {
    start_cmd: String,
    /// `run_as`.
    user: Option<RunAs>,
    stop_timeout: Duration,
    layout: Layout,
    state: SharedState,
    logs: AppLogs,
    running: Mutex<Option<Running>>,
    /// The blue/green candidate.
    next: Mutex<Option<Running>>,
}

enum Process {
    /// Our child, and the writer of its log (boxed: a child and a writer are large).
    Own(Box<(tokio::process::Child, Writer)>),
    Adopted,
}

impl Supervisor {
    pub(crate) fn new(
        start_cmd: &str,
        user: Option<RunAs>,
        stop_timeout: Duration,
        layout: Layout,
        state: SharedState,
        logs: AppLogs,
    ) -> Self {
        Self {
            start_cmd: start_cmd.to_owned(),
            user,
            stop_timeout,
            layout,
            state,
            logs,
            running: Mutex::new(None),
            next: Mutex::new(None),
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

    /// How the app started last died, once it has (`None`: nothing runs).
    pub(crate) fn first_exit(&self) -> Option<Arc<FirstExit>> {
        self.lock().as_ref().map(|r| r.first_exit.clone())
    }

    /// How the app last died, if that was within two health-check periods (`interval`) plus
    /// the longest pause before a restart: recent enough to explain a failing check.
    pub(crate) fn recent_exit(&self, interval: Duration) -> Option<AppExit> {
        let within = interval * 2 + RESTART_MAX;
        let exits = self.first_exit()?;
        let latest = exits.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .as_ref()
            .filter(|(_, at)| at.elapsed() <= within)
            .map(|(exit, _)| exit.clone())
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
                port: record.port,
            },
            Process::Adopted,
            false,
        );
        true
    }

    /// Starts the app from release `release` (nothing may be running).
    ///
    /// # Errors
    ///
    /// When the start command cannot be spawned.
    pub(crate) fn start(&self, release: &str, port: Option<u16>) -> std::io::Result<ProcRecord> {
        self.start_in(release, port, false)
    }

    /// Starts `release` on `port` beside the app that serves, as the candidate of a
    /// blue/green switch: [`Self::promote`] makes it the app, [`Self::discard`] stops it.
    ///
    /// # Errors
    ///
    /// When the start command cannot be spawned.
    pub(crate) fn start_next(&self, release: &str, port: u16) -> std::io::Result<ProcRecord> {
        self.start_in(release, Some(port), true)
    }

    fn start_in(
        &self,
        release: &str,
        port: Option<u16>,
        next: bool,
    ) -> std::io::Result<ProcRecord> {
        let (child, proc, writer) = spawn_app(
            &self.start_cmd,
            self.user.as_ref(),
            &self.layout,
            (release, port),
            (!next).then_some(&self.state),
            &self.logs,
        )?;
        self.watch(
            AppInfo {
                release: release.to_owned(),
                proc,
                restarts: 0,
                port,
            },
            Process::Own(Box::new((child, writer))),
            next,
        );
        Ok(proc)
    }

    /// Whether the candidate's process group has a live process.
    pub(crate) fn next_alive(&self) -> bool {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        next.as_ref().is_some_and(|r| {
            procs::group_alive(r.info.lock().unwrap_or_else(|p| p.into_inner()).proc.pgid)
        })
    }

    /// How the candidate first died, once it has.
    pub(crate) fn next_first_exit(&self) -> Option<Arc<FirstExit>> {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        next.as_ref().map(|r| r.first_exit.clone())
    }

    /// Makes the candidate the app (recorded in `state.json`) and returns the one it
    /// replaces, still running, for [`Self::retire`] once its connections drained.
    pub(crate) fn promote(&self) -> Option<Running> {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let info = next.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        next.recorded.store(true, Ordering::SeqCst);
        state::update(&self.state, |s| {
            s.app = Some(AppRecord {
                proc: info.proc,
                release: info.release.clone(),
                port: info.port,
            });
        });
        self.lock().replace(next)
    }

    /// Stops the candidate (it failed its health check); `None` when there was none.
    pub(crate) async fn discard(&self) -> Option<Stopped> {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(Self::stop_running(next, self.stop_timeout).await)
    }

    /// Stops an app [`Self::promote`] replaced.
    pub(crate) async fn retire(&self, old: Running) -> Stopped {
        Self::stop_running(old, self.stop_timeout).await
    }

    async fn stop_running(running: Running, stop_timeout: Duration) -> Stopped {
        running.stop.cancel();
        let pgid = running
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .proc
            .pgid;
        match running.task.await {
            Ok(how) => how,
            // The task panicked: stop the group here.
            Err(_) => procs::stop_group(pgid, stop_timeout).await,
        }
    }

    /// Stops the app (SIGTERM to its group, SIGKILL after `stop_timeout_s`); `None` when
    /// nothing was running.
    pub(crate) async fn stop(&self) -> Option<Stopped> {
        // A candidate left by a cancelled switch goes too.
        self.discard().await;
        let running = self.lock().take()?;
        let how = Self::stop_running(running, self.stop_timeout).await;
        state::update(&self.state, |s| s.app = None);
        Some(how)
    }

    /// Lets go of the app without stopping it (`on_shutdown = "keep"`): it keeps serving and
    /// the next agent adopts it.
    pub(crate) fn detach(&self) {
        if let Some(running) = self.lock().take() {
            running.task.abort();
        }
        if let Some(next) = self.next.lock().unwrap_or_else(|p| p.into_inner()).take() {
            next.task.abort();
        }
    }

    fn watch(&self, info: AppInfo, process: Process, next: bool) {
        let info = Arc::new(Mutex::new(info));
        let recorded = Arc::new(AtomicBool::new(!next));
        let stop = CancellationToken::new();
        let first_exit = Arc::new(FirstExit::default());
        let task = tokio::spawn(watch_task(
            WatchCtx {
                start_cmd: self.start_cmd.clone(),
                user: self.user.clone(),
                stop_timeout: self.stop_timeout,
                layout: self.layout.clone(),
                state: self.state.clone(),
                logs: self.logs.clone(),
                first_exit: first_exit.clone(),
                recorded: recorded.clone(),
            },
            info.clone(),
            stop.clone(),
            process,
        ));
        let running = Running {
            info,
            recorded,
            first_exit,
            stop,
            task,
        };
        let previous = if next {
            self.next
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(running)
        } else {
            self.lock().replace(running)
        };
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
    logs: AppLogs,
    first_exit: Arc<FirstExit>,
    recorded: Arc<AtomicBool>,
}

/// Spawns the start command of `release` (on its private `port` behind `[proxy]`), its
/// output going to the release's app log, and records its process group in `state.json`
/// when given the state.
fn spawn_app(
    start_cmd: &str,
    user: Option<&RunAs>,
    layout: &Layout,
    (release, port): (&str, Option<u16>),
    state: Option<&SharedState>,
    logs: &AppLogs,
) -> std::io::Result<(tokio::process::Child, ProcRecord, Writer)> {
    let dir: PathBuf = layout.release(release);
    let start_cmd = &match port {
        Some(port) => start_cmd.replace(crate::config::PORT_PLACEHOLDER, &port.to_string()),
        None => start_cmd.to_owned(),
    };
    let (stdout, stderr, writer) = app_log::start_writer(
        logs.writer.as_deref(),
        &app_log::path(&layout.logs(), release),
        logs.limits,
    )?;
    let mut cmd = Cmd::in_release(start_cmd, &dir, user);
    if let (Some(port), Some(var)) = (port, logs.port_var.as_ref()) {
        cmd.extra_env.push((var.clone(), port.to_string()));
    }
    let mut command = cmd.command();
    // Systemd's socket activation is for the agent's proxy, not for the app.
    command
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    command.stdout(stdout).stderr(stderr);
    // The command's copies of the pipes' write ends close with it, so the writer sees the
    // end of the app's output when the app (and whatever inherited them) exits.
    let child = command.spawn()?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let start_time = procs::stat(pgid).map(|s| s.start_time).unwrap_or(0);
    let proc = ProcRecord { pgid, start_time };
    if let Some(state) = state {
        state::update(state, |s| {
            s.app = Some(AppRecord {
                proc,
                release: release.to_owned(),
                port,
            });
        });
    }
    tracing::info!(release, pgid, command = %start_cmd, "app started");
    Ok((child, proc, writer))
}

async fn watch_task(
    ctx: WatchCtx,
    info: Arc<Mutex<AppInfo>>,
    stop: CancellationToken,
    mut process: Process,
) -> Stopped {
    let mut pause = RESTART_MIN;
    loop {
        let (proc, release, port) = {
            let i = info.lock().unwrap_or_else(|p| p.into_inner());
            (i.proc, i.release.clone(), i.port)
        };
        let started = tokio::time::Instant::now();
        let died = match &mut process {
            Process::Own(own) => tokio::select! {
                status = own.0.wait() => Some(status.map(crate::steps::describe).unwrap_or_else(|e| e.to_string())),
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
            if let Process::Own(own) = &mut process {
                let _ = own.0.wait().await;
            }
            tracing::info!(release, pgid = proc.pgid, ?how, "app stopped");
            return how;
        };
        // The leader died; whatever is left of its group would hold the port.
        procs::kill_group(proc.pgid).await;
        match &mut process {
            Process::Own(own) => own.1.drained().await,
            // The writer of an adopted app is a previous agent's child: give it a moment.
            Process::Adopted => tokio::time::sleep(ADOPTED_DRAIN).await,
        }
        let stderr = app_log::stderr_tail(&app_log::path(&ctx.layout.logs(), &release));
        ctx.first_exit.fire(AppExit {
            status: how.clone(),
            stderr: stderr.clone(),
        });
        if started.elapsed() >= RESTART_RESET_AFTER {
            pause = RESTART_MIN;
        }
        let last_stderr = stderr.last().cloned().unwrap_or_default();
        tracing::warn!(release, pgid = proc.pgid, status = %how, %last_stderr, restart_in_ms = pause.as_millis() as u64, "app died; restarting");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return Stopped::NotRunning,
        }
        pause = (pause * 2).min(RESTART_MAX);
        match spawn_app(
            &ctx.start_cmd,
            ctx.user.as_ref(),
            &ctx.layout,
            (&release, port),
            ctx.recorded.load(Ordering::SeqCst).then_some(&ctx.state),
            &ctx.logs,
        ) {
            Ok((child, new, writer)) => {
                let mut i = info.lock().unwrap_or_else(|p| p.into_inner());
                i.proc = new;
                i.restarts += 1;
                drop(i);
                process = Process::Own(Box::new((child, writer)));
            }
            Err(e) => {
                tracing::error!(release, error = %e, "app could not be restarted");
                // Keep the dead record: the loop sees it dead again and retries after a pause.
            }
        }
    }
}
