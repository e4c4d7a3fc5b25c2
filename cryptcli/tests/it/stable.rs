//! Stable ciphertext for unchanged values, and key order that does not matter.

use crate::common::{assert_decrypts_to_json, encrypted_dotenv, encrypted_json, Dir, JSON};

/// Lines of `a` that are not in `b`.
fn lines_only_in<'a>(a: &'a str, b: &str) -> Vec<&'a str> {
    let b: Vec<&str> = b.lines().collect();
    a.lines().filter(|l| !b.contains(l)).collect()
}

#[test]
fn unchanged_values_keep_their_ciphertext() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    dir.write(
        "config/decrypted_prod.json",
        &JSON.replace("pw-SECRET-1", "pw-SECRET-1-new"),
    );
    let out = dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    assert!(
        out.stderr.contains("1 of 7 values changed (db.password)"),
        "{}",
        out.stderr
    );
    let after = dir.read("config/encrypted_prod.json");
    let changed = lines_only_in(&after, &before);
    assert_eq!(changed.len(), 2, "the value and the mac:\n{changed:?}");
    assert!(changed[0].trim_start().starts_with("\"password\": \"ENC["));
    assert!(changed[1].trim_start().starts_with("\"mac\": "));
}

#[test]
fn reformatted_plaintext_changes_nothing() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    // Same data, compact, keys in another order, an escape spelled differently.
    dir.write(
        "config/decrypted_prod.json",
        r#"{"empty":{},"features":[true,null,"\u0078"],"api_token":"tok-SECRET-2","db":{"port":5432,"password":"pw-SECRET-1","host":"db.internal"}}"#,
    );
    let out = dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    assert!(
        out.stderr.contains("0 of 7 values changed") || out.stderr.contains("up to date"),
        "{}",
        out.stderr
    );
    let after = dir.read("config/encrypted_prod.json");
    // Order follows the plaintext, but every token is the same.
    let tokens = |s: &str| {
        let mut t: Vec<String> = s
            .split("ENC[")
            .skip(1)
            .map(|x| x[..x.find(']').unwrap()].to_owned())
            .collect();
        t.sort();
        t
    };
    assert_eq!(tokens(&before), tokens(&after));
}

#[test]
fn unchanged_dotenv_is_not_rewritten() {
    let dir = Dir::new();
    let key = encrypted_dotenv(&dir);
    let before = dir.read("config/encrypted_prod.env");
    dir.run(["decrypt", "--env", "prod"]).key(&key).ok();
    let out = dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    assert!(out.stderr.contains("up to date"), "{}", out.stderr);
    assert_eq!(dir.read("config/encrypted_prod.env"), before);
}

#[test]
fn keys_reordered_by_a_formatter_still_verify() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    // serde_json without preserve_order writes object keys sorted: a reordering formatter.
    let value: serde_json::Value =
        serde_json::from_str(&dir.read("config/encrypted_prod.json")).unwrap();
    let sorted = serde_json::to_string_pretty(&value).unwrap();
    assert_ne!(sorted, dir.read("config/encrypted_prod.json"));
    dir.write("config/encrypted_prod.json", &sorted);
    assert_decrypts_to_json(&dir, &key);
}

#[test]
fn dotenv_lines_reordered_still_verify() {
    let dir = Dir::new();
    let key = encrypted_dotenv(&dir);
    let text = dir.read("config/encrypted_prod.env");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    dir.write("config/encrypted_prod.env", &(lines.join("\n") + "\n"));
    dir.run(["decrypt", "--env", "prod"]).key(&key).ok();
    assert!(dir
        .read("config/decrypted_prod.env")
        .contains("SINGLE='a b'"));
}
