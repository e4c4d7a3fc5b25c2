//! `orcastrate-gateway serve`: wires the ledger, the signing key, the bus (the embedded broker
//! or an external engine), the sequencer, the fleet view and the HTTP server together, and
//! takes them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use orcastrate_broker::auth::Credentials;
use orcastrate_broker::embedded::{EmbeddedBroker, EmbeddedSettings, MqttDoor};
use orcastrate_broker::{OrderSigner, Topics};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, Inbound};
use crate::config::{self, Access, MqttMode, Settings};
use crate::engine_auth::EngineAuth;
use crate::fleet::Fleet;
use crate::health::{self, HealthProbe, ProbeTarget};
use crate::http::{self, AppState, MAX_CONCURRENT_WEBHOOKS};
use crate::listener;
use crate::metrics::Metrics;
use crate::sequencer::SequencerTask;
use crate::{keys, ledger};

/// File name of the ledger inside `data_dir`.
pub const LEDGER_FILE: &str = "ledger.db";

/// A started gateway: where it listens, and how to reload and stop it.
pub struct Gateway {
    pub http_addr: SocketAddr,
    /// Where the external engine's login/ACL hooks are served (`[mqtt] hooks_listen`).
    pub hooks_addr: Option<SocketAddr>,
    /// Where the embedded broker listens; `None` with an external engine.
    pub mqtt_addr: Option<SocketAddr>,
    pub public_key: String,
    access: Arc<RwLock<Access>>,
    credentials: Arc<RwLock<Credentials>>,
    probe_token: String,
    mqtt: MqttMode,
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Who may log in to the bus: every client, and the gateway's own probe user (embedded) or
/// its login on the engine (external; answered by the HTTP auth endpoint).
fn credentials_for(access: &Access, probe_token: &str, mqtt: &MqttMode) -> Credentials {
    let mut c = Credentials::new(
        access
            .clients
            .iter()
            .map(|c| (c.name.clone(), c.token.clone())),
    );
    match mqtt {
        MqttMode::Embedded { .. } => {
            c.insert(health::PROBE_USER.to_owned(), probe_token.to_owned());
        }
        MqttMode::External(engine) => {
            c.insert(engine.username.clone(), engine.password.clone());
        }
    }
    c
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

/// Creates `data_dir`, opens the ledger, and loads (or, on a first start, creates) the
/// signing key.
fn open_data_dir(settings: &Settings) -> anyhow::Result<(rusqlite::Connection, OrderSigner)> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {}: create it or set data_dir to a writable folder",
            settings.data_dir.display()
        )
    })?;
    let ledger_path = settings.data_dir.join(LEDGER_FILE);
    let conn = ledger::open(&ledger_path)
        .with_context(|| format!("cannot open the ledger {}", ledger_path.display()))?;
    let signer = keys::load_or_create(&settings.data_dir, ledger::order_count(&conn)?)?;
    Ok((conn, signer))
}

/// Starts the outbox's delivery workers (if any destination is configured); they stop with
/// the bus, after the sequencer wrote its last facts.
fn start_outbox(
    settings: &Settings,
    metrics: &Metrics,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let outbox = crate::outbox::Outbox::start(
        &settings.data_dir.join(LEDGER_FILE),
        &settings.outbox,
        &metrics.outbox,
    )
    .context("cannot start the outbox")?;
    let stop = stop.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        let _ = tokio::task::spawn_blocking(move || outbox.stop()).await;
    });
    Ok(())
}

/// What the bus is started with, besides the `[mqtt]` settings.
struct BusParts<'a> {
    access: &'a Arc<RwLock<Access>>,
    credentials: &'a Arc<RwLock<Credentials>>,
    probe_token: &'a str,
    topics: Topics,
    /// The bus's tasks run here, joined at shutdown.
    tasks: &'a TaskTracker,
    /// Stops the bus; cancelled after the sequencer has drained.
    stop: &'a CancellationToken,
}

/// Who may log in: the access table (replaced on SIGHUP), the token of the health probe's
/// own login, and the broker's credentials made of both.
fn logins(settings: &Settings) -> (Arc<RwLock<Access>>, String, Arc<RwLock<Credentials>>) {
    let access = Arc::new(RwLock::new(settings.access.clone()));
    let probe_token = random_token();
    let credentials = Arc::new(RwLock::new(credentials_for(
        &settings.access,
        &probe_token,
        &settings.mqtt,
    )));
    (access, probe_token, credentials)
}

