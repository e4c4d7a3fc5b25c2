//! The agent's status: one [`AgentStatus`] kept current and handed to the connection on
//! every state or step change (it seals and publishes it, retained).

use std::sync::Mutex;

use orcastrate_broker::{AgentState, AgentStatus};

use crate::config::Settings;
use crate::connection::Bus;

/// Holds the status and publishes every change.
pub(crate) struct StatusBoard {
    bus: Bus,
    current: Mutex<AgentStatus>,
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
    pub(crate) fn new(bus: Bus, status: AgentStatus) -> Self {
        Self {
            bus,
            current: Mutex::new(status),
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
