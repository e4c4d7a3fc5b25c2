//! The umask is process-wide, so this test is a binary of its own.

use std::os::unix::fs::PermissionsExt as _;

#[test]
#[allow(unsafe_code)]
fn owner_only_even_with_a_permissive_umask() {
    // SAFETY: umask has no memory-safety preconditions; this binary runs no other test.
    let old = unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let mut seen = None;
    let result = orcastrate_fs::write_atomic_with(&path, orcastrate_fs::PRIVATE_MODE, |f| {
        // The mode while the secret is being written, before anything is changed.
        seen = Some(f.metadata()?.permissions().mode() & 0o7777);
        std::io::Write::write_all(f, b"secret")
    });
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    result.unwrap();
    assert_eq!(seen, Some(0o600), "the temporary file was created 0600");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
}