/// The HTTP routes, with MQTT over WebSocket at `/mqtt` when the door is open.
fn routes(state: AppState, door: WebSocketDoor, cancel: &CancellationToken) -> axum::Router {
    let router = http::router(state);
    match door {
        Some((door, max_packet)) => {
            router.merge(crate::websocket::router(door, max_packet, cancel.clone()))
        }
        None => router,
    }
}

/// The embedded broker's door for MQTT over WebSocket, and the largest packet it takes.
type WebSocketDoor = Option<(MqttDoor, usize)>;

/// The bus, its inbound events, the embedded broker's address, what `/healthz` probes, and
/// the WebSocket door (`[http] mqtt_websocket`, embedded broker only).
type StartedBus = (
    Bus,
    mpsc::Receiver<Inbound>,
    Option<SocketAddr>,
    ProbeTarget,
    WebSocketDoor,
);

/// Starts the embedded broker or connects to the external engine.
fn start_bus(settings: &Settings, parts: BusParts<'_>) -> anyhow::Result<StartedBus> {
    let BusParts {
        access,
        credentials,
        probe_token,
        topics,
        tasks,
        stop,
    } = parts;
    match &settings.mqtt {
        MqttMode::Embedded {
            listen,
            tls,
            quotas,
        } => {
            let policy = crate::acl::AccessPolicy {
                access: access.clone(),
                topics: topics.clone(),
            };
            let broker = EmbeddedBroker::start(
                &EmbeddedSettings {
                    listen: *listen,
                    tls: tls.clone(),
                    topics: topics.clone(),
                    quotas: quotas.clone(),
                },
                credentials.clone(),
                Arc::new(policy),
            )?;
            let mqtt_addr = health::local_addr(broker.local_addr);
            let door = settings
                .mqtt_websocket
                .then(|| (broker.door.clone(), quotas.max_packet_bytes()));
            let (bus, inbound) = Bus::embedded(broker, topics, tasks, stop.clone())?;
            let health = ProbeTarget::Listener {
                mqtt_addr,
                token: probe_token.to_owned(),
                tls: tls.is_some(),
            };
            Ok((bus, inbound, Some(mqtt_addr), health, door))
        }
        MqttMode::External(engine) => {
            let (bus, inbound) =
                Bus::external(engine, topics, tasks, stop.clone()).map_err(|e| {
                    config::ConfigError::new(settings.origin(), "[mqtt] url", format!("{e:#}"))
                })?;
            let health = ProbeTarget::Engine {
                bus: bus.clone(),
                url: engine.url.clone(),
            };
            Ok((bus, inbound, None, health, None))
        }
    }
}

/// The listener for an external engine's login/ACL hooks (`[mqtt] hooks_listen`), if any.
async fn bind_hooks(mqtt: &MqttMode) -> anyhow::Result<Option<TcpListener>> {
    let MqttMode::External(engine) = mqtt else {
        return Ok(None);
    };
    let Some(listen) = engine.hooks_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen for the engine hooks on {listen}: is another process using it? set [mqtt] hooks_listen")
    })?;
    Ok(Some(listener))
}

/// The login/ACL hooks of an external engine (only called with hooks to serve).
fn engine_auth(
    mqtt: &MqttMode,
    credentials: &Arc<RwLock<Credentials>>,
    access: &Arc<RwLock<Access>>,
    bus: &Bus,
) -> EngineAuth {
    let (gateway_user, token) = match mqtt {
        MqttMode::External(engine) => (Some(engine.username.clone()), engine.hooks_token.clone()),
        MqttMode::Embedded { .. } => (None, None),
    };
    EngineAuth::new(
        credentials.clone(),
        access.clone(),
        bus.topics().clone(),
        gateway_user,
        token,
    )
}

/// Shutdown, in order: the HTTP servers finish (every handler drops its sequencer handle),
/// the sequencer drains what was accepted, the bus stops, and the background tasks are
/// joined within the shutdown deadline.
async fn drain(
    main_server: impl Future<Output = ()>,
    hooks_server: Option<impl Future<Output = ()>>,
    sequencer_done: tokio::task::JoinHandle<()>,
    bus_stop: CancellationToken,
    tasks: TaskTracker,
    deadline: std::time::Duration,
) -> anyhow::Result<()> {
    match hooks_server {
        Some(hooks_server) => {
            tokio::join!(main_server, hooks_server);
        }
        None => main_server.await,
    }
    let drained = sequencer_done.await.context("sequencer task failed");
    bus_stop.cancel();
    tasks.close();
    if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
        tracing::warn!(
            ?deadline,
            "shutdown deadline passed: leaving background tasks still running"
        );
    }
    drained
}

