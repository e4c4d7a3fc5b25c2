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
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use orcastrate_broker::{names, DeployOrder};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Access;
use crate::github;
use crate::health::HealthProbe;
use crate::metrics::Metrics;
use crate::sequencer::{DeskError, Sequencer, Webhook, WebhookOutcome};

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
}

/// An error answer: status plus a message saying what was wrong and what to do.
#[derive(Debug)]
pub struct AppError(StatusCode, String);

impl AppError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DeskError> for AppError {
    fn from(e: DeskError) -> Self {
        match e {
            DeskError::UnknownRepoEnv { .. } => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            DeskError::NoRollbackTarget { .. } => Self::new(StatusCode::CONFLICT, e.to_string()),
            DeskError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the gateway could not record this: see its log, then retry",
                )
            }
            DeskError::Stopped => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway is shutting down: retry in a moment",
            ),
        }
    }
}

/// JSON bodies with our error shape for rejections.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {ADMIN_MAX_BODY} bytes: the API takes a few short fields"),
                ))
            }
            Err(rejection) => Err(AppError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: send a JSON object as the API documents",
                    rejection.body_text()
                ),
            )),
        }
    }
}

/// The router of every route.
pub fn router(state: AppState) -> Router {
    // The token is checked before any extractor reads a body.
    let admin_api = Router::new()
        .route("/api/v1/deployments", get(deployments))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/deploy", post(deploy))
        .route("/api/v1/rollback", post(rollback))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .layer(DefaultBodyLimit::max(ADMIN_MAX_BODY));
    Router::new()
        // The webhook handler enforces `max_body_bytes` itself, as bytes arrive.
        .route("/pullrequest", post(webhook).layer(DefaultBodyLimit::disable()))
        .route("/webhook", post(webhook).layer(DefaultBodyLimit::disable()))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(admin_api)
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
                AppError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    crate::listener::BodyTooSlow.to_string(),
                )
            } else {
                AppError::new(
                    StatusCode::BAD_REQUEST,
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
                        return Err(AppError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
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
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
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
        Err(AppError(status, _)) => match status.as_u16() {
            413 => "too_large",
            408 => "too_slow",
            503 => "busy",
            401 => "bad_signature",
            415 => "bad_content_type",
            400 => "malformed",
            _ => "error",
        },
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
        .map_err(|_| AppError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down: retry"))?;
    let body = &buffered.bytes;

    if !github::signature_valid(
        &app.github_secret,
        body,
        header_str(headers, "x-hub-signature-256"),
    ) {
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Hub-Signature-256: set the same secret in the GitHub webhook and in [github] secret / GITHUB_SECRET",
        ));
    }

    let content_type = header_str(headers, header::CONTENT_TYPE.as_str())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let payload: Vec<u8> = match content_type.as_str() {
        "application/json" => body.to_vec(),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or_else(|| {
                AppError::new(
                    StatusCode::BAD_REQUEST,
                    "form body without a payload field: send GitHub's form encoding or use content type application/json",
                )
            })?,
        other => {
            return Err(AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {other:?} is not accepted: set the webhook's content type to application/json"),
            ))
        }
    };

    let event = header_str(headers, "x-github-event").ok_or_else(|| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event header: send webhooks as GitHub does",
        )
    })?;
    let delivery = header_str(headers, "x-github-delivery").ok_or_else(|| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery header: send webhooks as GitHub does",
        )
    })?;
    if delivery.is_empty()
        || delivery.len() > 128
        || names::single_line("delivery", delivery).is_err()
    {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "X-GitHub-Delivery must be 1 to 128 characters on one line",
        ));
    }
    if event.is_empty()
        || event.len() > 64
        || !event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "X-GitHub-Event must be a GitHub event name such as push",
        ));
    }
    let intent = {
        let access = app.access.read().expect("access lock poisoned");
        github::intent(event, &payload, &access)
    }
    .map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            format!("{e}: send the payload GitHub sent"),
        )
    })?;

    let outcome = app
        .sequencer
        .webhook(Webhook {
            delivery: delivery.to_owned(),
            event: event.to_owned(),
            body_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)),
            intent,
        })
        .await?;
    Ok(match outcome {
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
    })
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

/// Who made an admin request; `issued_by` of the orders it makes.
#[derive(Clone)]
struct Operator(String);

