//! Gateway configuration: the TOML file, the original tool's environment variables, and
//! command-line flags, merged (flag > environment > file) and validated once at start-up.
//!
//! Raw input ([`FileConfig`]) is kept apart from validated [`Settings`]; every error names
//! the file or variable, the key, and the fix.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orcastrate_broker::guard::Quotas;
use orcastrate_broker::names;
use serde::Deserialize;

/// GitHub's own cap on webhook payloads; a larger `max_body_bytes` is pointless.
pub const GITHUB_MAX_BODY: usize = 26_214_400;

/// Default `max_body_bytes`: 5 MiB, above nearly every real push.
const DEFAULT_MAX_BODY: usize = 5 * 1024 * 1024;

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

impl MqttFile {
    /// A key set that only the embedded broker uses.
    fn embedded_key_set(&self) -> Option<&'static str> {
        [
            ("listen", self.listen.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
            ("max_message_bytes", self.max_message_bytes.is_some()),
            ("max_log_bytes", self.max_log_bytes.is_some()),
            (
                "max_topics_per_client",
                self.max_topics_per_client.is_some(),
            ),
            (
                "max_subscriptions_per_client",
                self.max_subscriptions_per_client.is_some(),
            ),
            ("max_inflight", self.max_inflight.is_some()),
            (
                "max_connections_per_client",
                self.max_connections_per_client.is_some(),
            ),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }

    /// The embedded broker's quotas: each key between 1 and a ceiling, default when unset.
    fn quotas(&self, where_: &str) -> Result<Quotas, ConfigError> {
        let d = Quotas::default();
        let key = |name: &str, value: Option<usize>, default: usize, max: usize| match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(err(format!(
                "{where_}: [mqtt] {name} = {v}: use 1 to {max} (default {default})"
            ))),
        };
        let max_bytes = orcastrate_broker::MAX_PACKET_BYTES;
        Ok(Quotas {
            max_message_bytes: key(
                "max_message_bytes",
                self.max_message_bytes,
                d.max_message_bytes,
                max_bytes,
            )?,
            max_log_bytes: key(
                "max_log_bytes",
                self.max_log_bytes,
                d.max_log_bytes,
                max_bytes,
            )?,
            max_topics_per_client: key(
                "max_topics_per_client",
                self.max_topics_per_client,
                d.max_topics_per_client,
                10_000,
            )?,
            max_subscriptions_per_client: key(
                "max_subscriptions_per_client",
                self.max_subscriptions_per_client,
                d.max_subscriptions_per_client,
                10_000,
            )?,
            max_inflight: key("max_inflight", self.max_inflight, d.max_inflight, 65_535)?,
            max_connections_per_client: key(
                "max_connections_per_client",
                self.max_connections_per_client,
                d.max_connections_per_client,
                100_000,
            )?,
        })
    }

    /// A key set that only an external engine uses.
    fn external_key_set(&self) -> Option<&'static str> {
        [
            ("url", self.url.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("republish_interval_s", self.republish_interval_s.is_some()),
            ("hooks_listen", self.hooks_listen.is_some()),
            ("hooks_token", self.hooks_token.is_some()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubFile {
    pub secret: Option<String>,
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

/// A client that may log in to the broker and report statuses.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    pub token: String,
    /// The repo/envs it may follow and report for; `None`: all.
    pub scopes: Option<Vec<(String, String)>>,
    pub role: Role,
}

/// What a client does on the bus; decides its topic permissions on an external engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// A deploy agent: reads its scopes' orders, reports its own status and log.
    #[default]
    Agent,
    /// A person or dashboard: reads every topic of its scopes, publishes nothing.
    Watcher,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Whether this client may report for `repo`/`env`: an agent within its scopes.
    pub fn may_report(&self, repo: &str, env: &str) -> bool {
        self.role == Role::Agent
            && self
                .scopes
                .as_ref()
                .is_none_or(|s| s.iter().any(|(r, e)| r == repo && e == env))
    }
}

/// A repository and the env each of its branches deploys to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRoute {
    pub name: String,
    pub branches: BTreeMap<String, String>,
    /// The rollout policy of each env that has a `[repos.rollout.ENV]` table.
    pub rollout: BTreeMap<String, crate::rollout::config::Policy>,
}

/// The parts of the configuration that reload on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub clients: Vec<Client>,
    pub repos: Vec<RepoRoute>,
}

impl Access {
    /// The env a push to `branch` of `repo` deploys to.
    pub fn env_for(&self, repo: &str, branch: &str) -> Option<&str> {
        self.repo(repo)?.branches.get(branch).map(String::as_str)
    }

