//! The gateway's side of the bus: publishing through the embedded broker's in-process link.

use std::sync::Arc;

use orcastrate_broker::embedded::LinkPublisher;
use orcastrate_broker::Topics;
use tokio::sync::Mutex;

/// Publishes on the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// The link's sending half; a mutex because rumqttd's `LinkTx` needs `&mut`.
    publisher: Arc<Mutex<LinkPublisher>>,
    topics: Topics,
}

impl Bus {
    /// A bus publishing through `publisher` under `topics`.
    pub fn new(publisher: LinkPublisher, topics: Topics) -> Self {
        Self {
            publisher: Arc::new(Mutex::new(publisher)),
            topics,
        }
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Publishes a message; a failure is logged (the broker lives in-process, so it only
    /// fails when the broker itself has stopped, which `/healthz` reports).
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        let mut publisher = self.publisher.lock().await;
        if let Err(e) = publisher.publish(topic, payload, retain).await {
            tracing::error!(error = %e, topic, "publish failed");
        }
    }

    /// Subscribes the gateway's link to a filter.
    pub async fn subscribe(
        &self,
        filter: &str,
    ) -> Result<(), orcastrate_broker::embedded::EmbeddedError> {
        self.publisher.lock().await.subscribe(filter)
    }
}
