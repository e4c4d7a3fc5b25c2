//! The release layout under `root`: `releases/{seq}-{sha12}/`, the `.orcastrate-complete`
//! marker, the `current` symlink, `shared/` links, and pruning.
//!
//! A release is usable only with its marker, written (and fsynced) after `install` and
//! `build` succeeded; anything without it is a half-built leftover and is deleted at start-up.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Marks a release whose install and build finished.
pub(crate) const COMPLETE_MARKER: &str = ".orcastrate-complete";

/// What the marker records, so a release can be found by its full sha.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub(crate) seq: u64,
    pub(crate) sha: String,
    pub(crate) completed_at: String,
}

/// One directory under `releases/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Release {
    pub(crate) name: String,
    pub(crate) seq: u64,
    pub(crate) sha12: String,
    /// Set when the release is complete.
    pub(crate) marker: Option<Marker>,
}

/// Paths of the layout.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub(crate) fn release(&self, name: &str) -> PathBuf {
        self.releases().join(name)
    }

    pub(crate) fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub(crate) fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    pub(crate) fn cache(&self) -> PathBuf {
        self.root.join("repo.git")
    }

    pub(crate) fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates the directories of the layout; `logs/` and `tmp/` are the agent's user's
    /// only (mode 0700), since output and scratch files can hold what the code prints.
    pub(crate) fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for dir in [self.releases(), self.shared(), self.logs(), self.tmp()] {
            std::fs::create_dir_all(dir)?;
        }
        for private in [self.logs(), self.tmp()] {
            std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Every release directory, oldest `seq` first.
    pub(crate) fn list(&self) -> io::Result<Vec<Release>> {
        let mut out = Vec::new();
        let dir = match std::fs::read_dir(self.releases()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in dir {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((seq, sha12)) = parse_name(&name) else {
                continue;
            };
            let marker = read_marker(&entry.path());
            out.push(Release {
                name,
                seq,
                sha12,
                marker,
            });
        }
        out.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// The newest complete release of `sha`.
    pub(crate) fn complete_release_of(&self, sha: &str) -> Option<Release> {
        self.list()
            .ok()?
            .into_iter()
            .rev()
            .find(|r| r.marker.as_ref().is_some_and(|m| m.sha == sha))
    }

    /// The release name `current` points to, if it points into `releases/`.
    pub(crate) fn current_release(&self) -> Option<String> {
        let target = std::fs::read_link(self.current()).ok()?;
        let name = target.file_name()?.to_str()?.to_owned();
        parse_name(&name).map(|_| name)
    }

    /// Points `current` at release `name` atomically.
    pub(crate) fn switch_current(&self, name: &str) -> io::Result<()> {
        Ok(orcastrate_fs::symlink_atomic(
            &Path::new("releases").join(name),
            &self.current(),
        )?)
    }

    /// Writes and fsyncs the completion marker of a release.
    pub(crate) fn mark_complete(&self, name: &str, marker: &Marker) -> io::Result<()> {
        let dir = self.release(name);
        let bytes = serde_json::to_vec(marker).map_err(io::Error::other)?;
        Ok(orcastrate_fs::write_private(
            &dir.join(COMPLETE_MARKER),
            &bytes,
        )?)
    }

    /// Deletes every incomplete release directory; returns their names.
    pub(crate) fn remove_incomplete(&self) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for r in self.list()? {
            if r.marker.is_none() {
                remove_dir(&self.release(&r.name))?;
                removed.push(r.name);
            }
        }
        Ok(removed)
    }

    /// Deletes complete releases beyond the `keep` newest, never one named in `protect`.
    pub(crate) fn prune(&self, keep: usize, protect: &[&str]) -> io::Result<Vec<String>> {
        let complete: Vec<Release> = self
            .list()?
            .into_iter()
            .filter(|r| r.marker.is_some())
            .collect();
        let mut removed = Vec::new();
        let excess = complete.len().saturating_sub(keep);
        for r in complete.iter().take(excess) {
            if protect.contains(&r.name.as_str()) {
                continue;
            }
            remove_dir(&self.release(&r.name))?;
            removed.push(r.name.clone());
        }
        Ok(removed)
    }

    /// Links each shared file and directory into a release, creating it under `shared/` if
    /// missing (an empty file, or an empty directory).
    pub(crate) fn link_shared(
        &self,
        release: &str,
        files: &[PathBuf],
        dirs: &[PathBuf],
    ) -> io::Result<()> {
        let release_dir = self.release(release);
        for (path, is_dir) in files
            .iter()
            .map(|f| (f, false))
            .chain(dirs.iter().map(|d| (d, true)))
        {
            let source = self.shared().join(path);
            if let Some(parent) = source.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if is_dir {
                std::fs::create_dir_all(&source)?;
            } else if !source.exists() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&source)?;
            }
            let link = release_dir.join(path);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Whatever the repository has at that path is replaced by the shared one.
            match std::fs::symlink_metadata(&link) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link)?,
                Ok(_) => std::fs::remove_file(&link)?,
                Err(_) => {}
            }
            std::os::unix::fs::symlink(&source, &link)?;
        }
        Ok(())
    }
}