    /// The route of a repo.
    pub fn repo(&self, repo: &str) -> Option<&RepoRoute> {
        self.repos.iter().find(|r| r.name == repo)
    }

    /// Whether `repo`/`env` is one the gateway deploys.
    pub fn knows(&self, repo: &str, env: &str) -> bool {
        self.repo(repo)
            .is_some_and(|r| r.branches.values().any(|e| e == env))
    }

    /// A client by name.
    pub fn client(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }
}

/// How the gateway reaches its bus.
#[derive(Debug, Clone)]
pub enum MqttMode {
    /// The in-process rumqttd broker.
    Embedded {
        listen: SocketAddr,
        tls: Option<(PathBuf, PathBuf)>,
        quotas: Quotas,
    },
    /// An MQTT engine the gateway connects to as a client (mosquitto, NATS, EMQX).
    External(ExternalMqtt),
}

/// How the gateway logs in to an external MQTT engine.
#[derive(Clone)]
pub struct ExternalMqtt {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub username: String,
    pub password: String,
    /// The CA certificates (PEM) that sign the engine's certificate; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// How often every newest order and fleet summary is published again, besides after
    /// each reconnect.
    pub republish_interval: Duration,
    /// Where the engine's HTTP login/ACL hooks are served; `None`: not served at all.
    pub hooks_listen: Option<SocketAddr>,
    /// The bearer token the engine must send to the hooks; `None`: none asked.
    pub hooks_token: Option<String>,
}

impl std::fmt::Debug for ExternalMqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalMqtt")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("ca_file", &self.ca_file)
            .field("republish_interval", &self.republish_interval)
            .field("hooks_listen", &self.hooks_listen)
            .finish_non_exhaustive()
    }
}

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
    pub mqtt: MqttMode,
    pub prefix: String,
    pub github_secret: String,
    pub admin_tokens: Vec<String>,
    pub access: Access,
    /// The config file, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
}

/// What one HTTP client may cost the gateway: `[http]` connection cap, timeouts and
/// buffer budget. Every default is safe for a public listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open HTTP connections at once (lowered at start-up to fit the descriptor limit).
    pub max_connections: usize,
    /// Time for a request head to arrive (also the TLS handshake, and how long a kept-alive
    /// connection may stay idle between requests).
    pub header_timeout: Duration,
    /// Time a body may take, plus one second per `body_min_bytes_per_s` bytes received.
    pub body_timeout: Duration,
    pub body_min_bytes_per_s: u64,
    /// Webhook body bytes buffered at once, over all connections.
    pub body_buffer_bytes: usize,
    /// After SIGTERM, how long open requests may take before their connections are cut.
    pub shutdown_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            body_min_bytes_per_s: 16 * 1024,
            body_buffer_bytes: 64 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpLimits {
    /// Validates the `[http]` limit keys, with defaults for those not given.
    fn from_file(
        http: &HttpFile,
        max_body_bytes: usize,
        where_: &str,
    ) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let seconds = |value: Option<u64>, default: Duration, key: &str| match value {
            None => Ok(default),
            Some(s @ 1..=3600) => Ok(Duration::from_secs(s)),
            Some(s) => Err(err(format!(
                "{where_}: [http] {key} = {s}: use 1 to 3600 seconds (default {})",
                default.as_secs()
            ))),
        };
        let max_connections = http.max_connections.unwrap_or(defaults.max_connections);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(err(format!(
                "{where_}: [http] max_connections = {max_connections}: use 1 to 1000000 (default {})",
                defaults.max_connections
            )));
        }
        let body_min_bytes_per_s = http
            .body_min_bytes_per_s
            .unwrap_or(defaults.body_min_bytes_per_s);
        if body_min_bytes_per_s == 0 {
            return Err(err(format!(
                "{where_}: [http] body_min_bytes_per_s = 0: use 1 or more (default {})",
                defaults.body_min_bytes_per_s
            )));
        }
        let body_buffer_bytes = http
            .body_buffer_bytes
            .unwrap_or(defaults.body_buffer_bytes.max(max_body_bytes));
        if body_buffer_bytes < max_body_bytes {
            return Err(err(format!(
                "{where_}: [http] body_buffer_bytes = {body_buffer_bytes} is below max_body_bytes ({max_body_bytes}): the largest webhook could never be read; raise it"
            )));
        }
        Ok(Self {
            max_connections,
            header_timeout: seconds(
                http.header_timeout_s,
                defaults.header_timeout,
                "header_timeout_s",
            )?,
            body_timeout: seconds(http.body_timeout_s, defaults.body_timeout, "body_timeout_s")?,
            body_min_bytes_per_s,
            body_buffer_bytes,
            shutdown_timeout: seconds(
                http.shutdown_timeout_s,
                defaults.shutdown_timeout,
                "shutdown_timeout_s",
            )?,
        })
    }
}

