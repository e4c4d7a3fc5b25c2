//! Every failure: its exit code, a one-line message naming the file, no secret in it, and
//! no output file written or overwritten.

use crate::common::{assert_no_secret, encrypted_dotenv, encrypted_json, Dir};

const ENC: &str = "config/encrypted_prod.json";
const DEC: &str = "config/decrypted_prod.json";
/// Stands in for a decrypted file with local edits that a failed decrypt must not clobber.
const SENTINEL: &str = "{\"local\": \"edits\"}\n";

/// Replaces `from` with `to` in the encrypted file (which must contain it).
fn tamper(dir: &Dir, from: &str, to: &str) {
    let text = dir.read(ENC);
    assert!(text.contains(from), "{from} not in:\n{text}");
    dir.write(ENC, &text.replacen(from, to, 1));
}

/// The token of the line containing `"name": "ENC[…]"`.
fn token(dir: &Dir, name: &str) -> String {
    let text = dir.read(ENC);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("\"{name}\": \"ENC[")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    let start = line.find("ENC[").unwrap();
    line[start..line.rfind('"').unwrap()].to_owned()
}

/// Runs `decrypt`, expects `code`, a message containing `what` and naming the file, no
/// secret, and the sentinel decrypted file untouched.
#[track_caller]
fn decrypt_fails(dir: &Dir, key: &str, code: i32, what: &str) {
    dir.write(DEC, SENTINEL);
    let out = dir.run(["decrypt", "--env", "prod"]).key(key).fails(code);
    assert!(
        out.stderr.contains(what),
        "expected {what:?} in: {}",
        out.stderr
    );
    assert!(out.stderr.contains(ENC), "names the file: {}", out.stderr);
    assert_no_secret(&out.stderr);
    assert_eq!(dir.read(DEC), SENTINEL, "decrypted file overwritten");
    dir.remove(DEC);
    dir.run(["decrypt", "--env", "prod"]).key(key).fails(code);
    assert!(!dir.exists(DEC), "decrypted file written");
    assert_eq!(
        std::fs::read_dir(dir.join("config")).unwrap().count(),
        1,
        "stray files"
    );
}

#[test]
fn wrong_key_is_exit_3() {
    let dir = Dir::new();
    encrypted_json(&dir);
    let other = dir.keygen("other.key");
    decrypt_fails(
        &dir,
        &other,
        3,
        "wrong key: the file was encrypted with key id",
    );
}

#[test]
fn tampered_value_is_exit_4() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let t = token(&dir, "password");
    let mut bytes = t.into_bytes();
    bytes[6] = if bytes[6] == b'A' { b'B' } else { b'A' };
    tamper(
        &dir,
        &token(&dir, "password"),
        std::str::from_utf8(&bytes).unwrap(),
    );
    decrypt_fails(&dir, &key, 4, "value at db.password fails authentication");
}

#[test]
fn swapped_values_are_exit_4() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let (a, b) = (token(&dir, "password"), token(&dir, "api_token"));
    let text = dir
        .read(ENC)
        .replace(&a, "@A@")
        .replace(&b, &a)
        .replace("@A@", &b);
    dir.write(ENC, &text);
    decrypt_fails(&dir, &key, 4, "was encrypted for");
    let out = dir.run(["decrypt", "--env", "prod"]).key(&key).fails(4);
    assert!(out.stderr.contains("swapped"), "{}", out.stderr);
}

#[test]
fn dropped_key_is_exit_4() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let line = format!("    \"host\": \"{}\",\n", token(&dir, "host"));
    tamper(&dir, &line, "");
    decrypt_fails(&dir, &key, 4, "a key was dropped");
}

#[test]
fn added_key_is_exit_4() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    tamper(
        &dir,
        "\"empty\": {}",
        "\"empty\": {},\n  \"injected\": \"ENC[AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA]\"",
    );
    decrypt_fails(&dir, &key, 4, "value at injected fails authentication");
    // A copied token is recognised as moved; a plaintext one as not encrypted.
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let copied = token(&dir, "api_token");
    tamper(
        &dir,
        "\"empty\": {}",
        &format!("\"empty\": {{}},\n  \"copy\": \"{copied}\""),
    );
    decrypt_fails(&dir, &key, 4, "value at copy was encrypted for api_token");
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    tamper(&dir, "\"empty\": {}", "\"empty\": {},\n  \"debug\": true");
    decrypt_fails(&dir, &key, 4, "value at debug is not encrypted");
}

#[test]
fn renamed_key_is_exit_4() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    tamper(&dir, "\"api_token\":", "\"api_key\":");
    decrypt_fails(&dir, &key, 4, "value at api_key fails authentication");
}

