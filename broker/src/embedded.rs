//! The embedded rumqttd broker: token logins, per-packet authorization (see [`crate::guard`]),
//! and an in-process link for the gateway, which bypasses both.
//!
//! rumqttd is patched in-tree (`vendor/rumqttd`, see its `README.orcastrate.md`) with an
//! authorization hook: a refused login gets a CONNACK code, sessions are keyed by login, and
//! every PUBLISH and SUBSCRIBE is checked before the router sees it.
//!
//! rumqttd 0.20 has sharp edges, each handled here (see `../shared/notes/rumqtt.md`):
//!
//! - `Broker::start()` blocks forever and has no shutdown API: it runs on its own thread and
//!   lives as long as the process.
//! - A `RouterConfig` at its zero defaults drops every client: we set every field.
//! - A client id with `/ + # $` poisons the listener when it reconnects (rumqtt #1062): the
//!   auth handler, which runs before registration, refuses such ids.
//! - When file descriptors run out its accept loop spins without backoff: we raise
//!   `RLIMIT_NOFILE` to the hard limit before starting.
//! - Local links publish at QoS 0 without retain: retained messages are sent as raw
//!   `Publish` packets, and `Notification::Unschedule` is answered with `wake()` or the link
//!   stalls after about 200 notifications.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{
    BoundListener, Broker, Config, ConnectionSettings, ExternalSender, ExternalStreams,
    Notification, RouterConfig, ServerSettings,
};

use crate::auth::Credentials;
use crate::guard::{BrokerAuthorizer, Quotas, TopicPolicy};
use crate::topics::Topics;

/// Connections the router accepts; far above one gateway's fleet, since past it rumqttd drops
/// logins without a CONNACK. Each idle connection costs about 46 KB.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Segment size and count of the router's in-memory log, kept per subscription filter: the
/// gateway's `+/+/+/desired` and `+/+/+/status/+`, and one `desired` filter per repo/env
/// that agents follow. Each log only lets a lagging subscriber catch up, and everything on
/// this bus is state whose newest (retained) message is what counts, so a few dozen KiB do.
///
/// The log is not the retained store, and rumqttd fills it to the limit before dropping
/// anything: at 1 MiB x 2 each filter grew until it held 2 MiB of topics and payloads (plus
/// a ~230-byte entry per message per filter), which on a repo/env taking six orders a second
/// takes about 12 minutes and looked like a leak (the soak: +4 MB/min, linear at 10 min).
/// At 32 KiB x 2 such a filter is full within half a minute and the heap then stays flat; a
/// subscriber more than about 64 KiB behind jumps to the oldest entry kept (rumqttd logs a
/// warning) and still gets every newer one, so it never misses the newest state.
/// (Upstream's example uses 100 MiB x 10, about 1 GiB per filter.)
const SEGMENT_BYTES: usize = 32 * 1024;
const SEGMENT_COUNT: usize = 2;

/// Segment size and count of the logs of the gateway link's own filters (every `desired`,
/// `status` and `fleet`): every agent's status goes through one of them, and a burst (a
/// fleet reporting after a deploy: 2,000 statuses of ~700 bytes) must not push the link
/// more than a log behind, or statuses are skipped and the fleet view misses them until
/// each agent's next change. 1 MiB x 4 holds about 6,000 statuses; it is reached only under
/// such bursts, and there are three of these logs whatever the fleet's size. They apply to
/// these exact filters only (a client subscribing to the same filter shares the log).
const LINK_SEGMENT_BYTES: usize = 1024 * 1024;
const LINK_SEGMENT_COUNT: usize = 4;

/// Streams accepted elsewhere (MQTT over WebSocket) queued for the listener's thread; it
/// takes them as fast as it accepts TCP connections, so a short queue does.
const DOOR_QUEUE: usize = 128;

/// How long start-up waits for the listener to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of the gateway's in-process link.
const LINK_NAME: &str = "orcastrate-gateway";

