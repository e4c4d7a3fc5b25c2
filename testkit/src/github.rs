//! What GitHub sends: webhook signatures, and payloads made from GitHub's own examples
//! (`gateway/tests/fixtures/github`, from octokit/webhooks).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac as _};
use serde_json::Value;

/// `X-Hub-Signature-256` of `body` as GitHub computes it: `sha256=` and the hex HMAC-SHA256
/// keyed with the webhook secret. Made here, not by the gateway's code, so a test of the
/// gateway's check does not share its bugs.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The bytes of GitHub's example payload `name` (e.g. `push__with-new-branch.payload.json`).
///
/// # Panics
///
/// If there is no such fixture.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/fixtures/github")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GitHub's example payload `name`, parsed.
pub fn payload(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("the fixture is JSON")
}

/// A real push payload (`push__with-new-branch`) turned into a push of `sha` to `branch` of
/// its repository (`Codertocat/Hello-World`).
///
/// Each call makes a new body, as each of GitHub's pushes is (`repository.pushed_at`
/// differs): the gateway answers a body it has seen as a duplicate, whatever its delivery id.
pub fn push(sha: &str, branch: &str) -> Value {
    static PUSHED_AT: AtomicU64 = AtomicU64::new(0);
    let mut v = payload("push__with-new-branch.payload.json");
    v["after"] = sha.into();
    v["ref"] = format!("refs/heads/{branch}").into();
    v["repository"]["pushed_at"] =
        (1_700_000_000 + PUSHED_AT.fetch_add(1, Ordering::Relaxed)).into();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_example() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn pushes_differ() {
        assert_ne!(push("a", "main"), push("a", "main"));
        assert_eq!(push("a", "main")["ref"], "refs/heads/main");
    }
}
