//! Configuration in stages: the file as users write it ([`FileConfig`]), merged with the
//! command line and the [`Environment`] and validated by small pure functions, one per
//! section, into the [`Settings`] the agent runs with.
//!
//! A flag beats its environment variable, which beats the file. Every problem names where
//! the value came from (the file, a flag or an environment variable), the key and how to
//! fix it, and all the problems of a configuration are reported at once. The one side
//! effect, creating `root`, happens after the validation passed ([`Settings::load`]).
//!
//! - `file`: the raw TOML shape.
//! - `environment`: the process environment as a value, and where each value came from.
//! - `identity`: who the agent is and where it connects (name, server, token, repo, …).
//! - `deploy`: how a deploy runs (steps, shared, health, git, …).
//! - [`ConfigError`] and the collector of problems are `orcastrate_broker`'s, shared with the
//!   gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orcastrate_broker::OrderVerifier;

use crate::cli::Cli;
pub use crate::users::RunAs;

mod deploy;
mod environment;
mod file;
mod identity;
mod proxy;
#[cfg(test)]
mod tests;

pub use crate::app_log::AppLogLimits;
pub(crate) use deploy::{parse_http_url, HttpTarget};
pub use deploy::{DEFAULT_APP_LOG_KEEP, DEFAULT_APP_LOG_MAX_BYTES};
pub use environment::Environment;
pub use file::{
    FileConfig, GitFile, HealthFile, LogsFile, ProxyFile, ServerList, SharedFile, StepsFile,
};
pub use orcastrate_broker::ConfigError;
use orcastrate_broker::Problems;
pub(crate) use proxy::health_on;
pub use proxy::{
    ProxyProtocol, ProxySettings, DEFAULT_DRAIN_S, DEFAULT_PORT_VAR, PORT_PLACEHOLDER,
};

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
    /// The same GET to a release's private port behind `[proxy] proxy_protocol`, starting
    /// with the header for the agent's own connections (v1 `UNKNOWN`, v2 `LOCAL`).
    HttpBehindProxy(String, ProxyProtocol),
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
    /// Where `name` came from (a flag, `ORCASTRATE_NAME`, the config file, or the host
    /// name), logged at start-up: an agent moved from the Node tool must log in with the
    /// name its token is paired with in the gateway's `TRUSTED_NAMES`.
    pub name_origin: String,
    pub servers: Vec<String>,
    /// The certificates `mqtts://` and `wss://` servers are checked against (`ca_file`);
    /// `None`: the system's roots (and `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
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
    /// Cap and rotation of the app's log files (`[logs]`).
    pub app_log: AppLogLimits,
    /// The agent binary, which runs the app's log writer as its own process (so the app
    /// never writes into a pipe of a dead agent); `None` (the agent embedded as a library):
    /// a thread of the agent writes the log. `main` sets it.
    pub log_writer: Option<PathBuf>,
    /// `[proxy]`: blue/green switches behind the agent's own TCP proxy; `None`: the app
    /// owns its port and a deploy stops the old app before starting the new one.
    pub proxy: Option<ProxySettings>,
    /// `--once`.
    pub once: bool,
    /// With `--once`: how long to try to reach a server.
    pub connect_timeout: Duration,
    /// Shown as `host` in statuses.
    pub host: String,
}