/// A configuration error, already phrased for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl From<String> for ConfigError {
    fn from(msg: String) -> Self {
        Self(msg)
    }
}

/// Reads the environment variables the gateway understands.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| err(format!("config file {}: {e}", path.display())))
}

/// Splits a comma-separated list, allowing spaces after commas.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Validates `[mqtt]` for an external engine; the password may come from
/// `ORCASTRATE_MQTT_PASSWORD` so it need not sit in the file.
fn external_mqtt(mqtt: MqttFile, env: &dyn Env, where_: &str) -> Result<ExternalMqtt, ConfigError> {
    if let Some(key) = mqtt.embedded_key_set() {
        return Err(err(format!(
            "{where_}: [mqtt] {key} is for the embedded broker; with mode = \"external\" the engine listens: remove {key}"
        )));
    }
    let url = mqtt.url.filter(|u| !u.is_empty()).ok_or_else(|| {
        err(format!(
            "{where_}: [mqtt] mode = \"external\" needs url = \"mqtt://host:1883\" (or mqtts://host:8883 with ca_file)"
        ))
    })?;
    let server = orcastrate_broker::mqtt::parse_url(&url)
        .map_err(|e| err(format!("{where_}: [mqtt] url: {e}")))?;
    let username = mqtt.username.filter(|u| !u.is_empty()).ok_or_else(|| {
        err(format!(
            "{where_}: [mqtt] mode = \"external\" needs username: the gateway's own login on the engine"
        ))
    })?;
    names::agent(&username).map_err(|e| err(format!("{where_}: [mqtt] username: {e}")))?;
    let password = env
        .var("ORCASTRATE_MQTT_PASSWORD")
        .or(mqtt.password)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            err(format!(
                "{where_}: [mqtt] mode = \"external\" needs password (or ORCASTRATE_MQTT_PASSWORD): the gateway's own password on the engine"
            ))
        })?;
    if let Some(ca) = &mqtt.ca_file {
        if !server.tls {
            return Err(err(format!(
                "{where_}: [mqtt] ca_file is only used with an mqtts:// url: change url to mqtts://{}:{} or remove ca_file",
                server.host, server.port
            )));
        }
        let trust = orcastrate_broker::mqtt::Trust::CaFile(ca.clone());
        orcastrate_broker::mqtt::client_options_with(&url, "", &username, &password, &trust)
            .map_err(|e| err(format!("{where_}: [mqtt] ca_file: {e}")))?;
    }
    let republish_interval = match mqtt.republish_interval_s.unwrap_or(60) {
        0 => {
            return Err(err(format!(
                "{where_}: [mqtt] republish_interval_s = 0: use 1 or more seconds (default 60)"
            )))
        }
        s => Duration::from_secs(s),
    };
    let hooks_listen = mqtt
        .hooks_listen
        .as_deref()
        .map(|a| parse_addr(a, "[mqtt] hooks_listen"))
        .transpose()?;
    let hooks_token = mqtt.hooks_token.filter(|t| !t.is_empty());
    if hooks_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(err(format!(
            "{where_}: [mqtt] hooks_token is shorter than 16 characters: use a long random one (openssl rand -hex 24)"
        )));
    }
    if hooks_token.is_some() && hooks_listen.is_none() {
        return Err(err(format!(
            "{where_}: [mqtt] hooks_token without hooks_listen: the hooks are only served on hooks_listen, so set it (e.g. \"127.0.0.1:8081\") or remove hooks_token"
        )));
    }
    Ok(ExternalMqtt {
        url,
        username,
        password,
        ca_file: mqtt.ca_file,
        republish_interval,
        hooks_listen,
        hooks_token,
    })
}

