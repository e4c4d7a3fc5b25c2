//! The sections that say how a deploy runs, all from the file: `keep_releases`,
//! `on_shutdown`, `[steps]`, `[shared]`, `[health]` and `[git]`. Each check is pure and
//! names the file as the origin of its problems.

use std::path::{Component, PathBuf};
use std::time::Duration;

use super::{
    ConfigError, FileConfig, GitSettings, HealthCheck, HealthSettings, OnShutdown, StepSettings,
    DEFAULT_FETCH_ATTEMPTS, DEFAULT_FETCH_TIMEOUT_S, DEFAULT_HEALTH_INTERVAL_S,
    DEFAULT_HEALTH_TIMEOUT_S, DEFAULT_INSTALL, DEFAULT_KEEP_RELEASES, DEFAULT_START,
    DEFAULT_STOP_TIMEOUT_S,
};
use crate::app_log::AppLogLimits;
use orcastrate_broker::Problems;

/// `keep_releases`.
pub(super) fn keep_releases(origin: &str, file: &FileConfig) -> Result<usize, ConfigError> {
    match file.keep_releases {
        None => Ok(DEFAULT_KEEP_RELEASES),
        Some(n) if (1..=1000).contains(&n) => Ok(n as usize),
        Some(_) => Err(ConfigError::new(
            origin,
            "keep_releases",
            "must be from 1 to 1000 (2 or more keeps a release to roll back to)",
        )),
    }
}

/// `on_shutdown`.
pub(super) fn on_shutdown(origin: &str, file: &FileConfig) -> Result<OnShutdown, ConfigError> {
    match file.on_shutdown.as_deref() {
        None | Some("keep") => Ok(OnShutdown::Keep),
        Some("stop") => Ok(OnShutdown::Stop),
        Some(other) => Err(ConfigError::new(
            origin,
            "on_shutdown",
            format!("{other:?} is not allowed: use \"keep\" or \"stop\""),
        )),
    }
}

/// A command on one line, trimmed.
fn one_line(origin: &str, key: &str, v: &str) -> Result<String, ConfigError> {
    if v.contains(['\n', '\r']) {
        Err(ConfigError::new(
            origin,
            key,
            "must be one line (join commands with &&)",
        ))
    } else {
        Ok(v.trim().to_owned())
    }
}

/// `[steps]`.
pub(super) fn steps(origin: &str, file: &FileConfig) -> Result<StepSettings, ConfigError> {
    let steps = file.steps.clone().unwrap_or_default();
    let mut p = Problems::default();
    let install = p.check(one_line(
        origin,
        "steps.install",
        steps.install.as_deref().unwrap_or(DEFAULT_INSTALL),
    ));
    let build = p.check(one_line(
        origin,
        "steps.build",
        steps.build.as_deref().unwrap_or(""),
    ));
    let start = p.check(
        one_line(
            origin,
            "steps.start",
            steps.start.as_deref().unwrap_or(DEFAULT_START),
        )
        .and_then(|start| {
            if start.is_empty() {
                Err(ConfigError::new(
                    origin,
                    "steps.start",
                    "must not be empty: the command that runs the app in the foreground, e.g. \"npm run start\"",
                ))
            } else {
                Ok(start)
            }
        }),
    );
    let stop_timeout = p.check(seconds(
        origin,
        "steps.stop_timeout_s",
        steps.stop_timeout_s,
        DEFAULT_STOP_TIMEOUT_S,
        0,
        3600,
    ));
    let value = match (install, build, start, stop_timeout) {
        (Some(install), Some(build), Some(start), Some(stop_timeout)) => Some(StepSettings {
            install,
            build,
            start,
            stop_timeout,
        }),
        _ => None,
    };
    p.finish(value, origin)
}

/// `[shared]`: `(files, dirs)`.
pub(super) fn shared(
    origin: &str,
    file: &FileConfig,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), ConfigError> {
    let shared = file.shared.clone().unwrap_or_default();
    let mut p = Problems::default();
    let files = p.check(shared_paths(
        origin,
        "shared.files",
        shared.files.unwrap_or_default(),
    ));
    let dirs = p.check(shared_paths(
        origin,
        "shared.dirs",
        shared.dirs.unwrap_or_default(),
    ));
    p.finish(files.zip(dirs), origin)
}

