//! HTTP authentication and authorization for an external MQTT engine, in the shape of EMQX's
//! HTTP hooks, so tokens and scopes live only in the gateway's `[[clients]]`.
//!
//! `POST /api/v1/mqtt/auth` takes `{clientid, username, password}` and answers 200
//! `{"result": "allow" | "deny"}` by the same rules as the embedded broker's logins.
//! `POST /api/v1/mqtt/acl` takes `{username, topic, action: "publish" | "subscribe"}` and
//! answers by [`crate::acl`]. Bodies may be JSON or form-encoded. A malformed body gets 400,
//! which EMQX treats as "ignore"; a refusal is a 200 with `deny`, as EMQX expects.

use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::State;
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

/// What the hooks check against; shared with the gateway so SIGHUP reloads apply at once.
#[derive(Clone)]
pub struct EngineAuth {
    pub credentials: Arc<RwLock<Credentials>>,
    pub access: Arc<RwLock<Access>>,
    pub topics: Topics,
    /// The gateway's own login on the engine, which may read and write every topic.
    pub gateway_user: Option<String>,
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

async fn authenticate(State(auth): State<EngineAuth>, headers: HeaderMap, body: Bytes) -> Response {
    let request: AuthRequest = match parse(&headers, &body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let verdict = auth
        .credentials
        .read()
        .expect("credentials lock poisoned")
        .check_login(&request.clientid, &request.username, &request.password);
    match verdict {
        Ok(()) => result(true),
        Err(reason) => {
            tracing::info!(username = request.username, client_id = request.clientid, %reason, "engine login refused");
            result(false)
        }
    }
}

async fn authorize(State(auth): State<EngineAuth>, headers: HeaderMap, body: Bytes) -> Response {
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
        tracing::info!(
            username = request.username,
            topic = request.topic,
            action = request.action,
            "engine topic access refused"
        );
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