fn parse_addr(value: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        err(format!(
            "{what} = {value:?} is not an address: write it as \"0.0.0.0:8080\" (ip:port)"
        ))
    })
}

impl Settings {
    /// Merges file, environment and overrides, and validates the result.
    pub fn build(
        mut file: FileConfig,
        config_file: Option<PathBuf>,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let where_ = config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the environment".into());
        let data_dir = overrides
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));

        let mut http_listen = parse_addr(
            overrides
                .http_listen
                .as_deref()
                .or(file.http.listen.as_deref())
                .unwrap_or("0.0.0.0:8080"),
            "[http] listen",
        )?;
        if overrides.http_listen.is_none() {
            if let Some(port) = env.var("PORT") {
                let port: u16 = port.parse().map_err(|_| {
                    err(format!(
                        "PORT = {port:?} is not a port number: use 1 to 65535"
                    ))
                })?;
                http_listen.set_port(port);
            }
        }
        let max_body_bytes = file.http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if max_body_bytes == 0 || max_body_bytes > GITHUB_MAX_BODY {
            return Err(err(format!(
                "{where_}: [http] max_body_bytes = {max_body_bytes}: use 1 to {GITHUB_MAX_BODY} (GitHub never sends more)"
            )));
        }
        let http_limits = HttpLimits::from_file(&file.http, max_body_bytes, &where_)?;
        let http_tls = match (file.http.tls_cert, file.http.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(err(format!(
                    "{where_}: [http] needs both tls_cert and tls_key for HTTPS, or neither"
                )))
            }
        };

        let prefix = file
            .mqtt
            .prefix
            .take()
            .unwrap_or_else(|| orcastrate_broker::DEFAULT_PREFIX.into());
        let mqtt = match file.mqtt.mode.as_deref().unwrap_or("embedded") {
            "embedded" => {
                if let Some(key) = file.mqtt.external_key_set() {
                    return Err(err(format!(
                        "{where_}: [mqtt] {key} is for mode = \"external\": set mode = \"external\" to use an MQTT engine, or remove {key}"
                    )));
                }
                let listen = parse_addr(
                    overrides
                        .mqtt_listen
                        .as_deref()
                        .or(file.mqtt.listen.as_deref())
                        .unwrap_or("0.0.0.0:1883"),
                    "[mqtt] listen",
                )?;
                let quotas = file.mqtt.quotas(&where_)?;
                let tls = match (file.mqtt.tls_cert, file.mqtt.tls_key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => {
                        return Err(err(format!(
                            "{where_}: [mqtt] needs both tls_cert and tls_key for TLS, or neither"
                        )))
                    }
                };
                MqttMode::Embedded {
                    listen,
                    tls,
                    quotas,
                }
            }
            "external" => MqttMode::External(external_mqtt(file.mqtt, env, &where_)?),
            other => {
                return Err(err(format!(
                    "{where_}: [mqtt] mode = {other:?}: use \"embedded\" or \"external\""
                )))
            }
        };
        if prefix.is_empty()
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains(['+', '#', '$', '\n'])
        {
            return Err(err(format!(
                "{where_}: [mqtt] prefix = {prefix:?}: use topic levels without + # $ and no leading or trailing '/'"
            )));
        }

        let github_secret = env
            .var("GITHUB_SECRET")
            .or(file.github.secret)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err(format!(
                    "no GitHub webhook secret: set [github] secret in {where_} or GITHUB_SECRET, to the secret of the repository's webhook"
                ))
            })?;

        let mut admin_tokens = file.admin.tokens;
        if let Some(tokens) = env.var("ORCASTRATE_ADMIN_TOKEN") {
            admin_tokens.extend(split_list(&tokens));
        }
        if admin_tokens.iter().any(|t| t.len() < 16) {
            return Err(err(format!(
                "{where_}: an admin token is shorter than 16 characters: use a long random one (openssl rand -hex 24)"
            )));
        }

        let access = build_access(file.clients, file.repos, env, &where_)?;
        if let MqttMode::External(external) = &mqtt {
            if access.client(&external.username).is_some() {
                return Err(err(format!(
                    "{where_}: [mqtt] username = {:?} is also a [[clients]] name: give the gateway its own login on the engine",
                    external.username
                )));
            }
        }
        Ok(Settings {
            data_dir,
            http_listen,
            http_tls,
            max_body_bytes,
            http_limits,
            mqtt,
            prefix,
            github_secret,
            admin_tokens,
            access,
            config_file,
        })
    }

    /// Loads everything: the file (if any), the environment, the overrides.
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
}

