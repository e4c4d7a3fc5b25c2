//! The operator API: bearer-token check (before any body is read) and its handlers.

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use orcastrate_broker::{names, DeployOrder};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AppError, AppJson, AppState, ErrorKind, ADMIN_MAX_BODY};

/// The admin routes, behind the token check.
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    // The token is checked before any extractor reads a body.
    Router::new()
        .route("/api/v1/deployments", get(deployments))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/deploy", post(deploy))
        .route("/api/v1/rollback", post(rollback))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/rollouts", get(rollouts))
        .route("/api/v1/rollouts/promote", post(promote))
        .route("/api/v1/rollouts/abort", post(abort))
        .route("/api/v1/stream", get(super::stream::stream))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            throttle_tokens,
        ))
        .layer(DefaultBodyLimit::max(ADMIN_MAX_BODY))
}

/// Refuses, without checking it, the token of a source that has sent too many wrong ones
/// lately (429), and counts each 401 against its source: a token cannot be guessed at the
/// speed of the API. Wraps the operator API and the board's sign-in.
pub(crate) async fn throttle_tokens(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let source = crate::throttle::source(&req);
    if !app.token_throttle.may_try(&source) {
        return (
            [(axum::http::header::RETRY_AFTER, "10")],
            AppError::new(
                ErrorKind::Throttled,
                "too many wrong tokens from this address: wait a few seconds, then check the token",
            ),
        )
            .into_response();
    }
    let answer = next.run(req).await;
    if answer.status() == StatusCode::UNAUTHORIZED {
        app.token_throttle.refused(&source);
    }
    answer
}

/// Who made an admin request; `issued_by` of the orders it makes.
#[derive(Clone)]
struct Operator(String);

/// Refuses admin requests without a valid token or session before anything reads their
/// body; viewers may only read ([`crate::board::authorize`]).
async fn require_admin(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    match crate::board::authorize(&app, req.method(), req.headers()) {
        Ok(caller) => {
            req.extensions_mut().insert(Operator(caller.name));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
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
        .map_err(AppError::bad_request)?;
    let env = env
        .filter(|e| !e.is_empty())
        .map(|e| names::env(&e).map(str::to_owned))
        .transpose()
        .map_err(AppError::bad_request)?;
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

async fn rollouts(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, AppError> {
    let (repo, env) = filter(q.repo, q.env)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let rollouts = app.sequencer.rollouts(repo, env, limit).await?;
    Ok(Json(json!({ "rollouts": rollouts })))
}

async fn steer(
    app: AppState,
    who: String,
    body: RepoEnvBody,
    abort: bool,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (repo, env) = repo_env(&body.repo, &body.env)?;
    let rollout = app.sequencer.steer_rollout(repo, env, abort, who).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "rollout": rollout }))))
}

async fn promote(
    State(app): State<AppState>,
    Extension(Operator(who)): Extension<Operator>,
    AppJson(body): AppJson<RepoEnvBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    steer(app, who, body, false).await
}

async fn abort(
    State(app): State<AppState>,
    Extension(Operator(who)): Extension<Operator>,
    AppJson(body): AppJson<RepoEnvBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    steer(app, who, body, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    repo: String,
    env: String,
    sha: String,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// To every agent at once, without waves.
    #[serde(default)]
    now: bool,
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
        names::repo(repo).map_err(AppError::bad_request)?,
        names::env(env).map_err(AppError::bad_request)?.to_owned(),
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
    let sha = names::sha(&body.sha)
        .map_err(AppError::bad_request)?
        .to_owned();
    if let Some(r) = &body.git_ref {
        names::single_line("ref", r).map_err(AppError::bad_request)?;
    }
    let order = app
        .sequencer
        .deploy(repo, env, sha, body.git_ref, who, body.now)
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
        .map_err(AppError::bad_request)?;
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
