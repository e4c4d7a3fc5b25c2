//! Where values come from: the [`Environment`] the agent runs in, taken once at start-up and
//! passed to the validation as a value (so it reads no process state of its own), and the
//! rule that picks a value and names its origin: a flag beats its environment variable,
//! which beats the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// What the validation needs to know about the process: which variables are set, the
/// arguments (to tell a flag from its variable), systemd's credentials directory, the
/// working directory, the host name and the user.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Names of the environment variables that are set, with those the agent moved out of
    /// its environment at start-up (`Cli::secrets_from_env`).
    pub vars: BTreeSet<String>,
    /// The command-line arguments.
    pub args: Vec<String>,
    /// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
    /// The working directory, or why it cannot be read.
    pub working_dir: Result<PathBuf, String>,
    /// The host name (the default agent name and the status `host`).
    pub host_name: String,
    /// The real uid of the agent.
    pub uid: u32,
    /// `/etc/passwd`, to look the `run_as` user up (or why it cannot be read).
    pub passwd: Result<String, String>,
    /// `/etc/group`, for the `run_as` user's groups.
    pub group: String,
}

impl Environment {
    /// The environment of this process.
    pub fn current() -> Self {
        Self {
            vars: std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect(),
            args: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            working_dir: std::env::current_dir()
                .map_err(|e| format!("cannot read the working directory: {e}")),
            host_name: host_name(),
            uid: current_uid(),
            passwd: std::fs::read_to_string("/etc/passwd")
                .map_err(|e| format!("cannot read /etc/passwd: {e}")),
            group: std::fs::read_to_string("/etc/group").unwrap_or_default(),
        }
    }

    /// Whether `flag` is on the command line (`--flag value` or `--flag=value`).
    fn has_flag(&self, flag: &str) -> bool {
        self.args
            .iter()
            .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|v| v.starts_with('=')))
    }
}

/// Picks values from the command line (flags with their environment fallbacks) and the
/// file, naming the origin of each.
pub(super) struct Sources<'a> {
    pub(super) file_origin: &'a str,
    /// Variables the agent moved out of its environment (see `crate::handoff`).
    pub(super) from_env: &'a [String],
    pub(super) env: &'a Environment,
}

impl Sources<'_> {
    /// Flag (or its environment variable) beats the file; returns the value and its origin.
    ///
    /// The origin is the variable only when it is set and the flag is not on the command
    /// line (clap takes the flag when both are given).
    pub(super) fn pick<T>(
        &self,
        cli: Option<T>,
        flag: &str,
        var: &str,
        file: Option<T>,
    ) -> (Option<T>, String) {
        match cli {
            Some(v) => {
                let set = self.env.vars.contains(var) || self.from_env.iter().any(|v| v == var);
                let origin = if set && !self.env.has_flag(flag) {
                    format!("environment variable {var}")
                } else {
                    flag.to_owned()
                };
                (Some(v), origin)
            }
            None => (file, self.file_origin.to_owned()),
        }
    }

    /// A secret given as a value or a file, on the command line (or environment) or in the
    /// config file, or as a systemd credential; returns it and its origin.
    pub(super) fn secret(
        &self,
        names: Secret,
        cli: (Option<String>, Option<PathBuf>),
        file: (Option<String>, Option<PathBuf>),
        file_dir: Option<&Path>,
    ) -> Result<(Option<String>, String), ConfigError> {
        let file_key = format!("{}_file", names.key);
        match (cli, file) {
            ((Some(v), _), _) => Ok(self.pick(Some(v), names.flag, names.var, None)),
            ((None, Some(path)), _) => {
                let (_, origin) = self.pick(Some(()), names.file_flag, names.file_var, None);
                read_secret(&path, &origin, &file_key).map(|v| (Some(v), origin))
            }
            (_, (Some(_), Some(_))) => Err(ConfigError::new(
                self.file_origin,
                names.key,
                format!("set {} or {file_key}, not both", names.key),
            )),
            (_, (Some(v), None)) => Ok((Some(v), self.file_origin.to_owned())),
            (_, (None, Some(path))) => {
                let path = match file_dir {
                    Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => {
                        dir.join(path)
                    }
                    _ => path,
                };
                read_secret(&path, self.file_origin, &file_key)
                    .map(|v| (Some(v), self.file_origin.to_owned()))
            }
            (_, (None, None)) => {
                let Some(dir) = &self.env.credentials_directory else {
                    return Ok((None, self.file_origin.to_owned()));
                };
                let path = dir.join(names.credential);
                let origin = format!("systemd credential {}", path.display());
                if path.exists() {
                    read_secret(&path, &origin, names.key).map(|v| (Some(v), origin))
                } else {
                    Ok((None, self.file_origin.to_owned()))
                }
            }
        }
    }
}

/// The names of a secret that can be given as a value or as a file.
pub(super) struct Secret {
    /// The key in the file; with `_file` appended, the key of the file holding it.
    pub(super) key: &'static str,
    pub(super) flag: &'static str,
    pub(super) var: &'static str,
    pub(super) file_flag: &'static str,
    pub(super) file_var: &'static str,
    /// Its name in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`), the last resort.
    pub(super) credential: &'static str,
}

/// Reads a one-line secret from a file (trailing newline and spaces dropped).
fn read_secret(path: &Path, origin: &str, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            origin,
            key,
            format!(
                "cannot read {}: {e}; check the path and that the agent's user may read it",
                path.display()
            ),
        )
    })?;
    let value = text.trim();
    if value.is_empty() || value.contains(['\n', '\r']) {
        return Err(ConfigError::new(
            origin,
            key,
            format!("{} must hold the secret on one line", path.display()),
        ));
    }
    Ok(value.to_owned())
}

/// The real uid of the agent.
#[allow(unsafe_code)]
fn current_uid() -> u32 {
    // SAFETY: getuid takes nothing and cannot fail.
    unsafe { libc::getuid() }
}

/// The host name, from the kernel.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A valid agent name made from the host name (`Web.1` → `web-1`).
pub(super) fn default_name(host: &str) -> String {
    let mut name: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name
        .trim_start_matches(['-', '_'])
        .chars()
        .take(64)
        .collect();
    if name.is_empty() {
        "agent".to_owned()
    } else {
        name
    }
}
