//! The MQTT connection: login, last will, subscription to the agent's `desired` topic,
//! reconnection with capped jittered backoff across the configured servers, and publishing
//! of statuses (retained, QoS 1) and log lines (QoS 0). `rotation` holds the reconnection
//! state (which server next, how long to pause) as pure transitions.
//!
//! rumqttc only moves requests while `EventLoop::poll` is awaited, and reconnects on the next
//! `poll` after an error with no backoff of its own. The poll loop therefore never awaits a
//! bounded send (it uses `try_*`); statuses are published by a separate task that awaits the
//! client, and log lines are dropped rather than block when the queue is full.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orcastrate_broker::{AgentState, AgentStatus, LogLine, Topics};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;

mod rotation;
use rotation::{backoff, Rotation};

/// Requests queued towards the broker; beyond it log lines are dropped.
const REQUEST_QUEUE: usize = 256;
/// How long a graceful close waits for the final `offline` status to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// `error` in a status is cut to this many bytes, which keeps the payload under 4 KiB.
const MAX_ERROR_BYTES: usize = 2000;

/// What the connection tells the agent.
#[derive(Debug)]
pub(crate) enum BusEvent {
    /// A CONNACK was received.
    Connected,
    /// The subscription to `desired` was acknowledged (retained orders follow it).
    Subscribed,
    /// A message on the agent's `desired` topic.
    Order(Vec<u8>),
    /// The connection was lost or could not be made.
    Disconnected,
}

/// Publishes on behalf of the agent; cheap to clone.
#[derive(Clone)]
pub(crate) struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    client: AsyncClient,
    agent: String,
    token: String,
    status_topic: String,
    log_topic: String,
    desired_topic: String,
    /// The latest status, without session and MAC (sealed when published, because the
    /// session changes with each connection); re-published on every CONNACK.
    latest: Mutex<AgentStatus>,
    /// Every status change, in order, for the publishing task (so no step is skipped).
    changes: mpsc::UnboundedSender<AgentStatus>,
    /// This connection's session id, also carried by its last will.
    session: Mutex<String>,
    connected: AtomicBool,
    dropped_logs: AtomicU64,
    /// The `updated_at` (Unix ms) of the last status sealed; see [`Bus::stamp`].
    last_stamp_ms: AtomicU64,
}

