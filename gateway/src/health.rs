//! `/healthz`: answers 200 only if the ledger answers and the bus works: a real MQTT login to
//! the embedded broker succeeds (so a dead listener shows), or the connection to the external
//! engine is up. The answer is cached for [`CACHE_FOR`], so a flood of `/healthz` costs the
//! broker's login path at most one login a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcastrate_broker::mqtt::Trust;
use prometheus_client::metrics::counter::Counter;
use rumqttc::{AsyncClient, Event, Incoming};
use tokio::sync::Mutex;

use crate::bus::Bus;
use crate::sequencer::Sequencer;

/// The internal MQTT user of the health probe; its name cannot collide with a configured
/// client, whose names start with a letter or digit.
pub const PROBE_USER: &str = "_orcastrate-health";

/// How long the MQTT login may take before the gateway counts as unhealthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one check's answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Checks the parts `/healthz` reports on, at most once per [`CACHE_FOR`].
#[derive(Clone)]
pub struct HealthProbe {
    target: ProbeTarget,
    /// The newest answer and when it was made; callers wait on the lock while one check
    /// runs and then reuse its answer.
    last: Arc<Mutex<Option<Answer>>>,
    /// Counts the checks actually run (`orcastrate_health_checks_total`).
    runs: Counter,
}

/// A check's answer and when it was made.
type Answer = (Instant, Result<(), String>);

/// What the MQTT part of a check logs in to or asks.
#[derive(Clone)]
pub enum ProbeTarget {
    /// Logs in to the embedded broker's own listener.
    Listener {
        /// Where the listener can be reached from this process.
        mqtt_addr: SocketAddr,
        /// The probe user's random token, registered with the broker at start-up.
        token: String,
        /// Whether the listener speaks TLS.
        tls: bool,
    },
    /// Asks the bus whether its connection to the external engine is up.
    Engine { bus: Bus, url: String },
}

impl HealthProbe {
    /// A probe of `target` that counts its runs in `runs`.
    pub fn new(target: ProbeTarget, runs: Counter) -> Self {
        Self {
            target,
            last: Arc::new(Mutex::new(None)),
            runs,
        }
    }

    /// `Ok` or the list of what is broken, as of at most [`CACHE_FOR`] ago.
    pub async fn check(&self, sequencer: &Sequencer) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last {
            if at.elapsed() < CACHE_FOR {
                return answer.clone();
            }
        }
        self.runs.inc();
        let answer = self.run(sequencer).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn run(&self, sequencer: &Sequencer) -> Result<(), String> {
        let ledger = sequencer.check();
        let mqtt = tokio::time::timeout(PROBE_TIMEOUT, self.mqtt());
        let (ledger, mqtt) = tokio::join!(ledger, mqtt);
        let mut broken = Vec::new();
        if let Err(e) = ledger {
            broken.push(format!("ledger: {e}"));
        }
        match mqtt {
            Ok(Ok(())) => {}
            Ok(Err(e)) => broken.push(format!("mqtt: {e}")),
            Err(_) => broken.push("mqtt: no CONNACK within 3 s".to_owned()),
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(broken.join("; "))
        }
    }

    async fn mqtt(&self) -> Result<(), String> {
        match &self.target {
            ProbeTarget::Listener {
                mqtt_addr,
                token,
                tls,
            } => login(*mqtt_addr, token, *tls).await,
            ProbeTarget::Engine { bus, url } if !bus.is_connected() => Err(format!(
                "not connected to the MQTT engine at {url} (the log says why)"
            )),
            ProbeTarget::Engine { .. } => Ok(()),
        }
    }
}

async fn login(mqtt_addr: SocketAddr, token: &str, tls: bool) -> Result<(), String> {
    let scheme = if tls { "mqtts" } else { "mqtt" };
    let url = format!("{scheme}://{mqtt_addr}");
    let options = orcastrate_broker::mqtt::client_options_with(
        &url,
        "",
        PROBE_USER,
        token,
        &Trust::OwnListener,
    )
    .map_err(|e| e.to_string())?;
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let _ = client.try_disconnect();
                // Flush the DISCONNECT so the broker drops the session cleanly.
                let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Where to reach a listener bound to `listen` from this host.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}
