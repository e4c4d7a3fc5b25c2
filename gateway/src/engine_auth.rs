//! HTTP authentication and authorization for an external MQTT engine, in the shape of EMQX's
//! HTTP hooks, so tokens and scopes live only in the gateway's `[[clients]]`.
//!
//! `POST /api/v1/mqtt/auth` takes `{clientid, username, password}` and answers 200
//! `{"result": "allow" | "deny"}` by the same rules as the embedded broker's logins.
//! `POST /api/v1/mqtt/acl` takes `{username, topic, action: "publish" | "subscribe"}` and
//! answers by [`crate::acl`]. Bodies may be JSON or form-encoded. A malformed body gets 400,
//! which EMQX treats as "ignore"; a refusal is a 200 with `deny`, as EMQX expects.
//!
//! The hooks are a password oracle, so they are served only with an external engine and
//! only on their own listener (`[mqtt] hooks_listen`), optionally behind a bearer token
//! (`[mqtt] hooks_token`). Refused logins are throttled per source ([`Throttle`]): past the
//! burst, a source's attempts are denied without being checked; wrong hooks tokens likewise
//! per caller (429). Refusals are logged once per
//! [`BURST_WINDOW`](orcastrate_broker::burst::BURST_WINDOW) with a count, never once per request.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use orcastrate_broker::auth::Credentials;
use orcastrate_broker::Topics;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::acl::{self, Action, Grants};
use crate::config::Access;
use crate::throttle::{self, Throttle};
use orcastrate_broker::burst::BurstLog;

/// Largest hook body: three short fields.
const MAX_HOOK_BODY: usize = 16 * 1024;

/// What the hooks check against; shared with the gateway so SIGHUP reloads apply at once.
#[derive(Clone)]
pub struct EngineAuth {
    credentials: Arc<RwLock<Credentials>>,
    access: Arc<RwLock<Access>>,
    topics: Topics,
    /// The gateway's own login on the engine, which may read and write every topic.
    gateway_user: Option<String>,
    /// The bearer token the engine must send, if any.
    token: Option<Arc<str>>,
    /// Refused logins per source; shared by every request.
    throttle: Arc<Throttle>,
    /// Wrong hooks tokens per caller, so the token cannot be guessed at HTTP speed either.
    token_throttle: Arc<Throttle>,
    refused_logins: Arc<BurstLog>,
    refused_topics: Arc<BurstLog>,
}

impl EngineAuth {
    /// Hooks that check logins against `credentials` and topics against `access`.
    pub fn new(
        credentials: Arc<RwLock<Credentials>>,
        access: Arc<RwLock<Access>>,
        topics: Topics,
        gateway_user: Option<String>,
        token: Option<String>,
    ) -> Self {
        Self {
            credentials,
            access,
            topics,
            gateway_user,
            token: token.map(Into::into),
            throttle: Arc::new(Throttle::default()),
            token_throttle: Arc::new(Throttle::default()),
            refused_logins: Arc::new(BurstLog::default()),
            refused_topics: Arc::new(BurstLog::default()),
        }
    }
}

/// The hook routes.
pub fn router(auth: EngineAuth) -> Router {
    Router::new()
        .route("/api/v1/mqtt/auth", post(authenticate))
        .route("/api/v1/mqtt/acl", post(authorize))
        .with_state(auth)
}

#[derive(Deserialize)]
struct AuthRequest {
    #[serde(default, alias = "client_id")]
    clientid: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// The MQTT client's address, as EMQX's `${peerhost}`: the throttle's source when the
    /// engine authenticates with the hooks token.
    #[serde(default)]
    peerhost: String,
}

#[derive(Deserialize)]
struct AclRequest {
    #[serde(default)]
    username: String,
    topic: String,
    action: String,
}