/// The TLS acceptor for `[http] tls_cert`/`tls_key`, if set.
fn http_tls(settings: &Settings) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    match &settings.http_tls {
        // A bad certificate is a configuration error (exit 2), like every other key.
        Some((cert, key)) => Ok(Some(crate::tls::acceptor(cert, key).map_err(|e| {
            config::ConfigError::new(settings.origin(), "[http] tls_cert", format!("{e:#}"))
        })?)),
        None => Ok(None),
    }
}

/// The HTTP limits, with the connection cap leaving the embedded broker its share of
/// descriptors.
fn http_limits(settings: &Settings) -> config::HttpLimits {
    let broker_share = match settings.mqtt {
        MqttMode::Embedded { .. } => orcastrate_broker::embedded::MAX_CONNECTIONS,
        MqttMode::External(_) => 0,
    };
    config::HttpLimits {
        max_connections: listener::connection_cap(
            settings.http_limits.max_connections,
            broker_share,
        ),
        ..settings.http_limits.clone()
    }
}

/// What the HTTP handlers share.
fn app_state(
    settings: &Settings,
    sequencer: crate::sequencer::Sequencer,
    access: Arc<RwLock<Access>>,
    metrics: Arc<Metrics>,
    health: HealthProbe,
    stop: CancellationToken,
) -> AppState {
    AppState {
        sequencer,
        access,
        github_secret: settings.github_secret.clone().into(),
        admin_tokens: settings.admin_tokens.clone().into(),
        max_body_bytes: settings.max_body_bytes,
        metrics,
        health,
        webhook_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_WEBHOOKS)),
        body_budget: Arc::new(Semaphore::new(settings.http_limits.body_buffer_bytes)),
        budget_wait: settings.http_limits.body_timeout,
        duplicates: Arc::default(),
        token_throttle: Arc::default(),
        board: Arc::new(crate::board::Board::new(
            crate::board::session::Sessions::new(
                &settings.github_secret,
                &settings.admin_tokens,
                &settings.viewer_tokens,
            ),
            settings.viewer_tokens.clone(),
            settings.http_tls.is_some(),
            settings.github_web.clone(),
            stop,
        )),
    }
}

fn log_ready(
    settings: &Settings,
    http_addr: SocketAddr,
    mqtt_addr: Option<SocketAddr>,
    hooks_addr: Option<SocketAddr>,
) {
    match (&settings.mqtt, mqtt_addr) {
        (MqttMode::Embedded { listen, .. }, Some(bound)) => {
            // The address as bound (0.0.0.0 stays 0.0.0.0): where agents can reach it.
            let mqtt_listen = SocketAddr::new(listen.ip(), bound.port());
            tracing::info!(%http_addr, %mqtt_listen, "gateway ready");
        }
        _ => tracing::info!(%http_addr, "gateway ready; the bus is an external engine"),
    }
    if let Some(hooks_addr) = hooks_addr {
        tracing::info!(%hooks_addr, "engine login/ACL hooks served");
    }
}

