//! Configuration: the TOML file shape, and the validated [`Settings`] the agent runs with.
//!
//! Raw input (the [`crate::Cli`] flags with their environment fallbacks, and the optional
//! file) is merged with a flag beating the environment and the environment beating the file,
//! then validated once in [`Settings::load`]. Every error names where the value came from
//! (the file, a flag or an environment variable), the key, and how to fix it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use orcastrate_broker::{names, OrderVerifier};
use serde::Deserialize;

use crate::cli::Cli;
pub use crate::users::RunAs;

/// Default `install` step.
pub const DEFAULT_INSTALL: &str = "npm install";
/// Default `start` command.
pub const DEFAULT_START: &str = "npm run start";
/// Default grace period between SIGTERM and SIGKILL when stopping the app.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 10;
/// Default number of releases kept on disk.
pub const DEFAULT_KEEP_RELEASES: usize = 5;
/// Default time a new release has to pass its health check.
pub const DEFAULT_HEALTH_TIMEOUT_S: u64 = 30;
/// Default period of health checks after `healthy`.
pub const DEFAULT_HEALTH_INTERVAL_S: u64 = 15;
/// Default longest time one try of a `git fetch` may take (`[git] fetch_timeout_s`): long
/// enough for a first fetch of a big repository, short enough that a server that accepts
/// and never answers does not hold a deploy for long.
pub const DEFAULT_FETCH_TIMEOUT_S: u64 = 300;
/// Default tries of a fetch before the deploy fails (`[git] fetch_attempts`).
pub const DEFAULT_FETCH_ATTEMPTS: u32 = 3;
/// Default time `--once` waits for a server before giving up with exit code 3.
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 30;
/// How long a host with no floor waits after subscribing before taking the highest order
/// it saw (design: "waits 2 s"), so that a replayed old order cannot win.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The config file as users write it (every key optional: flags and the environment can
/// supply them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: Option<String>,
    pub server: Option<ServerList>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub repo: Option<String>,
    pub env: Option<String>,
    pub git_url: Option<String>,
    pub root: Option<PathBuf>,
    pub keep_releases: Option<i64>,
    pub gateway_public_keys: Option<Vec<String>>,
    pub config_key: Option<String>,
    pub config_key_file: Option<PathBuf>,
    pub run_as: Option<String>,
    pub on_shutdown: Option<String>,
    pub prefix: Option<String>,
    pub steps: Option<StepsFile>,
    pub shared: Option<SharedFile>,
    pub health: Option<HealthFile>,
    pub git: Option<GitFile>,
}

/// `server = "mqtt://…"` or `server = ["mqtt://a", "mqtt://b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServerList {
    One(String),
    Many(Vec<String>),
}

/// `[steps]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepsFile {
    pub install: Option<String>,
    pub build: Option<String>,
    pub start: Option<String>,
    pub stop_timeout_s: Option<i64>,
}

/// `[shared]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFile {
    pub files: Option<Vec<String>>,
    pub dirs: Option<Vec<String>>,
}

/// `[health]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub http: Option<String>,
    pub command: Option<String>,
    pub timeout_s: Option<i64>,
    pub interval_s: Option<i64>,
}

/// `[git]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitFile {
    pub fetch_timeout_s: Option<i64>,
    pub fetch_attempts: Option<i64>,
}

/// A configuration problem, naming where the value came from, the key and the fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {key}: {problem}")]
pub struct ConfigError {
    /// The file, flag or environment variable the value came from.
    pub origin: String,
    /// The key as users write it in the file (`health.timeout_s`).
    pub key: String,
    /// What is wrong and what to do.
    pub problem: String,
}

impl ConfigError {
    fn new(origin: impl Into<String>, key: &str, problem: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// What happens to the app when the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// The app keeps serving; a restarted agent adopts it.
    Keep,
    /// The app is stopped with the agent.
    Stop,
}

/// How health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// An HTTP GET that must answer 2xx (`http://` only).
    Http(String),
    /// A shell command run in the release directory that must exit 0.
    Command(String),
    /// No check configured: healthy when the app is still running a moment after start.
    Running,
}