/// Settings of the embedded broker's MQTT listener.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// Where MQTT clients connect.
    pub listen: SocketAddr,
    /// PEM certificate chain and key; TLS on the listener when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The bus's topics (their prefix), for the size limit of each topic kind.
    pub topics: Topics,
    /// Limits per client.
    pub quotas: Quotas,
}

/// Why the embedded broker did not start or the link failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot listen for MQTT on {addr}: {source} (is another broker running there? set [mqtt] listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the MQTT listener on {0} did not come up within 10 s (see the log above for rumqttd's reason)")]
    NotReady(SocketAddr),
    #[error("MQTT TLS file {0} does not exist: check [mqtt] tls_cert and tls_key")]
    TlsFile(PathBuf),
    #[error("broker link failed: {0}")]
    Link(String),
    #[error("failed to start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// A running embedded broker and the gateway's link into it.
pub struct EmbeddedBroker {
    /// Publishes and subscribes on behalf of the gateway.
    pub publisher: LinkPublisher,
    /// Receives what the gateway subscribed to.
    pub receiver: LinkReceiver,
    /// Where the listener is bound (the chosen port when `listen` had port 0).
    pub local_addr: SocketAddr,
    /// Serves connections accepted elsewhere as if the listener had accepted them.
    pub door: MqttDoor,
}

/// Serves a byte stream accepted elsewhere (an upgraded WebSocket carrying MQTT) through the
/// MQTT listener's own code: the same login, authorization, quotas, throttling and CONNACK
/// codes as a TCP connection, and it counts against [`MAX_CONNECTIONS`].
#[derive(Clone)]
pub struct MqttDoor(ExternalSender);

impl MqttDoor {
    /// Hands `stream` (from `peer`) to the broker; `false` when the broker has stopped.
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        self.0.send(Box::new(stream), peer).await
    }
}

impl EmbeddedBroker {
    /// Starts the broker on its own thread and waits until its listener accepts connections.
    ///
    /// `credentials` is read on every login and `policy` on every packet, so replacing what
    /// they read (on SIGHUP) takes effect without a restart.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, a TLS file is missing, or the listener does not come
    /// up.
    pub fn start(
        settings: &EmbeddedSettings,
        credentials: Arc<RwLock<Credentials>>,
        policy: Arc<dyn TopicPolicy>,
    ) -> Result<Self, EmbeddedError> {
        raise_fd_limit();
        // Bound here, not on rumqttd's thread (which only logs a failure): a port in use is a
        // clear start-up error, and port 0 tells us which port was chosen.
        let bind_error = |source| EmbeddedError::Bind {
            addr: settings.listen,
            source,
        };
        let listener = TcpListener::bind(settings.listen).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (door, external) = ExternalStreams::channel(DOOR_QUEUE);
        let config = broker_config(settings, BoundListener::new(listener), credentials, policy)?;
        let config = with_external(config, external);
        let mut broker = Broker::new(config);
        let (tx, rx) = broker
            .link(LINK_NAME)
            .map_err(|e| EmbeddedError::Link(e.to_string()))?;
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded MQTT broker stopped");
                }
            })
            .map_err(EmbeddedError::Thread)?;
        wait_until_listening(local_addr)?;
        Ok(Self {
            publisher: LinkPublisher { tx },
            receiver: LinkReceiver { rx },
            local_addr,
            door: MqttDoor(door),
        })
    }
}

/// Gives the MQTT listener the streams accepted elsewhere.
fn with_external(mut config: Config, external: ExternalStreams) -> Config {
    for server in config.v4.iter_mut().flat_map(|v4| v4.values_mut()) {
        server.external = external.clone();
    }
    config
}