/// Refuses admin requests without a valid bearer token before anything reads their body.
async fn require_admin(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    match admin(&app, req.headers()) {
        Ok(who) => {
            req.extensions_mut().insert(Operator(who));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Checks the bearer token of an admin request; returns the operator's name for `issued_by`.
fn admin(app: &AppState, headers: &HeaderMap) -> Result<String, AppError> {
    let given = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = !given.is_empty()
        && app.admin_tokens.iter().fold(false, |ok, t| {
            ok | orcastrate_broker::auth::secrets_equal(given, t)
        });
    if ok {
        Ok("admin".to_owned())
    } else {
        Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token: send Authorization: Bearer <token> with a token from [admin] tokens or ORCASTRATE_ADMIN_TOKEN",
        ))
    }
}

fn bad_request(e: impl std::fmt::Display) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, e.to_string())
}

/// Validates an optional repo/env filter.
fn filter(
    repo: Option<String>,
    env: Option<String>,
) -> Result<(Option<String>, Option<String>), AppError> {
    let repo = repo
        .filter(|r| !r.is_empty())
        .map(|r| names::repo(&r))
        .transpose()
        .map_err(bad_request)?;
    let env = env
        .filter(|e| !e.is_empty())
        .map(|e| names::env(&e).map(str::to_owned))
        .transpose()
        .map_err(bad_request)?;
    Ok((repo, env))
}

#[derive(Deserialize)]
struct ListQuery {
    repo: Option<String>,
    env: Option<String>,
    limit: Option<u32>,
}

async fn deployments(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, AppError> {
    let (repo, env) = filter(q.repo, q.env)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let orders = app.sequencer.history(repo, env, limit).await?;
    Ok(Json(json!({ "deployments": orders })))
}

async fn agents(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, AppError> {
    let (repo, env) = filter(q.repo, q.env)?;
    let agents = app.sequencer.agents(repo, env).await?;
    Ok(Json(json!({ "agents": agents })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    repo: String,
    env: String,
    sha: String,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    repo: String,
    env: String,
    to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoEnvBody {
    repo: String,
    env: String,
}

fn repo_env(repo: &str, env: &str) -> Result<(String, String), AppError> {
    Ok((
        names::repo(repo).map_err(bad_request)?,
        names::env(env).map_err(bad_request)?.to_owned(),
    ))
}

fn order_json(order: &DeployOrder) -> Json<Value> {
    Json(json!({ "order": order }))
}

async fn deploy(
    State(app): State<AppState>,
    Extension(Operator(who)): Extension<Operator>,
    AppJson(body): AppJson<DeployBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (repo, env) = repo_env(&body.repo, &body.env)?;
    let sha = names::sha(&body.sha).map_err(bad_request)?.to_owned();
    if let Some(r) = &body.git_ref {
        names::single_line("ref", r).map_err(bad_request)?;
    }
    let order = app
        .sequencer
        .deploy(repo, env, sha, body.git_ref, who)
        .await?;
    Ok((StatusCode::ACCEPTED, order_json(&order)))
}

async fn rollback(
    State(app): State<AppState>,
    Extension(Operator(who)): Extension<Operator>,
    AppJson(body): AppJson<RollbackBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (repo, env) = repo_env(&body.repo, &body.env)?;
    let to = body
        .to
        .map(|s| names::sha(&s).map(str::to_owned))
        .transpose()
        .map_err(bad_request)?;
    let order = app.sequencer.rollback(repo, env, to, who).await?;
    Ok((StatusCode::ACCEPTED, order_json(&order)))
}

async fn set_paused(
    app: AppState,
    body: RepoEnvBody,
    paused: bool,
) -> Result<Json<Value>, AppError> {
    let (repo, env) = repo_env(&body.repo, &body.env)?;
    app.sequencer
        .pause(repo.clone(), env.clone(), paused)
        .await?;
    Ok(Json(json!({ "repo": repo, "env": env, "paused": paused })))
}

async fn pause(
    State(app): State<AppState>,
    AppJson(body): AppJson<RepoEnvBody>,
) -> Result<Json<Value>, AppError> {
    set_paused(app, body, true).await
}

async fn resume(
    State(app): State<AppState>,
    AppJson(body): AppJson<RepoEnvBody>,
) -> Result<Json<Value>, AppError> {
    set_paused(app, body, false).await
}