/// The commands of a deploy.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// Run in the new release directory before it is complete; empty skips it.
    pub install: String,
    /// Run after `install`; empty skips it.
    pub build: String,
    /// The app itself, supervised in its own process group.
    pub start: String,
    /// Between SIGTERM and SIGKILL when stopping the app.
    pub stop_timeout: Duration,
}

/// Health checking.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub check: HealthCheck,
    /// How long a new release has to pass.
    pub timeout: Duration,
    /// Period of checks after `healthy`.
    pub interval: Duration,
}

/// Fetching the service's code.
#[derive(Debug, Clone)]
pub struct GitSettings {
    /// Longest one try of a fetch may take; its git processes are then killed.
    pub fetch_timeout: Duration,
    /// Tries before the deploy fails, with waits of 1, 2, 4 … (at most 30) s in between.
    pub fetch_attempts: u32,
}

/// The validated settings the agent runs with; tests build them in code.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub servers: Vec<String>,
    pub token: String,
    pub repo: String,
    pub env: String,
    pub git_url: String,
    /// Absolute.
    pub root: PathBuf,
    pub keep_releases: usize,
    pub verifier: OrderVerifier,
    pub config_key: Option<String>,
    /// Who steps, health commands and the app run as; `None`: the agent's own user.
    pub run_as: Option<RunAs>,
    pub on_shutdown: OnShutdown,
    pub prefix: String,
    pub steps: StepSettings,
    /// Relative paths inside a release linked to `{root}/shared/…`.
    pub shared_files: Vec<PathBuf>,
    pub shared_dirs: Vec<PathBuf>,
    pub health: HealthSettings,
    pub git: GitSettings,
    /// `--once`.
    pub once: bool,
    /// With `--once`: how long to try to reach a server.
    pub connect_timeout: Duration,
    /// Shown as `host` in statuses.
    pub host: String,
}

