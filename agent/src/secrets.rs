//! The per-environment config committed encrypted in the service's repository
//! (`config/encrypted_{env}.json` or `.env`), decrypted into the release with the crypt
//! library (`config/decrypted_{env}.*`, mode 0600).

use std::path::{Path, PathBuf};

use orcastrate_crypt::{Key, Side};

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
    let Some(key) = key else {
        return match orcastrate_crypt::find(&config_dir, Side::Encrypted, env) {
            Ok(None) => Ok(None),
            Ok(Some(path)) => Err(format!(
                "{} is encrypted but the agent has no config_key: set config_key or CONFIG_KEY",
                path.strip_prefix(release_dir).unwrap_or(&path).display()
            )),
            Err(e) => Err(format!("config: {e}")),
        };
    };
    let key = Key::from_base64(key).map_err(|e| format!("config_key: {e}"))?;
    orcastrate_crypt::decrypt_config_dir(&config_dir, env, &key).map_err(|e| format!("config: {e}"))
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
}
