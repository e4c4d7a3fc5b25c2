//! `[github] token`/`api_url` and `[[notify]]`: where the outbox delivers.

use serde::Deserialize;

use crate::config::{ConfigError, Env};

/// GitHub's REST API; GitHub Enterprise Server's is `https://HOST/api/v3`.
pub const GITHUB_API: &str = "https://api.github.com";

/// Events a `[[notify]]` may ask for.
pub const EVENTS: &[&str] = &[
    "deployed",
    "failed",
    "rolled_back",
    "reverted",
    "paused",
    "resumed",
];

/// One `[[notify]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub format: Option<String>,
    pub secret: Option<String>,
    pub board_url: Option<String>,
}

/// Where GitHub deployments go.
#[derive(Clone)]
pub struct GithubTarget {
    pub api_url: String,
    pub token: String,
}

impl std::fmt::Debug for GithubTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubTarget")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// How a `[[notify]]` body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// Our JSON, signed with the secret.
    Json,
    /// A Slack incoming-webhook `text` message.
    Slack,
}

/// A validated `[[notify]]`.
#[derive(Clone)]
pub struct NotifyTarget {
    pub url: String,
    pub events: Vec<String>,
    pub format: NotifyFormat,
    pub secret: Option<String>,
    pub board_url: Option<String>,
}

impl std::fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyTarget")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Every destination of the outbox.
#[derive(Debug, Clone, Default)]
pub struct OutboxConfig {
    pub github: Option<GithubTarget>,
    pub notify: Vec<NotifyTarget>,
}

impl OutboxConfig {
    /// Whether anything is to be delivered.
    pub fn is_empty(&self) -> bool {
        self.github.is_none() && self.notify.is_empty()
    }
}

/// The web address of the GitHub whose REST API is `api_url` (GitHub's own by default):
/// `https://github.com` for `api.github.com`, `https://HOST` for GitHub Enterprise Server's
/// `https://HOST/api/v3`; `None` for anything else, whose commit pages we cannot name.
pub fn github_web(api_url: Option<&str>) -> Option<String> {
    let api_url = api_url.unwrap_or(GITHUB_API).trim_end_matches('/');
    if api_url == GITHUB_API {
        return Some("https://github.com".to_owned());
    }
    api_url
        .strip_suffix("/api/v3")
        .filter(|host| http_url(host) && host.matches('/').count() == 2)
        .map(str::to_owned)
}

fn http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Validates `[github] token` (or `GITHUB_TOKEN`) with `api_url`, and each `[[notify]]`.
///
/// # Errors
///
/// Each bad key, named.
pub fn section(
    token: Option<String>,
    api_url: Option<String>,
    notify: Vec<NotifyFile>,
    env: &dyn Env,
    where_: &str,
) -> Result<OutboxConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let api_url = api_url.unwrap_or_else(|| GITHUB_API.to_owned());
    if !http_url(&api_url) {
        errors.push(ConfigError::new(
            where_,
            "[github] api_url",
            format!("{api_url:?} is not an http(s) URL: use {GITHUB_API} or https://HOST/api/v3"),
        ));
    }
    let github = env
        .var("GITHUB_TOKEN")
        .or(token)
        .filter(|t| !t.is_empty())
        .map(|token| GithubTarget {
            api_url: api_url.trim_end_matches('/').to_owned(),
            token,
        });
    let mut targets = Vec::new();
    for (i, n) in notify.into_iter().enumerate() {
        match notify_target(n, i, where_) {
            Ok(t) => targets.push(t),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(OutboxConfig {
            github,
            notify: targets,
        })
    } else {
        Err(errors)
    }
}

fn notify_target(n: NotifyFile, i: usize, where_: &str) -> Result<NotifyTarget, Vec<ConfigError>> {
    let key = |k: &str| format!("[[notify]] #{} {k}", i + 1);
    let mut errors = Vec::new();
    if !http_url(&n.url) {
        errors.push(ConfigError::new(
            where_,
            key("url"),
            "not an http(s) URL: give the receiver's full URL",
        ));
    }
    let events = n
        .events
        .unwrap_or_else(|| EVENTS.iter().map(|e| (*e).to_owned()).collect());
    for e in &events {
        if !EVENTS.contains(&e.as_str()) {
            errors.push(ConfigError::new(
                where_,
                key("events"),
                format!("unknown event {e:?}: use any of {}", EVENTS.join(", ")),
            ));
        }
    }
    let format = match n.format.as_deref() {
        None | Some("json") => NotifyFormat::Json,
        Some("slack") => NotifyFormat::Slack,
        Some(other) => {
            errors.push(ConfigError::new(
                where_,
                key("format"),
                format!("unknown format {other:?}: use json or slack"),
            ));
            NotifyFormat::Json
        }
    };
    if format == NotifyFormat::Json && n.secret.as_deref().is_none_or(|s| s.len() < 16) {
        errors.push(ConfigError::new(
            where_,
            key("secret"),
            "a json [[notify]] needs a secret of 16 characters or more (openssl rand -hex 24): the receiver checks X-Orcastrate-Signature-256 with it",
        ));
    }
    if errors.is_empty() {
        Ok(NotifyTarget {
            url: n.url,
            events,
            format,
            secret: n.secret,
            board_url: n.board_url,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::github_web;

    #[test]
    fn the_board_links_commits_to_the_github_that_api_url_names() {
        let web = github_web;
        assert_eq!(web(None).as_deref(), Some("https://github.com"));
        assert_eq!(
            web(Some("https://api.github.com/")).as_deref(),
            Some("https://github.com")
        );
        assert_eq!(
            web(Some("https://ghe.example.com/api/v3")).as_deref(),
            Some("https://ghe.example.com")
        );
        assert_eq!(
            web(Some("http://ghe.internal:8080/api/v3/")).as_deref(),
            Some("http://ghe.internal:8080")
        );
        assert_eq!(web(Some("https://proxy.example.com/github")), None);
        assert_eq!(web(Some("https://example.com/a/api/v3")), None);
    }
}
