//! Prometheus metrics of the gateway, served at `/metrics`.

use orcastrate_broker::OrderKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<OutcomeLabel, Counter>,
    orders: Family<KindLabel, Counter>,
    statuses: Family<OutcomeLabel, Counter>,
    statuses_refused: Family<ReasonLabel, Counter>,
    /// Retained `fleet` messages the gateway did not publish, replaced or cleared.
    pub foreign_summaries: Counter,
    /// Agents whose newest verified status is not `offline`.
    pub connected_agents: Gauge,
    /// Time to commit one group of ledger writes.
    pub ledger_commit_seconds: Histogram,
    /// `/healthz` checks actually run (answers from the one-second cache do not count).
    pub health_checks: Counter,
    /// The outbox's queue depth, deliveries and failures.
    pub outbox: crate::outbox::metrics::OutboxMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orcastrate");
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhooks",
            "Webhooks by outcome (accepted, ignored, duplicate, ping, or the refusal)",
            webhooks.clone(),
        );
        let orders = Family::<KindLabel, Counter>::default();
        registry.register("orders", "Orders issued, by kind", orders.clone());
        let statuses = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "agent_statuses",
            "Agent statuses received, by verdict",
            statuses.clone(),
        );
        let statuses_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "agent_statuses_refused",
            "Agent statuses not counted, by reason (replay: not newer than the newest held)",
            statuses_refused.clone(),
        );
        let foreign_summaries = Counter::default();
        registry.register(
            "foreign_fleet_summaries",
            "Retained fleet messages the gateway did not publish (replaced or cleared)",
            foreign_summaries.clone(),
        );
        let connected_agents = Gauge::default();
        registry.register(
            "connected_agents",
            "Agents whose newest verified status is not offline",
            connected_agents.clone(),
        );
        let ledger_commit_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "ledger_commit_seconds",
            "Time to commit one group of ledger writes",
            ledger_commit_seconds.clone(),
        );
        let health_checks = Counter::default();
        registry.register(
            "health_checks",
            "Health checks run (ledger and a real MQTT login); /healthz answers from a one-second cache in between",
            health_checks.clone(),
        );
        let outbox = crate::outbox::metrics::OutboxMetrics::register(&mut registry);
        Self {
            outbox,
            registry,
            webhooks,
            orders,
            statuses,
            statuses_refused,
            foreign_summaries,
            connected_agents,
            ledger_commit_seconds,
            health_checks,
        }
    }

    /// Counts a webhook answer.
    pub fn webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts an issued order.
    pub fn order(&self, kind: OrderKind) {
        self.orders
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a received status.
    pub fn status(&self, verdict: &str) {
        self.statuses
            .get_or_create(&OutcomeLabel {
                outcome: verdict.to_owned(),
            })
            .inc();
    }

    /// Counts a status not counted, by why (it is also counted as `rejected` by [`Self::status`]).
    pub fn status_refused(&self, reason: &'static str) {
        self.statuses_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
