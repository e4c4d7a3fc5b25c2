//! The README's "Quickstart (5 minutes, one machine)" cannot rot: its command lines are
//! `scripts/quickstart.sh`'s, literally and in order, and the script runs here against the
//! binaries of this build (gateway, agent, crypt), exiting 0 only if the first push deploys
//! version 1, the second deploys version 2 and the rollback brings version 1 back.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{binaries_dir, workspace_binary};

const BINARIES: [&str; 3] = ["orcastrate-gateway", "orcastrate-agent", "orcastrate-crypt"];
/// Far above what the script needs (each of its waits is bounded at 60 s); only a guard
/// against a hang, never a timing assertion.
const GUARD: Duration = Duration::from_secs(600);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The command lines of `text`: neither blank nor comments, trailing spaces trimmed.
fn command_lines<'a>(text: impl Iterator<Item = &'a str>) -> Vec<String> {
    text.map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The lines strictly between the line starting with `begin` and the next starting with `end`.
fn between<'a>(text: &'a str, begin: &str, end: &str, file: &str) -> Vec<&'a str> {
    let mut lines = text.lines();
    assert!(
        lines.any(|l| l.starts_with(begin)),
        "{file}: no line starts with {begin:?}"
    );
    let inner: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with(end)).collect();
    assert!(
        text.lines().any(|l| l.starts_with(end)),
        "{file}: no line starts with {end:?}"
    );
    inner
}

/// The lines of the ```sh blocks of `lines`.
fn sh_blocks<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in lines {
        if inside {
            if l.trim_end() == "```" {
                inside = false;
            } else {
                out.push(*l);
            }
        } else if l.trim_end() == "```sh" {
            inside = true;
        }
    }
    assert!(
        !inside,
        "README.md: a ```sh block of the quickstart is not closed"
    );
    out
}

#[test]
fn the_readme_quickstart_is_literally_scripts_quickstart_sh() {
    let root = workspace_root();
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    let script = fs::read_to_string(root.join("scripts/quickstart.sh")).expect("quickstart.sh");

    let section = between(
        &readme,
        "<!-- quickstart.sh BEGIN",
        "<!-- quickstart.sh END",
        "README.md",
    );
    let readme_lines = command_lines(sh_blocks(&section).into_iter());
    let script_lines = command_lines(
        between(
            &script,
            "# ---- BEGIN README steps",
            "# ---- END README steps",
            "scripts/quickstart.sh",
        )
        .into_iter(),
    );
    assert!(
        readme_lines.len() > 20,
        "README.md: the quickstart has only {} command lines",
        readme_lines.len()
    );
    for (i, (r, s)) in readme_lines.iter().zip(&script_lines).enumerate() {
        assert_eq!(
            r,
            s,
            "command line {} of the quickstart differs between README.md (left) and \
             scripts/quickstart.sh (right): keep them literally in sync",
            i + 1
        );
    }
    assert_eq!(
        readme_lines.len(),
        script_lines.len(),
        "README.md's quickstart has {} command lines, scripts/quickstart.sh {}: keep them \
         literally in sync",
        readme_lines.len(),
        script_lines.len()
    );
    assert!(
        readme.contains("## Quickstart (5 minutes, one machine)"),
        "README.md: the quickstart heading is gone"
    );
}

#[test]
fn the_quickstart_script_deploys_pushes_and_rolls_back() {
    let root = workspace_root();
    let bin = binaries_dir();
    for name in BINARIES {
        workspace_binary(name);
    }

    let logs = tempfile::tempdir().expect("a temp dir");
    let out_path = logs.path().join("quickstart.out");
    let out = File::create(&out_path).expect("the output file");
    let err = out.try_clone().expect("the output file, twice");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/quickstart.sh"))
        .current_dir(&root)
        .env("ORCASTRATE_BIN", &bin)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // The script's settings come from its own lines only.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let ours = [
            "CONFIG_KEY",
            "KEYS",
            "ENVS",
            "GITHUB_SECRET",
            "TOKENS",
            "TRUSTED_NAMES",
            "PORT",
            "KEEP_WORK",
        ];
        if (k.starts_with("ORCASTRATE_") && k != "ORCASTRATE_BIN") || ours.contains(&k.as_str()) {
            cmd.env_remove(&k);
        }
    }
    let mut child = cmd.spawn().expect("bash scripts/quickstart.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the script") {
            break Some(status);
        }
        if started.elapsed() > GUARD {
            // SIGTERM, so that the script's trap stops what it started.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            assert!(
                output.contains("quickstart: OK"),
                "the script exited 0 without its OK line:\n{output}"
            );
        }
        Some(s) => panic!("scripts/quickstart.sh failed ({s}):\n{output}"),
        None => panic!("scripts/quickstart.sh still ran after {GUARD:?}:\n{output}"),
    }
}
