//! `rekey`: one env, or several with ENVS/KEYS and NEW_KEYS.

use crate::common::{assert_decrypts_to_json, encrypted_json, Dir};

#[test]
fn rekey_one_env() {
    let dir = Dir::new();
    let old = encrypted_json(&dir);
    let new = dir.keygen("new.key");
    let out = dir
        .run(["rekey", "--env", "prod", "--new-key-file", "new.key"])
        .key(&old)
        .ok();
    assert!(out.stderr.contains("rekeyed from key id"), "{}", out.stderr);
    dir.run(["decrypt", "--env", "prod"]).key(&old).fails(3);
    assert_decrypts_to_json(&dir, &new);
}

#[test]
fn rekey_with_a_wrong_old_key_changes_nothing() {
    let dir = Dir::new();
    encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    let wrong = dir.keygen("wrong.key");
    dir.keygen("new.key");
    dir.run(["rekey", "--env", "prod", "--new-key-file", "new.key"])
        .key(&wrong)
        .fails(3);
    assert_eq!(dir.read("config/encrypted_prod.json"), before);
    dir.run(["rekey", "--env", "prod"]).key(&wrong).fails(2);
}

#[test]
fn rekey_several_envs_at_once() {
    let dir = Dir::new();
    let (k1, k2) = (dir.keygen("k1"), dir.keygen("k2"));
    let (n1, n2) = (dir.keygen("n1"), dir.keygen("n2"));
    dir.write("config/decrypted_prod.json", "{\"a\": 1}");
    dir.write("config/decrypted_staging.env", "B=2\n");
    let envs = "prod, staging";
    let keys = format!("{k1}, {k2}");
    dir.run(["encrypt"])
        .env("ENVS", envs)
        .env("KEYS", &keys)
        .ok();
    dir.run(["rekey"])
        .env("ENVS", envs)
        .env("KEYS", &keys)
        .env("NEW_KEYS", format!("{n1},{n2}"))
        .ok();
    dir.run(["decrypt", "--env", "prod", "--out", "-"])
        .key(&n1)
        .ok();
    let out = dir
        .run(["decrypt", "--env", "staging", "--out", "-"])
        .key(&n2)
        .ok();
    assert_eq!(out.stdout, "B=2\n");
    dir.run(["decrypt", "--env", "staging", "--out", "-"])
        .key(&k2)
        .fails(3);
}
