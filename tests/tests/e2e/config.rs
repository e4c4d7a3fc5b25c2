//! The service's config, committed encrypted (orcastrate-crypt), decrypted on the host for
//! the app; a tampered file fails the deploy before the switch.

use std::os::unix::fs::PermissionsExt as _;

use orcastrate_crypt::{encrypt, Document, Format, Key};

use crate::harness::*;

const ENCRYPTED: &str = "config/encrypted_production.json";

/// `{"greeting": greeting}` encrypted with `key`, as `orcastrate-crypt encrypt` writes it.
fn encrypted(key: &Key, greeting: &str) -> String {
    let plain = Document::parse(
        &serde_json::json!({ "greeting": greeting }).to_string(),
        Format::Json,
        "config/decrypted_production.json",
    )
    .unwrap();
    encrypt(&plain, key, &[], ENCRYPTED).unwrap().to_text()
}

#[test]
fn the_encrypted_config_is_decrypted_for_the_app_and_a_tampered_one_fails_before_the_switch() {
    let key = Key::generate().unwrap();
    let mut w = World::new();
    w.config_key = Some((*key.to_base64()).clone());
    w.start_agent();

    let file = encrypted(&key, "hello from v1");
    assert!(!file.contains("hello from v1"));
    let sha1 = w.commit_with("v1", &[(ENCRYPTED, Some(&file))]);
    let seq1 = w.push(&sha1);
    w.wait_healthy(seq1, &sha1);
    let answer = eventually(WAIT, "the app v1", || {
        app_answer(w.app_port).filter(|v| v["version"] == "v1")
    });
    assert_eq!(answer["greeting"], "hello from v1", "{answer}");
    let decrypted = w.root.join("current/config/decrypted_production.json");
    let mode = std::fs::metadata(&decrypted).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Someone edits the committed file by hand: it no longer verifies.
    let tampered = encrypted(&key, "hello from v2").replace("\"greeting\"", "\"greetinG\"");
    let sha2 = w.commit_with("v2", &[(ENCRYPTED, Some(&tampered))]);
    let seq2 = w.push(&sha2);
    let status = w.gateway.wait_agent(&format!("done with seq {seq2}"), |s| {
        s["seq"] == seq2 && s["state"] != "deploying" && s["state"] != "idle"
    });
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["running_sha"], sha1.as_str(), "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains(ENCRYPTED), "{status}");
    // The old app never stopped, and the half-built release is gone.
    assert_eq!(app_answer(w.app_port).unwrap()["pid"], answer["pid"]);
    let releases: Vec<_> = std::fs::read_dir(w.root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(releases, [format!("{seq1}-{}", &sha1[..12])]);
}