fn broker_config(
    settings: &EmbeddedSettings,
    bound: BoundListener,
    credentials: Arc<RwLock<Credentials>>,
    policy: Arc<dyn TopicPolicy>,
) -> Result<Config, EmbeddedError> {
    let tls = match &settings.tls {
        Some((cert, key)) => {
            for file in [cert, key] {
                if !file.exists() {
                    return Err(EmbeddedError::TlsFile(file.clone()));
                }
            }
            Some(rumqttd::TlsConfig::Rustls {
                capath: None,
                certpath: cert.display().to_string(),
                keypath: key.display().to_string(),
            })
        }
        None => None,
    };
    let quotas = settings.quotas.clone();
    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        // Frames past the largest message any client may send close the connection before
        // they are buffered (the gateway's own link is not limited by this).
        max_payload_size: quotas.max_packet_bytes(),
        // Packets read from one connection per batch handed to the router.
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
        authorizer: Some(Arc::new(BrokerAuthorizer::new(
            credentials,
            policy,
            settings.topics.clone(),
            quotas.clone(),
        ))),
    };
    let server = ServerSettings {
        name: "v4-1".into(),
        listen: settings.listen,
        tls,
        // The listen backlog is 128: sleeping after each accept turns connect storms into
        // retries, so accept as fast as possible.
        next_connection_delay_ms: 0,
        connections,
        bound,
        external: ExternalStreams::default(),
    };
    Ok(Config {
        id: 0,
        router: RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: quotas.max_inflight as u64,
            max_inflight: Some(u16::try_from(quotas.max_inflight).unwrap_or(u16::MAX)),
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: Some(
                settings
                    .topics
                    .gateway_filters()
                    .into_iter()
                    .map(|filter| {
                        let segments = rumqttd::SegmentConfig {
                            max_segment_size: LINK_SEGMENT_BYTES,
                            max_segment_count: LINK_SEGMENT_COUNT,
                        };
                        (filter, segments)
                    })
                    .collect(),
            ),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4-1".to_owned(), server)])),
        ..Config::default()
    })
}

/// Raises the soft file-descriptor limit to the hard limit: rumqttd's accept loop spins
/// without backoff when descriptors run out, and it needs about one per client.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
}

fn wait_until_listening(addr: SocketAddr) -> Result<(), EmbeddedError> {
    let target = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(EmbeddedError::NotReady(addr))
}

/// The gateway's sending half of its in-process link.
pub struct LinkPublisher {
    tx: LinkTx,
}

impl LinkPublisher {
    /// Publishes a message; subscribers receive it at their own QoS.
    ///
    /// Sent as a raw `Publish` packet because `LinkTx::publish` always clears the retain flag.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), EmbeddedError> {
        let publish = Publish::new(topic.as_bytes().to_vec(), payload, retain);
        self.tx
            .send(Packet::Publish(publish, None))
            .await
            .map(drop)
            .map_err(|e| EmbeddedError::Link(e.to_string()))
    }

    /// Subscribes the link to a filter (QoS 0; retained messages are not replayed to it).
    pub fn subscribe(&mut self, filter: &str) -> Result<(), EmbeddedError> {
        self.tx
            .subscribe(filter)
            .map(drop)
            .map_err(|e| EmbeddedError::Link(e.to_string()))
    }
}

/// A message received on the gateway's link.
#[derive(Debug, Clone)]
pub struct LinkMessage {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The gateway's receiving half of its in-process link.
pub struct LinkReceiver {
    rx: LinkRx,
}

impl LinkReceiver {
    /// The next published message, waking the link whenever the router unschedules it.
    ///
    /// # Errors
    ///
    /// When the router has stopped.
    pub async fn recv(&mut self) -> Result<LinkMessage, EmbeddedError> {
        loop {
            let notification = self
                .rx
                .next()
                .await
                .map_err(|e| EmbeddedError::Link(e.to_string()))?;
            match notification {
                Some(Notification::Forward(forward)) => {
                    let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                    return Ok(LinkMessage {
                        topic,
                        payload: forward.publish.payload.to_vec(),
                    });
                }
                Some(Notification::Unschedule) => self
                    .rx
                    .wake()
                    .await
                    .map_err(|e| EmbeddedError::Link(e.to_string()))?,
                _ => {}
            }
        }
    }
}
