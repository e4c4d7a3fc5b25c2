//! `edit` with scripted editors: what it writes, and that the temporary file always goes.

use std::path::PathBuf;

use crate::common::{encrypted_json, Dir};

/// Writes an executable editor script that records the file it got, that file's mode, and
/// then runs `body` with the file as `$1`.
fn editor(dir: &Dir, body: &str) -> PathBuf {
    let path = dir.join("editor.sh");
    let log = dir.join("editor.log");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$1\" > '{log}'\nstat -c %a \"$1\" >> '{log}'\nstat -c %a \"$(dirname \"$1\")\" >> '{log}'\n{body}\n",
            log = log.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

/// The temporary file the editor was given, after checking its and its directory's modes
/// and that it is gone.
#[track_caller]
fn check_temp_file(dir: &Dir) -> String {
    let log = dir.read("editor.log");
    let mut lines = log.lines();
    let file = lines.next().unwrap().to_owned();
    assert_eq!(lines.next(), Some("600"), "temp file mode");
    assert_eq!(lines.next(), Some("700"), "temp dir mode");
    assert!(file.ends_with("decrypted_prod.json"), "{file}");
    assert!(
        !std::path::Path::new(&file).exists(),
        "temp file left behind: {file}"
    );
    assert!(
        !std::path::Path::new(&file).parent().unwrap().exists(),
        "temp dir left behind"
    );
    file
}

#[test]
fn edit_changes_one_value_and_keeps_the_rest() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    let script = editor(&dir, "sed -i 's/db.internal/db2.internal/' \"$1\"");
    let out = dir
        .run(["edit", "--env", "prod"])
        .key(&key)
        .env("EDITOR", &script)
        .ok();
    assert!(
        out.stderr.contains("1 of 7 values changed (db.host)"),
        "{}",
        out.stderr
    );
    check_temp_file(&dir);
    let after = dir.read("config/encrypted_prod.json");
    let changed: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed[0].contains("\"host\": \"ENC["));
    let out = dir
        .run(["decrypt", "--env", "prod", "--out", "-"])
        .key(&key)
        .ok();
    assert!(out.stdout.contains("db2.internal"));
}

#[test]
fn visual_wins_over_editor_and_no_change_writes_nothing() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = std::fs::metadata(dir.join("config/encrypted_prod.json"))
        .unwrap()
        .modified()
        .unwrap();
    let noop = editor(&dir, "true");
    let out = dir
        .run(["edit", "--env", "prod"])
        .key(&key)
        .env("VISUAL", &noop)
        .env("EDITOR", "false")
        .ok();
    assert!(out.stderr.contains("no changes"), "{}", out.stderr);
    check_temp_file(&dir);
    let after = std::fs::metadata(dir.join("config/encrypted_prod.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn failing_editor_writes_nothing_and_cleans_up() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    let script = editor(&dir, "echo garbage > \"$1\"; exit 3");
    let out = dir
        .run(["edit", "--env", "prod"])
        .key(&key)
        .env("EDITOR", &script)
        .fails(1);
    assert!(out.stderr.contains("edit aborted"), "{}", out.stderr);
    check_temp_file(&dir);
    assert_eq!(dir.read("config/encrypted_prod.json"), before);
}

#[test]
fn invalid_edit_writes_nothing_and_cleans_up() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    let script = editor(&dir, "sed -i 's/\"port\": 5432/\"port\": 5432,,/' \"$1\"");
    let out = dir
        .run(["edit", "--env", "prod"])
        .key(&key)
        .env("EDITOR", &script)
        .fails(5);
    assert!(
        out.stderr
            .contains("config/encrypted_prod.json (edited): line"),
        "{}",
        out.stderr
    );
    check_temp_file(&dir);
    assert_eq!(dir.read("config/encrypted_prod.json"), before);
}

#[test]
fn edit_creates_a_new_dotenv_file() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    let script = editor(&dir, "printf 'A=1\\n# note\\nB=\"two\"\\n' > \"$1\"");
    dir.run(["edit", "--in", "config/encrypted_dev.env"])
        .key(&key)
        .env("EDITOR", &script)
        .ok();
    let out = dir
        .run(["decrypt", "--in", "config/encrypted_dev.env", "--out", "-"])
        .key(&key)
        .ok();
    assert_eq!(out.stdout, "A=1\n# note\nB=\"two\"\n");
}

#[test]
fn interrupt_during_edit_writes_nothing_and_cleans_up() {
    let dir = Dir::new();
    let key = encrypted_json(&dir);
    let before = dir.read("config/encrypted_prod.json");
    let ready = dir.join("ready");
    let script = editor(
        &dir,
        &format!(
            "sed -i 's/db.internal/changed/' \"$1\"; touch '{}'; sleep 1",
            ready.display()
        ),
    );
    let child = dir
        .run(["edit", "--env", "prod"])
        .key(&key)
        .env("EDITOR", &script)
        .spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the editor never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Only orcastrate-crypt gets the signal (as with `kill -INT`); it must outlive the
    // editor and clean up instead of dying on the spot.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    check_temp_file(&dir);
    assert_eq!(dir.read("config/encrypted_prod.json"), before);
}
