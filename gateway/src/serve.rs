//! `orcastrate-gateway serve`: wires the ledger, the signing key, the bus (the embedded broker
//! or an external engine), the sequencer, the fleet view and the HTTP server together, and
//! takes them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use orcastrate_broker::auth::Credentials;
use orcastrate_broker::embedded::{EmbeddedBroker, EmbeddedSettings};
use orcastrate_broker::Topics;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
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

impl Gateway {
    /// Starts everything; returns once the HTTP and MQTT listeners accept connections.
    ///
    /// `http` is an already-bound listener (tests bind port 0).
    pub async fn start(settings: Settings, http: TcpListener) -> anyhow::Result<Self> {
        let http_tls = match &settings.http_tls {
            // A bad certificate is a configuration error (exit 2), like every other key.
            Some((cert, key)) => Some(crate::tls::acceptor(cert, key).map_err(|e| {
                config::ConfigError::new(settings.origin(), "[http] tls_cert", format!("{e:#}"))
            })?),
            None => None,
        };
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
        let recorded = ledger::recorded_statuses(&conn)?;
        let public_key = signer.public_key_base64();
        tracing::info!(public_key = %public_key, key_id = signer.key_id(), "order-signing key");

        let access = Arc::new(RwLock::new(settings.access.clone()));
        let probe_token = random_token();
        let credentials = Arc::new(RwLock::new(credentials_for(
            &settings.access,
            &probe_token,
            &settings.mqtt,
        )));
        let topics = Topics::new(&settings.prefix);
        let metrics = Arc::new(Metrics::new());
        // The bus outlives the HTTP server so the sequencer can publish what it drains.
        let bus_stop = CancellationToken::new();
        let (bus, inbound, mqtt_addr, health, door) = match &settings.mqtt {
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
                let (bus, inbound) = Bus::embedded(broker, topics, bus_stop.clone())?;
                let health = ProbeTarget::Listener {
                    mqtt_addr,
                    token: probe_token.clone(),
                    tls: tls.is_some(),
                };
                (bus, inbound, Some(mqtt_addr), health, door)
            }
            MqttMode::External(engine) => {
                let (bus, inbound) =
                    Bus::external(engine, topics, bus_stop.clone()).map_err(|e| {
                        config::ConfigError::new(settings.origin(), "[mqtt] url", format!("{e:#}"))
                    })?;
                let health = ProbeTarget::Engine {
                    bus: bus.clone(),
                    url: engine.url.clone(),
                };
                (bus, inbound, None, health, None)
            }
        };
        let health = HealthProbe::new(health, metrics.health_checks.clone());
        // Bound before anything else starts, so a taken port fails start-up cleanly.
        let hooks = match &settings.mqtt {
            MqttMode::External(engine) => match engine.hooks_listen {
                Some(listen) => Some(TcpListener::bind(listen).await.with_context(|| {
                    format!("cannot listen for the engine hooks on {listen}: is another process using it? set [mqtt] hooks_listen")
                })?),
                None => None,
            },
            MqttMode::Embedded { .. } => None,
        };

        let (task, newest) = SequencerTask::new(
            conn,
            Arc::new(signer),
            bus.clone(),
            access.clone(),
            metrics.clone(),
        )?;
        let (sequencer, sequencer_done) = task.spawn();
        let fleet = Arc::new(Fleet::new(
            recorded,
            access.clone(),
            newest.clone(),
            sequencer.clone(),
            metrics.clone(),
        ));

        let cancel = CancellationToken::new();
        // Subscribed already; on its Connected event it publishes every newest order.
        tokio::spawn(crate::watch::run(
            inbound,
            bus.clone(),
            newest.clone(),
            fleet.clone(),
            cancel.clone(),
        ));
        tokio::spawn(fleet.clone().publish_loop(bus.clone(), cancel.clone()));

        let state = AppState {
            sequencer,
            access: access.clone(),
            github_secret: settings.github_secret.clone().into(),
            admin_tokens: settings.admin_tokens.clone().into(),
            max_body_bytes: settings.max_body_bytes,
            metrics,
            health,
            webhook_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_WEBHOOKS)),
            body_budget: Arc::new(Semaphore::new(settings.http_limits.body_buffer_bytes)),
            budget_wait: settings.http_limits.body_timeout,
        };
        let http_addr = http.local_addr()?;
        let broker_share = match settings.mqtt {
            MqttMode::Embedded { .. } => orcastrate_broker::embedded::MAX_CONNECTIONS,
            MqttMode::External(_) => 0,
        };
        let limits = config::HttpLimits {
            max_connections: listener::connection_cap(
                settings.http_limits.max_connections,
                broker_share,
            ),
            ..settings.http_limits.clone()
        };
        let mut router = http::router(state);
        if let Some((door, max_packet)) = door {
            router = router.merge(crate::websocket::router(door, max_packet, cancel.clone()));
        }
        let hooks_addr = hooks.as_ref().map(TcpListener::local_addr).transpose()?;
        let hooks_server = match (hooks, &settings.mqtt) {
            (Some(hooks), MqttMode::External(engine)) => {
                let auth = EngineAuth::new(
                    credentials.clone(),
                    access.clone(),
                    bus.topics().clone(),
                    Some(engine.username.clone()),
                    engine.hooks_token.clone(),
                );
                let router = crate::engine_auth::router(auth);
                Some(listener::serve(
                    hooks,
                    router,
                    None,
                    limits.clone(),
                    cancel.clone(),
                ))
            }
            _ => None,
        };
        let main_server = listener::serve(http, router, http_tls, limits, cancel.clone());
        let done = tokio::spawn(async move {
            match hooks_server {
                Some(hooks_server) => {
                    tokio::join!(main_server, hooks_server);
                }
                None => main_server.await,
            }
            // Every handler has finished and dropped its sequencer handle: the sequencer
            // drains what was accepted and stops.
            let drained = sequencer_done.await.context("sequencer task failed");
            bus_stop.cancel();
            drained?;
            Ok(())
        });
        match mqtt_addr {
            Some(mqtt_addr) => tracing::info!(%http_addr, %mqtt_addr, "gateway ready"),
            None => tracing::info!(%http_addr, "gateway ready; the bus is an external engine"),
        }
        if let Some(hooks_addr) = hooks_addr {
            tracing::info!(%hooks_addr, "engine login/ACL hooks served");
        }
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
