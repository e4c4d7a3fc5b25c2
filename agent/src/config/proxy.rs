//! `[proxy]`: the agent owns the service's public socket and switches releases behind it.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, FileConfig, HealthCheck};
use orcastrate_broker::Problems;

/// Default time old connections may finish after a switch (`[proxy] drain_s`).
pub const DEFAULT_DRAIN_S: u64 = 30;
/// Default name of the variable that tells the app its private port (`[proxy] port_var`).
pub const DEFAULT_PORT_VAR: &str = "PORT";
/// The placeholder for a release's private port in `start` and `[health] http`.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// The validated `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The service's public address, which the agent listens on.
    pub listen: SocketAddr,
    /// How long old connections may finish after a switch before the old app is stopped.
    pub drain: Duration,
    /// The environment variable that carries the release's private port.
    pub port_var: String,
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
    let value = match (listen, drain, port_var) {
        (Some(listen), Some(drain), Some(port_var)) => Some(Some(ProxySettings {
            listen,
            drain,
            port_var,
        })),
        _ => None,
    };
    p.finish(value, origin)
}

/// `check` with `{port}` replaced by `port`.
pub(crate) fn health_on(check: &HealthCheck, port: Option<u16>) -> HealthCheck {
    match (check, port) {
        (HealthCheck::Http(url), Some(port)) => {
            HealthCheck::Http(url.replace(PORT_PLACEHOLDER, &port.to_string()))
        }
        _ => check.clone(),
    }
}