fn result(allow: bool) -> Response {
    let result = if allow { "allow" } else { "deny" };
    Json(json!({ "result": result, "is_superuser": false })).into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

/// Parses a JSON or form-encoded body into `T`.
fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let value = if content_type.starts_with("application/x-www-form-urlencoded") {
        let map: serde_json::Map<_, _> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
            .collect();
        serde_json::Value::Object(map)
    } else {
        serde_json::from_slice(body).map_err(|e| {
            format!("the body is not JSON ({e}): configure the engine to send a JSON object")
        })?
    };
    serde_json::from_value(value).map_err(|e| {
        format!(
            "{e}: send clientid, username and password (auth) or username, topic and action (acl)"
        )
    })
}

/// Checks the engine's bearer token, then reads the body (small) and the caller's address.
/// A caller past its burst of wrong tokens gets 429 without its token being checked.
async fn admit(auth: &EngineAuth, req: Request) -> Result<(HeaderMap, Vec<u8>, String), Response> {
    let peer = throttle::source(&req);
    if let Some(token) = &auth.token {
        if !auth.token_throttle.may_try(&peer) {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "10")],
                Json(json!({ "error": "too many wrong hooks tokens from this address: wait a few seconds, then check [mqtt] hooks_token" })),
            )
                .into_response());
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !orcastrate_broker::auth::secrets_equal(given, token) {
            auth.token_throttle.refused(&peer);
            return Err((
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "missing or wrong hooks token: configure the engine to send Authorization: Bearer <[mqtt] hooks_token>" })),
            )
                .into_response());
        }
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_HOOK_BODY)
        .await
        .map_err(|e| {
            bad_request(format!(
                "could not read the body ({e}): send at most {MAX_HOOK_BODY} bytes"
            ))
        })?;
    Ok((parts.headers, body.to_vec(), peer))
}

async fn authenticate(State(auth): State<EngineAuth>, req: Request) -> Response {
    let (headers, body, peer) = match admit(&auth, req).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let request: AuthRequest = match parse(&headers, &body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    // The body's peerhost is the engine's word, trusted only from a caller with the token.
    let source = if auth.token.is_some() && !request.peerhost.is_empty() {
        request.peerhost.clone()
    } else {
        peer
    };
    if !auth.throttle.may_try(&source) {
        // Unchecked: a guess past the burst learns nothing.
        if let Some(count) = auth.refused_logins.note() {
            tracing::info!(
                count,
                source,
                "engine logins refused (throttled or wrong), summed over the last burst"
            );
        }
        return result(false);
    }
    let verdict = auth
        .credentials
        .read()
        .expect("credentials lock poisoned")
        .check_login(&request.clientid, &request.username, &request.password);
    match verdict {
        Ok(()) => result(true),
        Err(reason) => {
            auth.throttle.refused(&source);
            if let Some(count) = auth.refused_logins.note() {
                tracing::info!(count, source, username = request.username, %reason, "engine logins refused (throttled or wrong), summed over the last burst");
            }
            result(false)
        }
    }
}

async fn authorize(State(auth): State<EngineAuth>, req: Request) -> Response {
    let (headers, body, _) = match admit(&auth, req).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let request: AclRequest = match parse(&headers, &body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let action = match request.action.as_str() {
        "publish" => Action::Publish,
        "subscribe" => Action::Subscribe,
        other => {
            return bad_request(format!(
                "action {other:?}: use \"publish\" or \"subscribe\""
            ))
        }
    };
    let grants = grants_of(&auth, &request.username);
    let allow = grants.is_some_and(|g| g.allows(action, &request.topic));
    if !allow {
        if let Some(count) = auth.refused_topics.note() {
            tracing::info!(
                count,
                username = request.username,
                topic = request.topic,
                action = request.action,
                "engine topic access refused, summed over the last burst"
            );
        }
    }
    result(allow)
}

fn grants_of(auth: &EngineAuth, username: &str) -> Option<Grants> {
    if auth.gateway_user.as_deref() == Some(username) {
        return Some(acl::gateway_grants(&auth.topics));
    }
    let access = auth.access.read().expect("access lock poisoned");
    access
        .client(username)
        .map(|c| acl::client_grants(c, &auth.topics))
}
