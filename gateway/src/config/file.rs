//! The raw input as users write it: the config file (serde structs with every key optional,
//! so that the validation, [`super::Settings::build`], can name each missing or bad key) and
//! the command-line [`Overrides`]. Tests build these in code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The gateway config file as users write it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub http: HttpFile,
    #[serde(default)]
    pub mqtt: MqttFile,
    #[serde(default)]
    pub github: GithubFile,
    #[serde(default)]
    pub clients: Vec<ClientFile>,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub repos: Vec<RepoFile>,
    /// `[[notify]]`: see `crate::outbox::config`.
    #[serde(default)]
    pub notify: Vec<crate::outbox::config::NotifyFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub listen: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub header_timeout_s: Option<u64>,
    pub body_timeout_s: Option<u64>,
    pub body_min_bytes_per_s: Option<u64>,
    pub body_buffer_bytes: Option<usize>,
    pub shutdown_timeout_s: Option<u64>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub mqtt_websocket: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFile {
    pub mode: Option<String>,
    pub listen: Option<String>,
    pub prefix: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub republish_interval_s: Option<u64>,
    pub hooks_listen: Option<String>,
    pub hooks_token: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub max_log_bytes: Option<usize>,
    pub max_topics_per_client: Option<usize>,
    pub max_subscriptions_per_client: Option<usize>,
    pub max_inflight: Option<usize>,
    pub max_connections_per_client: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubFile {
    pub secret: Option<String>,
    /// Deployments API access (see `crate::outbox`).
    pub token: Option<String>,
    pub api_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub name: String,
    pub token: String,
    pub scopes: Option<Vec<String>>,
    pub role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub viewer_tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoFile {
    pub name: String,
    #[serde(default)]
    pub branches: BTreeMap<String, String>,
    /// `[repos.rollout.ENV]`: waves of that env (see `crate::rollout::config`).
    #[serde(default)]
    pub rollout: BTreeMap<String, crate::rollout::config::RolloutFile>,
}

/// Values from flags and the environment that override the file (`None`: not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_listen: Option<String>,
    pub mqtt_listen: Option<String>,
}

/// Reads and parses a config file.
///
/// # Errors
///
/// When the file cannot be read or is not TOML of this shape (unknown keys included).
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    orcastrate_broker::config_error::read_toml(path, "config/gateway.example.toml")
}
