//! The agent loop: recovery at start-up, orders from the bus, one deploy at a time (with
//! supersede), the settle wait of a new host, the retry-once, periodic health, `--once`,
//! and the graceful shutdown.
//!
//! - `machine`: the loop's state and its rules, as pure transitions.
//! - `event_loop`: the events it waits for and the I/O the machine decides.
//! - here: start-up (layout, recovery, adopting the app) and shutdown.

mod event_loop;
mod machine;

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{OnShutdown, Settings};
use crate::connection::Connection;
use crate::deploy::Ctx;
use crate::git::Git;
use crate::release::Layout;
use crate::state::{self, AppRecord, HealthyRelease, Loaded, ProcRecord, SharedState, StateStore};
use crate::status::{self, StatusBoard};
use crate::supervisor::Supervisor;

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
    /// The process exit code, as [`crate::Exit`] maps it.
    pub fn exit_code(self) -> u8 {
        crate::Exit::from(self).code()
    }
}

/// A failure that stops the agent at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("[proxy] cannot listen on {listen}: {source} (is another process on it? a port below 1024 needs CAP_NET_BIND_SERVICE or socket activation)")]
    Proxy {
        listen: String,
        source: std::io::Error,
    },
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
        crate::supervisor::AppLogs {
            limits: settings.app_log,
            writer: settings.log_writer.clone(),
            port_var: settings.proxy.as_ref().map(|p| p.port_var.clone()),
        },
    );
    let stop_proxy = shutdown.child_token();
    let (proxy, started_at_boot) =
        boot_app(&settings, &layout, &state, &supervisor, &stop_proxy).await?;

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
        status: StatusBoard::new(connection.bus.clone(), initial, proxy.clone()),
        proxy,
        bus: connection.bus.clone(),
    });
    let running = ctx.running_sha();
    ctx.status.update(|s| s.running_sha = running);

    let outcome = event_loop::run(&ctx, events_rx, &shutdown, started_at_boot).await;

    // Stop accepting (a socket systemd holds keeps queueing for the next agent) and let the
    // open connections finish while the app still serves them.
    stop_proxy.cancel();
    if let (Some(proxy), Some(p)) = (&ctx.proxy, &ctx.settings.proxy) {
        let left = proxy.drain_all(p.drain).await;
        if left > 0 {
            tracing::warn!(
                open = left,
                "closing proxied connections still open after drain_s"
            );
        }
    }
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

/// Adopts the app a previous agent left running or starts the `current` release, behind
/// the proxy when `[proxy]` is on (an adopted app with no private port, started before
/// `[proxy]`, holds the public port: it is restarted behind the proxy). Returns the proxy
/// and whether the app was started here.
async fn boot_app(
    settings: &Settings,
    layout: &Layout,
    state: &SharedState,
    supervisor: &Supervisor,
    stop_proxy: &CancellationToken,
) -> Result<(Option<crate::proxy::Proxy>, bool), AgentError> {
    let app = state::lock(state).get().app.clone();
    if let Some(app) = app {
        if supervisor.adopt(&app) {
            tracing::info!(pgid = app.proc.pgid, release = %app.release, "adopted the running app");
        } else {
            tracing::info!(
                pgid = app.proc.pgid,
                "the app recorded in state.json is gone"
            );
            state::update(state, |s| s.app = None);
        }
    }
    adopt_or_kill_strays(layout, state, supervisor).await;
    let proxy = match &settings.proxy {
        None => None,
        Some(p) => {
            if supervisor.info().is_some_and(|i| i.port.is_none()) {
                tracing::info!("restarting the app behind the proxy (it ran on its own port)");
                supervisor.stop().await;
            }
            let proxy = crate::proxy::Proxy::start(p.listen, p.protocol, stop_proxy.clone())
                .map_err(|source| AgentError::Proxy {
                    listen: p.listen.to_string(),
                    source,
                })?;
            if let Some(port) = supervisor.info().and_then(|i| i.port) {
                proxy.switch_to(port);
            }
            Some(proxy)
        }
    };
    let mut started = false;
    if supervisor.info().is_none() {
        if let Some(current) = layout.current_release() {
            if layout
                .list()
                .unwrap_or_default()
                .iter()
                .any(|r| r.name == current && r.marker.is_some())
            {
                let port = match &proxy {
                    Some(_) => {
                        Some(
                            crate::proxy::free_port().map_err(|source| AgentError::Proxy {
                                listen: "127.0.0.1:0 (a private port for the app)".to_owned(),
                                source,
                            })?,
                        )
                    }
                    None => None,
                };
                match supervisor.start(&current, port) {
                    Ok(_) => {
                        tracing::info!(release = %current, ?port, "started the current release");
                        if let (Some(proxy), Some(port)) = (&proxy, port) {
                            proxy.switch_to(port);
                        }
                        started = true;
                    }
                    Err(e) => {
                        tracing::error!(release = %current, error = %e, "cannot start the current release")
                    }
                }
            }
        }
    }
    Ok((proxy, started))
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
                port: None,
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
