//! The agent's status: one [`AgentStatus`] kept current and handed to the connection on
//! every state or step change (it seals and publishes it, retained).

use std::sync::Mutex;

use orcastrate_broker::{AgentState, AgentStatus};

use crate::config::Settings;
use crate::connection::Bus;
use crate::proxy::Proxy;

/// Holds the status and publishes every change.
pub(crate) struct StatusBoard {
    bus: Bus,
    current: Mutex<AgentStatus>,
    /// With `[proxy]`: where new connections go, reported as the running release's `port`.
    proxy: Option<Proxy>,
}

/// A status with no order yet: `idle`.
pub(crate) fn initial(settings: &Settings) -> AgentStatus {
    AgentStatus::idle(
        &settings.name,
        &settings.host,
        &settings.repo,
        &settings.env,
        env!("CARGO_PKG_VERSION"),
    )
}

impl StatusBoard {
    pub(crate) fn new(bus: Bus, status: AgentStatus, proxy: Option<Proxy>) -> Self {
        Self {
            bus,
            current: Mutex::new(status),
            proxy,
        }
    }

    /// The status as last set.
    pub(crate) fn get(&self) -> AgentStatus {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the status and publishes it.
    pub(crate) fn update(&self, change: impl FnOnce(&mut AgentStatus)) {
        let mut s = self.current.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut s);
        // The proxy switches before the outcome is recorded, so the port is always that of
        // `running_sha`; an app stopped with the agent serves on none.
        if let Some(proxy) = &self.proxy {
            s.port = s.running_sha.as_ref().and(proxy.target());
        }
        if let Some(e) = &s.error {
            s.error = Some(crate::redact::redact(e).into_owned());
        }
        s.updated_at = orcastrate_broker::time::now();
        if s.state != AgentState::Deploying {
            s.step = None;
        }
        tracing::debug!(
            state = s.state.as_str(),
            step = s.step.map(|x| x.as_str()),
            seq = s.seq,
            "status"
        );
        self.bus.set_status(s.clone());
    }
}
