//! One log line per decision, at info: each webhook, each order, each agent state change;
//! and the start-up warnings about a configuration that works but is probably not meant.
//!
//! The field names live here only, so the human and the JSON format (`--log-format json`)
//! carry the same fields, and tests and log searches can rely on them: `delivery`, `event`,
//! `repo`, `env`, `outcome`, `reason`, `seq`, `sha7`, `kind`, `by`, `agent`, `state`,
//! `step`, `error`. Text a sender chose (reasons naming a branch, an agent's error) is a
//! string field, which the text format writes quoted and escaped, so it cannot forge a
//! line; names were validated where they entered and are written as they are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use orcastrate_broker::{AgentStatus, DeployOrder};

use crate::config::{MqttMode, Settings};
use orcastrate_broker::burst::BURST_WINDOW;

/// Longest agent error written to a log line; the full text is in the status and the ledger.
const MAX_LOGGED_ERROR: usize = 300;

/// The short form of a sha in log lines and `watch`, as `git log --oneline` shows it.
pub fn sha7(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// What a webhook was about, for its decision line.
#[derive(Debug, Clone, Copy)]
pub struct WebhookLine<'a> {
    pub delivery: &'a str,
    pub event: &'a str,
    pub repo: Option<&'a str>,
    pub env: Option<&'a str>,
}

/// Logs a decided webhook: `outcome` is `accepted`, `ignored`, `duplicate` or `ping`.
pub fn webhook(
    w: WebhookLine<'_>,
    outcome: &str,
    reason: Option<&str>,
    order: Option<&DeployOrder>,
) {
    tracing::info!(
        delivery = %w.delivery,
        event = %w.event,
        repo = %w.repo.unwrap_or("-"),
        env = %w.env.unwrap_or("-"),
        %outcome,
        reason,
        seq = order.map(|o| o.seq),
        sha7 = order.map(|o| display(sha7(&o.sha))),
        "webhook"
    );
}

/// Logs a new order, once it is committed.
pub fn order(o: &DeployOrder) {
    tracing::info!(
        repo = %o.repo,
        env = %o.env,
        seq = o.seq,
        sha7 = %sha7(&o.sha),
        kind = %o.kind.as_str(),
        by = %o.issued_by.as_deref().unwrap_or("-"),
        "order"
    );
}

/// State lines logged per agent per [`BURST_WINDOW`] at most: a deploy makes two or three,
/// so only an agent flapping (or a stolen token) passes it; the rest are counted, and the
/// count is logged when that agent's next window starts.
pub const MAX_AGENT_LINES: u32 = 10;

/// Logs agent state changes within [`MAX_AGENT_LINES`] per agent; one entry per agent
/// name, and names are `[[clients]]` entries, so the map is bounded by the configuration.
#[derive(Debug, Default)]
pub struct AgentLines {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl AgentLines {
    /// Logs a verified status whose state or order differs from the agent's previous one
    /// (step changes within a deploy are not logged: six lines per agent per deploy).
    pub fn log(&self, previous: Option<&AgentStatus>, s: &AgentStatus) {
        if previous.is_some_and(|p| p.state == s.state && p.seq == s.seq) {
            return;
        }
        if !self.allow(&s.agent, Instant::now()) {
            return;
        }
        let error = s.error.as_deref().map(|e| {
            e.char_indices()
                .nth(MAX_LOGGED_ERROR)
                .map_or(e, |(i, _)| &e[..i])
        });
        tracing::info!(
            agent = %s.agent,
            repo = %s.repo,
            env = %s.env,
            state = %s.state.as_str(),
            step = s.step.map(|st| display(st.as_str())),
            seq = s.seq,
            sha7 = s.sha.as_deref().map(|sha| display(sha7(sha))),
            error,
            "agent state"
        );
    }