impl Settings {
    /// Merges the command line (with its environment fallbacks) and the config file it names,
    /// and validates the result.
    ///
    /// # Errors
    ///
    /// The first problem found, naming its origin, key and fix.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let (file, file_origin) = match &cli.config {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (FileConfig::default(), "configuration".to_owned()),
        };
        Self::merge(cli, &file, &file_origin)
    }

    /// Merges and validates already-parsed inputs (`file_origin` names the file in errors).
    ///
    /// # Errors
    ///
    /// The first problem found, naming its origin, key and fix.
    pub fn merge(cli: &Cli, file: &FileConfig, file_origin: &str) -> Result<Self, ConfigError> {
        let m = Merge {
            file_origin,
            from_env: &cli.secrets_from_env,
        };
        // A relative path in the file is relative to the file.
        let file_dir = cli.config.as_deref().and_then(Path::parent);
        let host = host_name();

        let (name, name_origin) = m.pick(
            cli.name.clone(),
            "--name",
            "ORCASTRATE_NAME",
            file.name.clone(),
        );
        let (name, name_origin) = match name {
            Some(n) => (n, name_origin),
            None => (
                default_name(&host),
                "host name (default for name)".to_owned(),
            ),
        };
        names::agent(&name).map_err(|e| {
            ConfigError::new(
                &name_origin,
                "name",
                format!("{e}; set name = \"web-1\" or ORCASTRATE_NAME"),
            )
        })?;

        let servers_cli = (!cli.server.is_empty()).then(|| cli.server.clone());
        let servers_file = file.server.clone().map(|s| match s {
            ServerList::One(s) => vec![s],
            ServerList::Many(v) => v,
        });
        let (servers, servers_origin) =
            m.pick(servers_cli, "--server", "ORCASTRATE_SERVER", servers_file);
        let servers: Vec<String> = servers
            .unwrap_or_default()
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(ConfigError::new(
                servers_origin,
                "server",
                "no MQTT server: set server = [\"mqtt://gateway-host:1883\"] or ORCASTRATE_SERVER",
            ));
        }
        for url in &servers {
            orcastrate_broker::mqtt::parse_url(url).map_err(|e| {
                let problem = crate::redact::redact(&e.to_string()).into_owned();
                ConfigError::new(&servers_origin, "server", problem)
            })?;
        }

        let (token, token_origin) = m.secret(
            Secret {
                key: "token",
                flag: "--token",
                var: "CONNECT_TOKEN",
                file_flag: "--token-file",
                file_var: "ORCASTRATE_TOKEN_FILE",
                credential: "token",
            },
            (cli.token.clone(), cli.token_file.clone()),
            (file.token.clone(), file.token_file.clone()),
            file_dir,
        )?;
        let token = token.map(|t| t.trim().to_owned()).unwrap_or_default();
        if token.is_empty() {
            return Err(ConfigError::new(
                token_origin,
                "token",
                "no token: set token = \"…\" (the one the gateway lists for this agent's name), token_file, or CONNECT_TOKEN",
            ));
        }
        if token.contains(['\n', '\r']) {
            return Err(ConfigError::new(token_origin, "token", "must be one line"));
        }

        let (repo, repo_origin) =
            m.pick(cli.repo.clone(), "--repo", "REPO_NAME", file.repo.clone());
        let repo = repo.ok_or_else(|| {
            ConfigError::new(
                &repo_origin,
                "repo",
                "no repository: set repo = \"owner/name\" or REPO_NAME",
            )
        })?;
        let repo = names::repo(&repo)
            .map_err(|e| ConfigError::new(&repo_origin, "repo", e.to_string()))?;

        let (env, env_origin) = m.pick(
            cli.environment.clone(),
            "--env",
            "ENVIRONMENT",
            file.env.clone(),
        );
        let env = env.ok_or_else(|| {
            ConfigError::new(
                &env_origin,
                "env",
                "no environment: set env = \"production\" or ENVIRONMENT",
            )
        })?;
        names::env(&env).map_err(|e| ConfigError::new(&env_origin, "env", e.to_string()))?;

        let (git_url, git_origin) = m.pick(
            cli.git_url.clone(),
            "--git-url",
            "ORCASTRATE_GIT_URL",
            file.git_url.clone(),
        );
        let git_url = git_url
            .map(|u| u.trim().to_owned())
            .unwrap_or_else(|| format!("https://github.com/{repo}.git"));
        if git_url.is_empty() || git_url.starts_with('-') || git_url.contains(['\n', '\r']) {
            return Err(ConfigError::new(
                git_origin,
                "git_url",
                "not a git URL: use e.g. git@github.com:owner/name.git or a local path",
            ));
        }

        let (root, root_origin) = m.pick(
            cli.root.clone(),
            "--root",
            "ORCASTRATE_ROOT",
            file.root.clone(),
        );
        let root = root.unwrap_or_else(|| PathBuf::from("."));
        // A relative root in the file is relative to the file; from a flag or the
        // environment, to the working directory.
        let root_file = cli.config.as_deref().filter(|_| cli.root.is_none());
        let root = absolute_root(&root, root_file)
            .map_err(|p| ConfigError::new(&root_origin, "root", p))?;

        let keep_releases = match file.keep_releases {
            None => DEFAULT_KEEP_RELEASES,
            Some(n) if (1..=1000).contains(&n) => n as usize,
            Some(_) => {
                return Err(ConfigError::new(
                    file_origin,
                    "keep_releases",
                    "must be from 1 to 1000 (2 or more keeps a release to roll back to)",
                ))
            }
        };

        let keys_cli = (!cli.gateway_keys.is_empty()).then(|| cli.gateway_keys.clone());
        let (keys, keys_origin) = m.pick(
            keys_cli,
            "--gateway-key",
            "ORCASTRATE_GATEWAY_KEYS",
            file.gateway_public_keys.clone(),
        );
        let keys: Vec<String> = keys
            .unwrap_or_default()
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            return Err(ConfigError::new(
                keys_origin,
                "gateway_public_keys",
                "no gateway public key, so no order could ever be trusted: set gateway_public_keys = [\"…\"] \
                 or ORCASTRATE_GATEWAY_KEYS to what `orcastrate-gateway public-key` prints",
            ));
        }
        let verifier = OrderVerifier::new(&keys)
            .map_err(|e| ConfigError::new(&keys_origin, "gateway_public_keys", e.to_string()))?;

        let (config_key, key_origin) = m.secret(
            Secret {
                key: "config_key",
                flag: "--config-key",
                var: "CONFIG_KEY",
                file_flag: "--config-key-file",
                file_var: "ORCASTRATE_CONFIG_KEY_FILE",
                credential: "config_key",
            },
            (cli.config_key.clone(), cli.config_key_file.clone()),
            (file.config_key.clone(), file.config_key_file.clone()),
            file_dir,
        )?;
        let config_key = config_key
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        if let Some(key) = &config_key {
            crate::secrets::check_key(key).map_err(|e| {
                ConfigError::new(
                    &key_origin,
                    "config_key",
                    format!("{e}: use the key `orcastrate-crypt keygen` printed"),
                )
            })?;
        }

        let (run_as, run_as_origin) = m.pick(
            cli.run_as.clone(),
            "--run-as",
            "ORCASTRATE_RUN_AS",
            file.run_as.clone(),
        );
        let run_as = match run_as.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(user) => {
                let found = crate::users::lookup(&user)
                    .map_err(|p| ConfigError::new(&run_as_origin, "run_as", p))?;
                if current_uid() == found.uid {
                    None
                } else if current_uid() != 0 {
                    return Err(ConfigError::new(
                        run_as_origin,
                        "run_as",
                        format!(
                            "switching to {user:?} needs the agent to run as root: run it as root, or remove run_as"
                        ),
                    ));
                } else {
                    Some(found)
                }
            }
        };

        let on_shutdown = match file.on_shutdown.as_deref() {
            None | Some("keep") => OnShutdown::Keep,
            Some("stop") => OnShutdown::Stop,
            Some(other) => {
                return Err(ConfigError::new(
                    file_origin,
                    "on_shutdown",
                    format!("{other:?} is not allowed: use \"keep\" or \"stop\""),
                ))
            }
        };

        let (prefix, prefix_origin) = m.pick(
            cli.prefix.clone(),
            "--prefix",
            "ORCASTRATE_PREFIX",
            file.prefix.clone(),
        );
        let prefix = prefix.unwrap_or_else(|| orcastrate_broker::DEFAULT_PREFIX.to_owned());
        let prefix = prefix.trim_end_matches('/').to_owned();
        if prefix.is_empty() || prefix.contains(['+', '#', '\n']) || prefix.starts_with('$') {
            return Err(ConfigError::new(
                prefix_origin,
                "prefix",
                "must be a plain topic level without + # or a leading $ (default \"orcastrate\")",
            ));
        }

        let steps_file = file.steps.clone().unwrap_or_default();
        let one_line = |key: &str, v: &str| {
            if v.contains(['\n', '\r']) {
                Err(ConfigError::new(
                    file_origin,
                    key,
                    "must be one line (join commands with &&)",
                ))
            } else {
                Ok(v.trim().to_owned())
            }
        };
        let install = one_line(
            "steps.install",
            steps_file.install.as_deref().unwrap_or(DEFAULT_INSTALL),
        )?;
        let build = one_line("steps.build", steps_file.build.as_deref().unwrap_or(""))?;
        let start = one_line(
            "steps.start",
            steps_file.start.as_deref().unwrap_or(DEFAULT_START),
        )?;
        if start.is_empty() {
            return Err(ConfigError::new(
                file_origin,
                "steps.start",
                "must not be empty: the command that runs the app in the foreground, e.g. \"npm run start\"",
            ));
        }
        let stop_timeout = seconds(
            file_origin,
            "steps.stop_timeout_s",
            steps_file.stop_timeout_s,
            DEFAULT_STOP_TIMEOUT_S,
            0,
            3600,
        )?;

        let shared = file.shared.clone().unwrap_or_default();
        let shared_files = shared_paths(
            file_origin,
            "shared.files",
            shared.files.unwrap_or_default(),
        )?;
        let shared_dirs =
            shared_paths(file_origin, "shared.dirs", shared.dirs.unwrap_or_default())?;

        let health_file = file.health.clone().unwrap_or_default();
        let check = match (health_file.http, health_file.command) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    file_origin,
                    "health",
                    "set either http or command, not both",
                ))
            }
            (Some(url), None) => {
                parse_http_url(&url)
                    .map_err(|p| ConfigError::new(file_origin, "health.http", p))?;
                HealthCheck::Http(url)
            }
            (None, Some(cmd)) => HealthCheck::Command(one_line("health.command", &cmd)?),
            (None, None) => HealthCheck::Running,
        };
        let timeout = seconds(
            file_origin,
            "health.timeout_s",
            health_file.timeout_s,
            DEFAULT_HEALTH_TIMEOUT_S,
            1,
            86_400,
        )?;
        let interval = seconds(
            file_origin,
            "health.interval_s",
            health_file.interval_s,
            DEFAULT_HEALTH_INTERVAL_S,
            1,
            86_400,
        )?;

        let git_file = file.git.clone().unwrap_or_default();
        let fetch_timeout = seconds(
            file_origin,
            "git.fetch_timeout_s",
            git_file.fetch_timeout_s,
            DEFAULT_FETCH_TIMEOUT_S,
            1,
            86_400,
        )?;
        let fetch_attempts = match git_file.fetch_attempts {
            None => DEFAULT_FETCH_ATTEMPTS,
            Some(n) if (1..=20).contains(&n) => n as u32,
            Some(n) => {
                return Err(ConfigError::new(
                    file_origin,
                    "git.fetch_attempts",
                    format!("{n} is out of range: use 1 to 20"),
                ))
            }
        };

        let connect_timeout = Duration::from_secs(
            cli.connect_timeout_s
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_S)
                .max(1),
        );

        Ok(Self {
            name,
            servers,
            token,
            repo,
            env,
            git_url,
            root,
            keep_releases,
            verifier,
            config_key,
            run_as,
            on_shutdown,
            prefix,
            steps: StepSettings {
                install,
                build,
                start,
                stop_timeout,
            },
            shared_files,
            shared_dirs,
            health: HealthSettings {
                check,
                timeout,
                interval,
            },
            git: GitSettings {
                fetch_timeout,
                fetch_attempts,
            },
            once: cli.once,
            connect_timeout,
            host,
        })
    }
}

