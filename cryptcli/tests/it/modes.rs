//! File modes: decrypted files and key files are 0600 whatever the umask or the old mode.

use std::os::unix::fs::PermissionsExt as _;

use crate::common::{encrypted_json, Dir};

#[test]
fn decrypted_files_and_keys_are_private() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    assert_eq!(dir.mode("prod.key"), 0o600);
    assert_eq!(dir.mode("config/encrypted_prod.json"), 0o644);
    // An old decrypted file with loose permissions is replaced by a private one.
    dir.write("config/decrypted_prod.json", "{}");
    std::fs::set_permissions(
        dir.join("config/decrypted_prod.json"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && '{}' decrypt --env prod",
            crate::common::BIN
        ))
        .env("CONFIG_KEY", &key)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dir.mode("config/decrypted_prod.json"), 0o600);
}

#[test]
fn keygen_refuses_to_overwrite_a_key() {
    let dir = Dir::new();
    let first = dir.keygen("k");
    dir.run(["keygen", "--out", "k"]).fails(2);
    assert_eq!(dir.read("k").trim(), first);
    dir.run(["keygen", "--out", "k", "--force"]).ok();
    assert_ne!(dir.read("k").trim(), first);
    assert_eq!(dir.mode("k"), 0o600);
}

#[test]
fn encrypted_file_keeps_its_mode() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    std::fs::set_permissions(
        dir.join("config/encrypted_prod.json"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    dir.write("config/decrypted_prod.json", "{\"changed\": 1}");
    dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    assert_eq!(dir.mode("config/encrypted_prod.json"), 0o640);
}
