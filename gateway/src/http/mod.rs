//! The HTTP side: GitHub webhooks, `/healthz`, `/metrics` and the operator API.
//!
//! Webhook answers follow the design's order: size (413), signature (401), content type
//! (415), headers and payload (400), then the decision (200 duplicate or ping, 202 order or
//! ignored). Errors are JSON `{"error": "<what was wrong and what to do>"}`.
//!
//! What a sender can hold: a webhook body is buffered only as its bytes arrive, against one
//! byte budget for all connections, and the processing permit is taken only once the body
//! is complete, so stalled senders hold neither. Admin routes check the bearer token before
//! reading any body, and read at most [`ADMIN_MAX_BODY`]. The listener's timeouts
//! ([`crate::listener`]) end every stalled body.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use orcastrate_broker::names;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Access;
use crate::health::HealthProbe;
use crate::metrics::Metrics;
use crate::sequencer::{Sequencer, Webhook, WebhookOutcome};
use crate::{decisions, github};

mod admin;
mod error;
pub mod stream;

pub(crate) use admin::throttle_tokens;
pub use error::{AppError, AppJson, ErrorKind};

/// Webhooks whose complete body is being checked and decided at once (parsing a payload
/// takes a few times its size); bodies still arriving do not count.
pub const MAX_CONCURRENT_WEBHOOKS: usize = 64;

/// Largest admin API body: the API takes a few short fields.
pub const ADMIN_MAX_BODY: usize = 64 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub sequencer: Sequencer,
    pub access: Arc<RwLock<Access>>,
    pub github_secret: Arc<str>,
    pub admin_tokens: Arc<[String]>,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub health: HealthProbe,
    /// Bounds webhooks being decided at once; taken once the body is complete, released
    /// when the handler ends.
    pub webhook_permits: Arc<Semaphore>,
    /// One permit per webhook body byte buffered, over all connections (`[http]
    /// body_buffer_bytes`); taken as bytes arrive, released when the body is dropped.
    pub body_budget: Arc<Semaphore>,
    /// How long a body waits for budget before the sender is told to retry.
    pub budget_wait: Duration,
    /// Duplicate webhooks are logged once per burst: whoever captured one signed body can
    /// send it again as often as they like.
    pub duplicates: Arc<orcastrate_broker::burst::BurstLog>,
    /// Board sessions and live streams.
    pub board: Arc<crate::board::Board>,
    /// Wrong admin and viewer tokens per source address (the API and the board's sign-in).
    pub token_throttle: Arc<crate::throttle::Throttle>,
}

/// The router of every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        // The webhook handler enforces `max_body_bytes` itself, as bytes arrive.
        .route("/pullrequest", post(webhook).layer(DefaultBodyLimit::disable()))
        .route("/webhook", post(webhook).layer(DefaultBodyLimit::disable()))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(admin::routes(&state))
        .merge(crate::board::routes(&state))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &Request| tracing::debug_span!("http", method = %req.method(), path = %req.uri().path()),
            ),
        )
        .with_state(state)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A webhook body in memory and the budget bytes it holds until dropped.
struct Buffered {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Reads at most `limit` bytes of body, taking budget for each chunk as it arrives.
///
/// # Errors
///
/// 413 past `limit`, 408 when the listener's body deadline passes, 503 when the budget
/// stays exhausted for `budget_wait`, 400 when the connection fails.
async fn read_budgeted(app: &AppState, mut body: Body, limit: usize) -> Result<Buffered, AppError> {
    let mut buf = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::listener::is_too_slow(&e) {
                AppError::new(ErrorKind::TooSlow, crate::listener::BodyTooSlow.to_string())
            } else {
                AppError::new(
                    ErrorKind::Malformed,
                    format!("could not read the request body: {e}"),
                )
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(too_large(app));
        }
        let n = u32::try_from(data.len()).expect("a chunk is far below 4 GiB");
        let permit = match app.body_budget.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) => {
                let wait = app.body_budget.clone().acquire_many_owned(n);
                match tokio::time::timeout(app.budget_wait, wait).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        return Err(AppError::new(ErrorKind::Unavailable,
                            "the gateway is reading too many webhook bodies at once: redeliver in a moment (or raise [http] body_buffer_bytes)",
                        ))
                    }
                }
            }
        };
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        if buf.is_empty() && http_body::Body::is_end_stream(&body) {
            // The whole body in one chunk: keep it without copying.
            return Ok(Buffered {
                bytes: data,
                _budget: held,
            });
        }
        buf.extend_from_slice(&data);
    }
    Ok(Buffered {
        bytes: Bytes::from(buf),
        _budget: held,
    })
}

fn too_large(app: &AppState) -> AppError {
    AppError::new(ErrorKind::TooLarge,
        format!(
            "body is larger than max_body_bytes ({} bytes): raise [http] max_body_bytes (GitHub sends at most 25 MiB)",
            app.max_body_bytes
        ),
    )
}

