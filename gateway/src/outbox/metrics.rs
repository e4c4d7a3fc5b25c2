//! The outbox's `/metrics`: queue depth, deliveries, retries and dead letters per destination.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestLabel {
    pub dest: String,
}

/// Shared by every delivery worker (clones share the values).
#[derive(Clone, Debug, Default)]
pub struct OutboxMetrics {
    pub pending: Family<DestLabel, Gauge>,
    pub delivered: Family<DestLabel, Counter>,
    pub retries: Family<DestLabel, Counter>,
    pub failed: Family<DestLabel, Counter>,
}

impl OutboxMetrics {
    /// Registers the outbox's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "outbox_pending",
            "Messages waiting in the outbox, by destination (github, notify-<hash of the url>)",
            m.pending.clone(),
        );
        registry.register(
            "outbox_delivered",
            "Messages delivered, by destination",
            m.delivered.clone(),
        );
        registry.register(
            "outbox_retries",
            "Delivery attempts that will be retried (unreachable, 408, 429, 5xx, rate limits)",
            m.retries.clone(),
        );
        registry.register(
            "outbox_failed",
            "Messages given up on (a 4xx other than 408/429, or too many attempts); orcastrate-gateway outbox lists them",
            m.failed.clone(),
        );
        m
    }

    pub(super) fn dest(name: &str) -> DestLabel {
        DestLabel {
            dest: name.to_owned(),
        }
    }
}