/// Re-reads the parts that reload on SIGHUP.
pub fn reload_access(config_file: Option<&Path>, env: &dyn Env) -> Result<Access, ConfigError> {
    let file = match config_file {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let where_ = config_file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the environment".into());
    build_access(file.clients, file.repos, env, &where_)
}

fn build_access(
    clients_file: Vec<ClientFile>,
    repos_file: Vec<RepoFile>,
    env: &dyn Env,
    where_: &str,
) -> Result<Access, ConfigError> {
    let mut clients = Vec::new();
    for c in clients_file {
        let name = names::agent(&c.name)
            .map_err(|e| err(format!("{where_}: [[clients]] name: {e}")))?
            .to_owned();
        if c.token.len() < 8 {
            return Err(err(format!(
                "{where_}: [[clients]] {name}: token is shorter than 8 characters: use a long random one (openssl rand -hex 24)"
            )));
        }
        let scopes = match c.scopes {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|s| parse_scope(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(format!("{where_}: [[clients]] {name} scopes: {e}")))?,
            ),
        };
        let role = match c.role.as_deref() {
            None | Some("agent") => Role::Agent,
            Some("watcher") => Role::Watcher,
            Some(other) => {
                return Err(err(format!(
                    "{where_}: [[clients]] {name} role = {other:?}: use \"agent\" (the default) or \"watcher\" (reads, never publishes)"
                )))
            }
        };
        clients.push(Client {
            name,
            token: c.token,
            scopes,
            role,
        });
    }
    let tokens = env
        .var("TOKENS")
        .map(|v| split_list(&v))
        .unwrap_or_default();
    let trusted = env
        .var("TRUSTED_NAMES")
        .map(|v| split_list(&v))
        .unwrap_or_default();
    if tokens.len() != trusted.len() {
        return Err(err(format!(
            "TOKENS has {} entries and TRUSTED_NAMES has {}: the n-th name owns the n-th token, so give both the same number",
            tokens.len(),
            trusted.len()
        )));
    }
    for (name, token) in trusted.into_iter().zip(tokens) {
        let name = names::agent(&name)
            .map_err(|e| err(format!("TRUSTED_NAMES: {e}")))?
            .to_owned();
        clients.push(Client {
            name,
            token,
            scopes: None,
            role: Role::Agent,
        });
    }
    let mut seen = HashSet::new();
    for c in &clients {
        if !seen.insert(c.name.as_str()) {
            return Err(err(format!(
                "client {:?} is defined twice ([[clients]] in {where_} or TRUSTED_NAMES): give every client its own name",
                c.name
            )));
        }
    }

    let mut repos: Vec<RepoRoute> = Vec::new();
    for r in repos_file {
        let name =
            names::repo(&r.name).map_err(|e| err(format!("{where_}: [[repos]] name: {e}")))?;
        let mut branches = BTreeMap::new();
        for (branch, env_name) in r.branches {
            names::single_line("branch", &branch)
                .map_err(|e| err(format!("{where_}: [[repos]] {name} branches: {e}")))?;
            names::env(&env_name)
                .map_err(|e| err(format!("{where_}: [[repos]] {name} branches.{branch}: {e}")))?;
            branches.insert(branch, env_name);
        }
        if repos.iter().any(|x| x.name == name) {
            return Err(err(format!(
                "{where_}: [[repos]] {name} is listed twice: merge its branches into one entry"
            )));
        }
        let envs: Vec<&str> = branches.values().map(String::as_str).collect();
        let rollout = crate::rollout::config::validate(&name, &envs, r.rollout, where_)?;
        repos.push(RepoRoute {
            name,
            branches,
            rollout,
        });
    }
    if let Some(value) = env.var("ORCASTRATE_REPOS") {
        for entry in split_list(&value) {
            let (repo, rest) = entry.split_once('@').ok_or_else(|| {
                err(format!(
                    "ORCASTRATE_REPOS entry {entry:?}: write owner/name@branch=env, e.g. octo-org/web@main=production"
                ))
            })?;
            let (branch, env_name) = rest.split_once('=').ok_or_else(|| {
                err(format!(
                    "ORCASTRATE_REPOS entry {entry:?}: write owner/name@branch=env"
                ))
            })?;
            let repo = names::repo(repo).map_err(|e| err(format!("ORCASTRATE_REPOS: {e}")))?;
            let env_name = names::env(env_name)
                .map_err(|e| err(format!("ORCASTRATE_REPOS: {e}")))?
                .to_owned();
            match repos.iter_mut().find(|r| r.name == repo) {
                Some(r) => {
                    r.branches.insert(branch.to_owned(), env_name);
                }
                None => repos.push(RepoRoute {
                    name: repo,
                    branches: BTreeMap::from([(branch.to_owned(), env_name)]),
                    rollout: BTreeMap::new(),
                }),
            }
        }
    }
    Ok(Access { clients, repos })
}

