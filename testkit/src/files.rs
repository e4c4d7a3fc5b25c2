//! What a deploy left on disk: symlinks and file trees.

use std::path::{Path, PathBuf};

/// The file name a symlink points to (e.g. the release `current` points to).
///
/// # Panics
///
/// If `link` is not a symlink to a named file.
#[track_caller]
pub fn link_name(link: &Path) -> String {
    let target = std::fs::read_link(link)
        .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", link.display()));
    target
        .file_name()
        .unwrap_or_else(|| panic!("{} points to {}", link.display(), target.display()))
        .to_string_lossy()
        .into_owned()
}

/// Every file under `dir` (recursively, not following links) and its content.
pub fn under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(under(&e.path()));
        } else if meta.is_file() {
            out.push((e.path(), std::fs::read(e.path()).unwrap_or_default()));
        }
    }
    out
}
