//! `GET /api/v1/stream`: the board's live feed as Server-Sent Events.
//!
//! One feeder task (running only while someone listens) reads orders, agents, rollouts and
//! webhook decisions from the ledger when the sequencer has committed a change (at most
//! once per [`MIN_GAP`]; an idle board costs no read) and publishes the snapshot into a
//! `watch` channel when it differs. Each stream sends the newest snapshot when it is read:
//! a slow reader skips to the latest instead of queueing, so it holds one shared snapshot
//! and its kernel socket buffer, nothing more. Streams are capped at [`MAX_STREAMS`] and end
//! when the gateway shuts down (browsers' `EventSource` then reconnects by itself).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{AppError, AppState, ErrorKind};
use crate::sequencer::{DeskError, Sequencer};

/// Most event streams open at once.
pub const MAX_STREAMS: usize = 64;

/// Least time between two reads of the ledger: a burst of changes is one snapshot (the page
/// shows a change within this plus a round trip).
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// Orders and events the snapshot carries.
const HISTORY: u32 = 30;
const EVENTS: u32 = 15;

/// The shared side of every stream.
pub struct Hub {
    latest: watch::Sender<Arc<str>>,
    feeding: AtomicBool,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Hub {
    /// A hub whose streams end when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            latest: watch::Sender::new(Arc::from("")),
            feeding: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
            stop,
        }
    }
}

/// Everything the board shows, as one JSON text.
///
/// # Errors
///
/// The ledger failed or the gateway is stopping.
pub async fn snapshot(seq: &Sequencer) -> Result<String, DeskError> {
    let deployments = seq.history(None, None, HISTORY).await?;
    let agents = seq.agents(None, None).await?;
    let rollouts = seq.rollouts(None, None, 10).await?;
    let feed = seq.feed(EVENTS).await?;
    Ok(json!({
        "deployments": deployments,
        "agents": agents,
        "rollouts": rollouts,
        "events": feed.events,
        "paused": feed.paused,
    })
    .to_string())
}

/// Publishes each changed snapshot until nobody listens or the gateway stops.
async fn feed(app: AppState) {
    let hub = &app.board.hub;
    let mut changes = app.sequencer.changes();
    loop {
        if hub.latest.receiver_count() == 0 || hub.stop.is_cancelled() {
            hub.feeding.store(false, Ordering::SeqCst);
            // A stream that subscribed just now would wait for a feeder that is gone.
            if hub.latest.receiver_count() == 0
                || hub.feeding.swap(true, Ordering::SeqCst)
                || hub.stop.is_cancelled()
            {
                return;
            }
        }
        changes.borrow_and_update();
        match snapshot(&app.sequencer).await {
            Ok(text) => {
                hub.latest.send_if_modified(|old| {
                    if **old == *text {
                        false
                    } else {
                        *old = Arc::from(text);
                        true
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "board stream: could not read the ledger"),
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_GAP) => {}
            () = hub.stop.cancelled() => {}
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The sequencer is gone: the gateway is stopping.
                    hub.feeding.store(false, Ordering::SeqCst);
                    return;
                }
            }
            () = hub.latest.closed() => {}
            () = hub.stop.cancelled() => {}
        }
    }
}

/// `GET /api/v1/stream` (behind the admin/viewer check).
pub(super) async fn stream(State(app): State<AppState>) -> Response {
    let Ok(permit) = app.board.hub.permits.clone().try_acquire_owned() else {
        return AppError::new(
            ErrorKind::Unavailable,
            format!(
                "{MAX_STREAMS} board streams are open already: close a board tab or retry later"
            ),
        )
        .into_response();
    };
    let mut rx = app.board.hub.latest.subscribe();
    rx.mark_changed();
    if !app.board.hub.feeding.swap(true, Ordering::SeqCst) {
        tokio::spawn(feed(app.clone()));
    }
    let stop = app.board.hub.stop.clone();
    Sse::new(events(rx, stop, permit))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The snapshots of one stream, each the newest at the time it is read.
fn events(
    rx: watch::Receiver<Arc<str>>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((rx, stop, permit), |(mut rx, stop, permit)| async move {
        loop {
            tokio::select! {
                changed = rx.changed() => changed.ok()?,
                () = stop.cancelled() => return None,
            }
            let text = rx.borrow_and_update().clone();
            if !text.is_empty() {
                let event = Event::default().event("snapshot").data(&*text);
                return Some((Ok(event), (rx, stop, permit)));
            }
        }
    })
}
