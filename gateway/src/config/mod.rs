//! Gateway configuration in stages: the TOML file as users write it ([`FileConfig`]), the
//! original tool's environment variables ([`Env`], passed in as a value) and command-line
//! [`Overrides`], merged (flag > environment > file) and validated by small pure functions,
//! one per section, into [`Settings`] and the runtime tables other modules use.
//!
//! Every problem is a [`ConfigError`] (`orcastrate_broker`'s, shared with the agent) naming
//! where the value came from, the key and the fix, and all problems of a configuration are
//! reported at once, one per line.
//!
//! - `file`: the raw TOML shape and [`read_file`].
//! - `env`: the environment as a value.
//! - `http`, `mqtt`, `access`: the validation of `[http]`, `[mqtt]`, and `[[clients]]` with
//!   `[[repos]]`.
//! - `runtime`: the tables built from them ([`Access`], [`Client`], [`MqttMode`], …).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use orcastrate_broker::Problems;

mod access;
mod env;
mod file;
mod http;
mod mqtt;
mod runtime;
#[cfg(test)]
mod tests;

pub use env::{Env, ProcessEnv};
pub use file::{
    read_file, AdminFile, ClientFile, FileConfig, GithubFile, HttpFile, MqttFile, Overrides,
    RepoFile,
};
pub use orcastrate_broker::ConfigError;
pub use runtime::{Access, Client, ExternalMqtt, HttpLimits, MqttMode, RepoRoute, Role};

/// GitHub's own cap on webhook payloads; a larger `max_body_bytes` is pointless.
pub const GITHUB_MAX_BODY: usize = 26_214_400;

/// Shortest admin token accepted: 16 characters of a random token are beyond guessing.
const MIN_ADMIN_TOKEN: usize = 16;

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    /// PEM certificate chain and key: HTTPS when set.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    pub max_body_bytes: usize,
    /// Timeouts and caps of the HTTP listener.
    pub http_limits: HttpLimits,
    /// MQTT over WebSocket at `GET /mqtt` on the HTTP listener (`[http] mqtt_websocket`).
    pub mqtt_websocket: bool,
    pub mqtt: MqttMode,
    pub prefix: String,
    pub github_secret: String,
    pub admin_tokens: Vec<String>,
    /// Read-only board and API sign-ins (`[admin] viewer_tokens`).
    pub viewer_tokens: Vec<String>,
    pub access: Access,
    /// The config file, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// GitHub deployments and `[[notify]]` (the outbox's destinations).
    pub outbox: crate::outbox::OutboxConfig,
    /// Where the board links commits: the web address of the GitHub `[github] api_url`
    /// names, if it can be told from it.
    pub github_web: Option<String>,
}

