//! Reading config files and writing them safely.
//!
//! Every write goes to a temporary file in the destination's directory, is fsynced, renamed
//! over the destination and the directory fsynced, so a crash leaves either the old file or
//! the new one, never half of one; and every check runs before the first write, so a failed
//! command leaves no output at all. Decrypted files are created 0600 from the first byte.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::{changed_paths, decrypt, encrypt, Document, EncryptedDocument, Error, Format, Key};

/// Mode of decrypted files: readable by their owner only.
pub const PRIVATE_MODE: u32 = orcastrate_fs::PRIVATE_MODE;

/// Mode of new encrypted files, which are meant to be committed and shared.
pub const PUBLIC_MODE: u32 = 0o644;

/// Reads a UTF-8 text file.
///
/// # Errors
///
/// [`Error::Io`] if it cannot be read, [`Error::Malformed`] if it is not UTF-8.
pub fn read_text(path: &Path) -> Result<String, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::malformed(&path.display().to_string(), "not valid UTF-8 text"))
}

/// Reads and parses a plaintext config, picking the format from its name.
///
/// # Errors
///
/// As [`read_text`] and [`Document::parse`], and [`Error::Usage`] for an unknown extension.
pub fn read_plain(path: &Path) -> Result<Document, Error> {
    let format = Format::from_path(path)?;
    Document::parse(&read_text(path)?, format, &path.display().to_string())
}

/// Reads and parses an encrypted config, picking the format from its name.
///
/// # Errors
///
/// As [`read_text`] and [`EncryptedDocument::parse`], and [`Error::Usage`] for an unknown
/// extension.
pub fn read_encrypted(path: &Path) -> Result<EncryptedDocument, Error> {
    let format = Format::from_path(path)?;
    EncryptedDocument::parse(&read_text(path)?, format, &path.display().to_string())
}

/// Replaces `path` atomically with `contents`, giving it `mode` (the temporary file is
/// 0600 from creation, see [`orcastrate_fs`]).
///
/// # Errors
///
/// [`Error::Io`]; the destination is then unchanged and the temporary file removed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    orcastrate_fs::write_atomic(path, contents, mode)
        .map_err(|e| Error::io(e.action, e.path, e.error))
}

/// Decrypts `input` to `output` (mode 0600, atomically) and returns the plaintext.
///
/// # Errors
///
/// Any error of [`read_encrypted`], [`decrypt`] or [`write_atomic`]; `output` is then not
/// written. [`Error::Usage`] if the two names imply different formats.
pub fn decrypt_file(input: &Path, output: &Path, key: &Key) -> Result<Document, Error> {
    same_format(input, output)?;
    let enc = read_encrypted(input)?;
    let plain = decrypt(&enc, key, &input.display().to_string())?;
    write_atomic(output, plain.to_text().as_bytes(), PRIVATE_MODE)?;
    Ok(plain)
}

/// What [`encrypt_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptReport {
    /// Paths of values added, changed or removed compared with the previous file (all of
    /// them if there was none).
    pub changed: Vec<String>,
    /// False if the output already held exactly this content and was left alone.
    pub written: bool,
}

/// Encrypts `input` to `output`, keeping the ciphertext of every value that is unchanged
/// from the existing `output`.
///
/// The existing output must decrypt and verify with `key` (unless `fresh`), so a wrong key
/// or a tampered file is reported instead of silently replaced; `fresh` ignores it and
/// encrypts every value anew.
///
/// # Errors
///
/// Any error of reading, parsing, verifying the existing output, or writing; `output` is
/// then unchanged.
pub fn encrypt_file(
    input: &Path,
    output: &Path,
    key: &Key,
    fresh: bool,
) -> Result<EncryptReport, Error> {
    same_format(input, output)?;
    let plain = read_plain(input)?;
    let previous = if fresh {
        None
    } else {
        read_existing(output, key)?
    };
    let enc = encrypt(
        &plain,
        key,
        &previous.iter().collect::<Vec<_>>(),
        &input.display().to_string(),
    )?;
    write_encrypted(output, &enc, previous.as_ref())
}

/// Writes an encrypted document unless `previous` already has the same content, keeping an
/// existing file's mode.
///
/// # Errors
///
/// [`Error::Io`].
pub fn write_encrypted(
    output: &Path,
    enc: &EncryptedDocument,
    previous: Option<&EncryptedDocument>,
) -> Result<EncryptReport, Error> {
    let text = enc.to_text();
    let changed = changed_paths(previous, enc);
    if previous.is_some() && fs::read(output).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(EncryptReport {
            changed,
            written: false,
        });
    }
    let mode = fs::metadata(output)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(PUBLIC_MODE);
    write_atomic(output, text.as_bytes(), mode)?;
    Ok(EncryptReport {
        changed,
        written: true,
    })
}

/// The existing encrypted file at `path`, verified with `key`, or `None` if there is none.
///
/// # Errors
///
/// Any error of [`read_encrypted`] or [`decrypt`] other than a missing file.
pub fn read_existing(path: &Path, key: &Key) -> Result<Option<EncryptedDocument>, Error> {
    if !path
        .try_exists()
        .map_err(|e| Error::io("look for", path, e))?
    {
        return Ok(None);
    }
    let enc = read_encrypted(path)?;
    decrypt(&enc, key, &path.display().to_string())?;
    Ok(Some(enc))
}

fn same_format(input: &Path, output: &Path) -> Result<(), Error> {
    let (a, b) = (Format::from_path(input)?, Format::from_path(output)?);
    if a == b {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{} is {a} but {} is {b}: both must have the same extension",
            input.display(),
            output.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decrypted_x.json");
        write_atomic(&path, b"one", PRIVATE_MODE).unwrap();
        write_atomic(&path, b"two", PRIVATE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