    /// Whether another line of `agent` may be logged at `now`.
    fn allow(&self, agent: &str, now: Instant) -> bool {
        let mut windows = self.windows.lock().expect("agent-lines lock poisoned");
        let (start, count) = windows.entry(agent.to_owned()).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= BURST_WINDOW {
            if *count > MAX_AGENT_LINES {
                tracing::warn!(
                    agent,
                    not_logged = *count - MAX_AGENT_LINES,
                    "agent state changes not logged: more than {MAX_AGENT_LINES} in {}s",
                    BURST_WINDOW.as_secs()
                );
            }
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= MAX_AGENT_LINES
    }
}

/// Values the README, the examples and tests use: a secret containing one of them was
/// pasted, not generated.
const DEMO_MARKERS: &[&str] = &[
    "change-me",
    "changeme",
    "example",
    "demo",
    "0123",
    "token-of",
    "secret",
    "password",
    "test",
];

/// Whether a secret looks like a placeholder or a demo value rather than a random one.
fn looks_like_demo(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    DEMO_MARKERS.iter().any(|m| lower.contains(m))
}

fn public(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// What deserves a warning at start-up, one sentence each saying what to do.
pub fn startup_warnings(settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if settings.access.repos.is_empty() {
        out.push(
            "no repos configured: every push is ignored (\"repository not configured in [[repos]]\"); map branches to envs in [[repos]] or ORCASTRATE_REPOS=owner/name@branch=env".to_owned(),
        );
    }
    if settings.admin_tokens.is_empty() {
        out.push(
            "no admin token: the operator API and CLI (status, history, deploy, rollback) refuse every call; set [admin] tokens or ORCASTRATE_ADMIN_TOKEN (openssl rand -hex 24)".to_owned(),
        );
    }
    let mqtt_listen = match &settings.mqtt {
        MqttMode::Embedded { listen, tls, .. } => Some((*listen, tls.is_some())),
        MqttMode::External(_) => None,
    };
    let http_public = public(settings.http_listen);
    let mqtt_public = mqtt_listen.is_some_and(|(a, _)| public(a));
    if http_public || mqtt_public {
        let mut demo = Vec::new();
        if looks_like_demo(&settings.github_secret) {
            demo.push("[github] secret / GITHUB_SECRET".to_owned());
        }
        if settings.admin_tokens.iter().any(|t| looks_like_demo(t)) {
            demo.push("[admin] tokens / ORCASTRATE_ADMIN_TOKEN".to_owned());
        }
        for c in &settings.access.clients {
            if looks_like_demo(&c.token) {
                demo.push(format!("the token of client {}", c.name));
            }
        }
        if !demo.is_empty() {
            out.push(format!(
                "demo-looking secrets on a public address ({}): {}; replace them with random ones (openssl rand -hex 24), or listen on 127.0.0.1 for a local demo",
                listen_list(settings.http_listen, http_public, mqtt_listen),
                demo.join(", ")
            ));
        }
    }
    if http_public && settings.http_tls.is_none() {
        out.push(format!(
            "HTTP on the public address {} without TLS: admin tokens travel in clear; set [http] tls_cert/tls_key, or put a TLS-terminating proxy in front (then this warning is expected)",
            settings.http_listen
        ));
    }
    if let Some((listen, false)) = mqtt_listen.filter(|(a, _)| public(*a)) {
        out.push(format!(
            "MQTT on the public address {listen} without TLS: agent tokens travel in clear; set [mqtt] tls_cert/tls_key, or listen on 127.0.0.1 and let agents use wss:// through a TLS proxy"
        ));
    }
    out
}

fn listen_list(http: SocketAddr, http_public: bool, mqtt: Option<(SocketAddr, bool)>) -> String {
    let mut parts = Vec::new();
    if http_public {
        parts.push(format!("HTTP {http}"));
    }
    if let Some((a, _)) = mqtt.filter(|(a, _)| public(*a)) {
        parts.push(format!("MQTT {a}"));
    }
    parts.join(", ")
}

/// Logs every start-up warning.
pub fn warn_at_startup(settings: &Settings) {
    for w in startup_warnings(settings) {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

    fn settings(toml: &str) -> Settings {
        let file: FileConfig = toml::from_str(toml).unwrap();
        Settings::build(file, None, &[("UNUSED", "")], &Overrides::default()).unwrap()
    }

    const QUIET: &str = r#"
[http]
listen = "127.0.0.1:8080"
[mqtt]
listen = "127.0.0.1:1883"
[github]
secret = "k3Jd9sLq0vXz"
[admin]
tokens = ["f0e1d2c3b4a5968778695a4b"]
[[repos]]
name = "octo-org/web"
branches = { main = "production" }
"#;

    #[test]
    fn a_loopback_configuration_with_repos_and_an_admin_token_is_quiet() {
        assert_eq!(startup_warnings(&settings(QUIET)), Vec::<String>::new());
    }

    #[test]
    fn no_repos_and_no_admin_token_are_each_a_warning() {
        let w = startup_warnings(&settings(
            "[http]\nlisten = \"127.0.0.1:1\"\n[mqtt]\nlisten = \"127.0.0.1:2\"\n[github]\nsecret = \"x\"\n",
        ));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("no repos configured"), "{w:?}");
        assert!(w[1].starts_with("no admin token"), "{w:?}");
    }

    #[test]
    fn a_public_address_warns_of_demo_secrets_and_missing_tls() {
        let toml = QUIET
            .replace("127.0.0.1:8080", "0.0.0.0:8080")
            .replace("127.0.0.1:1883", "0.0.0.0:1883")
            .replace("k3Jd9sLq0vXz", "change-me");
        let w = startup_warnings(&settings(&toml));
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("demo-looking secrets on a public address (HTTP 0.0.0.0:8080, MQTT 0.0.0.0:1883): [github] secret"), "{w:?}");
        assert!(!w[0].contains("change-me"), "no secret in logs: {w:?}");
        assert!(
            w[1].starts_with("HTTP on the public address 0.0.0.0:8080 without TLS"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("MQTT on the public address 0.0.0.0:1883 without TLS"),
            "{w:?}"
        );
    }

    #[test]
    fn demo_secrets_on_loopback_are_a_local_demo() {
        let toml = QUIET.replace("k3Jd9sLq0vXz", "change-me");
        assert!(startup_warnings(&settings(&toml)).is_empty());
    }

    #[test]
    fn agent_lines_are_bounded_per_agent_and_window() {
        let lines = AgentLines::default();
        let t0 = Instant::now();
        let logged = (0..100).filter(|_| lines.allow("web-1", t0)).count();
        assert_eq!(logged, MAX_AGENT_LINES as usize);
        assert!(lines.allow("web-2", t0), "another agent has its own window");
        assert!(lines.allow("web-1", t0 + BURST_WINDOW));
    }

    #[test]
    fn sha7_is_the_first_seven_characters() {
        assert_eq!(sha7("0123456789abcdef"), "0123456");
        assert_eq!(sha7("abc"), "abc");
    }
}
