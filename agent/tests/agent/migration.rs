//! Issue 14, coming from the Node tool: the agent configured by the original tool's
//! variables alone deploys a service whose config is the old extension-less encrypted file,
//! says which name it logs in with and where that name came from, and reports every missing
//! setting in one run.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i14_node_tool_variables_and_an_extension_less_encrypted_config_deploy() {
    let mut w = World::new().await;
    // The Node tool's file: `config/encrypted_production`, JSON without an extension.
    let key = orcastrate_crypt::Key::generate().unwrap();
    let enc_text = w.encrypted(
        &key,
        "json",
        r#"{"database": {"url": "postgres://db/web"}, "apiKey": "s3cret"}"#,
    );
    assert!(!enc_text.contains("s3cret"));
    let n = w
        .node_tool_deploys_v1(&key, &[("config/encrypted_production", Some(&enc_text))])
        .await;
    let log = w.agent_log(n);
    assert!(
        log.contains("name_from=environment variable ORCASTRATE_NAME"),
        "{log}"
    );

    // Decrypted where the old app reads it, as JSON, private.
    let decrypted = w.root.join("current/config/decrypted_production");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&decrypted).unwrap()).unwrap();
    assert_eq!(json["apiKey"], "s3cret");
    assert_eq!(json["database"]["url"], "postgres://db/web");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&decrypted).unwrap().permissions().mode() & 0o777,
        0o600
    );
    w.terminate(n);

    // Without a name, the host name is used, and the log says so; the gateway does not know
    // that name, and the refused login says which name to fix and how.
    let n = w.spawn_agent(
        &["--once", "--connect-timeout-s", "2"],
        &[
            ("ORCASTRATE_SERVER", &w.bus.url()),
            ("CONNECT_TOKEN", TOKEN),
            ("REPO_NAME", REPO),
            ("ENVIRONMENT", ENV),
            ("ORCASTRATE_GATEWAY_KEYS", &w.bus.signer.public_key_base64()),
            ("ORCASTRATE_ROOT", &w.root.display().to_string()),
        ],
    );
    assert_eq!(w.wait_exit(n), Some(3), "{}", w.agent_log(n));
    let log = w.agent_log(n);
    assert!(log.contains("name_from=the host name"), "{log}");
    assert!(
        log.contains("login refused") && log.contains("TRUSTED_NAMES"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i14_every_missing_setting_is_reported_in_one_run() {
    let mut w = World::new().await;
    let n = w.spawn_agent(&[], &[("ENVIRONMENT", "Bad.Env")]);
    assert_eq!(w.wait_exit(n), Some(2));
    let log = w.agent_log(n);
    for what in [
        "ORCASTRATE_SERVER",
        "CONNECT_TOKEN",
        "REPO_NAME",
        "environment variable ENVIRONMENT: env:",
        "ORCASTRATE_GATEWAY_KEYS",
    ] {
        assert!(log.contains(what), "{what} is not reported:\n{log}");
    }
}
