//! The config file as users write it: every key optional (flags and the environment can
//! supply them), unknown keys refused with the line they are on.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The config file as users write it (every key optional: flags and the environment can
/// supply them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: Option<String>,
    pub server: Option<ServerList>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
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
    pub logs: Option<LogsFile>,
    pub proxy: Option<ProxyFile>,
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

/// `[logs]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsFile {
    pub app_max_bytes: Option<i64>,
    pub app_keep: Option<i64>,
}

/// `[proxy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub listen: Option<String>,
    pub drain_s: Option<i64>,
    pub port_var: Option<String>,
    pub proxy_protocol: Option<String>,
}

/// Reads and parses the config file.
///
/// # Errors
///
/// When it cannot be read or is not valid TOML of this shape, naming the line.
pub(crate) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    orcastrate_broker::config_error::read_toml(path, "config/agent.example.toml")
}
