//! `exec`: the program sees the values, not the key; its exit status is passed through.

use crate::common::{encrypted_dotenv, encrypted_json, Dir, Run};

/// `exec --env prod -- sh -c {script}` in `dir`.
fn sh(dir: &Dir, script: &str) -> Run {
    dir.run(["exec", "--env", "prod", "--", "sh", "-c", script])
}

#[test]
fn exec_passes_flattened_json_values() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let out = sh(&dir, "printf '%s|%s|%s|%s|%s|%s' \"$db__password\" \"$db__port\" \"$api_token\" \"$features__0\" \"${features__1-unset}\" \"${CONFIG_KEY-nokey}\"")
        .key(&key)
        .ok();
    assert_eq!(out.stdout, "pw-SECRET-1|5432|tok-SECRET-2|true||nokey");
    assert_eq!(
        std::fs::read_dir(dir.join("config")).unwrap().count(),
        1,
        "nothing on disk"
    );
}

#[test]
fn exec_reads_dotenv_values_like_node() {
    let dir = Dir::new();
    let key = encrypted_dotenv(&dir);
    let out = sh(
        &dir,
        "printf '%s|%s|%s' \"$API_TOKEN\" \"$SINGLE\" \"$CERT\"",
    )
    .key(&key)
    .ok();
    assert_eq!(
        out.stdout,
        "tok-SECRET-2|a b|-----BEGIN-----\nline two\n-----END-----"
    );
}

#[test]
fn exec_passes_the_exit_status_and_fails_cleanly() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let out = sh(&dir, "exit 7").key(&key).output();
    assert_eq!(out.code, 7);
    dir.run(["exec", "--env", "prod", "--", "/nonexistent/program"])
        .key(&key)
        .fails(6);
    let other = dir.keygen("other");
    dir.run(["exec", "--env", "prod", "--", "true"])
        .key(&other)
        .fails(3);
}
