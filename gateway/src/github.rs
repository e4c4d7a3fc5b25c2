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
    let decided = match event {
        "ping" => parse(payload).map(ping_intent),
        "push" => parse(payload).and_then(|push| push_intent(push, access)),
        "pull_request" => parse(payload).and_then(|pr| merge_intent(pr, access)),
        other => parse(payload).map(|value| other_intent(other, &value)),
    };
    decided.map_err(|detail| PayloadError {
        event: event.to_owned(),
        detail,
    })
}

/// The payload as `T`, or what is wrong with it.
fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

fn ping_intent(ping: Ping) -> Intent {
    let repo = ping.repository.and_then(|r| names::repo(&r.full_name).ok());
    Intent::Ping { repo }
}

/// A push deploys the env its branch is mapped to; tags, deletions and unmapped branches
/// are ignored.
fn push_intent(push: Push, access: &Access) -> Result<Intent, String> {
    let repo = names::repo(&push.repository.full_name).map_err(|e| e.to_string())?;
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
    let env = match mapped_env(access, &repo, branch) {
        Ok(env) => env,
        Err(ignored) => return Ok(ignored),
    };
    let sha = names::sha(&push.after).map_err(|e| e.to_string())?;
    names::single_line("ref", &push.git_ref).map_err(|e| e.to_string())?;
    Ok(Intent::Deploy {
        repo,
        env,
        sha: sha.to_owned(),
        git_ref: push.git_ref,
        kind: OrderKind::Push,
        issued_by: issued_by(push.sender),
    })
}

/// A merged pull request deploys its base branch's env at the merge commit; any other
/// pull request event is ignored.
fn merge_intent(pr: PullRequestEvent, access: &Access) -> Result<Intent, String> {
    let repo = names::repo(&pr.repository.full_name).map_err(|e| e.to_string())?;
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
    let env = match mapped_env(access, &repo, &base) {
        Ok(env) => env,
        Err(ignored) => return Ok(ignored),
    };
    let sha = pr
        .pull_request
        .merge_commit_sha
        .ok_or_else(|| "merged pull request without merge_commit_sha".to_owned())?;
    let sha = names::sha(&sha).map_err(|e| e.to_string())?;
    let git_ref = format!("refs/heads/{base}");
    names::single_line("ref", &git_ref).map_err(|e| e.to_string())?;
    Ok(Intent::Deploy {
        repo,
        env,
        sha: sha.to_owned(),
        git_ref,
        kind: OrderKind::Merge,
        issued_by: issued_by(pr.sender),
    })
}

/// The env `branch` of `repo` deploys to, or the [`Intent::Ignore`] saying why none.
fn mapped_env(access: &Access, repo: &str, branch: &str) -> Result<String, Intent> {
    let Some(route) = access.repo(repo) else {
        return Err(ignore(
            Some(repo),
            None,
            "repository not configured in [[repos]]",
        ));
    };
    route.branches.get(branch).cloned().ok_or_else(|| {
        ignore(
            Some(repo),
            None,
            format!("branch {branch} is not mapped to an env"),
        )
    })
}