/// `{seq}-{sha12}` → (seq, sha12).
pub(crate) fn parse_name(name: &str) -> Option<(u64, String)> {
    let (seq, sha12) = name.split_once('-')?;
    let seq = seq.parse().ok()?;
    (sha12.len() == 12 && sha12.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (seq, sha12.to_owned()))
}

/// The directory name of a release.
pub(crate) fn release_name(seq: u64, sha: &str) -> String {
    format!("{seq}-{}", orcastrate_broker::message::sha12(sha))
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let bytes = std::fs::read(dir.join(COMPLETE_MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        l.create().unwrap();
        (dir, l)
    }

    fn add(l: &Layout, seq: u64, sha: &str, complete: bool) -> String {
        let name = release_name(seq, sha);
        std::fs::create_dir_all(l.release(&name)).unwrap();
        if complete {
            l.mark_complete(
                &name,
                &Marker {
                    seq,
                    sha: sha.into(),
                    completed_at: "t".into(),
                },
            )
            .unwrap();
        }
        name
    }

    #[test]
    fn names() {
        assert_eq!(release_name(12, &"ab".repeat(20)), "12-abababababab");
        assert_eq!(
            parse_name("12-abababababab"),
            Some((12, "abababababab".into()))
        );
        assert_eq!(parse_name("x-abababababab"), None);
        assert_eq!(parse_name("12-abab"), None);
        assert_eq!(parse_name(".tmp"), None);
    }

    #[test]
    fn incomplete_removed_prune_protects() {
        let (_d, l) = layout();
        let a = add(&l, 1, &"a".repeat(40), true);
        let b = add(&l, 2, &"b".repeat(40), true);
        let c = add(&l, 3, &"c".repeat(40), true);
        let d = add(&l, 4, &"d".repeat(40), false);
        assert_eq!(l.remove_incomplete().unwrap(), vec![d]);
        assert_eq!(l.complete_release_of(&"b".repeat(40)).unwrap().name, b);
        assert!(l.complete_release_of(&"d".repeat(40)).is_none());
        l.switch_current(&a).unwrap();
        assert_eq!(l.current_release().as_deref(), Some(a.as_str()));
        let removed = l.prune(1, &[&a]).unwrap();
        assert_eq!(removed, vec![b]);
        let left: Vec<String> = l.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(left, vec![a, c]);
    }

    #[test]
    fn shared_links_replace_repo_content() {
        let (_d, l) = layout();
        let r = add(&l, 1, &"a".repeat(40), false);
        std::fs::write(l.release(&r).join(".env"), "from repo").unwrap();
        std::fs::create_dir_all(l.release(&r).join("public/uploads")).unwrap();
        l.link_shared(
            &r,
            &[PathBuf::from(".env")],
            &[PathBuf::from("public/uploads")],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(l.release(&r).join(".env")).unwrap(),
            ""
        );
        std::fs::write(l.shared().join("public/uploads/x"), "1").unwrap();
        assert!(l.release(&r).join("public/uploads/x").exists());
        // Idempotent.
        l.link_shared(
            &r,
            &[PathBuf::from(".env")],
            &[PathBuf::from("public/uploads")],
        )
        .unwrap();
    }
}