/// Parses a scope `owner/name/env`.
fn parse_scope(scope: &str) -> Result<(String, String), String> {
    let (repo, env) = scope
        .rsplit_once('/')
        .ok_or_else(|| format!("{scope:?}: write owner/name/env"))?;
    let repo = names::repo(repo).map_err(|e| e.to_string())?;
    let env = names::env(env).map_err(|e| e.to_string())?.to_owned();
    Ok((repo, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str, env: &dyn Env) -> Result<Settings, ConfigError> {
        Settings::build(
            toml::from_str(toml_text).unwrap(),
            Some("gw.toml".into()),
            env,
            &Overrides::default(),
        )
    }

    #[test]
    fn runs_from_environment_alone() {
        let env = [
            ("GITHUB_SECRET", "s3cret"),
            ("TOKENS", "token-aaaa1, token-bbbb2"),
            ("TRUSTED_NAMES", "web-1, web-2"),
            ("PORT", "9000"),
            ("ORCASTRATE_REPOS", "Octo-Org/Web@main=production"),
        ];
        let s = Settings::load(None, &env, &Overrides::default()).unwrap();
        assert_eq!(s.http_listen.port(), 9000);
        assert_eq!(s.access.clients.len(), 2);
        assert_eq!(s.access.clients[1].name, "web-2");
        assert_eq!(s.access.clients[1].token, "token-bbbb2");
        assert_eq!(s.access.env_for("octo-org/web", "main"), Some("production"));
    }

    #[test]
    fn missing_secret_names_the_key() {
        let e = parse("", &[("X", "y")]).unwrap_err().to_string();
        assert!(
            e.contains("[github] secret") && e.contains("GITHUB_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_clients_refused() {
        let text = r#"
            [github]
            secret = "x"
            [[clients]]
            name = "web-1"
            token = "12345678"
        "#;
        let env = [("TOKENS", "abcdefgh"), ("TRUSTED_NAMES", "web-1")];
        let e = parse(text, &env).unwrap_err().to_string();
        assert!(e.contains("defined twice"), "{e}");
    }

    #[test]
    fn bad_names_refused() {
        let text = r#"
            [github]
            secret = "x"
            [[repos]]
            name = "octo-org/web"
            branches = { main = "Prod.1" }
        "#;
        let e = parse(text, &[("X", "y")]).unwrap_err().to_string();
        assert!(
            e.contains("invalid env") && e.contains("branches.main"),
            "{e}"
        );
        let e = parse(
            "[github]\nsecret='x'\n[[clients]]\nname='a/b'\ntoken='12345678'\n",
            &[("X", "y")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[[clients]] name"), "{e}");
        let e = toml::from_str::<FileConfig>("[github]\nsecret='x'\nbogus=1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn tokens_and_names_must_pair() {
        let env = [
            ("GITHUB_SECRET", "x"),
            ("TOKENS", "a1234567,b1234567"),
            ("TRUSTED_NAMES", "a"),
        ];
        let e = Settings::load(None, &env, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("same number"), "{e}");
    }

    #[test]
    fn scopes_parse() {
        let text = r#"
            [github]
            secret = "x"
            [[clients]]
            name = "web-1"
            token = "12345678"
            scopes = ["Octo-Org/web/production"]
        "#;
        let s = parse(text, &[("X", "y")]).unwrap();
        let c = s.access.client("web-1").unwrap();
        assert!(c.may_report("octo-org/web", "production"));
        assert!(!c.may_report("octo-org/web", "staging"));
    }

    const EXTERNAL: &str = r#"
        [github]
        secret = "x"
        [mqtt]
        mode = "external"
        url = "mqtt://10.0.0.5:1883"
        username = "orcastrate-gateway"
        password = "gateway-password"
    "#;

    #[test]
    fn external_mode_needs_url_username_and_password() {
        let s = parse(EXTERNAL, &[("X", "y")]).unwrap();
        let MqttMode::External(e) = &s.mqtt else {
            panic!("not external: {:?}", s.mqtt)
        };
        assert_eq!(
            (e.url.as_str(), e.username.as_str(), e.password.as_str()),
            (
                "mqtt://10.0.0.5:1883",
                "orcastrate-gateway",
                "gateway-password"
            )
        );
        assert!(!format!("{e:?}").contains("gateway-password"));
        let env = [("ORCASTRATE_MQTT_PASSWORD", "from-env")];
        let MqttMode::External(e) = parse(EXTERNAL, &env).unwrap().mqtt else {
            unreachable!()
        };
        assert_eq!(e.password, "from-env");

        for (drop, expect) in [
            ("url = ", "needs url"),
            ("username = ", "needs username"),
            ("password = ", "needs password"),
        ] {
            let text: String = EXTERNAL
                .lines()
                .filter(|l| !l.trim_start().starts_with(drop))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
            assert!(e.contains(expect) && e.contains("gw.toml"), "{e}");
        }
    }

    #[test]
    fn external_mode_refuses_embedded_keys_bad_urls_and_a_shared_name() {
        let cases = [
            ("listen = \"0.0.0.0:1883\"", "remove listen"),
            ("url = \"http://x\"", "use mqtt://host:port"),
            (
                "ca_file = \"/nonexistent/ca.pem\"",
                "only used with an mqtts:// url",
            ),
        ];
        for (line, expect) in cases {
            let text = EXTERNAL
                .replace("url = \"mqtt://10.0.0.5:1883\"", "")
                .replace("[mqtt]", &format!("[mqtt]\n{line}"));
            let text = if line.starts_with("url") {
                text
            } else {
                text.replace("[mqtt]", "[mqtt]\nurl = \"mqtt://10.0.0.5:1883\"")
            };
            let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
            assert!(e.contains(expect), "{line}: {e}");
        }
        let text = EXTERNAL
            .replace("mqtt://", "mqtts://")
            .replace("[mqtt]", "[mqtt]\nca_file = \"/nonexistent/ca.pem\"");
        let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
        assert!(
            e.contains("ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );

        let text = format!(
            "{EXTERNAL}\n[[clients]]\nname = \"orcastrate-gateway\"\ntoken = \"12345678\"\n"
        );
        let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
        assert!(e.contains("also a [[clients]] name"), "{e}");

        let e = parse(
            "[github]\nsecret='x'\n[mqtt]\nurl='mqtt://a:1'\n",
            &[("X", "y")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("url is for mode = \"external\""), "{e}");
    }

    #[test]
    fn http_limits_default_safely_and_refuse_bad_values() {
        let s = parse("[github]\nsecret = 'x'\n", &[("X", "y")]).unwrap();
        assert_eq!(s.http_limits, HttpLimits::default());
        let s = parse(
            "[github]\nsecret = 'x'\n[http]\nmax_body_bytes = 26214400\nheader_timeout_s = 3\n",
            &[("X", "y")],
        )
        .unwrap();
        assert_eq!(s.http_limits.header_timeout, Duration::from_secs(3));
        assert_eq!(
            s.http_limits.body_buffer_bytes,
            GITHUB_MAX_BODY.max(64 << 20)
        );
        for (line, expect) in [
            ("max_connections = 0", "[http] max_connections = 0"),
            ("header_timeout_s = 0", "[http] header_timeout_s = 0"),
            ("body_timeout_s = 9999", "use 1 to 3600 seconds"),
            ("shutdown_timeout_s = 0", "[http] shutdown_timeout_s"),
            (
                "body_min_bytes_per_s = 0",
                "[http] body_min_bytes_per_s = 0",
            ),
            ("body_buffer_bytes = 1000", "below max_body_bytes"),
        ] {
            let text = format!("[github]\nsecret = 'x'\n[http]\n{line}\n");
            let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
            assert!(e.contains(expect) && e.contains("gw.toml"), "{line}: {e}");
        }
    }

    #[test]
    fn engine_hooks_are_for_external_mode_only() {
        let e = parse(
            "[github]\nsecret = 'x'\n[mqtt]\nhooks_listen = '127.0.0.1:8081'\n",
            &[("X", "y")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hooks_listen is for mode = \"external\""), "{e}");
        let MqttMode::External(e) = parse(EXTERNAL, &[("X", "y")]).unwrap().mqtt else {
            unreachable!()
        };
        assert_eq!((e.hooks_listen, e.hooks_token), (None, None));
        let text = EXTERNAL.replace(
            "[mqtt]",
            "[mqtt]\nhooks_listen = \"127.0.0.1:8081\"\nhooks_token = \"hooks-token-0123456789\"",
        );
        let MqttMode::External(e) = parse(&text, &[("X", "y")]).unwrap().mqtt else {
            unreachable!()
        };
        assert_eq!(e.hooks_listen, Some("127.0.0.1:8081".parse().unwrap()));
        assert!(!format!("{e:?}").contains("hooks-token"));
        let text = EXTERNAL.replace("[mqtt]", "[mqtt]\nhooks_token = \"hooks-token-0123456789\"");
        let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
        assert!(e.contains("hooks_token without hooks_listen"), "{e}");
        let text = EXTERNAL.replace(
            "[mqtt]",
            "[mqtt]\nhooks_listen = \"127.0.0.1:8081\"\nhooks_token = \"short\"",
        );
        let e = parse(&text, &[("X", "y")]).unwrap_err().to_string();
        assert!(e.contains("hooks_token is shorter than 16"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_is_valid_in_both_modes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let s = parse(&text, &[("X", "y")]).unwrap();
        assert!(matches!(s.mqtt, MqttMode::Embedded { .. }));
        let watcher = s.access.client("watcher").unwrap();
        assert_eq!(watcher.role, Role::Watcher);

        // Its external-mode lines, uncommented in place of the embedded ones.
        let external = text
            .replace("mode = \"embedded\"", "mode = \"external\"")
            .replace("listen = \"0.0.0.0:1883\"", "")
            .replace("# url = ", "url = ")
            .replace("# username = ", "username = ")
            .replace("# password = ", "password = ")
            .replace("# hooks_listen = ", "hooks_listen = ")
            .replace("# hooks_token = ", "hooks_token = ");
        let s = parse(&external, &[("X", "y")]).unwrap();
        let MqttMode::External(e) = s.mqtt else {
            panic!("{:?}", s.mqtt)
        };
        assert_eq!(e.url, "mqtts://mqtt.example.com:8883");
        assert_eq!(e.hooks_listen, Some("127.0.0.1:8081".parse().unwrap()));
    }

    #[test]
    fn the_example_quota_lines_are_the_defaults_and_bad_quotas_are_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut uncommented = text.clone();
        for key in [
            "max_message_bytes",
            "max_log_bytes",
            "max_topics_per_client",
            "max_subscriptions_per_client",
            "max_inflight",
            "max_connections_per_client",
        ] {
            let line = format!("# {key} = ");
            assert!(text.contains(&line), "the example documents {key}");
            uncommented = uncommented.replace(&line, &format!("{key} = "));
        }
        let s = parse(&uncommented, &[("X", "y")]).unwrap();
        let MqttMode::Embedded { quotas, .. } = s.mqtt else {
            panic!("{:?}", s.mqtt)
        };
        assert_eq!(quotas, Quotas::default());

        let bad = text.replace("[mqtt]\n", "[mqtt]\nmax_inflight = 0\n");
        let e = parse(&bad, &[("X", "y")]).unwrap_err().to_string();
        assert!(e.contains("[mqtt] max_inflight = 0: use 1 to 65535"), "{e}");
        let external = text
            .replace("[mqtt]\n", "[mqtt]\nmax_log_bytes = 100\n")
            .replace("mode = \"embedded\"", "mode = \"external\"")
            .replace("listen = \"0.0.0.0:1883\"", "");
        let e = parse(&external, &[("X", "y")]).unwrap_err().to_string();
        assert!(
            e.contains("max_log_bytes is for the embedded broker"),
            "{e}"
        );
    }
}