impl Bus {
    /// Publishes a log line (QoS 0, not retained); dropped when the queue is full.
    pub(crate) fn log(&self, mut line: LogLine) {
        line.agent.clone_from(&self.inner.agent);
        let Ok(payload) = serde_json::to_vec(&line) else {
            return;
        };
        if !self.inner.connected.load(Ordering::Relaxed)
            || self
                .inner
                .client
                .try_publish(&self.inner.log_topic, QoS::AtMostOnce, false, payload)
                .is_err()
        {
            self.inner.dropped_logs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets the status; it is published (retained, QoS 1) as soon as the connection allows,
    /// and again after every reconnect.
    pub(crate) fn set_status(&self, status: AgentStatus) {
        *self.inner.latest.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        let _ = self.inner.changes.send(status);
    }

    /// Subscribes to `desired` again, which makes the broker send the retained order again:
    /// under a flood of forged orders the broker may drop messages for this agent (rumqttd
    /// keeps a bounded backlog per subscription), the true order among them.
    pub(crate) fn resubscribe(&self) {
        if self.is_connected() {
            let _ = self
                .inner
                .client
                .try_subscribe(&self.inner.desired_topic, QoS::AtLeastOnce);
        }
    }

    /// Whether a CONNACK was received and the connection has not failed since.
    pub(crate) fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// The latest status, sealed with this connection's session and the token.
    fn sealed(&self, state_override: Option<AgentState>) -> Option<Vec<u8>> {
        let status = self
            .inner
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.seal(status, state_override)
    }

    /// A timestamp later than every one sealed before: the gateway takes a status only if
    /// its `updated_at` is newer than the newest it holds (so an old one cannot be replayed),
    /// so two statuses within a millisecond, and the re-publish after a reconnect, each
    /// need a newer one.
    fn stamp(&self) -> String {
        let now = orcastrate_broker::time::unix_ms();
        let next = |prev: u64| now.max(prev.saturating_add(1));
        let prev = self
            .inner
            .last_stamp_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(next(p)))
            .unwrap_or_else(|p| p);
        orcastrate_broker::time::from_unix_ms(next(prev))
    }

    /// A status sealed with this connection's session and the token, as JSON.
    fn seal(&self, mut status: AgentStatus, state_override: Option<AgentState>) -> Option<Vec<u8>> {
        if let Some(state) = state_override {
            status.state = state;
            status.step = None;
        }
        status.updated_at = self.stamp();
        status.session = self
            .inner
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.error = status.error.map(|e| {
            orcastrate_broker::message::truncate_text(&crate::redact::redact(&e), MAX_ERROR_BYTES)
        });
        orcastrate_broker::sign::seal_status(&self.inner.token, &mut status);
        serde_json::to_vec(&status).ok()
    }
}

/// The running connection: its publisher handle and its task.
pub(crate) struct Connection {
    pub(crate) bus: Bus,
    /// Closes the connection gracefully (publishing `offline`); the agent cancels it last.
    close: CancellationToken,
    task: JoinHandle<()>,
}

impl Connection {
    /// Starts connecting; events arrive on `events` (unbounded, so the poll loop never waits).
    pub(crate) fn start(
        settings: &Settings,
        initial: AgentStatus,
        events: mpsc::UnboundedSender<BusEvent>,
    ) -> Self {
        let topics = Topics::new(&settings.prefix);
        let session = new_session();
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let options = options_for(settings, &settings.servers[0], &session, None);
        let (client, eventloop) = orcastrate_broker::mqtt::async_client(options, REQUEST_QUEUE);
        let bus = Bus {
            inner: Arc::new(Inner {
                client,
                agent: settings.name.clone(),
                token: settings.token.clone(),
                status_topic: topics.status(&settings.repo, &settings.env, &settings.name),
                log_topic: topics.log(&settings.repo, &settings.env, &settings.name),
                desired_topic: topics.desired(&settings.repo, &settings.env),
                latest: Mutex::new(initial),
                changes,
                session: Mutex::new(session),
                connected: AtomicBool::new(false),
                dropped_logs: AtomicU64::new(0),
                last_stamp_ms: AtomicU64::new(0),
            }),
        };
        let close = CancellationToken::new();
        let task = tokio::spawn(poll_loop(
            PollCtx {
                settings: settings.clone(),
                desired: topics.desired(&settings.repo, &settings.env),
                bus: bus.clone(),
                events,
                close: close.clone(),
                retries: TaskTracker::new(),
            },
            eventloop,
            changes_rx,
        ));
        Self { bus, close, task }
    }

    /// Publishes the `offline` status, disconnects, and waits (bounded) for it to leave.
    pub(crate) async fn close(self) {
        self.close.cancel();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, self.task).await;
    }
}

struct PollCtx {
    settings: Settings,
    desired: String,
    bus: Bus,
    events: mpsc::UnboundedSender<BusEvent>,
    close: CancellationToken,
    /// Subscription retries after a refusal, joined when the loop ends (each stops on
    /// `close`).
    retries: TaskTracker,
}

/// A random session id (16 hex digits).
fn new_session() -> String {
    format!("{:016x}", crate::random::random_u64())
}

fn options_for(settings: &Settings, url: &str, session: &str, last: Option<&Bus>) -> MqttOptions {
    // URLs were validated with the same parser at start-up.
    let trust = match &settings.ca_file {
        Some(path) => orcastrate_broker::mqtt::Trust::CaFile(path.clone()),
        None => orcastrate_broker::mqtt::Trust::System,
    };
    let mut options = orcastrate_broker::mqtt::client_options_with(
        url,
        &settings.name,
        &settings.name,
        &settings.token,
        &trust,
    )
    .unwrap_or_else(|_| MqttOptions::new(settings.name.clone(), "127.0.0.1", 1883));
    let will = last
        .and_then(|bus| {
            // The will carries the session of the connection it is set for.
            *bus.inner.session.lock().unwrap_or_else(|p| p.into_inner()) = session.to_owned();
            bus.sealed(Some(AgentState::Offline))
        })
        .unwrap_or_default();
    if !will.is_empty() {
        let topic =
            Topics::new(&settings.prefix).status(&settings.repo, &settings.env, &settings.name);
        options.set_last_will(LastWill::new(topic, will, QoS::AtLeastOnce, true));
    }
    options
}

