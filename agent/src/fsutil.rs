//! Crash-safe file operations: atomic replace of a file or a symlink.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// A temp name next to `path`, unique to this process and call.
fn temp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        random_u64()
    ))
}

/// A random number from the OS (for temp names, sessions and jitter).
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS source failing is not recoverable and not expected; fall back to the clock.
    if getrandom::fill(&mut bytes).is_err() {
        return orcastrate_broker::time::unix_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    u64::from_le_bytes(bytes)
}

/// Fsyncs a directory, so a rename or create in it survives a power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
/// The file is the agent's user's only (mode 0600): `state.json` records errors and orders.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Points the symlink `link` at `target` atomically: a new symlink renamed over the old.
pub(crate) fn symlink_atomic(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = temp_sibling(link);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = link.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let l = dir.path().join("current");
        symlink_atomic(Path::new("releases/a"), &l).unwrap();
        symlink_atomic(Path::new("releases/b"), &l).unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("releases/b"));
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
