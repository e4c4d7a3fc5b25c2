//! Round trips through the binary for both formats, and path handling.

use crate::common::{assert_no_secret, encrypted_dotenv, encrypted_json, Dir, DOTENV, JSON};

#[test]
fn json_round_trip() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let encrypted = dir.read("config/encrypted_prod.json");
    assert_no_secret(&encrypted);
    assert!(encrypted.contains("\"password\": \"ENC["), "{encrypted}");
    assert!(encrypted.contains("\"_orcastrate\": {"), "{encrypted}");

    dir.run(["decrypt", "--env", "prod"]).key(&key).ok();
    let expected: serde_json::Value = serde_json::from_str(JSON).unwrap();
    let got: serde_json::Value =
        serde_json::from_str(&dir.read("config/decrypted_prod.json")).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn dotenv_round_trip_is_byte_identical() {
    let dir = Dir::new();
    let key = encrypted_dotenv(&dir);
    let encrypted = dir.read("config/encrypted_prod.env");
    assert_no_secret(&encrypted);
    assert!(
        encrypted.starts_with("# database\nexport DB_URL=ENC["),
        "{encrypted}"
    );
    assert!(
        encrypted.contains("\n\nCERT=ENC["),
        "comments and blank lines kept:\n{encrypted}"
    );

    dir.run(["decrypt", "--env", "prod"]).key(&key).ok();
    assert_eq!(dir.read("config/decrypted_prod.env"), DOTENV);
}

#[test]
fn in_and_out_pick_the_format_by_extension() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    dir.write("app/.env", "A=1\n");
    dir.run(["encrypt", "--in", "app/.env", "--out", "app/secrets.env"])
        .key(&key)
        .ok();
    assert!(dir.read("app/secrets.env").starts_with("A=ENC["));
    let out = dir
        .run(["decrypt", "--in", "app/secrets.env", "--out", "-"])
        .key(&key)
        .ok();
    assert_eq!(out.stdout, "A=1\n");

    let out = dir
        .run(["encrypt", "--in", "app/.env", "--out", "app/x.json"])
        .key(&key)
        .fails(2);
    assert!(out.stderr.contains("same extension"), "{}", out.stderr);
    assert!(!dir.exists("app/x.json"));
    dir.write("app/conf.yaml", "a: 1\n");
    let out = dir
        .run(["encrypt", "--in", "app/conf.yaml", "--out", "x.json"])
        .key(&key)
        .fails(2);
    assert!(out.stderr.contains(".json or .env"), "{}", out.stderr);
}

#[test]
fn in_with_a_default_name_derives_the_output() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    dir.write("other/decrypted_dev.json", "{\"a\": 1}");
    dir.run(["encrypt", "--in", "other/decrypted_dev.json"])
        .key(&key)
        .ok();
    assert!(dir.exists("other/encrypted_dev.json"));
}

#[test]
fn help_explains_format_selection_and_exit_codes() {
    let dir = Dir::new();
    let out = dir.run(["--help"]).ok();
    assert!(out.stdout.contains("FORMAT BY EXTENSION"), "{}", out.stdout);
    assert!(out
        .stdout
        .contains("decrypted_<env>.env  <-> encrypted_<env>.env"));
    assert!(out.stdout.contains("EXIT CODES"));
    assert!(out.stdout.contains("CONFIG_KEY"));
}

#[test]
fn help_never_prints_the_key_from_the_environment() {
    let dir = Dir::new();
    let out = dir
        .run(["decrypt", "--help"])
        .env("CONFIG_KEY", "AAAAsecretAAAA")
        .env("KEYS", "BBBBsecretBBBB")
        .ok();
    assert!(!out.stdout.contains("secret"), "{}", out.stdout);
}

#[test]
fn keygen_prints_a_key() {
    let dir = Dir::new();
    let out = dir.run(["keygen"]).ok();
    assert_eq!(out.stdout.trim().len(), 44, "{}", out.stdout);
    assert!(out.stderr.contains("new key id "), "{}", out.stderr);
}

#[test]
fn decrypt_to_stdout_through_a_closed_pipe_succeeds() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    let mut big = String::from("{");
    for i in 0..5000 {
        big.push_str(&format!("\"k{i}\": \"value {i}\","));
    }
    big.push_str("\"last\": 1}");
    dir.write("config/decrypted_prod.json", &big);
    dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["decrypt", "--env", "prod", "--out", "-"])
        .env("CONFIG_KEY", &key)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the output (larger than a pipe buffer) is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
