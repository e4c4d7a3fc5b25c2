//! The board: `GET /` (a page built into the binary), its sign-in, and who may do what.
//!
//! A token (admin or `[admin] viewer_tokens`) is sent once in a POST body and traded for an
//! HttpOnly, SameSite=Strict session cookie; the page then learns its CSRF token from
//! `GET /api/v1/session` and sends it in `X-CSRF-Token` on every write. Bearer-token
//! callers (the CLI) need no CSRF token: browsers never attach that header by themselves.

pub mod session;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::http::{AppError, AppJson, AppState, ErrorKind};
use session::{Role, Sessions};

const PAGE: &str = include_str!("../../board/index.html");
const CSS: &str = include_str!("../../board/board.css");
const JS: &str = include_str!("../../board/board.js");

/// The page's weight: HTML + CSS + JS, uncompressed.
pub const PAGE_BYTES: usize = PAGE.len() + CSS.len() + JS.len();

/// What the board's handlers share.
pub struct Board {
    pub sessions: Sessions,
    pub viewer_tokens: Arc<[String]>,
    /// Cookies carry `Secure` (the gateway serves HTTPS).
    pub secure: bool,
    pub hub: crate::http::stream::Hub,
    /// Where commit links go (`https://github.com`, or GitHub Enterprise Server's address);
    /// `None` shows shas without links.
    pub github_web: Option<String>,
}

impl Board {
    /// A board whose live streams end when `stop` is cancelled.
    pub fn new(
        sessions: Sessions,
        viewer_tokens: Vec<String>,
        secure: bool,
        github_web: Option<String>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            sessions,
            viewer_tokens: viewer_tokens.into(),
            secure,
            hub: crate::http::stream::Hub::new(stop),
            github_web,
        }
    }
}

/// Who made an API request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `issued_by` of the orders it makes.
    pub name: String,
    pub role: Role,
}

fn listed(given: &str, tokens: &[String]) -> bool {
    !given.is_empty()
        && tokens.iter().fold(false, |ok, t| {
            ok | orcastrate_broker::auth::secrets_equal(given, t)
        })
}

/// The role a token signs in as, if any.
fn role_of(app: &AppState, token: &str) -> Option<Role> {
    if listed(token, &app.admin_tokens) {
        Some(Role::Admin)
    } else if listed(token, &app.board.viewer_tokens) {
        Some(Role::Viewer)
    } else {
        None
    }
}

