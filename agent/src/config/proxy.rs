//! `[proxy]`: the agent owns the service's public socket and switches releases behind it.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, FileConfig, HealthCheck, Settings};
use orcastrate_broker::Problems;

/// Default time old connections may finish after a switch (`[proxy] drain_s`).
pub const DEFAULT_DRAIN_S: u64 = 30;
/// Default name of the variable that tells the app its private port (`[proxy] port_var`).
pub const DEFAULT_PORT_VAR: &str = "PORT";
/// The placeholder for a release's private port in `start` and `[health] http`.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// Which PROXY protocol header the proxy writes at the start of each connection to the app
/// (`[proxy] proxy_protocol`), so the app sees the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text line, `PROXY TCP4 {client} {public} {client port} {public port}\r\n`.
    V1,
    /// The binary block (HAProxy's version 2).
    V2,
}

/// The validated `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The service's public address, which the agent listens on.
    pub listen: SocketAddr,
    /// How long old connections may finish after a switch before the old app is stopped.
    pub drain: Duration,
    /// The environment variable that carries the release's private port.
    pub port_var: String,
    /// The PROXY protocol header each connection to the app starts with; `None`: none.
    pub protocol: Option<ProxyProtocol>,
}

/// `[proxy]`; `None` without the section. `{port}` in `start` or `[health] http` needs it.
pub(super) fn proxy(origin: &str, file: &FileConfig) -> Result<Option<ProxySettings>, ConfigError> {
    let uses_port = |s: Option<&String>| s.is_some_and(|s| s.contains(PORT_PLACEHOLDER));
    let Some(proxy) = file.proxy.clone() else {
        for (key, value) in [
            (
                "steps.start",
                file.steps.as_ref().and_then(|s| s.start.as_ref()),
            ),
            (
                "health.http",
                file.health.as_ref().and_then(|h| h.http.as_ref()),
            ),
        ] {
            if uses_port(value) {
                return Err(ConfigError::new(
                    origin,
                    key,
                    "uses {port}, which only a [proxy] section provides: add [proxy] listen = \"0.0.0.0:PORT\" or write the port",
                ));
            }
        }
        return Ok(None);
    };
    let mut p = Problems::default();
    let listen = p.check(match proxy.listen.as_deref() {
        None => Err(ConfigError::new(
            origin,
            "proxy.listen",
            "is required with [proxy]: the service's public address, e.g. \"0.0.0.0:3000\"",
        )),
        Some(l) => l.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                origin,
                "proxy.listen",
                format!("{l:?} is not an address:port: use e.g. \"0.0.0.0:3000\" or \"[::]:3000\""),
            )
        }),
    });
    let drain = p.check(match proxy.drain_s {
        None => Ok(Duration::from_secs(DEFAULT_DRAIN_S)),
        Some(s) if (0..=3600).contains(&s) => Ok(Duration::from_secs(s as u64)),
        Some(_) => Err(ConfigError::new(
            origin,
            "proxy.drain_s",
            "must be from 0 to 3600 seconds",
        )),
    });
    let port_var = p.check(match proxy.port_var {
        None => Ok(DEFAULT_PORT_VAR.to_owned()),
        Some(v)
            if !v.is_empty()
                && !v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok(v)
        }
        Some(v) => Err(ConfigError::new(
            origin,
            "proxy.port_var",
            format!("{v:?} is not an environment variable name: use letters, digits and _, e.g. \"PORT\""),
        )),
    });
    let protocol = p.check(match proxy.proxy_protocol.as_deref() {
        None => Ok(None),
        Some("v1") => Ok(Some(ProxyProtocol::V1)),
        Some("v2") => Ok(Some(ProxyProtocol::V2)),
        Some(v) => Err(ConfigError::new(
            origin,
            "proxy.proxy_protocol",
            format!("{v:?} is not a PROXY protocol version: use \"v1\" (text) or \"v2\" (binary), as the app's server expects, or remove the key for no header"),
        )),
    });
    let value = match (listen, drain, port_var, protocol) {
        (Some(listen), Some(drain), Some(port_var), Some(protocol)) => Some(Some(ProxySettings {
            listen,
            drain,
            port_var,
            protocol,
        })),
        _ => None,
    };
    p.finish(value, origin)
}

/// The health check of the release on private `port`: `{port}` replaced by it. Behind a
/// PROXY protocol header, an HTTP check of `{port}` starts with the header for the agent's
/// own connections, since the app then expects one on every connection.
pub(crate) fn health_on(settings: &Settings, port: Option<u16>) -> HealthCheck {
    let check = &settings.health.check;
    match (check, port) {
        (HealthCheck::Http(url), Some(port)) => {
            let with_port = url.replace(PORT_PLACEHOLDER, &port.to_string());
            match settings.proxy.as_ref().and_then(|p| p.protocol) {
                Some(protocol) if url.contains(PORT_PLACEHOLDER) => {
                    HealthCheck::HttpBehindProxy(with_port, protocol)
                }
                _ => HealthCheck::Http(with_port),
            }
        }
        _ => check.clone(),
    }
}
