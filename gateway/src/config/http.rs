//! `[http]`: where the gateway listens for webhooks and the admin API, HTTPS, and what one
//! client may cost it. Pure: the environment comes in as a value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use orcastrate_broker::Problems;

use super::env::Env;
use super::file::{HttpFile, Overrides};
use super::runtime::HttpLimits;
use super::{ConfigError, GITHUB_MAX_BODY};

/// Default `max_body_bytes`: 5 MiB, above nearly every real push.
const DEFAULT_MAX_BODY: usize = 5 * 1024 * 1024;

/// The validated `[http]` section.
pub(super) struct HttpSection {
    pub(super) listen: SocketAddr,
    pub(super) tls: Option<(PathBuf, PathBuf)>,
    pub(super) max_body_bytes: usize,
    pub(super) limits: HttpLimits,
    /// MQTT over WebSocket at `GET /mqtt` (embedded broker only).
    pub(super) mqtt_websocket: bool,
}

/// Validates `[http]`: `listen` (a flag beats `PORT`, which beats the file), TLS, body size
/// and limits; every problem at once.
pub(super) fn section(
    http: HttpFile,
    overrides: &Overrides,
    env: &dyn Env,
    where_: &str,
) -> Result<HttpSection, ConfigError> {
    let mut p = Problems::default();
    let listen = p.check(listen(&http, overrides, env, where_));
    let max_body_bytes = http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body_bytes == 0 || max_body_bytes > GITHUB_MAX_BODY {
        p.push(ConfigError::new(
            where_,
            "[http] max_body_bytes",
            format!("{max_body_bytes} is out of range: use 1 to {GITHUB_MAX_BODY} (GitHub never sends more)"),
        ));
    }
    let limits = p.check(limits(&http, max_body_bytes, where_));
    let tls = p.check(pair(http.tls_cert, http.tls_key, where_, "[http]", "HTTPS"));
    let value = match (listen, limits, tls) {
        (Some(listen), Some(limits), Some(tls)) => Some(HttpSection {
            listen,
            tls,
            max_body_bytes,
            limits,
            mqtt_websocket: http.mqtt_websocket.unwrap_or(true),
        }),
        _ => None,
    };
    p.finish(value, where_)
}

/// `[http] listen`, `--http-listen`, and `PORT` (the original tool's port, kept working).
fn listen(
    http: &HttpFile,
    overrides: &Overrides,
    env: &dyn Env,
    where_: &str,
) -> Result<SocketAddr, ConfigError> {
    if let Some(value) = &overrides.http_listen {
        return parse_addr(
            value,
            "--http-listen (or ORCASTRATE_HTTP_LISTEN)",
            "[http] listen",
        );
    }
    let mut p = Problems::default();
    let listen = p.check(parse_addr(
        http.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        where_,
        "[http] listen",
    ));
    let port = env.var("PORT").and_then(|port| {
        p.check(port.parse::<u16>().map_err(|_| {
            ConfigError::new(
                "environment variable PORT",
                "PORT",
                format!("{port:?} is not a port number: use 1 to 65535"),
            )
        }))
    });
    let listen = listen.map(|mut listen| {
        if let Some(port) = port {
            listen.set_port(port);
        }
        listen
    });
    p.finish(listen, where_)
}

/// The `[http]` limit keys, with defaults for those not given.
fn limits(http: &HttpFile, max_body_bytes: usize, where_: &str) -> Result<HttpLimits, ConfigError> {
    let defaults = HttpLimits::default();
    let mut p = Problems::default();
    let max_connections = http.max_connections.unwrap_or(defaults.max_connections);
    if !(1..=1_000_000).contains(&max_connections) {
        p.push(ConfigError::new(
            where_,
            "[http] max_connections",
            format!(
                "{max_connections} is out of range: use 1 to 1000000 (default {})",
                defaults.max_connections
            ),
        ));
    }
    let body_min_bytes_per_s = http
        .body_min_bytes_per_s
        .unwrap_or(defaults.body_min_bytes_per_s);
    if body_min_bytes_per_s == 0 {
        p.push(ConfigError::new(
            where_,
            "[http] body_min_bytes_per_s",
            format!(
                "0 would let a body take forever: use 1 or more (default {})",
                defaults.body_min_bytes_per_s
            ),
        ));
    }
    let body_buffer_bytes = http
        .body_buffer_bytes
        .unwrap_or(defaults.body_buffer_bytes.max(max_body_bytes));
    if body_buffer_bytes < max_body_bytes {
        p.push(ConfigError::new(
            where_,
            "[http] body_buffer_bytes",
            format!(
                "{body_buffer_bytes} is below max_body_bytes ({max_body_bytes}): the largest webhook could never be read; raise it"
            ),
        ));
    }
    let mut seconds = |key: &str, value: Option<u64>, default: Duration| {
        p.check(seconds_key(where_, key, value, default))
    };
    let header_timeout = seconds(
        "[http] header_timeout_s",
        http.header_timeout_s,
        defaults.header_timeout,
    );
    let body_timeout = seconds(
        "[http] body_timeout_s",
        http.body_timeout_s,
        defaults.body_timeout,
    );
    let shutdown_timeout = seconds(
        "[http] shutdown_timeout_s",
        http.shutdown_timeout_s,
        defaults.shutdown_timeout,
    );
    let trusted_proxies = p.check(trusted_proxies(&http.trusted_proxies, where_));
    let value = match (
        header_timeout,
        body_timeout,
        shutdown_timeout,
        trusted_proxies,
    ) {
        (
            Some(header_timeout),
            Some(body_timeout),
            Some(shutdown_timeout),
            Some(trusted_proxies),
        ) => Some(HttpLimits {
            max_connections,
            header_timeout,
            body_timeout,
            body_min_bytes_per_s,
            body_buffer_bytes,
            shutdown_timeout,
            trusted_proxies,
        }),
        _ => None,
    };
    p.finish(value, where_)
}

/// `[http] trusted_proxies`: addresses (`127.0.0.1`) or networks (`10.0.0.0/8`).
fn trusted_proxies(values: &[String], where_: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let mut p = Problems::default();
    let nets = values
        .iter()
        .filter_map(|value| {
            let net = value
                .parse::<ipnet::IpNet>()
                .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            p.check(net.map_err(|_| {
                ConfigError::new(
                    where_,
                    "[http] trusted_proxies",
                    format!("{value:?} is not an IP address or network: use e.g. \"127.0.0.1\" or \"10.0.0.0/8\""),
                )
            }))
        })
        .collect();
    p.finish(Some(nets), where_)
}

/// A timeout key of 1 to 3600 seconds.
fn seconds_key(
    where_: &str,
    key: &str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s @ 1..=3600) => Ok(Duration::from_secs(s)),
        Some(s) => Err(ConfigError::new(
            where_,
            key,
            format!(
                "{s} is out of range: use 1 to 3600 seconds (default {})",
                default.as_secs()
            ),
        )),
    }
}

/// `tls_cert` and `tls_key` of `section`: both or neither.
pub(super) fn pair(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    where_: &str,
    section: &str,
    what: &str,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) => Err(ConfigError::new(
            where_,
            format!("{section} tls_cert, tls_key"),
            format!("{what} needs both tls_cert and tls_key, or neither"),
        )),
    }
}

/// An `ip:port` address.
pub(super) fn parse_addr(value: &str, origin: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            origin,
            key,
            format!("{value:?} is not an address: write it as \"0.0.0.0:8080\" (ip:port)"),
        )
    })
}