fn header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks an API request: a bearer token, or a session cookie plus (for writes) its CSRF
/// token; viewers may only read.
///
/// # Errors
///
/// 401 without a valid token or session, 403 for a viewer's write or a missing or wrong
/// CSRF token.
pub fn authorize(app: &AppState, method: &Method, headers: &HeaderMap) -> Result<Caller, AppError> {
    let write = !matches!(*method, Method::GET | Method::HEAD);
    let bearer = header(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
    let role = if let Some(token) = bearer {
        role_of(app, token)
    } else {
        let session = header(headers, header::COOKIE)
            .and_then(session::cookie_id)
            .and_then(|id| app.board.sessions.get(id));
        if let (Some(s), true) = (&session, write) {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !orcastrate_broker::auth::secrets_equal(sent, &s.csrf) {
                return Err(AppError::new(ErrorKind::Forbidden,
                    "missing or wrong X-CSRF-Token: reload the board (it sends the token of your session)",
                ));
            }
        }
        session.map(|s| s.role)
    };
    match role {
        None => Err(AppError::new(ErrorKind::Unauthorized,
            "missing or wrong admin token: send Authorization: Bearer <token> with a token from [admin] tokens or ORCASTRATE_ADMIN_TOKEN, or sign in on the board",
        )),
        Some(Role::Viewer) if write => Err(AppError::new(ErrorKind::Forbidden,
            "this sign-in is read-only ([admin] viewer_tokens): sign in with an admin token to change anything",
        )),
        Some(role) => Ok(Caller { name: "admin".to_owned(), role }),
    }
}

/// The page, its style and script, and the session routes.
pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/board.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/board.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/api/v1/session",
            post(sign_in).get(whoami).delete(sign_out).route_layer(
                axum::middleware::from_fn_with_state(state.clone(), crate::http::throttle_tokens),
            ),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /api/v1/session {"token": …}`: a session cookie for an admin or viewer token.
async fn sign_in(State(app): State<AppState>, AppJson(body): AppJson<SignIn>) -> Response {
    let Some(role) = role_of(&app, &body.token) else {
        return AppError::new(
            ErrorKind::Unauthorized,
            "wrong token: use one of [admin] tokens or [admin] viewer_tokens",
        )
        .into_response();
    };
    let (id, s) = app.board.sessions.create(role);
    tracing::info!(role = role.name(), "board sign-in");
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(&id, app.board.secure),
        )],
        Json(session_json(&app, &s)),
    )
        .into_response()
}

fn current(app: &AppState, headers: &HeaderMap) -> Option<session::Session> {
    let value = header(headers, header::COOKIE).and_then(session::cookie_id)?;
    app.board.sessions.get(value)
}

/// What the page needs of its session: its role, its CSRF token, and where commits link.
fn session_json(app: &AppState, s: &session::Session) -> serde_json::Value {
    json!({ "role": s.role.name(), "csrf": s.csrf, "github_web": app.board.github_web })
}

/// `GET /api/v1/session`: the role and CSRF token of the signed-in page (401 if none).
async fn whoami(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match current(&app, &headers) {
        Some(s) => Json(session_json(&app, &s)).into_response(),
        None => AppError::new(
            ErrorKind::Unauthorized,
            "not signed in: sign in with a token",
        )
        .into_response(),
    }
}

/// `DELETE /api/v1/session` (with the session's CSRF token): signs out.
async fn sign_out(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some(s) = current(&app, &headers) else {
        return AppError::new(ErrorKind::Unauthorized, "not signed in").into_response();
    };
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !orcastrate_broker::auth::secrets_equal(sent, &s.csrf) {
        return AppError::new(
            ErrorKind::Forbidden,
            "missing or wrong X-CSRF-Token: reload the board",
        )
        .into_response();
    }
    app.board.sessions.remove(&s);
    (
        StatusCode::OK,
        [(header::SET_COOKIE, session::clear_cookie(app.board.secure))],
        Json(json!({ "signed_out": true })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::listed;

    /// Issue 10, "admin token timing": a guess that differs from a token in its first byte
    /// takes as long to refuse as one that differs only in its last, so response times do
    /// not reveal how much of a guess is right. A byte-by-byte compare (`==`) stops at the
    /// first difference: with a 256 KiB token the two differ a hundredfold and more; the
    /// test allows tenfold.
    #[test]
    fn a_wrong_token_takes_as_long_to_refuse_wherever_it_differs() {
        let token = "t".repeat(256 * 1024);
        let tokens = [token.clone()];
        let differing_at = |at: usize| {
            let mut guess = token.clone().into_bytes();
            guess[at] = b'x';
            String::from_utf8(guess).unwrap()
        };
        let (first, last) = (differing_at(0), differing_at(token.len() - 1));
        // The fastest of several tries of each, interleaved: what the check costs, without
        // the noise of a busy machine.
        let (mut fastest_first, mut fastest_last) = (Duration::MAX, Duration::MAX);
        for _ in 0..15 {
            for (guess, fastest) in [(&first, &mut fastest_first), (&last, &mut fastest_last)] {
                let started = Instant::now();
                assert!(!listed(std::hint::black_box(guess), &tokens));
                *fastest = (*fastest).min(started.elapsed());
            }
        }
        assert!(listed(&token, &tokens));
        let (low, high) = if fastest_first < fastest_last {
            (fastest_first, fastest_last)
        } else {
            (fastest_last, fastest_first)
        };
        assert!(
            high < low * 10,
            "first byte wrong: {fastest_first:?}, last byte wrong: {fastest_last:?}"
        );
    }
}