struct Merge<'a> {
    file_origin: &'a str,
    /// Variables the agent moved out of its environment (see `crate::handoff`).
    from_env: &'a [String],
}

impl Merge<'_> {
    /// Flag (or its environment variable) beats the file; returns the value and its origin.
    fn pick<T: PartialEq>(
        &self,
        cli: Option<T>,
        flag: &str,
        var: &str,
        file: Option<T>,
    ) -> (Option<T>, String) {
        match cli {
            Some(v) => {
                let origin =
                    if std::env::var_os(var).is_some() || self.from_env.iter().any(|v| v == var) {
                        format!("environment variable {var}")
                    } else {
                        flag.to_owned()
                    };
                (Some(v), origin)
            }
            None => (file, self.file_origin.to_owned()),
        }
    }
}

/// The names of a secret that can be given as a value or as a file.
struct Secret {
    /// The key in the file; with `_file` appended, the key of the file holding it.
    key: &'static str,
    flag: &'static str,
    var: &'static str,
    file_flag: &'static str,
    file_var: &'static str,
    /// Its name in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`), the last resort.
    credential: &'static str,
}

impl Merge<'_> {
    /// A secret given as a value or a file, on the command line (or environment) or in the
    /// config file, or as a systemd credential; returns it and its origin.
    fn secret(
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
                let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
                    return Ok((None, self.file_origin.to_owned()));
                };
                let path = Path::new(&dir).join(names.credential);
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

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            &origin,
            "(file)",
            format!("cannot read the config file: {e}; check --config"),
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        let message = e.message().to_owned();
        let key = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_else(|| "(file)".to_owned());
        ConfigError::new(
            &origin,
            &key,
            format!("{message} (see config/agent.example.toml for every key)"),
        )
    })
}

