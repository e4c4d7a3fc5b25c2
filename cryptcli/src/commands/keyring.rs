//! Which key a command uses: `--key`, then `--key-file`, then `CONFIG_KEY`, or an env's
//! entry in `ENVS`/`KEYS`; or, for files met without an env, whichever key has their id.

use std::path::Path;

use anyhow::Context as _;
use orcastrate_crypt::{validate_env, Error, Key};
use zeroize::Zeroizing;

use crate::cli::KeyArgs;

/// A key's text and where it came from, parsed only when needed so that an unused bad
/// `KEYS` entry does not stop a command that does not need it.
struct Source {
    origin: String,
    text: Zeroizing<String>,
}

impl Source {
    fn key(&self) -> Result<Key, Error> {
        Key::from_base64(&self.text).map_err(|e| match e {
            Error::InvalidKey { reason, .. } => Error::InvalidKey {
                origin: Some(self.origin.clone()),
                reason,
            },
            other => other,
        })
    }
}

/// Every key the command line and environment offer.
pub(crate) struct Keyring {
    explicit: Option<Source>,
    envs: Option<String>,
    keys: Option<Zeroizing<String>>,
}

impl Keyring {
    /// Collects the key options. `--key` given on the command line conflicts with
    /// `--key-file`; `CONFIG_KEY` from the environment yields to `--key-file`.
    pub(crate) fn from_args(args: &KeyArgs) -> anyhow::Result<Keyring> {
        let config_key = std::env::var("CONFIG_KEY").ok();
        let from_command_line = args
            .key
            .as_ref()
            .filter(|k| Some(*k) != config_key.as_ref());
        let explicit = match (from_command_line, &args.key_file, &args.key) {
            (Some(_), Some(_), _) => {
                return Err(
                    Error::Usage("pass either --key or --key-file, not both".into()).into(),
                );
            }
            (Some(text), None, _) => Some(Source {
                origin: "--key".into(),
                text: Zeroizing::new(text.clone()),
            }),
            (None, Some(file), _) => Some(read_key_file(file)?),
            (None, None, Some(text)) => Some(Source {
                origin: "CONFIG_KEY".into(),
                text: Zeroizing::new(text.clone()),
            }),
            (None, None, None) => None,
        };
        Ok(Keyring {
            explicit,
            envs: args.envs.clone(),
            keys: args.keys.clone().map(Zeroizing::new),
        })
    }

    /// The envs listed in `ENVS`, for commands run without `--env`.
    pub(crate) fn batch_envs(&self) -> anyhow::Result<Vec<String>> {
        if self.envs.is_none() {
            return Err(Error::Usage(
                "pass --env ENV (or --in FILE), or set ENVS and KEYS to act on several envs".into(),
            )
            .into());
        }
        Ok(self.pairs()?.into_iter().map(|(env, _)| env).collect())
    }

    /// The key for `env`. In batch mode (no `--env`) each env uses its `KEYS` entry;
    /// otherwise an explicit key wins over `ENVS`/`KEYS`.
    pub(crate) fn for_env(&self, env: Option<&str>, batch: bool) -> anyhow::Result<Key> {
        if !batch {
            if let Some(source) = &self.explicit {
                return Ok(source.key()?);
            }
        }
        if let Some(env) = env {
            if self.envs.is_some() {
                if let Some((_, source)) = self.pairs()?.into_iter().find(|(e, _)| e == env) {
                    return Ok(source.key()?);
                }
            }
        }
        let which = env.map_or_else(String::new, |e| format!(" for env {e}"));
        Err(Error::Usage(format!(
            "no key{which}: pass --key-file FILE, set CONFIG_KEY, or list the env in ENVS with its key in KEYS"
        ))
        .into())
    }

    /// The key whose id is `id`, among all keys offered.
    pub(crate) fn by_id(&self, id: &str) -> anyhow::Result<Option<Key>> {
        if let Some(source) = &self.explicit {
            let key = source.key()?;
            if key.id() == id {
                return Ok(Some(key));
            }
        }
        if self.envs.is_some() || self.keys.is_some() {
            for (_, source) in self.pairs()? {
                let key = source.key()?;
                if key.id() == id {
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    /// `ENVS` and `KEYS` paired by position.
    fn pairs(&self) -> anyhow::Result<Vec<(String, Source)>> {
        let (Some(envs), Some(keys)) = (&self.envs, &self.keys) else {
            return Err(Error::Usage("ENVS and KEYS must be set together".into()).into());
        };
        let envs = split_list(envs);
        let keys = split_list(keys);
        if envs.len() != keys.len() {
            return Err(Error::Usage(format!(
                "ENVS lists {} envs but KEYS lists {} keys: they are paired by position",
                envs.len(),
                keys.len()
            ))
            .into());
        }
        envs.into_iter()
            .zip(keys)
            .map(|(env, key)| {
                validate_env(&env).context("in ENVS")?;
                Ok((
                    env.clone(),
                    Source {
                        origin: format!("KEYS (entry for env {env})"),
                        text: Zeroizing::new(key),
                    },
                ))
            })
            .collect()
    }
}

/// Splits a comma-separated list, allowing spaces after the commas, as the original tool
/// did.
pub(crate) fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn read_key_file(path: &Path) -> anyhow::Result<Source> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        action: "read key file",
        path: path.to_owned(),
        error: e,
    })?;
    Ok(Source {
        origin: path.display().to_string(),
        text: Zeroizing::new(text),
    })
}

/// Reads a key given on its own (e.g. `--new-key-file`), naming its origin in errors.
pub(crate) fn key_from_file(path: &Path) -> anyhow::Result<Key> {
    Ok(read_key_file(path)?.key()?)
}

/// Parses a key given as text, naming its origin in errors.
pub(crate) fn key_from_text(text: &str, origin: &str) -> anyhow::Result<Key> {
    Ok(Source {
        origin: origin.to_owned(),
        text: Zeroizing::new(text.to_owned()),
    }
    .key()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_allow_spaces_after_commas() {
        assert_eq!(
            split_list("prod, staging,dev ,"),
            ["prod", "staging", "dev"]
        );
    }
}
