//! Crash-safe replacement of files that may hold secrets, for the gateway (signing key,
//! engine password files), the agent (state, release markers) and `orcastrate-crypt`
//! (decrypted and encrypted configs).
//!
//! A file is replaced by writing a temporary file in the same directory and renaming it over
//! the destination, so a crash leaves the old file or the new one, never half of one. The
//! temporary name is unpredictable and opened with `O_CREAT | O_EXCL | O_NOFOLLOW`, so
//! another user who can write to the directory cannot plant a symlink or file there to
//! redirect or read the write; it is created mode 0600, so its content is never readable by
//! others, whatever the umask; and both the file and the directory are fsynced, so the
//! rename survives a power loss.
//!
//! Layout: [`write_private`] and [`write_atomic`] replace a file, [`write_atomic_with`] lets
//! the caller stream into it, [`symlink_atomic`] replaces a symlink, [`sync_dir`] makes a
//! rename in a directory durable.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of files only their owner may read: what every temporary file is created with.
pub const PRIVATE_MODE: u32 = 0o600;

/// A failed step of a file replacement.
#[derive(Debug, thiserror::Error)]
// The cause is part of the message and deliberately not also `source()`: binaries print
// errors with `{:#}`, which would show it twice.
#[error("cannot {action} {}: {error}", path.display())]
pub struct Error {
    /// What was being done ("create a temporary file for", "write", "rename into place").
    pub action: &'static str,
    /// The file it was done to.
    pub path: PathBuf,
    /// The operating system's error.
    pub error: io::Error,
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::new(e.error.kind(), e)
    }
}

fn fail<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |error| Error {
        action,
        path: path.to_owned(),
        error,
    }
}

/// Replaces `path` atomically with `contents`, readable by its owner only (mode 0600).
///
/// # Errors
///
/// [`Error`] naming the step that failed. If it failed before the rename, `path` is
/// unchanged and no temporary file is left behind; if only the final directory sync failed,
/// `path` has the new content but the rename may not survive a power loss.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_atomic(path, contents, PRIVATE_MODE)
}

/// Replaces `path` atomically with `contents`, giving it `mode` (set on the temporary file
/// before the rename, so the destination never has any other mode).
///
/// # Errors
///
/// As [`write_private`].
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    write_atomic_with(path, mode, |file| file.write_all(contents))
}

/// Replaces `path` atomically with what `fill` writes to the (0600) temporary file, then
/// gives it `mode`.
///
/// # Errors
///
/// As [`write_private`], and `fill`'s error as a failed "write".
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), Error> {
    let dir = parent(path);
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = create_private(&tmp)?;
        fill(&mut file).map_err(fail("write", &tmp))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(fail("set the mode of", &tmp))?;
        file.sync_all().map_err(fail("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(fail("rename into place", path))
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist (create failed) or may not be ours
        // (create failed because something was there), and then it must not be removed.
        if !matches!(&result, Err(e) if e.action == CREATE) {
            let _ = std::fs::remove_file(&tmp);
        }
        return result;
    }
    sync_dir(dir).map_err(fail("sync the directory", dir))
}

/// Points the symlink `link` at `target` atomically: a new symlink renamed over the old.
///
/// # Errors
///
/// As [`write_private`].
pub fn symlink_atomic(target: &Path, link: &Path) -> Result<(), Error> {
    let tmp = temp_sibling(link);
    std::os::unix::fs::symlink(target, &tmp).map_err(fail(CREATE, &tmp))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("rename into place", link)(e));
    }
    let dir = parent(link);
    sync_dir(dir).map_err(fail("sync the directory", dir))
}

/// Fsyncs a directory, so a rename or create in it survives a power loss.
///
/// # Errors
///
/// The operating system's error opening or syncing `dir`.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

const CREATE: &str = "create a temporary file";

/// Creates `tmp` for writing, mode 0600, failing if anything (a symlink included) is there.
fn create_private(tmp: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(PRIVATE_MODE)
        .open(tmp)
        .map_err(fail(CREATE, tmp))
}

/// The directory of `path`, `.` for a bare file name.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An unpredictable hidden name next to `path`: 128 random bits, so nobody can plant
/// something there in advance.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bytes = [0u8; 16];
    // The OS source failing is not expected; the name is then still unique to this process
    // and call, and O_EXCL | O_NOFOLLOW keep the write safe against a planted file.
    if getrandom::fill(&mut bytes).is_err() {
        let fallback = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
        let len = fallback.len().min(16);
        bytes[..len].copy_from_slice(&fallback.as_bytes()[fallback.len() - len..]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    path.with_file_name(format!(".{name}.{hex}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn replaces_owner_only_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_wider_mode_is_set_before_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("public.json");
        write_atomic(&path, b"x", 0o644).unwrap();
        assert_eq!(mode(&path), 0o644);
        write_private(&path, b"y").unwrap();
        assert_eq!(mode(&path), 0o600, "replacing narrows the mode again");
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(parent(Path::new("f")), Path::new("."));
        assert_eq!(parent(Path::new("d/f")), Path::new("d"));
    }

    #[test]
    fn temporary_names_are_hidden_siblings_and_differ_each_time() {
        let a = temp_sibling(Path::new("/x/state.json"));
        let b = temp_sibling(Path::new("/x/state.json"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x")));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".state.json.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert_eq!(name.len(), ".state.json.".len() + 32 + ".tmp".len());
    }

    #[test]
    fn a_symlink_at_the_temporary_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = dir.path().join(".key.planted.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = create_private(&planted).unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::AlreadyExists, "{err}");
        // A dangling symlink is refused too (O_EXCL), not created through.
        let dangling = dir.path().join(".key.dangling.tmp");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(create_private(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("key");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_private(&path, b"secret").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(mode(&victim), 0o644);
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn a_failed_write_keeps_the_previous_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_private(&path, b"previous").unwrap();
        let err = write_atomic_with(&path, PRIVATE_MODE, |f| {
            f.write_all(b"half of")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.action, "write");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_rename_keeps_the_previous_content() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the destination: the rename fails after the temporary file is written.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"previous").unwrap();
        let err = write_private(&path, b"new").unwrap_err();
        assert_eq!(err.action, "rename into place", "{err}");
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        symlink_atomic(Path::new("releases/a"), &link).unwrap();
        symlink_atomic(Path::new("releases/b"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("releases/b"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
