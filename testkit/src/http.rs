//! JSON over HTTP for tests (ureq): every status is an answer, never an error, so a test
//! asserts on it.

use std::time::Duration;

use serde_json::Value;

/// How long one request may take: far more than a loopback server needs.
const REQUEST_WITHIN: Duration = Duration::from_secs(20);

/// A client that returns 4xx/5xx answers instead of failing on them.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_WITHIN))
        .build()
        .into()
}

/// The status and JSON body of a response (`Null` if the body is not JSON).
///
/// # Panics
///
/// If the request could not be sent or answered at all.
#[track_caller]
pub fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = result.expect("request sent");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET url`: the status and the body as text.
///
/// # Panics
///
/// If the request could not be sent or answered at all.
#[track_caller]
pub fn get_text(url: &str) -> (u16, String) {
    let mut response = client().get(url).call().expect("request sent");
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), text)
}

/// `GET url` with `Authorization: Bearer token`.
pub fn get_bearer(url: &str, token: &str) -> (u16, Value) {
    answer(
        client()
            .get(url)
            .header("Authorization", format!("Bearer {token}"))
            .call(),
    )
}

/// `POST url` of `body` as JSON with `Authorization: Bearer token`.
pub fn post_bearer(url: &str, token: &str, body: &Value) -> (u16, Value) {
    answer(
        client()
            .post(url)
            .header("Authorization", format!("Bearer {token}"))
            .send_json(body),
    )
}

/// `POST url` of a webhook `body` as GitHub sends it: event, delivery id and the signature
/// made with `secret` (see [`crate::github::signature`]).
pub fn webhook(
    url: &str,
    secret: &str,
    event: &str,
    delivery: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    answer(
        client()
            .post(url)
            .header("Content-Type", content_type)
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header(
                "X-Hub-Signature-256",
                crate::github::signature(secret, body),
            )
            .send(body),
    )
}