/// Any other event (still a JSON object, or GitHub did not send it) does not deploy.
fn other_intent(event: &str, value: &serde_json::Value) -> Intent {
    let repo = value
        .pointer("/repository/full_name")
        .and_then(|v| v.as_str())
        .and_then(|r| names::repo(r).ok());
    ignore(
        repo.as_deref(),
        None,
        format!("event {event} does not deploy"),
    )
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

    mod fuzz {
        //! Property tests standing in for a fuzzer: whatever a signed sender puts in the
        //! body, the parser answers with an intent or an error, never a panic.
        use super::super::*;
        use crate::config::RepoRoute;
        use proptest::prelude::*;

        fn access() -> Access {
            Access {
                clients: Vec::new(),
                repos: vec![RepoRoute {
                    name: "codertocat/hello-world".into(),
                    branches: [("master".to_owned(), "production".to_owned())].into(),
                    rollout: Default::default(),
                }],
            }
        }

        /// JSON values shaped like webhooks: the fields we read, with arbitrary contents.
        fn payload() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                ".{0,50}".prop_map(serde_json::Value::from),
                "[0-9a-f]{40}".prop_map(serde_json::Value::from),
                "refs/(heads|tags)/[a-z/]{0,12}".prop_map(serde_json::Value::from),
                "[A-Za-z0-9._/-]{0,30}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop::collection::btree_map(
                    prop_oneof![
                        Just("ref".to_owned()),
                        Just("after".to_owned()),
                        Just("deleted".to_owned()),
                        Just("repository".to_owned()),
                        Just("full_name".to_owned()),
                        Just("sender".to_owned()),
                        Just("login".to_owned()),
                        Just("action".to_owned()),
                        Just("pull_request".to_owned()),
                        Just("merged".to_owned()),
                        Just("merge_commit_sha".to_owned()),
                        Just("base".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_never_panic(event in "(push|pull_request|ping|issues|[a-z_]{1,10})", body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = intent(&event, &body, &access());
            }

            #[test]
            fn webhook_shaped_json_never_panics_and_deploys_only_valid_shas(event in "(push|pull_request|ping)", value in payload()) {
                let body = serde_json::to_vec(&value).unwrap();
                if let Ok(Intent::Deploy { sha, repo, env, .. }) = intent(&event, &body, &access()) {
                    prop_assert!(names::sha(&sha).is_ok());
                    prop_assert_eq!(repo, "codertocat/hello-world");
                    prop_assert_eq!(env, "production");
                }
            }

            #[test]
            fn signature_header_never_panics(header in ".{0,80}", body in prop::collection::vec(any::<u8>(), 0..64)) {
                prop_assert!(!signature_valid("secret", &body, Some(&header)) || header.trim() == sign("secret", &body));
            }

            #[test]
            fn a_signature_covers_every_byte_of_the_body(
                body in prop::collection::vec(any::<u8>(), 1..256),
                at in any::<prop::sample::Index>(),
                flip in 1u8..,
            ) {
                let header = sign("secret", &body);
                prop_assert!(signature_valid("secret", &body, Some(&header)));
                // Hex in either case, spaces around: as the header may come.
                let upper = format!(" sha256={} ", header["sha256=".len()..].to_ascii_uppercase());
                prop_assert!(signature_valid("secret", &body, Some(&upper)));
                let mut changed = body.clone();
                changed[at.index(body.len())] ^= flip;
                prop_assert!(!signature_valid("secret", &changed, Some(&header)));
                prop_assert!(!signature_valid("other", &body, Some(&header)));
            }

            /// GitHub's real push payload with the fields we read replaced by anything: a
            /// deploy only ever names the mapped repo/env, a valid sha and one-line fields.
            #[test]
            fn a_real_push_with_hostile_fields_deploys_only_what_is_valid(
                git_ref in prop_oneof![".{0,40}", "refs/heads/(master|develop)[\n\r;. ]{0,2}"],
                after in prop_oneof![".{0,44}", "[0-9a-fA-F]{39,41}", "[0-9a-f]{40}"],
                full_name in prop_oneof![".{0,30}", "(C|c)odertocat/(H|h)ello-(W|w)orld[./+#]{0,2}"],
                login in ".{0,20}",
                deleted in any::<bool>(),
            ) {
                let mut v: serde_json::Value = serde_json::from_str(include_str!(
                    "../tests/fixtures/github/push__with-new-branch.payload.json"
                ))
                .unwrap();
                v["ref"] = git_ref.into();
                v["after"] = after.into();
                v["repository"]["full_name"] = full_name.into();
                v["sender"]["login"] = login.into();
                v["deleted"] = deleted.into();
                let body = serde_json::to_vec(&v).unwrap();
                if let Ok(Intent::Deploy { repo, env, sha, git_ref, issued_by, kind }) = intent("push", &body, &access()) {
                    prop_assert_eq!(repo, "codertocat/hello-world");
                    prop_assert_eq!(env, "production");
                    prop_assert!(names::sha(&sha).is_ok());
                    prop_assert_eq!(git_ref, "refs/heads/master");
                    prop_assert!(issued_by.is_none_or(|i| !i.contains(['\n', '\r'])));
                    prop_assert_eq!(kind, OrderKind::Push);
                    prop_assert!(!deleted);
                }
            }
        }
    }
}
