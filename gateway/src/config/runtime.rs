//! The runtime tables other modules import: who may log in ([`Access`], [`Client`],
//! [`Role`]), where each repository deploys ([`RepoRoute`]), how the gateway reaches its
//! bus ([`MqttMode`]) and what one HTTP client may cost ([`HttpLimits`]). Built only by the
//! validation in the sibling modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use orcastrate_broker::guard::Quotas;

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
    /// Reverse proxies whose `X-Forwarded-For` names the client (`[http] trusted_proxies`),
    /// so throttles and logs see the client, not the proxy. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
            trusted_proxies: Vec::new(),
        }
    }
}
