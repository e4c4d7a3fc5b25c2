//! Real git repositories in temp dirs: a bare origin standing in for GitHub, and a work
//! clone the test commits to and pushes from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git args` in `dir` and returns its trimmed stdout.
///
/// # Panics
///
/// If git is not installed or the command fails (the message has git's stderr).
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("git's output is UTF-8")
        .trim()
        .to_owned()
}

/// A bare "GitHub" origin (`origin.git`) and a work clone (`work`) to commit and push from.
pub struct Origin {
    /// The bare repository agents fetch from (their `git_url`).
    pub bare: PathBuf,
    /// The work tree commits are made in.
    pub work: PathBuf,
    /// The branch commits are pushed to.
    pub branch: String,
}

impl Origin {
    /// An empty origin under `dir` whose commits go to `main`.
    pub fn new(dir: &Path) -> Self {
        Self::on_branch(dir, "main")
    }

    /// An empty origin under `dir` whose commits go to `branch`.
    pub fn on_branch(dir: &Path, branch: &str) -> Self {
        let bare = dir.join("origin.git");
        let work = dir.join("work");
        git(
            dir,
            &["init", "-q", "--bare", "-b", branch, path_str(&bare)],
        );
        git(dir, &["init", "-q", "-b", branch, path_str(&work)]);
        Self {
            bare,
            work,
            branch: branch.to_owned(),
        }
    }

    /// Writes `files` (path and content; `None` deletes the file), commits everything with
    /// `message` (even if nothing changed), pushes to the origin's branch, and returns the
    /// commit's sha.
    #[track_caller]
    pub fn commit(&self, message: &str, files: &[(&str, Option<&str>)]) -> String {
        for (path, content) in files {
            let path = self.work.join(path);
            match content {
                Some(content) => {
                    std::fs::create_dir_all(path.parent().expect("a file in the work tree"))
                        .unwrap();
                    std::fs::write(&path, content).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                message,
            ],
        );
        let target = format!("HEAD:refs/heads/{}", self.branch);
        git(&self.work, &["push", "-q", path_str(&self.bare), &target]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_reach_the_origin() {
        let dir = std::env::temp_dir().join(format!("testkit-git-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let origin = Origin::on_branch(&dir, "trunk");
        let sha = origin.commit("one", &[("a/b.txt", Some("hi"))]);
        assert_eq!(git(&origin.bare, &["rev-parse", "refs/heads/trunk"]), sha);
        let sha2 = origin.commit("two", &[("a/b.txt", None)]);
        assert_ne!(sha, sha2);
        assert_eq!(
            git(&origin.bare, &["ls-tree", "-r", "--name-only", &sha2]),
            ""
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