async fn webhook(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = handle_webhook(&app, &headers, body).await;
    let label = match &result {
        Ok((_, label)) => *label,
        Err(e) => e.kind.webhook_label(),
    };
    app.metrics.webhook(label);
    match result {
        Ok((response, _)) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle_webhook(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, &'static str), AppError> {
    let declared =
        header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body_bytes as u64) {
        return Err(too_large(app));
    }
    // Read first, without the processing permit: a sender that stalls holds only the budget
    // of the bytes it actually sent, until the listener's body deadline ends it.
    let buffered = read_budgeted(app, body, app.max_body_bytes).await?;
    let _permit = app
        .webhook_permits
        .acquire()
        .await
        .map_err(|_| AppError::new(ErrorKind::Unavailable, "shutting down: retry"))?;
    let body = &buffered.bytes;

    if !github::signature_valid(
        &app.github_secret,
        body,
        header_str(headers, "x-hub-signature-256"),
    ) {
        return Err(AppError::new(ErrorKind::Unauthorized,
            "missing or wrong X-Hub-Signature-256: set the same secret in the GitHub webhook and in [github] secret / GITHUB_SECRET",
        ));
    }

    let payload = payload(headers, body)?;
    let (event, delivery) = github_headers(headers)?;
    let intent = {
        let access = app.access.read().expect("access lock poisoned");
        github::intent(event, &payload, &access)
    }
    .map_err(|e| {
        AppError::new(
            ErrorKind::Malformed,
            format!("{e}: send the payload GitHub sent"),
        )
    })?;

    let (repo, env) = match &intent {
        github::Intent::Ping { repo } => (repo.clone(), None),
        github::Intent::Deploy { repo, env, .. } => (Some(repo.clone()), Some(env.clone())),
        github::Intent::Ignore { repo, env, .. } => (repo.clone(), env.clone()),
    };
    let outcome = app
        .sequencer
        .webhook(Webhook {
            delivery: delivery.to_owned(),
            event: event.to_owned(),
            body_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)),
            intent,
        })
        .await?;
    let line = decisions::WebhookLine {
        delivery,
        event,
        repo: repo.as_deref(),
        env: env.as_deref(),
    };
    match &outcome {
        WebhookOutcome::Ping => decisions::webhook(line, "ping", None, None),
        WebhookOutcome::Ignored(reason) => decisions::webhook(line, "ignored", Some(reason), None),
        WebhookOutcome::Accepted(order) => decisions::webhook(line, "accepted", None, Some(order)),
        WebhookOutcome::Duplicate(reason) => {
            if let Some(count) = app.duplicates.note() {
                let reason = format!("{reason} ({count} duplicates since the last such line)");
                decisions::webhook(line, "duplicate", Some(&reason), None);
            }
        }
    }
    Ok(answer(outcome, delivery))
}

/// The JSON payload of a webhook body, by its content type (415 for one GitHub does not send).
fn payload(headers: &HeaderMap, body: &Bytes) -> Result<Vec<u8>, AppError> {
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Ok(match content_type.as_str() {
        "application/json" => body.to_vec(),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or_else(|| {
                AppError::new(ErrorKind::Malformed,
                    "form body without a payload field: send GitHub's form encoding or use content type application/json",
                )
            })?,
        other => {
            return Err(AppError::new(ErrorKind::BadContentType,
                format!("content type {other:?} is not accepted: set the webhook's content type to application/json"),
            ))
        }
    })
}

/// The event and delivery id of a webhook, checked (400 when missing or malformed).
fn github_headers(headers: &HeaderMap) -> Result<(&str, &str), AppError> {
    let event = header_str(headers, "x-github-event").ok_or_else(|| {
        AppError::new(
            ErrorKind::Malformed,
            "missing X-GitHub-Event header: send webhooks as GitHub does",
        )
    })?;
    let delivery = header_str(headers, "x-github-delivery").ok_or_else(|| {
        AppError::new(
            ErrorKind::Malformed,
            "missing X-GitHub-Delivery header: send webhooks as GitHub does",
        )
    })?;
    if delivery.is_empty()
        || delivery.len() > 128
        || names::single_line("delivery", delivery).is_err()
    {
        return Err(AppError::new(
            ErrorKind::Malformed,
            "X-GitHub-Delivery must be 1 to 128 characters on one line",
        ));
    }
    if event.is_empty()
        || event.len() > 64
        || !event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(AppError::new(
            ErrorKind::Malformed,
            "X-GitHub-Event must be a GitHub event name such as push",
        ));
    }
    Ok((event, delivery))
}

/// The answer to a decided webhook and its metric label.
fn answer(outcome: WebhookOutcome, delivery: &str) -> (Response, &'static str) {
    match outcome {
        WebhookOutcome::Ping => (
            (
                StatusCode::OK,
                Json(json!({ "ok": true, "delivery": delivery })),
            )
                .into_response(),
            "ping",
        ),
        WebhookOutcome::Duplicate(reason) => (
            (
                StatusCode::OK,
                Json(json!({ "duplicate": true, "delivery": delivery, "reason": reason })),
            )
                .into_response(),
            "duplicate",
        ),
        WebhookOutcome::Ignored(reason) => (
            (
                StatusCode::ACCEPTED,
                Json(json!({ "ignored": reason, "delivery": delivery })),
            )
                .into_response(),
            "ignored",
        ),
        WebhookOutcome::Accepted(order) => (
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "delivery": delivery,
                    "repo": order.repo,
                    "env": order.env,
                    "seq": order.seq,
                    "sha": order.sha,
                })),
            )
                .into_response(),
            "accepted",
        ),
    }
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app.health.check(&app.sequencer).await {
        Ok(()) => (StatusCode::OK, Json(json!({ "ok": true }))).into_response(),
        Err(broken) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ok": false, "error": broken })),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
