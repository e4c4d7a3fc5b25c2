//! Git integration on real repositories: textconv in `git diff`, and the merge driver in
//! clean and conflicting merges and a rebase.

use std::process::Command;

use crate::common::{assert_no_secret, Dir, BIN, JSON};

/// A git repository set up as the README says, with `config/encrypted_prod.json`
/// committed on `main`.
struct Repo {
    dir: Dir,
    key: String,
}

impl Repo {
    fn new() -> Repo {
        let dir = Dir::new();
        let key = dir.keygen("prod.key");
        let repo = Repo { dir, key };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.dir.write(
            ".gitattributes",
            "config/encrypted_*.json diff=orcastrate merge=orcastrate\nconfig/encrypted_*.env diff=orcastrate merge=orcastrate\n",
        );
        repo.dir.write(".gitignore", "config/decrypted_*\n*.key\n");
        repo.git(&[
            "config",
            "diff.orcastrate.textconv",
            &format!("'{BIN}' textconv"),
        ]);
        repo.git(&[
            "config",
            "merge.orcastrate.name",
            "orcastrate-crypt merge driver",
        ]);
        repo.git(&[
            "config",
            "merge.orcastrate.driver",
            &format!("'{BIN}' merge-driver %O %A %B %P"),
        ]);
        repo.set(JSON);
        repo.git(&["add", "."]);
        repo.git(&["commit", "-q", "-m", "config"]);
        repo
    }

    /// Runs git with an isolated configuration and the key in CONFIG_KEY, as a developer
    /// with the key exported would.
    fn git_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("git")
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_EDITOR", "true")
            .env("CONFIG_KEY", &self.key)
            .env_remove("ENVS")
            .env_remove("KEYS")
            .output()
            .unwrap()
    }

    #[track_caller]
    fn git(&self, args: &[&str]) -> String {
        let out = self.git_output(args);
        assert!(
            out.status.success(),
            "git {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a plaintext and encrypts it over the tracked file.
    fn set(&self, plaintext: &str) {
        self.dir.write("config/decrypted_prod.json", plaintext);
        self.dir
            .run(["encrypt", "--env", "prod", "-q"])
            .key(&self.key)
            .ok();
    }

    fn commit_change(&self, from: &str, to: &str, message: &str) {
        let current = self
            .dir
            .run(["decrypt", "--env", "prod", "--out", "-"])
            .key(&self.key)
            .ok()
            .stdout;
        assert!(current.contains(from), "{from} not in {current}");
        self.set(&current.replace(from, to));
        self.git(&["commit", "-q", "-am", message]);
    }

    fn plaintext(&self) -> String {
        self.dir
            .run(["decrypt", "--env", "prod", "--out", "-"])
            .key(&self.key)
            .ok()
            .stdout
    }
}

#[test]
fn git_diff_shows_decrypted_changes() {
    let repo = Repo::new();
    repo.set(&JSON.replace("db.internal", "db2.internal"));
    let diff = repo.git(&["diff"]);
    assert!(diff.contains("-    \"host\": \"db.internal\","), "{diff}");
    assert!(diff.contains("+    \"host\": \"db2.internal\","), "{diff}");
    assert!(!diff.contains("ENC["), "{diff}");
    // Exactly one line changed in the committed file as well: the value (and the mac).
    let raw = repo.git(&["diff", "--no-textconv", "--numstat"]);
    assert!(raw.starts_with("2\t2\t"), "{raw}");
}

#[test]
fn textconv_without_the_key_shows_the_ciphertext() {
    let repo = Repo::new();
    let out = repo
        .dir
        .run(["textconv", "config/encrypted_prod.json"])
        .ok();
    assert!(out.stdout.contains("ENC["), "{}", out.stdout);
    assert!(out.stderr.contains("no key with id"), "{}", out.stderr);
    // Found among ENVS/KEYS by key id, whatever the env is called there.
    let other = repo.dir.keygen("other.key");
    let out = repo
        .dir
        .run(["textconv", "config/encrypted_prod.json"])
        .env("ENVS", "staging, production")
        .env("KEYS", format!("{other}, {}", repo.key))
        .ok();
    assert!(out.stdout.contains("pw-SECRET-1"), "{}", out.stdout);
}

#[test]
fn merge_driver_merges_different_keys() {
    let repo = Repo::new();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.commit_change("db.internal", "db2.internal", "host");
    repo.git(&["checkout", "-q", "main"]);
    repo.commit_change("tok-SECRET-2", "tok-SECRET-2-rotated", "token");
    repo.git(&["merge", "-q", "--no-edit", "feature"]);
    let merged = repo.plaintext();
    assert!(merged.contains("db2.internal"), "{merged}");
    assert!(merged.contains("tok-SECRET-2-rotated"), "{merged}");
    assert!(repo.git(&["status", "--porcelain"]).is_empty());
}

#[test]
fn merge_driver_reports_a_conflict_and_leaves_the_file() {
    let repo = Repo::new();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.commit_change("pw-SECRET-1", "pw-SECRET-1-theirs", "theirs");
    repo.git(&["checkout", "-q", "main"]);
    repo.commit_change("pw-SECRET-1", "pw-SECRET-1-ours", "ours");
    let ours = repo.dir.read("config/encrypted_prod.json");
    let out = repo.git_output(&["merge", "--no-edit", "feature"]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("merge conflict: both sides changed db.password differently"),
        "{text}"
    );
    assert_no_secret(&text);
    assert_eq!(
        repo.dir.read("config/encrypted_prod.json"),
        ours,
        "file left as ours"
    );
    assert!(repo.plaintext().contains("pw-SECRET-1-ours"));
}

#[test]
fn merge_driver_works_in_a_rebase() {
    let repo = Repo::new();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.commit_change("\"port\": 5432", "\"port\": 6432", "port");
    repo.git(&["checkout", "-q", "main"]);
    repo.commit_change("db.internal", "db3.internal", "host");
    repo.git(&["checkout", "-q", "feature"]);
    repo.git(&["rebase", "-q", "main"]);
    let rebased = repo.plaintext();
    assert!(
        rebased.contains("6432") && rebased.contains("db3.internal"),
        "{rebased}"
    );
}