impl PollCtx {
    /// Options for the rotation's current server, with a new session and its last will.
    fn options(&self, rotation: &Rotation) -> MqttOptions {
        let session = new_session();
        options_for(
            &self.settings,
            &self.settings.servers[rotation.server],
            &session,
            Some(&self.bus),
        )
    }

    fn server_shown(&self, rotation: &Rotation) -> String {
        crate::redact::redact(&self.settings.servers[rotation.server]).into_owned()
    }

    fn on_connack(&self, rotation: &mut Rotation) {
        rotation.on_connack();
        self.bus.inner.connected.store(true, Ordering::Relaxed);
        tracing::info!(server = %self.server_shown(rotation), "connected");
        if let Err(e) = self
            .bus
            .inner
            .client
            .try_subscribe(&self.desired, QoS::AtLeastOnce)
        {
            tracing::warn!(error = %e, "could not queue the subscription");
        }
        if let Some(payload) = self.bus.sealed(None) {
            let _ = self.bus.inner.client.try_publish(
                &self.bus.inner.status_topic,
                QoS::AtLeastOnce,
                true,
                payload,
            );
        }
        let _ = self.events.send(BusEvent::Connected);
    }

    fn on_suback(&self, rotation: &mut Rotation, ack: &rumqttc::SubAck) {
        if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
            // Without the subscription no order ever arrives. NATS refuses one it cannot
            // set up in time (JetStream re-electing leaders after a node loss): ask again.
            let pause = backoff(rotation.on_subscription_refused());
            tracing::warn!(topic = %self.desired, retry_in = ?pause, "the MQTT server refused the subscription to our orders; retrying (if this repeats, let this agent read its desired topic)");
            let client = self.bus.inner.client.clone();
            let topic = self.desired.clone();
            let close = self.close.clone();
            self.retries.spawn(async move {
                // The request queue may be full while the loop is closing: stop waiting then.
                tokio::select! {
                    () = close.cancelled() => {}
                    () = async {
                        tokio::time::sleep(pause).await;
                        let _ = client.subscribe(topic, QoS::AtLeastOnce).await;
                    } => {}
                }
            });
        } else {
            rotation.on_subscribed();
            tracing::debug!(topic = %self.desired, "subscribed");
            let _ = self.events.send(BusEvent::Subscribed);
        }
    }

    fn on_publish(&self, publish: &rumqttc::Publish) {
        if publish.topic == self.desired {
            let _ = self.events.send(BusEvent::Order(publish.payload.to_vec()));
        }
    }

    /// Returns the pause before the next try, if every server failed.
    fn on_failure(&self, rotation: &mut Rotation, e: &ConnectionError) -> Option<Duration> {
        self.bus.inner.connected.store(false, Ordering::Relaxed);
        let _ = self.events.send(BusEvent::Disconnected);
        let server = self.server_shown(rotation);
        let after = rotation.on_failure();
        log_failure(&server, &self.bus.inner.agent, e, after.was_connected);
        after.backoff_round.map(backoff)
    }

    /// Says `offline`, disconnects and waits (bounded) for the DISCONNECT to leave.
    async fn close(&self, eventloop: &mut EventLoop) {
        if self.bus.is_connected() {
            // A graceful DISCONNECT does not fire the last will: say `offline` ourselves.
            if let Some(payload) = self.bus.sealed(Some(AgentState::Offline)) {
                let _ = self.bus.inner.client.try_publish(
                    &self.bus.inner.status_topic,
                    QoS::AtLeastOnce,
                    true,
                    payload,
                );
            }
            let _ = self.bus.inner.client.try_disconnect();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.bus.inner.connected.store(false, Ordering::Relaxed);
        let dropped = self.bus.inner.dropped_logs.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "log lines not sent while disconnected or congested"
            );
        }
    }
}

