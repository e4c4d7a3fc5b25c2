//! The gateway's side of the bus: the embedded broker's in-process link, or an MQTT client of
//! an external engine, behind one publish interface and one stream of [`Inbound`] events.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::Context as _;
use orcastrate_broker::embedded::{EmbeddedBroker, LinkPublisher, LinkReceiver};
use orcastrate_broker::mqtt::Trust;
use orcastrate_broker::Topics;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ExternalMqtt;

/// What the gateway hears on the bus.
#[derive(Debug)]
pub enum Inbound {
    /// A message on one of the gateway's subscriptions.
    Message { topic: String, payload: Vec<u8> },
    /// Publish the newest state again: the bus is (again) connected and subscribed, and an
    /// external engine may have lost its retained messages meanwhile; or, periodically on an
    /// external engine, a replica may serve a stale retained message (seen on NATS clusters
    /// after a node loss). Agents ignore an order they already have.
    Resync,
}

/// Publishes on the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// A mutex so that [`Bus::publish_order`] can compute and send as one step.
    publisher: Arc<Mutex<Publisher>>,
    /// Whether the link is up; always true for the embedded broker.
    connected: Arc<AtomicBool>,
    topics: Topics,
    /// Orders published on `desired` topics (and summaries on `fleet` topics) whose copy
    /// has not come back yet; lets the guards tell our own in-flight publishes from foreign
    /// ones.
    echoes: Arc<StdMutex<HashMap<String, VecDeque<Vec<u8>>>>>,
}

enum Publisher {
    Embedded(LinkPublisher),
    External(AsyncClient),
}

/// Own publishes remembered per topic at most; echoes come back in order, so more than this
/// means they are not coming back (say, lost in a reconnect) and the memory is better dropped.
const MAX_ECHOES: usize = 1024;

/// Inbound events buffered between the link and the gateway's watcher.
const INBOUND_CAPACITY: usize = 1024;

/// Requests rumqttc buffers for an external engine. While the engine is unreachable further
/// publishes are dropped (and logged): the newest orders are re-published on reconnect.
const REQUEST_CAPACITY: usize = 4096;

/// QoS of the gateway's subscriptions on an external engine. QoS 0: the session is clean,
/// so QoS 1 adds nothing, and NATS drops the QoS 1 messages published while it creates a
/// QoS 1 subscription's consumer (about 100 ms on a cluster).
const SUBSCRIBE_QOS: QoS = QoS::AtMostOnce;

/// Reconnect delays to an external engine: doubling from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

impl Bus {
    /// The bus over the embedded broker's link, subscribed to `desired`, `status` and `fleet`.
    ///
    /// Its task runs on `tasks` until `cancel`.
    pub fn embedded(
        broker: EmbeddedBroker,
        topics: Topics,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Inbound>)> {
        let EmbeddedBroker {
            mut publisher,
            receiver,
            ..
        } = broker;
        for filter in topics.gateway_filters() {
            publisher
                .subscribe(&filter)
                .with_context(|| format!("cannot subscribe the gateway's link to {filter}"))?;
        }
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        tasks.spawn(forward_link(receiver, tx, cancel));
        let bus = Self::new(Publisher::Embedded(publisher), topics, true);
        Ok((bus, rx))
    }

    /// The bus over an external MQTT engine. Connects in the background and keeps
    /// reconnecting with a capped backoff until `cancel`; each connection re-subscribes and
    /// yields [`Inbound::Resync`]. Its tasks run on `tasks`.
    pub fn external(
        engine: &ExternalMqtt,
        topics: Topics,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Inbound>)> {
        let trust = engine.ca_file.clone().map_or(Trust::System, Trust::CaFile);
        // The client id is the username: one gateway per engine login, and the id rule of
        // the embedded broker and of `mosquitto-config` allows it.
        let options = orcastrate_broker::mqtt::client_options_with(
            &engine.url,
            &engine.username,
            &engine.username,
            &engine.password,
            &trust,
        )
        .context("[mqtt] url")?;
        let (client, eventloop) = orcastrate_broker::mqtt::async_client(options, REQUEST_CAPACITY);
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let bus = Self::new(Publisher::External(client.clone()), topics, false);
        tasks.spawn(resync_periodically(
            engine.republish_interval,
            bus.connected.clone(),
            tx.clone(),
            cancel.clone(),
        ));
        tasks.spawn(drive_engine(
            eventloop,
            client,
            bus.topics.gateway_filters(),
            engine.url.clone(),
            bus.connected.clone(),
            tx,
            Stop {
                tasks: tasks.clone(),
                cancel,
            },
        ));
        Ok((bus, rx))
    }

    fn new(publisher: Publisher, topics: Topics, connected: bool) -> Self {
        Self {
            publisher: Arc::new(Mutex::new(publisher)),
            connected: Arc::new(AtomicBool::new(connected)),
            topics,
            echoes: Arc::default(),
        }
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Whether the bus is connected (an external engine can be unreachable for a while).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Publishes a message; a failure is logged. Retained messages go at QoS 1 to an
    /// external engine, so it has them before it acknowledges.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        let mut publisher = self.publisher.lock().await;
        send(&mut publisher, topic, payload, retain).await;
    }

    /// Publishes a retained order on a `desired` topic (or a summary on a `fleet` topic),
    /// remembering it as our own.
    ///
    /// `payload` is computed under the publish lock, so a caller that reads "the newest
    /// order" there cannot overtake a newer publish with an older one.
    pub async fn publish_order(&self, topic: &str, payload: impl FnOnce() -> Option<Vec<u8>>) {
        let mut publisher = self.publisher.lock().await;
        let Some(payload) = payload() else { return };
        {
            let mut echoes = self.echoes.lock().expect("echo lock poisoned");
            let queue = echoes.entry(topic.to_owned()).or_default();
            if queue.len() >= MAX_ECHOES {
                queue.clear();
            }
            queue.push_back(payload.clone());
        }
        send(&mut publisher, topic, payload, true).await;
    }

