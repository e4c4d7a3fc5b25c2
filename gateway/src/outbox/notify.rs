//! `[[notify]]` messages: our JSON signed like GitHub's own webhooks, or Slack text.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::config::{NotifyFormat, NotifyTarget};
use super::deliver::{send, Outcome};
use super::facts::Fact;

/// The event a fact is, as `[[notify]] events` names it (`None`: none).
pub(super) fn event_of(fact: &Fact) -> Option<&'static str> {
    match fact {
        Fact::Order {
            kind, issued_by, ..
        } if kind == "rollback" => Some(if issued_by.as_deref() == Some("rollout") {
            "reverted"
        } else {
            "rolled_back"
        }),
        Fact::Order { .. } => None,
        Fact::State { state, .. } => match state.as_str() {
            "success" => Some("deployed"),
            "failure" => Some("failed"),
            _ => None,
        },
        Fact::Pause { paused: true, .. } => Some("paused"),
        Fact::Pause { .. } => Some("resumed"),
    }
}

/// The JSON body of a fact: the event, and the fact's own fields.
fn body(event: &str, id: i64, fact: &Fact) -> serde_json::Value {
    let mut v = serde_json::to_value(fact).expect("facts serialize");
    v["event"] = json!(event);
    v["delivery"] = json!(id.to_string());
    v
}

fn slack_text(event: &str, fact: &Fact, board: Option<&str>) -> String {
    let (repo, env, sha, who, why) = match fact {
        Fact::Order {
            repo,
            env,
            sha,
            issued_by,
            why,
            ..
        } => (repo, env, Some(sha), issued_by.clone(), why.clone()),
        Fact::State {
            repo,
            env,
            sha,
            issued_by,
            error,
            kind,
            ..
        } => {
            let why = error
                .clone()
                .unwrap_or_else(|| format!("{kind} deployed on every agent"));
            (repo, env, Some(sha), issued_by.clone(), why)
        }
        Fact::Pause { repo, env, .. } => (repo, env, None, None, format!("deploys {event}")),
    };
    let sha7: String = sha.map(|s| s.chars().take(7).collect()).unwrap_or_default();
    let mut text = format!(
        "*{event}* {repo} {env} {sha7} by {}: {why}",
        who.as_deref().unwrap_or("github")
    );
    if let Some(b) = board {
        text.push_str(&format!(" <{b}|board>"));
    }
    text
}

/// `sha256=` and the hex HMAC-SHA256 of `body` with `secret`.
pub(super) fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers one fact to a `[[notify]]` (facts it does not want are done at once).
pub(super) fn deliver(n: &NotifyTarget, id: i64, fact: &Fact) -> Outcome {
    let Some(event) = event_of(fact).filter(|e| n.events.iter().any(|w| w == e)) else {
        return Outcome::Done(None);
    };
    match n.format {
        NotifyFormat::Json => {
            let bytes = serde_json::to_vec(&body(event, id, fact)).expect("json");
            let sig = signature(n.secret.as_deref().unwrap_or_default(), &bytes);
            let headers = [
                ("Content-Type", "application/json".to_owned()),
                ("X-Orcastrate-Event", event.to_owned()),
                ("X-Orcastrate-Delivery", id.to_string()),
                ("X-Orcastrate-Signature-256", sig),
            ];
            send(&n.url, &headers, &bytes)
        }
        NotifyFormat::Slack => {
            let text = slack_text(event, fact, n.board_url.as_deref());
            let bytes = serde_json::to_vec(&json!({ "text": text })).expect("json");
            send(
                &n.url,
                &[("Content-Type", "application/json".to_owned())],
                &bytes,
            )
        }
    }
}