impl Gateway {
    /// Starts everything; returns once the HTTP and MQTT listeners accept connections.
    ///
    /// `http` is an already-bound listener (tests bind port 0).
    pub async fn start(settings: Settings, http: TcpListener) -> anyhow::Result<Self> {
        let http_tls = http_tls(&settings)?;
        let (conn, signer) = open_data_dir(&settings)?;
        let recorded = ledger::recorded_statuses(&conn)?;
        let public_key = signer.public_key_base64();
        crate::decisions::warn_at_startup(&settings);
        tracing::info!(public_key = %public_key, key_id = signer.key_id(), "order-signing key");

        let (access, probe_token, credentials) = logins(&settings);
        let topics = Topics::new(&settings.prefix);
        let metrics = Arc::new(Metrics::new());
        // The bus outlives the HTTP server so the sequencer can publish what it drains.
        let bus_stop = CancellationToken::new();
        // Every background task (the bus's, the watcher, the fleet publisher), joined at
        // shutdown within the shutdown deadline.
        let tasks = TaskTracker::new();
        let (bus, inbound, mqtt_addr, health, door) = start_bus(
            &settings,
            BusParts {
                access: &access,
                credentials: &credentials,
                probe_token: &probe_token,
                topics,
                tasks: &tasks,
                stop: &bus_stop,
            },
        )?;
        let health = HealthProbe::new(health, metrics.health_checks.clone());
        // Bound before anything else starts, so a taken port fails start-up cleanly.
        let hooks = bind_hooks(&settings.mqtt).await?;

        let (task, newest) = SequencerTask::new(
            conn,
            Arc::new(signer),
            bus.clone(),
            access.clone(),
            metrics.clone(),
            !settings.outbox.is_empty(),
        )?;
        let (sequencer, sequencer_done) = task.spawn();
        start_outbox(&settings, &metrics, &tasks, &bus_stop)?;
        let fleet = Arc::new(Fleet::new(
            recorded,
            access.clone(),
            newest.clone(),
            sequencer.clone(),
            metrics.clone(),
        ));

        let cancel = CancellationToken::new();
        // Subscribed already; on its Connected event it publishes every newest order.
        tasks.spawn(crate::watch::run(
            inbound,
            bus.clone(),
            newest.clone(),
            fleet.clone(),
            cancel.clone(),
        ));
        tasks.spawn(fleet.clone().publish_loop(bus.clone(), cancel.clone()));

        let state = app_state(
            &settings,
            sequencer,
            access.clone(),
            metrics,
            health,
            cancel.clone(),
        );
        let http_addr = http.local_addr()?;
        let limits = http_limits(&settings);
        let router = routes(state, door, &cancel);
        let hooks_addr = hooks.as_ref().map(TcpListener::local_addr).transpose()?;
        let hooks_server = hooks.map(|hooks| {
            let router = crate::engine_auth::router(engine_auth(
                &settings.mqtt,
                &credentials,
                &access,
                &bus,
            ));
            listener::serve(hooks, router, None, limits.clone(), cancel.clone())
        });
        let deadline = limits.shutdown_timeout;
        let main_server = listener::serve(http, router, http_tls, limits, cancel.clone());
        let done = tokio::spawn(drain(
            main_server,
            hooks_server,
            sequencer_done,
            bus_stop,
            tasks,
            deadline,
        ));
        log_ready(&settings, http_addr, mqtt_addr, hooks_addr);
        Ok(Self {
            http_addr,
            hooks_addr,
            mqtt_addr,
            public_key,
            access,
            credentials,
            probe_token,
            mqtt: settings.mqtt.clone(),
            cancel,
            done,
        })
    }

    /// Replaces `[[clients]]` and `[[repos]]` (SIGHUP) without restarting the broker.
    pub fn reload(&self, access: Access) {
        let credentials = credentials_for(&access, &self.probe_token, &self.mqtt);
        *self.credentials.write().expect("credentials lock poisoned") = credentials;
        let (clients, repos) = (access.clients.len(), access.repos.len());
        *self.access.write().expect("access lock poisoned") = access;
        tracing::info!(clients, repos, "reloaded clients and repos");
    }

    /// Stops taking requests, lets in-flight webhooks finish, and waits for the ledger.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.done.await.context("gateway task panicked")?
    }

    /// Runs until `stop` resolves, reloading on each `reload` signal.
    pub async fn run_until(
        self,
        settings: &Settings,
        stop: impl Future<Output = ()>,
        mut reload: tokio::sync::mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(()) = reload.recv() => {
                    match config::reload_access(settings.config_file.as_deref(), &config::ProcessEnv) {
                        Ok(access) => self.reload(access),
                        Err(e) => tracing::error!(error = %e, "reload refused; keeping the previous clients and repos"),
                    }
                }
            }
        }
        tracing::info!("shutting down: finishing in-flight webhooks");
        self.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn shutdown_joins_the_background_tasks_after_the_bus_stops() {
        let (tasks, bus_stop) = (TaskTracker::new(), CancellationToken::new());
        let finished = Arc::new(AtomicBool::new(false));
        {
            let (stop, finished) = (bus_stop.clone(), finished.clone());
            tasks.spawn(async move {
                stop.cancelled().await;
                // Cleaning up after the bus stopped takes a while (a DISCONNECT flushed).
                tokio::time::sleep(Duration::from_millis(200)).await;
                finished.store(true, Ordering::SeqCst);
            });
        }
        let sequencer = tokio::spawn(async {});
        let no_hooks: Option<std::future::Ready<()>> = None;
        drain(
            async {},
            no_hooks,
            sequencer,
            bus_stop.clone(),
            tasks,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(bus_stop.is_cancelled());
        assert!(
            finished.load(Ordering::SeqCst),
            "drain returned before the task ended"
        );
    }

    #[tokio::test]
    async fn a_stuck_task_does_not_hold_shutdown_past_the_deadline() {
        let tasks = TaskTracker::new();
        tasks.spawn(std::future::pending::<()>());
        let no_hooks: Option<std::future::Ready<()>> = None;
        let drained = tokio::time::timeout(
            Duration::from_secs(20),
            drain(
                async {},
                no_hooks,
                tokio::spawn(async {}),
                CancellationToken::new(),
                tasks,
                Duration::from_millis(100),
            ),
        )
        .await;
        assert!(matches!(drained, Ok(Ok(()))), "{drained:?}");
    }
}
