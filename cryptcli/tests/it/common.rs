//! Helpers: a temporary project directory and a builder for runs of the binary.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_orcastrate-crypt");

/// Variables that must not leak from the developer's shell into a test.
const SCRUBBED: [&str; 8] = [
    "CONFIG_KEY",
    "ENVS",
    "KEYS",
    "NEW_KEYS",
    "NEW_CONFIG_KEY",
    "VISUAL",
    "EDITOR",
    "GIT_DIR",
];

/// A temporary project directory with a `config/` folder.
pub(crate) struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub(crate) fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("config")).unwrap();
        Dir { tmp }
    }

    pub(crate) fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub(crate) fn join(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub(crate) fn write(&self, rel: &str, contents: &str) {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, contents).unwrap();
    }

    #[track_caller]
    pub(crate) fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        self.join(rel).exists()
    }

    pub(crate) fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.join(rel)).unwrap().permissions().mode() & 0o777
    }

    pub(crate) fn remove(&self, rel: &str) {
        fs::remove_file(self.join(rel)).unwrap();
    }

    /// A new key, written to `rel` (mode 0600) by `keygen --out`, returned as base64.
    pub(crate) fn keygen(&self, rel: &str) -> String {
        self.run(["keygen", "--out", rel]).ok();
        self.read(rel).trim().to_owned()
    }

    /// A run of the binary in this directory.
    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.path()).args(args);
        for name in SCRUBBED {
            cmd.env_remove(name);
        }
        Run { cmd }
    }
}

/// A pending run of the binary.
#[must_use]
pub(crate) struct Run {
    cmd: Command,
}

/// What a run produced.
pub(crate) struct Output {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Run {
        self.cmd.env(name, value);
        self
    }

    pub(crate) fn key(self, key: &str) -> Run {
        self.env("CONFIG_KEY", key)
    }

    /// Starts the run without waiting, stdout and stderr piped.
    pub(crate) fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start orcastrate-crypt")
    }

    pub(crate) fn output(mut self) -> Output {
        let out = self.cmd.output().expect("run orcastrate-crypt");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub(crate) fn ok(self) -> Output {
        let out = self.output();
        assert_eq!(
            out.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        out
    }

    /// Runs, expects exit `code` and a one-line error on stderr, and returns the output.
    #[track_caller]
    pub(crate) fn fails(self, code: i32) -> Output {
        let out = self.output();
        assert_eq!(
            out.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "one line:\n{}",
            out.stderr
        );
        out
    }
}

/// A plaintext JSON config with recognisable secrets.
pub(crate) const JSON: &str = r#"{
  "db": {
    "host": "db.internal",
    "password": "pw-SECRET-1",
    "port": 5432
  },
  "api_token": "tok-SECRET-2",
  "features": [true, null, "x"],
  "empty": {}
}
"#;

/// A plaintext dotenv config with comments, quoting and a multi-line value.
pub(crate) const DOTENV: &str = "# database\nexport DB_URL=postgres://u:pw-SECRET-1@db/app\nAPI_TOKEN=\"tok-SECRET-2\" # rotated monthly\n\nCERT=\"-----BEGIN-----\nline two\n-----END-----\"\nEMPTY=\nSINGLE='a b'\n";

/// Secrets that must never show up in ciphertext files or messages.
pub(crate) const SECRETS: [&str; 2] = ["SECRET-1", "SECRET-2"];

#[track_caller]
pub(crate) fn assert_no_secret(text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} leaked:\n{text}");
    }
}

/// A project with `config/encrypted_prod.json` made from [`JSON`]; returns the key.
pub(crate) fn encrypted_json(dir: &Dir) -> String {
    encrypted(dir, "json", JSON)
}

/// A project with `config/encrypted_prod.env` made from [`DOTENV`]; returns the key.
pub(crate) fn encrypted_dotenv(dir: &Dir) -> String {
    encrypted(dir, "env", DOTENV)
}

/// A project with `config/encrypted_prod.{ext}` made from `plain`; returns the key.
fn encrypted(dir: &Dir, ext: &str, plain: &str) -> String {
    let key = dir.keygen("prod.key");
    let decrypted = format!("config/decrypted_prod.{ext}");
    dir.write(&decrypted, plain);
    dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    dir.remove(&decrypted);
    key
}

/// Decrypts `prod` with `key` and checks that it gives [`JSON`] back (as a value: the
/// order of its keys aside).
#[track_caller]
pub(crate) fn assert_decrypts_to_json(dir: &Dir, key: &str) {
    dir.run(["decrypt", "--env", "prod"]).key(key).ok();
    let got: serde_json::Value =
        serde_json::from_str(&dir.read("config/decrypted_prod.json")).unwrap();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(JSON).unwrap()
    );
}
