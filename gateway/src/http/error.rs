//! The error answer of every route: a kind that knows its HTTP status and its `webhook`
//! metric label, and a message saying what was wrong and what to do.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ADMIN_MAX_BODY;
use crate::sequencer::DeskError;

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is not what the API or GitHub sends.
    Malformed,
    /// A webhook signature or an admin token is missing or wrong.
    Unauthorized,
    /// A read-only sign-in attempted a write, or a session's CSRF token is missing or wrong.
    Forbidden,
    /// The repo/env is not one the gateway deploys.
    NotFound,
    /// The body arrived too slowly.
    TooSlow,
    /// The request cannot be done in the present state (no rollback target).
    Conflict,
    /// The body is over its limit.
    TooLarge,
    /// The webhook's content type is not one GitHub sends.
    BadContentType,
    /// The gateway failed (its ledger): not the sender's fault.
    Internal,
    /// The gateway is busy or shutting down: retry.
    Unavailable,
    /// Too many wrong tokens from this address: wait.
    Throttled,
}

impl ErrorKind {
    /// The HTTP status answered.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Throttled => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `outcome` label of `orcastrate_webhooks_total` for a webhook refused so.
    pub fn webhook_label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unauthorized => "bad_signature",
            Self::TooSlow => "too_slow",
            Self::TooLarge => "too_large",
            Self::BadContentType => "bad_content_type",
            Self::Unavailable | Self::Throttled => "busy",
            Self::Forbidden | Self::NotFound | Self::Conflict | Self::Internal => "error",
        }
    }
}

/// An error answer: its kind plus a message saying what was wrong and what to do.
#[derive(Debug)]
pub struct AppError {
    pub kind: ErrorKind,
    msg: String,
}

impl AppError {
    pub(crate) fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self {
            kind,
            msg: msg.into(),
        }
    }

    pub(super) fn bad_request(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Malformed, e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.kind.status(), Json(json!({ "error": self.msg }))).into_response()
    }
}

impl From<DeskError> for AppError {
    fn from(e: DeskError) -> Self {
        match e {
            DeskError::UnknownRepoEnv { .. } => Self::new(ErrorKind::NotFound, e.to_string()),
            DeskError::NoRollbackTarget { .. } | DeskError::NoRollout { .. } => {
                Self::new(ErrorKind::Conflict, e.to_string())
            }
            DeskError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(
                    ErrorKind::Internal,
                    "the gateway could not record this: see its log, then retry",
                )
            }
            DeskError::Stopped => Self::new(
                ErrorKind::Unavailable,
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
                    ErrorKind::TooLarge,
                    format!("the body is larger than {ADMIN_MAX_BODY} bytes: the API takes a few short fields"),
                ))
            }
            Err(rejection) => Err(AppError::new(
                ErrorKind::Malformed,
                format!(
                    "{}: send a JSON object as the API documents",
                    rejection.body_text()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_errors_are_500s_and_unknown_repo_envs_404s() {
        let internal = AppError::from(DeskError::Internal("disk I/O error".into()));
        assert_eq!(internal.kind.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !internal.msg.contains("disk"),
            "the detail goes to the log, not to the client: {}",
            internal.msg
        );
        let unknown = AppError::from(DeskError::UnknownRepoEnv {
            repo: "acme/web".into(),
            env: "prod".into(),
        });
        assert_eq!(unknown.kind.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn each_kind_keeps_the_status_and_label_it_had() {
        for (kind, status, label) in [
            (ErrorKind::Malformed, 400, "malformed"),
            (ErrorKind::Unauthorized, 401, "bad_signature"),
            (ErrorKind::NotFound, 404, "error"),
            (ErrorKind::TooSlow, 408, "too_slow"),
            (ErrorKind::Conflict, 409, "error"),
            (ErrorKind::TooLarge, 413, "too_large"),
            (ErrorKind::BadContentType, 415, "bad_content_type"),
            (ErrorKind::Internal, 500, "error"),
            (ErrorKind::Unavailable, 503, "busy"),
        ] {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.webhook_label(), label, "{kind:?}");
        }
    }
}
