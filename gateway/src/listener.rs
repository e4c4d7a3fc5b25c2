//! The HTTP accept loop, for plain HTTP and HTTPS: what one hostile client can hold is bounded.
//!
//! - at most `max_connections` open connections (below the descriptor limit, keeping the
//!   embedded broker's share), then the loop stops accepting until one closes;
//! - a request head (and a TLS handshake) must arrive within `header_timeout`; hyper's
//!   `header_read_timeout` starts whenever a connection waits for a head, so it also closes
//!   idle and kept-alive connections that start no request in time;
//! - a request body must arrive within `body_timeout` plus one second per
//!   `body_min_bytes_per_s` bytes received ([`TimedBody`], Apache's `mod_reqtimeout` rule);
//! - accept errors (out of descriptors) are retried with a doubling backoff;
//! - on shutdown, idle connections close at once and busy ones may finish their request
//!   for `shutdown_timeout`; whatever is still open then is cut.
//!
//! Only HTTP/1.1 is served: GitHub, the CLI and proxies use it, and HTTP/2 would need its own
//! idle and stream limits.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpLimits;

/// Descriptors kept for everything but connections: the ledger, logs, listeners, the health
/// probe and outgoing calls.
const RESERVED_FDS: u64 = 256;

/// Largest request head, and the largest read buffer of a connection: bounds what one
/// connection's headers can take (GitHub sends about 2 KiB); a larger head gets 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// First and longest pause after a failed `accept` (out of descriptors, mostly).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many HTTP connections fit beside the broker: `configured`, lowered so that the
/// descriptor limit keeps `broker_share` (the embedded broker's connection cap, or 0) and a
/// reserve. When the limit is too low for both, the broker keeps three quarters.
pub fn connection_cap(configured: usize, broker_share: usize) -> usize {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the file descriptor limit");
    }
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let available = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    let broker = broker_share.min(available / 4 * 3);
    let cap = configured.min((available - broker).max(16));
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            fd_limit = limit,
            "[http] max_connections lowered to fit the file descriptor limit: raise LimitNOFILE (ulimit -n)"
        );
    }
    cap
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`, then drains within
/// `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    // Each connection task holds one permit; the loop waits for one before accepting, so a
    // flood queues in the kernel's backlog instead of taking descriptors from the broker.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    // Cancelled when the shutdown deadline passes: every connection still open is dropped.
    let cut = CancellationToken::new();
    let limits = Arc::new(limits);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "HTTP accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            router: router.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            cut: cut.clone(),
        };
        let tls = tls.clone();
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection.serve(stream).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let stream = tokio::select! {
                        done = tokio::time::timeout(connection.limits.header_timeout, handshake) => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => return tracing::debug!("TLS handshake timed out"),
                        },
                        () = connection.shutdown.cancelled() => return,
                    };
                    connection.serve(stream).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(limits.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "shutdown deadline passed: closing the HTTP connections still open"
        );
        cut.cancel();
        tracker.wait().await;
    }
}

/// One accepted connection and what it needs.
struct Connection {
    peer: SocketAddr,
    router: Router,
    limits: Arc<HttpLimits>,
    /// Graceful shutdown: finish the current request, then close.
    shutdown: CancellationToken,
    /// The shutdown deadline has passed: drop the connection now.
    cut: CancellationToken,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            router,
            limits,
            shutdown,
            cut,
        } = self;
        let (body_timeout, rate) = (limits.body_timeout, limits.body_min_bytes_per_s);
        let trusted = limits.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(|body| Body::new(TimedBody::new(body, body_timeout, rate)));
            // Behind a trusted proxy, the client it names (`[http] trusted_proxies`).
            let client = crate::forwarded::client(peer, req.headers(), &trusted.trusted_proxies);
            req.extensions_mut().insert(ConnectInfo(client));
            router.clone().oneshot(req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => result,
                    () = cut.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}

/// The body of a request took longer than `[http] body_timeout_s` plus its allowance.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly: send it within [http] body_timeout_s, at [http] body_min_bytes_per_s or faster")]
pub struct BodyTooSlow;

/// Whether `error` (or one of its causes) is [`BodyTooSlow`].
pub fn is_too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTooSlow>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A request body with a deadline: `timeout` after the request, plus one second per `rate`
/// bytes received. The deadline is only armed once the body makes a reader wait.
struct TimedBody {
    inner: Incoming,
    started: Instant,
    timeout: Duration,
    rate: u64,
    received: u64,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration, rate: u64) -> Self {
        Self {
            inner,
            started: Instant::now(),
            timeout,
            rate,
            received: 0,
            deadline: None,
        }
    }

    fn deadline(&self) -> Instant {
        self.started
            + self.timeout
            + Duration::from_secs_f64(self.received as f64 / self.rate as f64)
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let deadline = this.deadline();
                    if let Some(sleep) = &mut this.deadline {
                        sleep.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                let sleep = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