    /// Whether `payload` on `topic` is the echo of one of our own [`Bus::publish_order`]s
    /// (consumed: each publish echoes once).
    pub fn take_echo(&self, topic: &str, payload: &[u8]) -> bool {
        let mut echoes = self.echoes.lock().expect("echo lock poisoned");
        let Some(queue) = echoes.get_mut(topic) else {
            return false;
        };
        match queue.iter().position(|p| p == payload) {
            Some(i) => {
                // Echoes arrive in publish order: anything before this one is not coming.
                queue.drain(..=i);
                true
            }
            None => false,
        }
    }
}

async fn send(publisher: &mut Publisher, topic: &str, payload: Vec<u8>, retain: bool) {
    let result = match publisher {
        Publisher::Embedded(link) => link.publish(topic, payload, retain).await.map_err(|e| {
            // The broker lives in-process: this only fails when it has stopped, which
            // `/healthz` reports.
            e.to_string()
        }),
        Publisher::External(client) => {
            let qos = if retain {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            client
                .try_publish(topic, qos, retain, payload)
                .map_err(|e| format!("{e} (the engine is unreachable or slow; the newest orders are re-published on reconnect)"))
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, topic, "publish failed");
    }
}

/// Moves the embedded link's messages to the watcher; the link is up from the start.
async fn forward_link(
    mut receiver: LinkReceiver,
    tx: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
) {
    if tx.send(Inbound::Resync).await.is_err() {
        return;
    }
    loop {
        let message = tokio::select! {
            m = receiver.recv() => m,
            () = cancel.cancelled() => return,
        };
        let inbound = match message {
            Ok(m) => Inbound::Message {
                topic: m.topic,
                payload: m.payload,
            },
            Err(e) => {
                tracing::error!(error = %e, "the broker link closed; the bus is down");
                return;
            }
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Asks for a resync every `every` while the engine is connected, until cancelled. A task of
/// its own: cancelling `EventLoop::poll` mid-write could lose a packet.
async fn resync_periodically(
    every: Duration,
    connected: Arc<AtomicBool>,
    tx: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        if connected.load(Ordering::Relaxed) && tx.send(Inbound::Resync).await.is_err() {
            return;
        }
    }
}

/// Queues a subscription to each filter (without waiting: the caller polls the event loop).
fn subscribe_all(client: &AsyncClient, filters: &[String]) {
    for filter in filters {
        if let Err(e) = client.try_subscribe(filter.as_str(), SUBSCRIBE_QOS) {
            tracing::error!(error = %e, filter, "cannot subscribe");
        }
    }
}

/// When [`drive_engine`] stops, and where its subscription retries run (joined at shutdown).
struct Stop {
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// Polls the engine connection until cancelled: re-subscribes on every CONNACK (sessions are
/// clean), forwards messages, and waits a capped, doubling backoff after each failure
/// (rumqttc reconnects on the next poll with no delay of its own).
async fn drive_engine(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: [String; 3],
    url: String,
    connected: Arc<AtomicBool>,
    tx: mpsc::Sender<Inbound>,
    Stop { tasks, cancel }: Stop,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut refused_backoff = BACKOFF_FIRST;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            () = cancel.cancelled() => break,
        };
        let inbound = match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                backoff = BACKOFF_FIRST;
                connected.store(true, Ordering::Relaxed);
                tracing::info!(url, "connected to the MQTT engine");
                // Queued ahead of any publish the Resync event causes, so the engine
                // subscribes us before our re-published orders come back.
                subscribe_all(&client, &filters);
                Inbound::Resync
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => Inbound::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    // Without the subscriptions no status arrives. NATS refuses one it cannot
                    // set up in time (JetStream electing leaders after a node loss): ask again,
                    // for both filters (subscribing twice is harmless).
                    tracing::error!(
                        url,
                        retry_in = ?refused_backoff,
                        "the MQTT engine refused a subscription; retrying (if this repeats, allow the gateway's user to read every desired and status topic)"
                    );
                    // A task of its own: a timer in this loop would cancel
                    // `EventLoop::poll` mid-write, and the request queue may be full until
                    // this loop empties it. It stops with the loop, on `cancel`.
                    let (client, filters, pause, stop) = (
                        client.clone(),
                        filters.clone(),
                        refused_backoff,
                        cancel.clone(),
                    );
                    tasks.spawn(async move {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = async {
                                tokio::time::sleep(pause).await;
                                for filter in filters {
                                    let _ = client.subscribe(filter, SUBSCRIBE_QOS).await;
                                }
                            } => {}
                        }
                    });
                    refused_backoff = (refused_backoff * 2).min(BACKOFF_CAP);
                } else {
                    refused_backoff = BACKOFF_FIRST;
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                if connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(url, error = %e, "lost the MQTT engine; reconnecting");
                } else {
                    tracing::warn!(url, error = %e, retry_in = ?backoff, "cannot connect to the MQTT engine: check [mqtt] url, username and password");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cancel.cancelled() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
                continue;
            }
        };
        // After the watcher stops (shutdown), keep the connection for the sequencer's last
        // publishes until `cancel`.
        let _ = tx.send(inbound).await;
    }
    connected.store(false, Ordering::Relaxed);
    if client.try_disconnect().is_ok() {
        // Flush the DISCONNECT so the engine ends the session without a last will.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}
