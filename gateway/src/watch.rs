//! What the gateway hears on the bus: agent statuses, and any change to a `desired` or
//! `fleet` topic.
//!
//! A retained `desired` message that is not byte-identical to the ledger's newest order
//! (forged, stale, or cleared with an empty payload) is replaced by the true one at once; a
//! `fleet` message that is not the summary the gateway last published there is replaced
//! with the next summary (within a second, see [`Fleet::on_summary`]).

use std::sync::Arc;

use orcastrate_broker::TopicKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Inbound};
use crate::fleet::{Fleet, SummaryCheck};
use crate::sequencer::NewestOrders;

/// Handles each inbound event until the bus closes or `cancel` (it holds a sequencer handle
/// through `fleet`, which must go for the sequencer to drain and stop).
pub async fn run(
    mut inbound: mpsc::Receiver<Inbound>,
    bus: Bus,
    newest: NewestOrders,
    fleet: Arc<Fleet>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            e = inbound.recv() => e,
            () = cancel.cancelled() => return,
        };
        let Some(event) = event else { return };
        let (topic, payload) = match event {
            Inbound::Resync => {
                republish(&bus, &newest, &fleet).await;
                continue;
            }
            Inbound::Message { topic, payload } => (topic, payload),
        };
        on_message(&bus, &newest, &fleet, &topic, &payload).await;
    }
}

/// Puts every repo/env's newest order and fleet summary back on the bus: the embedded
/// broker keeps retained messages only in memory, and an external engine may have lost them.
async fn republish(bus: &Bus, newest: &NewestOrders, fleet: &Fleet) {
    let keys: Vec<_> = newest
        .read()
        .expect("newest-orders lock poisoned")
        .keys()
        .cloned()
        .collect();
    for (repo, env) in &keys {
        let truth = || {
            newest
                .read()
                .expect("newest-orders lock poisoned")
                .get(&(repo.clone(), env.clone()))
                .map(|o| o.payload.clone().into_bytes())
        };
        bus.publish_order(&bus.topics().desired(repo, env), truth)
            .await;
    }
    fleet.mark_all_dirty();
    tracing::debug!(
        orders = keys.len(),
        "published the newest order of every repo/env"
    );
}

async fn on_message(bus: &Bus, newest: &NewestOrders, fleet: &Fleet, topic: &str, payload: &[u8]) {
    match bus.topics().parse(topic) {
        Some(TopicKind::Desired { repo, env }) => {
            let key = (repo, env);
            let truth = || {
                newest
                    .read()
                    .expect("newest-orders lock poisoned")
                    .get(&key)
                    .map(|o| o.payload.clone())
            };
            let current = truth();
            let matches = current.as_deref().map(str::as_bytes) == Some(payload);
            if bus.take_echo(topic, payload) {
                // Our own publish: if it is no longer the newest, a newer one of ours
                // is already on its way behind it.
                return;
            }
            match current {
                _ if matches => {}
                Some(_) => {
                    tracing::warn!(
                        repo = key.0,
                        env = key.1,
                        "desired topic differs from the ledger; re-publishing the true order"
                    );
                    // Re-read under the publish lock so a newer order is never overwritten.
                    bus.publish_order(topic, || truth().map(String::into_bytes))
                        .await;
                }
                None if !payload.is_empty() => {
                    tracing::warn!(
                        repo = key.0,
                        env = key.1,
                        "desired message for a repo/env without orders; clearing it"
                    );
                    bus.publish(topic, Vec::new(), true).await;
                }
                None => {}
            }
        }
        Some(TopicKind::Status { repo, env, agent }) => {
            let _ = fleet.on_status(&repo, &env, &agent, payload);
        }
        Some(TopicKind::Fleet { repo, env }) => {
            if bus.take_echo(topic, payload) {
                // Our own summary, perhaps overtaken by a newer one already.
                return;
            }
            if fleet.on_summary(&repo, &env, payload) == SummaryCheck::Clear {
                bus.publish(topic, Vec::new(), true).await;
            }
        }
        _ => {}
    }
}
