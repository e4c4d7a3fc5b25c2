//! The per-environment config committed encrypted in the service's repository
//! (`config/encrypted_{env}.json` or `.env`), decrypted into the release with the crypt
//! library (`config/decrypted_{env}.*`, mode 0600).
//!
//! The Node tool's files had no extension (`config/encrypted_production`, read by the app as
//! `config/decrypted_production`): such a file is read as JSON and decrypted to the
//! extension-less name, so a service moved from it needs no change.

use std::path::{Path, PathBuf};

use orcastrate_crypt::{Format, Key, Side};

/// Checks that a config key is usable, at start-up.
///
/// # Errors
///
/// The crypt library's reason (never repeating the key).
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    Key::from_base64(key).map(drop).map_err(|e| e.to_string())
}

/// Decrypts the release's config for `env`.
///
/// `Ok(None)` when the release has no encrypted config. An encrypted file without a key, a
/// file that does not decrypt or verify, or both formats at once is an error that fails the
/// deploy.
///
/// # Errors
///
/// What went wrong and what to do, for the status `error`.
pub(crate) fn decrypt(
    release_dir: &Path,
    env: &str,
    key: Option<&str>,
) -> Result<Option<PathBuf>, String> {
    let config_dir = release_dir.join("config");
    let bare = config_dir.join(format!("encrypted_{env}"));
    let found = orcastrate_crypt::find(&config_dir, Side::Encrypted, env)
        .map_err(|e| format!("config: {e}"))?;
    let bare_exists = bare.is_file();
    let shown = |p: &Path| {
        p.strip_prefix(release_dir)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let encrypted = match (found, bare_exists) {
        (None, false) => return Ok(None),
        (Some(with_ext), true) => {
            return Err(format!(
                "config: both {} and {} exist: keep only one per env",
                shown(&bare),
                shown(&with_ext)
            ))
        }
        (Some(p), false) => p,
        (None, true) => bare.clone(),
    };
    let Some(key) = key else {
        return Err(format!(
            "{} is encrypted but the agent has no config_key: set config_key or CONFIG_KEY",
            shown(&encrypted)
        ));
    };
    let key = Key::from_base64(key).map_err(|e| format!("config_key: {e}"))?;
    if encrypted == bare {
        return decrypt_bare(&bare, &config_dir.join(format!("decrypted_{env}")), &key)
            .map(Some)
            .map_err(|e| format!("config: {e}"));
    }
    orcastrate_crypt::decrypt_config_dir(&config_dir, env, &key).map_err(|e| format!("config: {e}"))
}

/// Decrypts an extension-less (the Node tool's) encrypted file as JSON into `output`, mode
/// 0600, written atomically; nothing is written when it does not decrypt and verify.
fn decrypt_bare(
    input: &Path,
    output: &Path,
    key: &Key,
) -> Result<PathBuf, orcastrate_crypt::Error> {
    let name = input.display().to_string();
    let text = orcastrate_crypt::read_text(input)?;
    let enc = orcastrate_crypt::EncryptedDocument::parse(&text, Format::Json, &name)?;
    let doc = orcastrate_crypt::decrypt(&enc, key, &name)?;
    orcastrate_crypt::write_atomic(
        output,
        doc.to_text().as_bytes(),
        orcastrate_crypt::PRIVATE_MODE,
    )?;
    Ok(output.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypts_or_explains() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        assert_eq!(decrypt(dir.path(), "prod", None), Ok(None));

        let key = Key::generate().unwrap();
        let plain = config.join("decrypted_prod.env");
        std::fs::write(&plain, "A=1\n").unwrap();
        orcastrate_crypt::encrypt_file(&plain, &config.join("encrypted_prod.env"), &key, false)
            .unwrap();
        std::fs::remove_file(&plain).unwrap();

        let err = decrypt(dir.path(), "prod", None).unwrap_err();
        assert!(err.contains("no config_key"), "{err}");
        let other = Key::generate().unwrap();
        assert!(decrypt(dir.path(), "prod", Some(&other.to_base64())).is_err());
        assert!(!plain.exists());

        let out = decrypt(dir.path(), "prod", Some(&key.to_base64()))
            .unwrap()
            .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(check_key(&key.to_base64()).is_ok());
        assert!(check_key("nope").is_err());
    }

    /// Issue 14: the Node tool's extension-less files are JSON.
    #[test]
    fn extension_less_files_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        let key = Key::generate().unwrap();
        let plain = config.join("decrypted_prod.json");
        std::fs::write(&plain, "{\"db\": {\"password\": \"pw\"}}\n").unwrap();
        // The library picks the format by extension: encrypt to .json, then drop it.
        orcastrate_crypt::encrypt_file(&plain, &config.join("encrypted_prod.json"), &key, false)
            .unwrap();
        std::fs::rename(
            config.join("encrypted_prod.json"),
            config.join("encrypted_prod"),
        )
        .unwrap();
        std::fs::remove_file(&plain).unwrap();

        let err = decrypt(dir.path(), "prod", None).unwrap_err();
        assert!(err.contains("config/encrypted_prod is encrypted"), "{err}");
        let out = decrypt(dir.path(), "prod", Some(&key.to_base64()))
            .unwrap()
            .unwrap();
        assert_eq!(out, config.join("decrypted_prod"));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("\"password\": \"pw\""), "{text}");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let other = Key::generate().unwrap();
        std::fs::remove_file(&out).unwrap();
        assert!(decrypt(dir.path(), "prod", Some(&other.to_base64())).is_err());
        assert!(!out.exists());

        std::fs::write(config.join("encrypted_prod.env"), "A=1\n").unwrap();
        let err = decrypt(dir.path(), "prod", Some(&key.to_base64())).unwrap_err();
        assert!(err.contains("both"), "{err}");
    }
}