/// Publishes each new status; it may wait on the client's queue, which only this task
/// does, never the poll loop.
fn spawn_flusher(bus: Bus, mut changes: mpsc::UnboundedReceiver<AgentStatus>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(status) = changes.recv().await {
            if !bus.is_connected() {
                // The latest is published on the next CONNACK instead.
                continue;
            }
            if let Some(payload) = bus.seal(status, None) {
                let _ = bus
                    .inner
                    .client
                    .publish(&bus.inner.status_topic, QoS::AtLeastOnce, true, payload)
                    .await;
            }
        }
    })
}

async fn poll_loop(
    ctx: PollCtx,
    mut eventloop: EventLoop,
    changes: mpsc::UnboundedReceiver<AgentStatus>,
) {
    let mut rotation = Rotation::new(ctx.settings.servers.len());
    // Set the real last will now that the bus exists (the first options had none).
    eventloop.mqtt_options = ctx.options(&rotation);
    let flusher = spawn_flusher(ctx.bus.clone(), changes);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            () = ctx.close.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => ctx.on_connack(&mut rotation),
            Ok(Event::Incoming(Packet::SubAck(ack))) => ctx.on_suback(&mut rotation, &ack),
            Ok(Event::Incoming(Packet::Publish(p))) => ctx.on_publish(&p),
            Ok(_) => {}
            Err(e) => {
                if let Some(pause) = ctx.on_failure(&mut rotation, &e) {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = ctx.close.cancelled() => break,
                    }
                }
                eventloop.mqtt_options = ctx.options(&rotation);
            }
        }
    }
    flusher.abort();
    ctx.retries.close();
    ctx.retries.wait().await;
    ctx.close(&mut eventloop).await;
}

fn log_failure(server: &str, agent: &str, e: &ConnectionError, was_connected: bool) {
    if was_connected {
        tracing::warn!(%server, error = %e, "connection lost; reconnecting");
        return;
    }
    let io_kind = match e {
        ConnectionError::Io(io) => Some(io.kind()),
        _ => None,
    };
    match io_kind {
        Some(ErrorKind::ConnectionRefused) => {
            tracing::warn!(%server, error = %e, "cannot reach the MQTT server; retrying")
        }
        Some(ErrorKind::NotFound) | Some(ErrorKind::AddrNotAvailable) => {
            tracing::warn!(%server, error = %e, "cannot resolve the MQTT server; check server")
        }
        _ if matches!(e, ConnectionError::NetworkTimeout) => {
            tracing::warn!(%server, "connecting timed out; retrying")
        }
        _ if matches!(e, ConnectionError::Tls(_)) => {
            tracing::error!(%server, error = %e, "TLS failed: check the server's certificate and name (ca_file or SSL_CERT_FILE)")
        }
        // ws:// and wss://: certificates, HTTP answers (404: not /mqtt; 502: the proxy) and
        // the subprotocol all show up here, before any MQTT.
        _ if matches!(
            e,
            ConnectionError::Websocket(_) | ConnectionError::ResponseValidation(_)
        ) =>
        {
            tracing::error!(%server, error = %e, "the WebSocket connection failed: check the URL (wss://host/mqtt), the certificate (ca_file), and that a proxy passes upgrades")
        }
        _ if matches!(e, ConnectionError::ConnectionRefused(_)) => {
            tracing::error!(%server, name = agent, error = %e, "login refused: check name and token (the name must be the one the gateway pairs with the token: [[clients]] name, or TOKENS/TRUSTED_NAMES; set ORCASTRATE_NAME)")
        }
        // A connection closed before any CONNACK (unpatched rumqttd closed refused logins so).
        _ => {
            tracing::error!(%server, name = agent, error = %e, "login refused or connection dropped: check name and token (the name must be the one the gateway pairs with the token: [[clients]] name, or TOKENS/TRUSTED_NAMES; set ORCASTRATE_NAME)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_16_hex_digits() {
        assert_eq!(new_session().len(), 16);
    }
}