/// `[health]`.
pub(super) fn health(origin: &str, file: &FileConfig) -> Result<HealthSettings, ConfigError> {
    let health = file.health.clone().unwrap_or_default();
    let mut p = Problems::default();
    let check = p.check(match (health.http, health.command) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            origin,
            "health",
            "set either http or command, not both",
        )),
        // `{port}` (a release's private port behind `[proxy]`) is filled in per release.
        (Some(url), None) => parse_http_url(&url.replace(super::PORT_PLACEHOLDER, "1"))
            .map(|_| HealthCheck::Http(url))
            .map_err(|p| ConfigError::new(origin, "health.http", p)),
        (None, Some(cmd)) => one_line(origin, "health.command", &cmd).map(HealthCheck::Command),
        (None, None) => Ok(HealthCheck::Running),
    });
    let timeout = p.check(seconds(
        origin,
        "health.timeout_s",
        health.timeout_s,
        DEFAULT_HEALTH_TIMEOUT_S,
        1,
        86_400,
    ));
    let interval = p.check(seconds(
        origin,
        "health.interval_s",
        health.interval_s,
        DEFAULT_HEALTH_INTERVAL_S,
        1,
        86_400,
    ));
    let value = match (check, timeout, interval) {
        (Some(check), Some(timeout), Some(interval)) => Some(HealthSettings {
            check,
            timeout,
            interval,
        }),
        _ => None,
    };
    p.finish(value, origin)
}

/// `[git]`.
pub(super) fn git(origin: &str, file: &FileConfig) -> Result<GitSettings, ConfigError> {
    let git = file.git.clone().unwrap_or_default();
    let mut p = Problems::default();
    let fetch_timeout = p.check(seconds(
        origin,
        "git.fetch_timeout_s",
        git.fetch_timeout_s,
        DEFAULT_FETCH_TIMEOUT_S,
        1,
        86_400,
    ));
    let fetch_attempts = p.check(match git.fetch_attempts {
        None => Ok(DEFAULT_FETCH_ATTEMPTS),
        Some(n) if (1..=20).contains(&n) => Ok(n as u32),
        Some(n) => Err(ConfigError::new(
            origin,
            "git.fetch_attempts",
            format!("{n} is out of range: use 1 to 20"),
        )),
    });
    let value = fetch_timeout
        .zip(fetch_attempts)
        .map(|(fetch_timeout, fetch_attempts)| GitSettings {
            fetch_timeout,
            fetch_attempts,
        });
    p.finish(value, origin)
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

/// Default cap of one app log file (`[logs] app_max_bytes`): a day of a chatty app's
/// output, small enough that `app_keep` files per release fit any disk.
pub const DEFAULT_APP_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default rotated app log files kept per release (`[logs] app_keep`).
pub const DEFAULT_APP_LOG_KEEP: u32 = 5;

/// `[logs]`: the app's log files.
pub(super) fn logs(origin: &str, file: &FileConfig) -> Result<AppLogLimits, ConfigError> {
    let logs = file.logs.clone().unwrap_or_default();
    let mut p = Problems::default();
    let max_bytes = p.check(match logs.app_max_bytes {
        None => Ok(DEFAULT_APP_LOG_MAX_BYTES),
        Some(n) if (4096..=1 << 40).contains(&n) => Ok(n as u64),
        Some(n) => Err(ConfigError::new(
            origin,
            "logs.app_max_bytes",
            format!("{n} is out of range: use 4096 (4 KiB) to 1099511627776 (1 TiB)"),
        )),
    });
    let keep = p.check(match logs.app_keep {
        None => Ok(DEFAULT_APP_LOG_KEEP),
        Some(n) if (0..=100).contains(&n) => Ok(n as u32),
        Some(n) => Err(ConfigError::new(
            origin,
            "logs.app_keep",
            format!("{n} is out of range: use 0 (no rotated files) to 100"),
        )),
    });
    let value = max_bytes
        .zip(keep)
        .map(|(max_bytes, keep)| AppLogLimits { max_bytes, keep });
    p.finish(value, origin)
}

/// The deploy-related settings, validated together (every problem goes to `p`).
pub(super) struct Deployment {
    pub(super) keep_releases: usize,
    pub(super) on_shutdown: OnShutdown,
    pub(super) steps: StepSettings,
    pub(super) shared: (Vec<PathBuf>, Vec<PathBuf>),
    pub(super) health: HealthSettings,
    pub(super) git: GitSettings,
    pub(super) app_log: AppLogLimits,
    pub(super) proxy: Option<super::ProxySettings>,
}

/// Checks every deploy-related key, then returns them if all were valid.
pub(super) fn deployment(origin: &str, file: &FileConfig, p: &mut Problems) -> Option<Deployment> {
    let keep_releases = p.check(keep_releases(origin, file));
    let on_shutdown = p.check(on_shutdown(origin, file));
    let steps = p.check(steps(origin, file));
    let shared = p.check(shared(origin, file));
    let health = p.check(health(origin, file));
    let git = p.check(git(origin, file));
    let app_log = p.check(logs(origin, file));
    let proxy = p.check(super::proxy::proxy(origin, file));
    Some(Deployment {
        keep_releases: keep_releases?,
        on_shutdown: on_shutdown?,
        steps: steps?,
        shared: shared?,
        health: health?,
        git: git?,
        app_log: app_log?,
        proxy: proxy?,
    })
}
