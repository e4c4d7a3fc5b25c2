//! The operator's view of rollouts through the binary (issue 13): `rollout status|promote|
//! abort`, `history` with each order's outcome, `deploy --now`, and sha prefixes as
//! `status`/`history` print them.

use serde_json::json;

use super::process::operator_cli;
use crate::common::*;

#[test]
fn rollout_commands_history_outcomes_and_sha_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let table = "[repos.rollout.production]\nwaves = [\"web-1\", \"100%\"]\nhold_s = 3600\n";
    let gw = TestGateway::start_with(dir.path(), table);
    let cli = |args: &[&str]| operator_cli(&gw, args);
    let repo_env = ["--repo", REPO, "--env", ENV];
    let (_, answer) = gw.webhook("push", "cli-1", &push_of(&sha(0xa1), "master"));
    let seq1 = answer["seq"].as_u64().expect("a first wave");

    let (code, out, err) = cli(&[&["rollout", "status"][..], &repo_env].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("ID") && out.contains("1/2") && out.contains("running"),
        "{out}"
    );
    let (code, out, _) = cli(&["history", "--repo", REPO]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("OUTCOME") && out.contains("rolling out: wave 1 of 2"),
        "{out}"
    );
    let (code, out, _) = cli(&["status", "--repo", REPO]);
    assert_eq!(code, Some(0));
    assert!(out.contains("wave 1/2, running"), "{out}");

    // Promote: the last wave (every agent) now, not in an hour.
    let (code, out, err) = cli(&[&["rollout", "promote"][..], &repo_env].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2/2"), "{out}");
    let (_, v) = gw.admin_get(&format!(
        "/api/v1/deployments?repo={REPO}&env={ENV}&limit=1"
    ));
    let last = &v["deployments"][0];
    assert!(last["seq"].as_u64() > Some(seq1), "{last}");
    assert_eq!(last["targets"], serde_json::Value::Null, "{last}");
    let (code, _, err) = cli(&[&["rollout", "promote"][..], &repo_env].concat());
    assert_eq!(code, Some(4));
    assert!(err.contains("last wave"), "{err}");

    // Abort with nothing healthy to go back to: halted, and it says why.
    let (code, out, err) = cli(&[&["rollout", "abort"][..], &repo_env].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("halted") && out.contains("nothing to revert to"),
        "{out}"
    );
    let (code, _, err) = cli(&[&["rollout", "abort"][..], &repo_env].concat());
    assert_eq!(code, Some(4));
    assert!(err.contains("no rollout is running"), "{err}");

    // A 12-character prefix as `history` prints it, and `--now`: every agent at once.
    let (_, answer) = gw.webhook("push", "cli-2", &push_of(&sha(0xb2), "master"));
    assert!(answer["seq"].is_u64(), "{answer}");
    let b2 = sha(0xb2);
    let (code, out, err) = cli(&[&["deploy", "--now", "--sha", &b2[..12]][..], &repo_env].concat());
    // Every sha here starts with twelve zeros: the prefix names more than one.
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("give more characters"), "{err}");
    let (code, out, err) = cli(&[&["deploy", "--now", "--sha", "b2"][..], &repo_env].concat());
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("no order or agent"), "{err}");
    let unique = &b2[..39];
    let (code, out, err) = cli(&[&["deploy", "--now", "--sha", unique][..], &repo_env].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&b2) && out.contains("manual"), "{out}");
    let (_, v) = gw.admin_get(&format!("/api/v1/rollouts?repo={REPO}&env={ENV}&limit=1"));
    assert_eq!(v["rollouts"][0]["state"], "superseded", "{v}");
    let (code, v) = gw.admin_post(
        "/api/v1/rollouts/promote",
        json!({ "repo": REPO, "env": ENV }),
    );
    assert_eq!(code, 409, "{v}");
}
