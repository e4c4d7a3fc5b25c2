//! A synchronous MQTT client (rumqttc's `Client`) for tests: it logs in, subscribes, waits
//! for what it expects and publishes, driving its connection itself (no background task).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, Event, Incoming, MqttOptions, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};

/// How long a CONNACK or SUBACK may take: far more than a loopback broker needs.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How many requests a [`Recorder`]'s client queues: a test may publish a flood through it.
const RECORDER_QUEUE: usize = 10_000;

/// A connected MQTT client.
pub struct Mqtt {
    /// The request side, to publish or subscribe directly.
    pub client: Client,
    /// The event side, driven by the waiting methods.
    connection: Connection,
}

impl Mqtt {
    /// Connects to `127.0.0.1:port` (with credentials unless `user` is empty) and waits for
    /// the CONNACK.
    ///
    /// # Errors
    ///
    /// If the broker refuses or drops the login, or does not answer in time: the error says
    /// which (a refused login's return code shows as `ConnectionRefused(...)`).
    pub fn connect(port: u16, client_id: &str, user: &str, token: &str) -> Result<Self, String> {
        Self::connect_with(Self::options(port, client_id, user, token))
    }

    /// The options [`Mqtt::connect`] uses, to add to (a last will, ...): packets up to 1 MiB.
    pub fn options(port: u16, client_id: &str, user: &str, token: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if !user.is_empty() {
            options.set_credentials(user, token);
        }
        options
    }

    /// As [`Mqtt::options`], over WebSocket to `ws://{http_addr}/mqtt` (`http_addr` is
    /// `host:port` of a gateway's HTTP listener).
    pub fn ws_options(http_addr: &str, client_id: &str, user: &str, token: &str) -> MqttOptions {
        let port = http_addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(80);
        let mut options = MqttOptions::new(client_id, format!("ws://{http_addr}/mqtt"), port);
        options.set_transport(rumqttc::Transport::Ws);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if !user.is_empty() {
            options.set_credentials(user, token);
        }
        options
    }

    /// Connects with `options` and waits for the CONNACK.
    ///
    /// # Errors
    ///
    /// As [`Mqtt::connect`].
    pub fn connect_with(options: MqttOptions) -> Result<Self, String> {
        let (client, mut connection) = Client::new(options, 100);
        match connection.recv_timeout(ANSWER_WITHIN) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => Ok(Self { client, connection }),
            Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("no answer: {e:?}")),
        }
    }

    /// Subscribes to `filter` at QoS 1 without waiting for the SUBACK.
    pub fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("the request queue takes a subscribe");
    }

    /// Waits for the SUBACK of the subscription just sent, so nothing published afterwards
    /// is missed.
    ///
    /// # Panics
    ///
    /// If the connection fails or no SUBACK comes in time.
    #[track_caller]
    pub fn wait_suback(&mut self) {
        let deadline = Instant::now() + ANSWER_WITHIN;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
                Err(_) => break,
            }
        }
        panic!("no SUBACK within {ANSWER_WITHIN:?}");
    }

    /// Subscribes to `filters` at QoS 1 in one SUBSCRIBE and returns the SUBACK's codes.
    ///
    /// # Errors
    ///
    /// If the connection ends first or no SUBACK comes in time.
    pub fn subscribe_acked(
        &mut self,
        filters: &[&str],
    ) -> Result<Vec<SubscribeReasonCode>, String> {
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + ANSWER_WITHIN;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => return Ok(ack.return_codes),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        Err(format!("no SUBACK within {ANSWER_WITHIN:?}"))
    }

    /// Whether the connection still answers a round trip: a QoS 1 subscribe to `filter`
    /// gets its SUBACK.
    pub fn alive(&mut self, filter: &str) -> bool {
        self.subscribe_acked(&[filter]).is_ok()
    }

    /// Waits up to `timeout` for a publish that satisfies `f`, and returns it.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    #[track_caller]
    pub fn wait_publish(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&Publish) -> bool,
    ) -> Option<Publish> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) if f(&p) => return Some(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits up to `timeout` for a publish whose topic and payload satisfy `f`.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    #[track_caller]
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&str, &[u8]) -> bool,
    ) -> Option<(String, Vec<u8>)> {
        self.wait_publish(timeout, |p| f(&p.topic, &p.payload))
            .map(|p| (p.topic, p.payload.to_vec()))
    }

    /// Everything that arrives within `window`, as (topic, payload).
    pub fn collect(&mut self, window: Duration) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let _ = self.wait_for(window, |t, p| {
            out.push((t.to_owned(), p.to_vec()));
            false
        });
        out
    }

    /// Publishes at QoS 1, driving the connection while the request queue is full (a
    /// blocking `publish` with nobody polling would wait forever).
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.publish_at(QoS::AtLeastOnce, topic, payload, retain);
    }

    /// Publishes at QoS 0, as fast as the connection takes it.
    pub fn publish_qos0(&mut self, topic: &str, payload: Vec<u8>) {
        self.publish_at(QoS::AtMostOnce, topic, payload, false);
    }

    fn publish_at(&mut self, qos: QoS, topic: &str, payload: Vec<u8>, retain: bool) {
        while self
            .client
            .try_publish(topic, qos, retain, payload.clone())
            .is_err()
        {
            if let Ok(Err(e)) = self.connection.recv_timeout(Duration::from_millis(50)) {
                panic!("MQTT connection failed: {e}");
            }
        }
    }

    /// Drives the connection for a moment so queued publishes go out.
    pub fn flush(&mut self) {
        let _ = self.collect(Duration::from_millis(300));
    }
}

/// Messages as (topic, payload), shared between a [`Recorder`] and its thread.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A watcher that records, on a thread of its own, every message on a filter while the test
/// does other things (an operator's `mosquitto_sub -v`); its client may publish too.
pub struct Recorder {
    /// The request side, to publish (it queues up to 10,000 requests).
    pub client: Client,
    /// Every message since the SUBACK, as (topic, payload); the thread appends.
    seen: Seen,
    /// Set on drop: the thread stops driving the connection and returns.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Connects with `options`, subscribes to `filter` at QoS 1 and returns once the broker
    /// acknowledged the subscription, so nothing published afterwards is missed. A dropped
    /// connection is retried (and logs in again) until the recorder is dropped.
    ///
    /// # Errors
    ///
    /// If no SUBACK comes in time (the login refused, or the filter).
    pub fn start(options: MqttOptions, filter: &str) -> Result<Self, String> {
        let (client, mut connection) = Client::new(options, RECORDER_QUEUE);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .map_err(|e| e.to_string())?;
        let seen = Seen::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = mpsc::channel();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => {
                            let _ = subscribed_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                            let mut seen = seen.lock().expect("no panic while holding it");
                            seen.push((p.topic, p.payload.to_vec()));
                        }
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                        Ok(Ok(_)) | Err(_) => {}
                    }
                }
            })
        };
        let recorder = Self {
            client,
            seen,
            stop,
            thread: Some(thread),
        };
        subscribed
            .recv_timeout(ANSWER_WITHIN)
            .map_err(|_| format!("no SUBACK for {filter} within {ANSWER_WITHIN:?}"))?;
        Ok(recorder)
    }

    /// Every message seen so far, as (topic, payload).
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().expect("no panic while holding it").clone()
    }

    /// Every message seen so far, as `topic payload` lines (payloads as lossy UTF-8).
    pub fn text(&self) -> String {
        self.messages()
            .iter()
            .map(|(t, p)| format!("{t} {}\n", String::from_utf8_lossy(p)))
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