impl Settings {
    /// Reads the config file the command line names and this process's environment (the
    /// only place the agent's configuration reads process state), validates, then creates
    /// `root`.
    ///
    /// # Errors
    ///
    /// Every problem found, naming its origin, key and fix.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let (file, file_origin) = match &cli.config {
            Some(path) => (file::read_file(path)?, path.display().to_string()),
            None => (FileConfig::default(), "configuration".to_owned()),
        };
        Self::merge(cli, &file, &file_origin, &Environment::current())
    }

    /// Only `root`, as the agent would run with it (for `orcastrate-agent logs`, which needs
    /// neither the token nor the keys); not created.
    ///
    /// # Errors
    ///
    /// When the config file cannot be read or `root` cannot be resolved.
    pub fn root_of(cli: &Cli) -> Result<PathBuf, ConfigError> {
        let (file, file_origin) = match &cli.config {
            Some(path) => (file::read_file(path)?, path.display().to_string()),
            None => (FileConfig::default(), "configuration".to_owned()),
        };
        let env = Environment::current();
        let src = environment::Sources {
            file_origin: &file_origin,
            from_env: &cli.secrets_from_env,
            env: &env,
        };
        identity::root(&src, cli, &file)
    }

    /// Merges and validates already-parsed inputs in the environment `env` (`file_origin`
    /// names the file in errors), then creates `root`: the one side effect, after every
    /// check passed.
    ///
    /// # Errors
    ///
    /// Every problem found, naming its origin, key and fix.
    pub fn merge(
        cli: &Cli,
        file: &FileConfig,
        file_origin: &str,
        env: &Environment,
    ) -> Result<Self, ConfigError> {
        let mut settings = Self::validate(cli, file, file_origin, env)?;
        let src = environment::Sources {
            file_origin,
            from_env: &cli.secrets_from_env,
            env,
        };
        settings.root = create_root(&settings.root, &identity::root_origin(&src, cli, file))?;
        Ok(settings)
    }

    /// Validates without side effects: the environment comes in as a value, `root` is made
    /// absolute but not created, and the only reads are of the secret files the
    /// configuration names (`token_file`, `config_key_file`, systemd credentials).
    ///
    /// # Errors
    ///
    /// Every problem found, naming its origin, key and fix.
    pub fn validate(
        cli: &Cli,
        file: &FileConfig,
        file_origin: &str,
        env: &Environment,
    ) -> Result<Self, ConfigError> {
        let src = environment::Sources {
            file_origin,
            from_env: &cli.secrets_from_env,
            env,
        };
        // A relative path in the file is relative to the file.
        let file_dir = cli.config.as_deref().and_then(Path::parent);
        let mut p = Problems::default();
        let name = p.check(identity::name(&src, cli, file));
        let servers = p.check(identity::servers(&src, cli, file));
        let ca_file = p.check(identity::ca_file(file_origin, file, file_dir));
        let token = p.check(identity::token(&src, cli, file, file_dir));
        let repo = p.check(identity::repo(&src, cli, file));
        let env_name = p.check(identity::env(&src, cli, file));
        let git_url = p
            .check(identity::git_url(&src, cli, file, repo.as_deref()))
            .flatten();
        let root = p.check(identity::root(&src, cli, file));
        let verifier = p.check(identity::verifier(&src, cli, file));
        let config_key = p.check(identity::config_key(&src, cli, file, file_dir));
        let run_as = p.check(identity::run_as(&src, cli, file));
        let prefix = p.check(identity::prefix(&src, cli, file));
        let deployment = deploy::deployment(file_origin, file, &mut p);
        let (
            Some((name, name_origin)),
            Some(servers),
            Some(token),
            Some(repo),
            Some(env_name),
            Some(git_url),
            Some(root),
            Some(verifier),
            Some(config_key),
            Some(run_as),
            Some(prefix),
            Some(deployment),
            Some(ca_file),
        ) = (
            name, servers, token, repo, env_name, git_url, root, verifier, config_key, run_as,
            prefix, deployment, ca_file,
        )
        else {
            // A git_url is missing without a valid repo: that goes with the repo's problem.
            return Err(p.fail(file_origin));
        };
        Ok(Self {
            name,
            name_origin,
            servers,
            ca_file,
            token,
            repo,
            env: env_name,
            git_url,
            root,
            keep_releases: deployment.keep_releases,
            verifier,
            config_key,
            run_as,
            on_shutdown: deployment.on_shutdown,
            prefix,
            steps: deployment.steps,
            shared_files: deployment.shared.0,
            shared_dirs: deployment.shared.1,
            health: deployment.health,
            git: deployment.git,
            app_log: deployment.app_log,
            log_writer: None,
            proxy: deployment.proxy,
            once: cli.once,
            connect_timeout: Duration::from_secs(
                cli.connect_timeout_s
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT_S)
                    .max(1),
            ),
            host: env.host_name.clone(),
        })
    }
}

/// Creates `root` (start-up, after the validation) and resolves it, so that it compares
/// equal to the working directories the kernel reports for the agent's processes.
fn create_root(root: &Path, origin: &str) -> Result<PathBuf, ConfigError> {
    std::fs::create_dir_all(root).map_err(|e| {
        ConfigError::new(
            origin,
            "root",
            format!(
                "cannot create {}: {e}; create it or set root to a writable directory",
                root.display()
            ),
        )
    })?;
    root.canonicalize().map_err(|e| {
        ConfigError::new(
            origin,
            "root",
            format!("cannot resolve {}: {e}", root.display()),
        )
    })
}