#[test]
fn structure_and_metadata_edits_break_the_mac() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    tamper(&dir, "\"empty\": {}", "\"empty\": []");
    decrypt_fails(&dir, &key, 4, "mac mismatch");

    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let text = dir.read(ENC);
    let at = text.find("\"mac\": \"").unwrap() + 8;
    let mut broken = text.clone();
    broken.replace_range(
        at..at + 4,
        if &text[at..at + 4] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    dir.write(ENC, &broken);
    decrypt_fails(&dir, &key, 4, "mac mismatch");

    let dir = Dir::new();
    let key = encrypted_json(&dir);
    tamper(&dir, "\"entries\": 7", "\"entries\": 6");
    decrypt_fails(&dir, &key, 4, "7 found: a key was added");
}

#[test]
fn dotenv_tampering_is_detected() {
    let dir = Dir::new();
    let key = encrypted_dotenv(&dir);
    let text = dir.read("config/encrypted_prod.env");
    let dropped: String = text
        .lines()
        .filter(|l| !l.starts_with("EMPTY="))
        .map(|l| format!("{l}\n"))
        .collect();
    dir.write("config/encrypted_prod.env", &dropped);
    let out = dir.run(["decrypt", "--env", "prod"]).key(&key).fails(4);
    assert!(out.stderr.contains("dropped"), "{}", out.stderr);
    assert!(!dir.exists("config/decrypted_prod.env"));
    // Whether a line is exported is covered by the MAC.
    dir.write(
        "config/encrypted_prod.env",
        &text.replace("export DB_URL=", "DB_URL="),
    );
    let out = dir.run(["decrypt", "--env", "prod"]).key(&key).fails(4);
    assert!(out.stderr.contains("mac mismatch"), "{}", out.stderr);
    // Comments are not covered: editing one is harmless.
    dir.write(
        "config/encrypted_prod.env",
        &text.replace("# database", "# the database"),
    );
    dir.run(["decrypt", "--env", "prod"]).key(&key).ok();
}

#[test]
fn truncated_file_is_exit_5() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let text = dir.read(ENC);
    dir.write(ENC, &text[..text.len() / 2]);
    decrypt_fails(&dir, &key, 5, "truncated");

    let dir = Dir::new();
    let key = encrypted_dotenv(&dir);
    let text = dir.read("config/encrypted_prod.env");
    dir.write("config/encrypted_prod.env", &text[..text.len() / 2]);
    let out = dir.run(["decrypt", "--env", "prod"]).key(&key).fails(5);
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
}

#[test]
fn malformed_file_is_exit_5() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    dir.write(ENC, "not json at all");
    decrypt_fails(&dir, &key, 5, "line 1 column 1");
    dir.write(ENC, "{\"a\": 1}");
    decrypt_fails(&dir, &key, 5, "no _orcastrate metadata");
}

#[test]
fn unknown_version_is_exit_5() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    tamper(&dir, "\"version\": 1", "\"version\": 2");
    decrypt_fails(&dir, &key, 5, "unknown format version 2");
}

#[test]
fn missing_file_is_exit_6_and_bad_usage_is_exit_2() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    let out = dir.run(["decrypt", "--env", "prod"]).key(&key).fails(6);
    assert!(
        out.stderr.contains("config/encrypted_prod.{json,env}"),
        "{}",
        out.stderr
    );
    dir.run(["decrypt"]).key(&key).fails(2);
    dir.run(["decrypt", "--env", "Prod"]).key(&key).fails(2);
    dir.write("config/decrypted_prod.json", "{}");
    dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    let out = dir
        .run(["decrypt", "--env", "prod"])
        .key("c2hvcnQ=")
        .fails(2);
    assert!(
        out.stderr.contains("invalid key from CONFIG_KEY"),
        "{}",
        out.stderr
    );
    let out = dir.run(["decrypt", "--env", "prod"]).fails(2);
    assert!(out.stderr.contains("no key for env prod"), "{}", out.stderr);
    dir.run(["frobnicate"]).output();
    assert_eq!(dir.run(["frobnicate"]).output().code, 2);
}

#[test]
fn encrypt_refuses_to_replace_a_file_it_cannot_verify() {
    let dir = Dir::new();
    encrypted_json(&dir);
    let before = dir.read(ENC);
    let other = dir.keygen("other.key");
    dir.write(DEC, "{\"a\": \"pw-SECRET-1\"}");
    let out = dir.run(["encrypt", "--env", "prod"]).key(&other).fails(3);
    assert!(out.stderr.contains("rekey"), "{}", out.stderr);
    assert_no_secret(&out.stderr);
    assert_eq!(dir.read(ENC), before);
    // --fresh is the explicit way to start over.
    dir.run(["encrypt", "--env", "prod", "--fresh"])
        .key(&other)
        .ok();
    dir.run(["decrypt", "--env", "prod"]).key(&other).ok();
}

#[test]
fn malformed_plaintext_is_exit_5_without_its_content() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    dir.write(DEC, "{\"password\": \"pw-SECRET-1\" \"x\": 1}");
    let out = dir.run(["encrypt", "--env", "prod"]).key(&key).fails(5);
    assert!(
        out.stderr
            .contains("config/decrypted_prod.json: line 1 column"),
        "{}",
        out.stderr
    );
    assert_no_secret(&out.stderr);
    assert!(!dir.exists(ENC));
}
