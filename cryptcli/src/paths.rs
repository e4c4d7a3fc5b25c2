//! File names: the default `config/{decrypted,encrypted}_<env>.{json,env}` pairs, env names,
//! and recovering the env from a file name for `textconv` and `merge-driver`.

use std::path::{Path, PathBuf};

use crate::{Error, Format};

/// Which side of a pair a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `decrypted_<env>.*`: plaintext, never committed.
    Decrypted,
    /// `encrypted_<env>.*`: committed.
    Encrypted,
}

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Decrypted => "decrypted_",
            Side::Encrypted => "encrypted_",
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Decrypted => Side::Encrypted,
            Side::Encrypted => Side::Decrypted,
        }
    }
}

/// Checks an env name against the design's rule `[a-z0-9][a-z0-9_-]*`, which also keeps
/// it from naming another directory.
///
/// # Errors
///
/// [`Error::Usage`] naming the env.
pub fn validate_env(env: &str) -> Result<(), Error> {
    let mut chars = env.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid env name {env:?}: use lowercase letters, digits, '_' and '-', starting with a letter or digit"
        )))
    }
}

/// `<side>_<env>.<ext>`, e.g. `encrypted_production.json`.
pub fn file_name(side: Side, env: &str, format: Format) -> String {
    format!("{}{env}.{}", side.prefix(), format.extension())
}

/// The one existing `<side>_<env>.json` or `<side>_<env>.env` in `dir`, if any.
///
/// # Errors
///
/// [`Error::Usage`] if both exist (which one is meant is ambiguous), [`Error::Io`] if the
/// directory cannot be read.
pub fn find(dir: &Path, side: Side, env: &str) -> Result<Option<PathBuf>, Error> {
    let mut found = Vec::new();
    for format in [Format::Json, Format::Dotenv] {
        let path = dir.join(file_name(side, env, format));
        match path.try_exists() {
            Ok(true) => found.push(path),
            Ok(false) => {}
            Err(e) => return Err(Error::io("look for", path, e)),
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::Usage(format!(
            "both {} and {} exist: keep only one format per env",
            found[0].display(),
            found[1].display()
        ))),
    }
}

/// The env and side named by a file name ending in `encrypted_<env>.<ext>` or
/// `decrypted_<env>.<ext>`. Git's temporary files (`XXXXXX_encrypted_prod.json`) and
/// paths like `config/encrypted_prod.json` both work.
pub fn env_from_file_name(path: &Path) -> Option<(String, Side)> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(".env"))?;
    for side in [Side::Encrypted, Side::Decrypted] {
        if let Some(at) = stem.rfind(side.prefix()) {
            let env = &stem[at + side.prefix().len()..];
            let starts_name = at == 0 || stem[..at].ends_with('_');
            if starts_name && validate_env(env).is_ok() {
                return Some((env.to_owned(), side));
            }
        }
    }
    None
}

/// The other file of a pair: `config/decrypted_prod.env` ↔ `config/encrypted_prod.env`.
pub fn counterpart(path: &Path) -> Option<PathBuf> {
    let (env, side) = env_from_file_name(path)?;
    let format = Format::from_path(path).ok()?;
    Some(path.with_file_name(file_name(side.other(), &env, format)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_design() {
        assert!(validate_env("production").is_ok());
        assert!(validate_env("eu-1_b").is_ok());
        for bad in ["", "Prod", "-x", "a.b", "../x", "a/b"] {
            assert!(validate_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recovers_env_from_names() {
        let env = |p: &str| env_from_file_name(Path::new(p));
        assert_eq!(
            env("config/encrypted_prod.json"),
            Some(("prod".into(), Side::Encrypted))
        );
        assert_eq!(
            env("/tmp/Ab3xYz_encrypted_eu-1.env"),
            Some(("eu-1".into(), Side::Encrypted))
        );
        assert_eq!(
            env("decrypted_dev.env"),
            Some(("dev".into(), Side::Decrypted))
        );
        assert_eq!(env("config/settings.json"), None);
        assert_eq!(
            counterpart(Path::new("config/decrypted_prod.env")),
            Some(PathBuf::from("config/encrypted_prod.env"))
        );
    }
}
