//! GitHub webhooks: signature verification and what a payload asks for.
//!
//! The signature is checked over the raw body before anything is parsed. Only the few fields
//! a deploy needs are read, so GitHub adding fields never breaks us.

use hmac::{Hmac, Mac};
use orcastrate_broker::{names, OrderKind};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::Access;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`
/// (constant-time).
pub fn signature_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The `X-Hub-Signature-256` header GitHub would send for `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a verified webhook asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// GitHub checking the hook.
    Ping { repo: Option<String> },
    /// Deploy `sha` to `repo`/`env`.
    Deploy {
        repo: String,
        env: String,
        sha: String,
        git_ref: String,
        kind: OrderKind,
        issued_by: Option<String>,
    },
    /// Valid, but deploys nothing.
    Ignore {
        repo: Option<String>,
        env: Option<String>,
        reason: String,
    },
}

/// A payload that is not what its event promises.
#[derive(Debug, thiserror::Error)]
#[error("malformed {event} payload: {detail}")]
pub struct PayloadError {
    event: String,
    detail: String,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct Sender {
    login: String,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
    sender: Option<Sender>,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    pull_request: PullRequest,
    repository: Repository,
    sender: Option<Sender>,
}

#[derive(Deserialize)]
struct PullRequest {
    #[serde(default)]
    merged: bool,
    merge_commit_sha: Option<String>,
    base: Base,
}

#[derive(Deserialize)]
struct Base {
    #[serde(rename = "ref")]
    git_ref: String,
}

#[derive(Deserialize)]
struct Ping {
    repository: Option<Repository>,
}

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

fn ignore(repo: Option<&str>, env: Option<&str>, reason: impl Into<String>) -> Intent {
    Intent::Ignore {
        repo: repo.map(str::to_owned),
        env: env.map(str::to_owned),
        reason: reason.into(),
    }
}

fn issued_by(sender: Option<Sender>) -> Option<String> {
    sender
        .map(|s| format!("github:{}", s.login))
        .filter(|s| names::single_line("issued_by", s).is_ok())
}

/// Decides what a verified payload of `event` asks for, given the repo routes.
///
/// # Errors
///
/// When the payload is not valid JSON of the event's shape.
pub fn intent(event: &str, payload: &[u8], access: &Access) -> Result<Intent, PayloadError> {
    let malformed = |detail: String| PayloadError {
        event: event.to_owned(),
        detail,
    };
    match event {
        "ping" => {
            let ping: Ping =
                serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
            let repo = ping.repository.and_then(|r| names::repo(&r.full_name).ok());
            Ok(Intent::Ping { repo })
        }
        "push" => {
            let push: Push =
                serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
            let repo =
                names::repo(&push.repository.full_name).map_err(|e| malformed(e.to_string()))?;
            let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
                let what = if push.git_ref.starts_with("refs/tags/") {
                    "tag push"
                } else {
                    "push to a ref that is not a branch"
                };
                return Ok(ignore(
                    Some(&repo),
                    None,
                    format!("{what}: {}", push.git_ref),
                ));
            };
            if push.deleted || push.after == ZERO_SHA {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    format!("branch deleted: {branch}"),
                ));
            }
            let Some(route) = access.repo(&repo) else {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    "repository not configured in [[repos]]",
                ));
            };
            let Some(env) = route.branches.get(branch) else {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    format!("branch {branch} is not mapped to an env"),
                ));
            };
            let sha = names::sha(&push.after).map_err(|e| malformed(e.to_string()))?;
            names::single_line("ref", &push.git_ref).map_err(|e| malformed(e.to_string()))?;
            Ok(Intent::Deploy {
                repo: repo.clone(),
                env: env.clone(),
                sha: sha.to_owned(),
                git_ref: push.git_ref,
                kind: OrderKind::Push,
                issued_by: issued_by(push.sender),
            })
        }
        "pull_request" => {
            let pr: PullRequestEvent =
                serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
            let repo =
                names::repo(&pr.repository.full_name).map_err(|e| malformed(e.to_string()))?;
            if pr.action != "closed" {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    format!("pull request {}: only a merge deploys", pr.action),
                ));
            }
            if !pr.pull_request.merged {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    "pull request closed without merging",
                ));
            }
            let base = pr.pull_request.base.git_ref;
            let Some(route) = access.repo(&repo) else {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    "repository not configured in [[repos]]",
                ));
            };
            let Some(env) = route.branches.get(&base) else {
                return Ok(ignore(
                    Some(&repo),
                    None,
                    format!("branch {base} is not mapped to an env"),
                ));
            };
            let sha = pr
                .pull_request
                .merge_commit_sha
                .ok_or_else(|| malformed("merged pull request without merge_commit_sha".into()))?;
            let sha = names::sha(&sha).map_err(|e| malformed(e.to_string()))?;
            let git_ref = format!("refs/heads/{base}");
            names::single_line("ref", &git_ref).map_err(|e| malformed(e.to_string()))?;
            Ok(Intent::Deploy {
                repo: repo.clone(),
                env: env.clone(),
                sha: sha.to_owned(),
                git_ref,
                kind: OrderKind::Merge,
                issued_by: issued_by(pr.sender),
            })
        }
        other => {
            // Still a JSON object, or GitHub did not send it.
            let value: serde_json::Value =
                serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
            let repo = value
                .pointer("/repository/full_name")
                .and_then(|v| v.as_str())
                .and_then(|r| names::repo(r).ok());
            Ok(ignore(
                repo.as_deref(),
                None,
                format!("event {other} does not deploy"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_documented_test_vector() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            Some(header)
        ));
        assert_eq!(sign("It's a Secret to Everybody", b"Hello, World!"), header);
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World?",
            Some(header)
        ));
        assert!(!signature_valid("other", b"Hello, World!", Some(header)));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            None
        ));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59")
        ));
        assert!(!signature_valid("s", b"x", Some("sha256=zz")));
    }
}
