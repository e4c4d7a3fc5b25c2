//! Diffable, tamper-evident encrypted config per environment.
//!
//! Keys and structure stay in clear and in order; every value is encrypted on its own with
//! AES-256-GCM under its path, and an HMAC over every path, value and the metadata detects
//! anything added, dropped, renamed or edited outside this crate. Re-encrypting keeps the
//! ciphertext of unchanged values, so `git diff` shows exactly the keys that changed. The
//! file format is specified in this crate's README.
//!
//! The deploy agent calls [`decrypt_config_dir`]; the `orcastrate-crypt` binary is built on
//! the other functions.
//!
//! # Layout
//!
//! - `key`: [`Key`], its id, and the sub-keys derived from it.
//! - `document`: [`Document`], the order-keeping tree shared by both formats.
//! - `format/json.rs`, `format/dotenv.rs`: reading and writing the two [`Format`]s.
//! - `cipher`: one value ↔ one `ENC[…]` token.
//! - `mac`: the file MAC and exactly what it covers.
//! - `encrypted`: [`EncryptedDocument`], [`encrypt`], [`decrypt`].
//! - `merge`: three-way [`merge()`] for the git merge driver.
//! - `env_vars`: flattening into environment variables for `exec`.
//! - `paths`, `files`: default file names, and atomic 0600 writes.
//! - `error`: [`Error`] and its exit codes.
//!
//! The binary's own modules (`cli.rs`, `commands/`) are not part of the library.

mod cipher;
mod document;
mod encrypted;
mod env_vars;
mod error;
mod files;
mod format;
mod key;
mod mac;
mod merge;
mod paths;

use std::path::{Path, PathBuf};

pub use document::Document;
pub use encrypted::{
    changed_paths, decrypt, encrypt, EncryptedDocument, DOTENV_METADATA_PREFIX, FORMAT_VERSION,
    JSON_METADATA_KEY,
};
pub use env_vars::{env_vars, SEPARATOR as ENV_SEPARATOR};
pub use error::{Error, Exit};
pub use files::{
    decrypt_file, encrypt_file, read_encrypted, read_existing, read_plain, read_text, write_atomic,
    write_encrypted, EncryptReport, PRIVATE_MODE, PUBLIC_MODE,
};
pub use format::Format;
pub use key::{Key, KEY_LEN};
pub use merge::merge;
pub use paths::{counterpart, env_from_file_name, file_name, find, validate_env, Side};

/// Decrypts an env's committed config in `config_dir`, for the deploy agent.
///
/// Looks for `encrypted_{env}.json` and `encrypted_{env}.env` in `config_dir`. With
/// neither, returns `Ok(None)` (the service has no encrypted config). With one, verifies and
/// decrypts it to `decrypted_{env}.json` or `decrypted_{env}.env` beside it, written
/// atomically with mode 0600, and returns that path.
///
/// # Errors
///
/// [`Error::Usage`] if `env` is not a valid env name or both files exist;
/// [`Error::WrongKey`], [`Error::Integrity`], [`Error::Malformed`],
/// [`Error::UnknownVersion`] if the file does not decrypt and verify; [`Error::Io`].
/// On any error no decrypted file is written. [`Error::exit_code`] maps each to the
/// documented code.
pub fn decrypt_config_dir(
    config_dir: &Path,
    env: &str,
    key: &Key,
) -> Result<Option<PathBuf>, Error> {
    validate_env(env)?;
    let Some(input) = find(config_dir, Side::Encrypted, env)? else {
        return Ok(None);
    };
    let format = Format::from_path(&input)?;
    let output = config_dir.join(file_name(Side::Decrypted, env, format));
    decrypt_file(&input, &output, key)?;
    Ok(Some(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypt_config_dir_finds_decrypts_and_refuses_ambiguity() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        assert_eq!(decrypt_config_dir(dir.path(), "prod", &key).unwrap(), None);

        let plain = dir.path().join("decrypted_prod.env");
        std::fs::write(&plain, "A=1\n").unwrap();
        encrypt_file(&plain, &dir.path().join("encrypted_prod.env"), &key, false).unwrap();
        std::fs::remove_file(&plain).unwrap();
        let out = decrypt_config_dir(dir.path(), "prod", &key)
            .unwrap()
            .unwrap();
        assert_eq!(out, plain);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "A=1\n");

        std::fs::write(dir.path().join("encrypted_prod.json"), "{}").unwrap();
        let err = decrypt_config_dir(dir.path(), "prod", &key).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        assert!(decrypt_config_dir(dir.path(), "../x", &key).is_err());
    }
}