fn seconds(
    origin: &str,
    key: &str,
    value: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(Duration::from_secs(default)),
        Some(v) if v >= 0 && (min..=max).contains(&(v as u64)) => Ok(Duration::from_secs(v as u64)),
        Some(v) => Err(ConfigError::new(
            origin,
            key,
            format!("{v} is out of range: use {min} to {max} seconds"),
        )),
    }
}

fn shared_paths(origin: &str, key: &str, values: Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    values
        .into_iter()
        .map(|v| {
            let path = PathBuf::from(v.trim().trim_end_matches('/'));
            let plain = !path.as_os_str().is_empty()
                && path.components().all(|c| matches!(c, Component::Normal(_)));
            if plain {
                Ok(path)
            } else {
                Err(ConfigError::new(
                    origin,
                    key,
                    format!("{v:?} must be a relative path inside the release, without .. (e.g. \"uploads\")"),
                ))
            }
        })
        .collect()
}

/// Makes `root` absolute: relative to the config file's directory when it came from there,
/// else to the working directory.
fn absolute_root(root: &Path, config: Option<&Path>) -> Result<PathBuf, String> {
    let base = match config.and_then(Path::parent) {
        Some(dir) if !root.is_absolute() && !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::env::current_dir()
            .map_err(|e| format!("cannot read the working directory: {e}"))?,
    };
    let path = if root.is_absolute() {
        root.to_path_buf()
    } else {
        base.join(root)
    };
    std::fs::create_dir_all(&path).map_err(|e| {
        format!(
            "cannot create {}: {e}; create it or set root to a writable directory",
            path.display()
        )
    })?;
    path.canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// The host name, from the kernel.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A valid agent name made from the host name (`Web.1` → `web-1`).
fn default_name(host: &str) -> String {
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

/// Host, port and request path of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpTarget {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

/// Parses an `http://host[:port][/path]` URL.
///
/// # Errors
///
/// A message saying what to write instead.
pub(crate) fn parse_http_url(url: &str) -> Result<HttpTarget, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            "https is not supported for the built-in check (the app runs on this host): use http://127.0.0.1:PORT/… or command = \"curl -fsS https://…\"".to_owned()
        } else {
            format!("{url:?} is not an http:// URL: use e.g. \"http://127.0.0.1:3000/health\"")
        }
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad =
        || format!("{url:?} has no usable host:port: use e.g. \"http://127.0.0.1:3000/health\"");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 80,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (authority.to_owned(), 80),
        }
    };
    if host.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err(bad());
    }
    Ok(HttpTarget {
        host,
        port,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_file() -> FileConfig {
        let key = orcastrate_broker::OrderSigner::generate().public_key_base64();
        toml::from_str(&format!(
            r#"
            name = "web-1"
            server = "mqtt://127.0.0.1:1883"
            token = "t0k"
            repo = "Octo-Org/Web"
            env = "production"
            root = "{}"
            gateway_public_keys = ["{key}"]
            "#,
            std::env::temp_dir()
                .join("orcastrate-agent-config-test")
                .display()
        ))
        .unwrap()
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:3000/health").unwrap(),
            HttpTarget {
                host: "127.0.0.1".into(),
                port: 3000,
                path: "/health".into()
            }
        );
        assert_eq!(parse_http_url("http://localhost").unwrap().port, 80);
        assert_eq!(parse_http_url("http://[::1]:8/x").unwrap().host, "::1");
        assert!(parse_http_url("https://x/").unwrap_err().contains("curl"));
        assert!(parse_http_url("ftp://x/").is_err());
        assert!(parse_http_url("http://:80/").is_err());
        assert!(parse_http_url("http://h:x/").is_err());
    }

    #[test]
    fn defaults_apply() {
        let s = Settings::merge(&Cli::default(), &base_file(), "agent.toml").unwrap();
        assert_eq!(s.repo, "octo-org/web");
        assert_eq!(s.steps.install, "npm install");
        assert_eq!(s.steps.build, "");
        assert_eq!(s.steps.start, "npm run start");
        assert_eq!(s.steps.stop_timeout, Duration::from_secs(10));
        assert_eq!(s.keep_releases, 5);
        assert_eq!(s.health.timeout, Duration::from_secs(30));
        assert_eq!(s.health.interval, Duration::from_secs(15));
        assert_eq!(s.health.check, HealthCheck::Running);
        assert_eq!(s.on_shutdown, OnShutdown::Keep);
        assert_eq!(s.git_url, "https://github.com/octo-org/web.git");
        assert_eq!(s.prefix, "orcastrate");
    }

    #[test]
    fn flag_beats_file() {
        let cli = Cli {
            repo: Some("other/repo".into()),
            server: vec!["mqtt://a:1".into(), " mqtt://b:2".into()],
            ..Cli::default()
        };
        let s = Settings::merge(&cli, &base_file(), "agent.toml").unwrap();
        assert_eq!(s.repo, "other/repo");
        assert_eq!(s.servers, vec!["mqtt://a:1", "mqtt://b:2"]);
    }

    #[test]
    fn errors_name_origin_and_key() {
        let mut f = base_file();
        f.env = Some("Prod.1".into());
        let e = Settings::merge(&Cli::default(), &f, "/etc/agent.toml").unwrap_err();
        assert_eq!(e.origin, "/etc/agent.toml");
        assert_eq!(e.key, "env");

        let mut f = base_file();
        f.health = Some(HealthFile {
            timeout_s: Some(0),
            ..HealthFile::default()
        });
        let e = Settings::merge(&Cli::default(), &f, "a.toml").unwrap_err();
        assert_eq!(e.key, "health.timeout_s");

        let mut f = base_file();
        f.gateway_public_keys = None;
        let e = Settings::merge(&Cli::default(), &f, "a.toml").unwrap_err();
        assert_eq!(e.key, "gateway_public_keys");

        let mut f = base_file();
        f.shared = Some(SharedFile {
            files: Some(vec!["../etc/passwd".into()]),
            dirs: None,
        });
        let e = Settings::merge(&Cli::default(), &f, "a.toml").unwrap_err();
        assert_eq!(e.key, "shared.files");

        let mut f = base_file();
        f.on_shutdown = Some("maybe".into());
        assert_eq!(
            Settings::merge(&Cli::default(), &f, "a.toml")
                .unwrap_err()
                .key,
            "on_shutdown"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "name = \"a\"\n\n[steps]\ninstal = \"x\"\n").unwrap();
        let e = read_file(&path).unwrap_err();
        assert_eq!(e.key, "line 4");
        assert!(e.problem.contains("instal"), "{e}");
    }

    #[test]
    fn the_example_config_names_every_key() {
        // Every commented `key = value` line, uncommented, is a key the agent knows, and
        // together they set every key (a key missing from the example stays None).
        let uncommented: String = crate::EXAMPLE_CONFIG
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let file: FileConfig = toml::from_str(&uncommented).unwrap();
        let shown = format!("{file:?}");
        assert!(
            !shown.contains("None"),
            "a key is not in the example: {shown}"
        );

        // As shipped (everything commented) it parses too.
        toml::from_str::<FileConfig>(crate::EXAMPLE_CONFIG).unwrap();
    }

    #[test]
    fn secrets_from_files_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
        let mut f = base_file();
        f.token = None;
        f.token_file = Some("token".into());
        let cli = Cli {
            config: Some(dir.path().join("agent.toml")),
            ..Cli::default()
        };
        assert_eq!(
            Settings::merge(&cli, &f, "a.toml").unwrap().token,
            "from-file"
        );

        f.token = Some("both".into());
        assert_eq!(
            Settings::merge(&cli, &f, "a.toml").unwrap_err().key,
            "token"
        );

        f.token = None;
        f.token_file = Some("missing".into());
        let e = Settings::merge(&cli, &f, "a.toml").unwrap_err();
        assert_eq!(e.key, "token_file");
        assert!(e.problem.contains("missing"), "{e}");

        let mut f = base_file();
        f.run_as = Some("no-such-user-here".into());
        assert_eq!(
            Settings::merge(&Cli::default(), &f, "a.toml")
                .unwrap_err()
                .key,
            "run_as"
        );
    }

    #[test]
    fn default_names_are_valid() {
        assert_eq!(default_name("Web.Host_1"), "web-host_1");
        assert_eq!(default_name("--"), "agent");
        assert!(names::agent(&default_name(&host_name())).is_ok());
    }
}
