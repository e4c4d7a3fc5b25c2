//! `/healthz`: answers 200 only if the ledger answers and the bus works: a real MQTT login to
//! the embedded broker succeeds (so a dead listener shows), or the connection to the external
//! engine is up.

use std::net::SocketAddr;
use std::time::Duration;

use orcastrate_broker::mqtt::Trust;
use rumqttc::{AsyncClient, Event, Incoming};

use crate::bus::Bus;
use crate::sequencer::Sequencer;

/// The internal MQTT user of the health probe; its name cannot collide with a configured
/// client, whose names start with a letter or digit.
pub const PROBE_USER: &str = "_orcastrate-health";

/// How long the MQTT login may take before the gateway counts as unhealthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks the parts `/healthz` reports on.
#[derive(Clone)]
pub enum HealthProbe {
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
    /// `Ok` or the list of what is broken.
    pub async fn check(&self, sequencer: &Sequencer) -> Result<(), String> {
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
        match self {
            Self::Listener {
                mqtt_addr,
                token,
                tls,
            } => login(*mqtt_addr, token, *tls).await,
            Self::Engine { bus, url } if !bus.is_connected() => Err(format!(
                "not connected to the MQTT engine at {url} (the log says why)"
            )),
            Self::Engine { .. } => Ok(()),
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
