//! The gateway's side of the bus: publishing through the embedded broker's in-process link.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};

use orcastrate_broker::embedded::LinkPublisher;
use orcastrate_broker::Topics;
use tokio::sync::Mutex;

/// Publishes on the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// The link's sending half; a mutex because rumqttd's `LinkTx` needs `&mut`.
    publisher: Arc<Mutex<LinkPublisher>>,
    topics: Topics,
    /// Orders published on `desired` topics whose copy has not come back over the link yet;
    /// lets the desired-topic guard tell our own in-flight publishes from foreign ones.
    echoes: Arc<StdMutex<HashMap<String, VecDeque<Vec<u8>>>>>,
}

/// Own publishes remembered per topic at most; the link echoes in order, so more than this
/// means echoes are not coming back and the memory is better dropped.
const MAX_ECHOES: usize = 1024;

impl Bus {
    /// A bus publishing through `publisher` under `topics`.
    pub fn new(publisher: LinkPublisher, topics: Topics) -> Self {
        Self {
            publisher: Arc::new(Mutex::new(publisher)),
            topics,
            echoes: Arc::default(),
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

    /// Publishes a retained order on a `desired` topic, remembering it as our own.
    ///
    /// `payload` is computed under the publish lock, so a caller that reads "the newest
    /// order" there cannot overtake a newer publish with an older one.
    pub async fn publish_order(&self, topic: &str, payload: impl FnOnce() -> Option<Vec<u8>>) {
        let mut publisher = self.publisher.lock().await;
        let Some(payload) = payload() else { return };
        {
            let mut echoes = self.echoes.lock().expect("echo lock poisoned");
            let queue = echoes.entry(topic.to_owned()).or_default();
            if queue.len() >= MAX_ECHOES {
                queue.clear();
            }
            queue.push_back(payload.clone());
        }
        if let Err(e) = publisher.publish(topic, payload, true).await {
            tracing::error!(error = %e, topic, "publish failed");
        }
    }

    /// Whether `payload` on `topic` is the echo of one of our own [`Bus::publish_order`]s
    /// (consumed: each publish echoes once).
    pub fn take_echo(&self, topic: &str, payload: &[u8]) -> bool {
        let mut echoes = self.echoes.lock().expect("echo lock poisoned");
        let Some(queue) = echoes.get_mut(topic) else {
            return false;
        };
        match queue.iter().position(|p| p == payload) {
            Some(i) => {
                // Echoes arrive in publish order: anything before this one is not coming.
                queue.drain(..=i);
                true
            }
            None => false,
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
