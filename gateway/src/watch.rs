//! What the gateway hears on the bus: agent statuses, and any change to a `desired` topic.
//!
//! A retained `desired` message that is not byte-identical to the ledger's newest order
//! (forged, stale, or cleared with an empty payload) is replaced by the true one at once.

use std::sync::Arc;

use orcastrate_broker::embedded::LinkReceiver;
use orcastrate_broker::TopicKind;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::fleet::Fleet;
use crate::sequencer::NewestOrders;

/// Subscribes to `desired` and `status` topics and handles each message until cancelled.
pub async fn run(
    mut receiver: LinkReceiver,
    bus: Bus,
    newest: NewestOrders,
    fleet: Arc<Fleet>,
    cancel: CancellationToken,
) {
    for filter in [bus.topics().all_desired(), bus.topics().all_status()] {
        if let Err(e) = bus.subscribe(&filter).await {
            tracing::error!(error = %e, filter, "cannot subscribe");
        }
    }
    loop {
        let message = tokio::select! {
            m = receiver.recv() => m,
            () = cancel.cancelled() => return,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "the broker link closed; the bus is down");
                return;
            }
        };
        match bus.topics().parse(&message.topic) {
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
                let matches = current.as_deref().map(str::as_bytes) == Some(&message.payload[..]);
                if bus.take_echo(&message.topic, &message.payload) {
                    // Our own publish: if it is no longer the newest, a newer one of ours
                    // is already on its way behind it.
                    continue;
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
                        bus.publish_order(&message.topic, || truth().map(String::into_bytes))
                            .await;
                    }
                    None if !message.payload.is_empty() => {
                        tracing::warn!(
                            repo = key.0,
                            env = key.1,
                            "desired message for a repo/env without orders; clearing it"
                        );
                        bus.publish(&message.topic, Vec::new(), true).await;
                    }
                    None => {}
                }
            }
            Some(TopicKind::Status { repo, env, agent }) => {
                let _ = fleet.on_status(&repo, &env, &agent, &message.payload);
            }
            _ => {}
        }
    }
}
