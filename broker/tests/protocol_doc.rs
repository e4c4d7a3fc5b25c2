//! The worked example in `docs/protocol.md` is true: its order verifies with its public key,
//! its status MAC matches its token, and both canonical strings are the ones we sign.

use orcastrate_broker::sign::{order_canonical, status_canonical, verify_status};
use orcastrate_broker::{AgentStatus, DeployOrder, OrderVerifier};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The fenced block that follows `<!-- example: {name} -->`.
#[track_caller]
fn example(name: &str) -> &'static str {
    let marker = format!("<!-- example: {name} -->");
    let after = DOC
        .split_once(marker.as_str())
        .unwrap_or_else(|| panic!("docs/protocol.md has no {marker}"))
        .1;
    let body = after.split_once("```").expect("a fenced block").1;
    let body = body.split_once('\n').expect("a fence line").1;
    body.split_once("```")
        .expect("a closing fence")
        .0
        .trim_end()
}

/// The canonical strings are shown with `printf` escapes.
fn unescape(shown: &str) -> String {
    shown.replace("\\n", "\n")
}

#[test]
fn order_example_verifies_with_its_public_key() {
    let order: DeployOrder = serde_json::from_str(example("order")).unwrap();
    let verifier = OrderVerifier::new(&[example("public-key")]).unwrap();
    assert_eq!(verifier.verify(&order), Ok(()));
    assert_eq!(
        order_canonical(&order),
        unescape(example("order-canonical"))
    );

    let mut altered = order.clone();
    altered.sha = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned();
    assert!(verifier.verify(&altered).is_err());
}

#[test]
fn status_example_mac_matches_its_token() {
    let status: AgentStatus = serde_json::from_str(example("status")).unwrap();
    assert!(verify_status("example-agent-token", &status));
    assert!(!verify_status("another-token", &status));
    assert_eq!(
        status_canonical(&status),
        unescape(example("status-canonical"))
    );
}
