//! ENVS/KEYS: several envs at once, all checked before any is written.

use crate::common::Dir;

#[test]
fn encrypt_and_decrypt_every_listed_env() {
    let dir = Dir::new();
    let (k1, k2) = (dir.keygen("k1"), dir.keygen("k2"));
    dir.write("config/decrypted_prod.json", "{\"a\": \"prod\"}");
    dir.write("config/decrypted_staging.env", "A=staging\n");
    let keys = format!("{k1}, {k2}");
    let out = dir
        .run(["encrypt"])
        .env("ENVS", "prod, staging")
        .env("KEYS", &keys)
        .ok();
    assert!(
        out.stderr.contains("config/encrypted_prod.json"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("config/encrypted_staging.env"),
        "{}",
        out.stderr
    );
    dir.remove("config/decrypted_prod.json");
    dir.remove("config/decrypted_staging.env");
    // A CONFIG_KEY in the environment does not override the per-env keys of a batch.
    dir.run(["decrypt"])
        .env("ENVS", "prod,staging")
        .env("KEYS", &keys)
        .key(&k1)
        .ok();
    assert_eq!(dir.read("config/decrypted_staging.env"), "A=staging\n");
    assert!(dir.read("config/decrypted_prod.json").contains("\"prod\""));
    // With --env, the env's own pair is used when no other key is given.
    dir.run(["decrypt", "--env", "staging", "--out", "-"])
        .env("ENVS", "prod,staging")
        .env("KEYS", &keys)
        .ok();
}

#[test]
fn one_bad_env_means_nothing_is_written() {
    let dir = Dir::new();
    let (k1, k2) = (dir.keygen("k1"), dir.keygen("k2"));
    dir.write("config/decrypted_prod.json", "{\"a\": 1}");
    dir.write("config/decrypted_staging.json", "{\"a\": 2}");
    let keys = format!("{k1},{k2}");
    dir.run(["encrypt"])
        .env("ENVS", "prod,staging")
        .env("KEYS", &keys)
        .ok();
    dir.remove("config/decrypted_prod.json");
    dir.remove("config/decrypted_staging.json");
    dir.write("config/encrypted_staging.json", "{\"truncated\": ");
    dir.run(["decrypt"])
        .env("ENVS", "prod,staging")
        .env("KEYS", &keys)
        .fails(5);
    assert!(
        !dir.exists("config/decrypted_prod.json"),
        "prod written despite the error"
    );
}

#[test]
fn mismatched_lists_are_usage_errors() {
    let dir = Dir::new();
    let k1 = dir.keygen("k1");
    let out = dir
        .run(["decrypt"])
        .env("ENVS", "prod,staging")
        .env("KEYS", &k1)
        .fails(2);
    assert!(out.stderr.contains("paired by position"), "{}", out.stderr);
    assert!(!out.stderr.contains(&k1), "{}", out.stderr);
    dir.run(["decrypt"]).env("ENVS", "prod").fails(2);
}