impl Settings {
    /// Merges file, environment and overrides, and validates the result.
    ///
    /// Pure: the environment is `env`, and the only reads are of the files the
    /// configuration names for checking (`[mqtt] ca_file`).
    ///
    /// # Errors
    ///
    /// Every problem found, each naming its origin, key and fix.
    pub fn build(
        file: FileConfig,
        config_file: Option<PathBuf>,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let where_ = origin(config_file.as_deref());
        let data_dir = overrides
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let mut p = Problems::default();
        let http = p.check(http::section(file.http, overrides, env, &where_));
        let prefix = p.check(mqtt::prefix(&file.mqtt, &where_));
        let mqtt = p.check(mqtt::mode(file.mqtt, overrides, env, &where_));
        let github_secret = p.check(github_secret(file.github.secret, env, &where_));
        let github_web = crate::outbox::config::github_web(file.github.api_url.as_deref());
        let outbox = crate::outbox::config::section(
            file.github.token,
            file.github.api_url,
            file.notify,
            env,
            &where_,
        )
        .unwrap_or_else(|errors| {
            errors.into_iter().for_each(|e| p.push(e));
            crate::outbox::OutboxConfig::default()
        });
        let admin_tokens = p.check(admin_tokens(file.admin.tokens, env, &where_));
        if file
            .admin
            .viewer_tokens
            .iter()
            .any(|t| t.len() < MIN_ADMIN_TOKEN)
        {
            p.push(ConfigError::new(
                &where_,
                "[admin] viewer_tokens",
                "a viewer token is shorter than 16 characters: use a long random one (openssl rand -hex 24)",
            ));
        }
        let access = p.check(access::build(file.clients, file.repos, env, &where_));
        if let (Some(MqttMode::External(external)), Some(access)) = (&mqtt, &access) {
            if access.client(&external.username).is_some() {
                p.push(ConfigError::new(
                    &where_,
                    "[mqtt] username",
                    format!(
                        "{:?} is also a [[clients]] name: give the gateway its own login on the engine",
                        external.username
                    ),
                ));
            }
        }
        let (
            Some(http),
            Some(prefix),
            Some(mqtt),
            Some(github_secret),
            Some(admin_tokens),
            Some(access),
        ) = (http, prefix, mqtt, github_secret, admin_tokens, access)
        else {
            return Err(p.fail(&where_));
        };
        p.finish(
            Some(Settings {
                data_dir,
                http_listen: http.listen,
                http_tls: http.tls,
                max_body_bytes: http.max_body_bytes,
                http_limits: http.limits,
                mqtt_websocket: http.mqtt_websocket,
                mqtt,
                prefix,
                github_secret,
                admin_tokens,
                viewer_tokens: file.admin.viewer_tokens,
                access,
                config_file,
                outbox,
                github_web,
            }),
            &where_,
        )
    }

    /// Loads everything: the file (if any), the environment, the overrides.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or parsed, or any value is invalid.
    pub fn load(
        config_file: Option<&Path>,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file = match config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::build(file, config_file.map(Path::to_path_buf), env, overrides)
    }

    /// Where the settings came from, for errors found after the validation (the file, or
    /// the environment when there is none).
    pub fn origin(&self) -> String {
        origin(self.config_file.as_deref())
    }
}

/// Re-reads the parts that reload on SIGHUP.
///
/// # Errors
///
/// When the file cannot be read or parsed, or a client or repo is invalid.
pub fn reload_access(config_file: Option<&Path>, env: &dyn Env) -> Result<Access, ConfigError> {
    let file = match config_file {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    access::build(file.clients, file.repos, env, &origin(config_file))
}

/// The origin of values not from a flag or a named variable.
fn origin(config_file: Option<&Path>) -> String {
    config_file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the environment".into())
}

/// `[github] secret` or `GITHUB_SECRET`.
fn github_secret(
    from_file: Option<String>,
    env: &dyn Env,
    where_: &str,
) -> Result<String, ConfigError> {
    env.var("GITHUB_SECRET")
        .or(from_file)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                where_,
                "[github] secret",
                "no GitHub webhook secret: set [github] secret or GITHUB_SECRET to the secret of the repository's webhook",
            )
        })
}

/// `[admin] tokens` plus `ORCASTRATE_ADMIN_TOKEN` (comma-separated).
fn admin_tokens(
    mut tokens: Vec<String>,
    env: &dyn Env,
    where_: &str,
) -> Result<Vec<String>, ConfigError> {
    let problem = "an admin token is shorter than 16 characters: use a long random one (openssl rand -hex 24)";
    let short = |list: &[String]| list.iter().any(|t| t.len() < MIN_ADMIN_TOKEN);
    let mut p = Problems::default();
    if short(&tokens) {
        p.push(ConfigError::new(where_, "[admin] tokens", problem));
    }
    if let Some(more) = env.var("ORCASTRATE_ADMIN_TOKEN") {
        let more = env::split_list(&more);
        if short(&more) {
            p.push(ConfigError::new(
                "environment variable ORCASTRATE_ADMIN_TOKEN",
                "ORCASTRATE_ADMIN_TOKEN",
                problem,
            ));
        }
        tokens.extend(more);
    }
    p.finish(Some(tokens), where_)
}
