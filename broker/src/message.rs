//! The JSON payloads of the bus.
//!
//! Every payload is a UTF-8 JSON object with `"v": 1`; unknown fields are ignored so that
//! newer publishers do not break older subscribers. Nullable fields are `Option`s and are
//! written as `null`, never omitted, so every reader sees the same shape.

use serde::{Deserialize, Serialize};

use crate::names::{self, NameError};

/// Why an order is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderKind {
    /// A push to a mapped branch.
    Push,
    /// A pull request merged into a mapped branch.
    Merge,
    /// An operator's `deploy`.
    Manual,
    /// An operator's `rollback`: a new order naming an older sha.
    Rollback,
}

impl OrderKind {
    /// The name used in payloads and canonical strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Merge => "merge",
            Self::Manual => "manual",
            Self::Rollback => "rollback",
        }
    }

    /// Parses the payload name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "push" => Self::Push,
            "merge" => Self::Merge,
            "manual" => Self::Manual,
            "rollback" => Self::Rollback,
            _ => return None,
        })
    }
}

/// What a repo/env should run: published retained on `desired` by the gateway only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOrder {
    pub v: u32,
    /// Per repo/env, strictly increasing.
    pub seq: u64,
    pub repo: String,
    pub env: String,
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub kind: OrderKind,
    /// The GitHub delivery id that caused it, if any.
    pub delivery: Option<String>,
    pub issued_at: String,
    pub issued_by: Option<String>,
    /// Which gateway key signed it.
    pub key_id: String,
    /// The agents this order is for (a rollout wave); `None`: every agent.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// What every agent not in `targets` runs; `None` when there is nothing else to run.
    #[serde(default)]
    pub base_sha: Option<String>,
    /// Ed25519 signature (base64) over [`crate::sign::order_canonical`].
    pub sig: String,
}

impl DeployOrder {
    /// An order for every agent of `repo`/`env` to run `sha`, issued now, with no ref,
    /// delivery, issuer or base: unsigned until an [`crate::OrderSigner`] signs it.
    pub fn new(seq: u64, repo: &str, env: &str, sha: &str, kind: OrderKind) -> Self {
        Self {
            v: crate::PAYLOAD_VERSION,
            seq,
            repo: repo.to_owned(),
            env: env.to_owned(),
            sha: sha.to_owned(),
            git_ref: None,
            kind,
            delivery: None,
            issued_at: crate::time::now(),
            issued_by: None,
            key_id: String::new(),
            targets: None,
            base_sha: None,
            sig: String::new(),
        }
    }

    /// Checks every field against the naming rules (used on receipt, before verifying).
    pub fn validate(&self) -> Result<(), NameError> {
        if names::repo(&self.repo)? != self.repo {
            return Err(NameError {
                field: "repo",
                value: self.repo.clone(),
                reason: "must be lowercase",
            });
        }
        names::env(&self.env)?;
        names::sha(&self.sha)?;
        for (field, value) in [
            ("ref", &self.git_ref),
            ("delivery", &self.delivery),
            ("issued_by", &self.issued_by),
        ] {
            if let Some(v) = value {
                names::single_line(field, v)?;
            }
        }
        names::single_line("issued_at", &self.issued_at)?;
        names::single_line("key_id", &self.key_id)?;
        if let Some(base) = &self.base_sha {
            names::sha(base)?;
        }
        for agent in self.targets.iter().flatten() {
            names::agent(agent)?;
        }
        Ok(())
    }

    /// Whether `agent` is one this order is for (`targets` null: every agent).
    pub fn targets_agent(&self, agent: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|t| t.iter().any(|a| a == agent))
    }

    /// The sha `agent` should run: `sha` if the order is for it, else `base_sha` (`None`
    /// if it is not for it and names no base).
    pub fn sha_for(&self, agent: &str) -> Option<&str> {
        if self.targets_agent(agent) {
            Some(&self.sha)
        } else {
            self.base_sha.as_deref()
        }
    }
}

/// What one agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Idle,
    Deploying,
    Healthy,
    Unhealthy,
    Failed,
    RolledBack,
    Skipped,
    Offline,
}

impl AgentState {
    /// The name used in payloads and canonical strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Deploying => "deploying",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Skipped => "skipped",
            Self::Offline => "offline",
        }
    }
}

/// The step of a deploy in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Fetch,
    Config,
    Install,
    Build,
    Start,
    Health,
}

impl Step {
    /// The name used in payloads and canonical strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Config => "config",
            Self::Install => "install",
            Self::Build => "build",
            Self::Start => "start",
            Self::Health => "health",
        }
    }
}

/// Retained status of one agent, on `status/{agent}`; also its last will (`offline`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub v: u32,
    pub agent: String,
    pub host: String,
    pub repo: String,
    pub env: String,
    /// Random per MQTT connection; an `offline` last will only counts if it matches.
    pub session: String,
    pub state: AgentState,
    pub step: Option<Step>,
    /// The order this status is about.
    pub seq: Option<u64>,
    pub sha: Option<String>,
    /// What `current` points to and serves now.
    pub running_sha: Option<String>,
    pub previous_sha: Option<String>,
    /// Release directory name, `{seq}-{sha12}`.
    pub release: Option<String>,
    /// The private loopback port the running release serves on behind the agent's
    /// `[proxy]`; absent without it, and then the MAC's string is the same as before the
    /// field existed (see [`crate::sign::status_canonical`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub updated_at: String,
    pub deploy_ms: Option<u64>,
    pub error: Option<String>,
    /// The agent's own version.
    pub version: String,
    /// HMAC-SHA256 (hex) with the agent's token over [`crate::sign::status_canonical`].
    pub mac: String,
}

impl AgentStatus {
    /// `agent` on `host`, of `repo`/`env`, with no order yet: `idle`, stamped now, with no
    /// session and not yet sealed (see [`crate::sign::seal_status`]).
    pub fn idle(agent: &str, host: &str, repo: &str, env: &str, version: &str) -> Self {
        Self {
            v: crate::PAYLOAD_VERSION,
            agent: agent.to_owned(),
            host: host.to_owned(),
            repo: repo.to_owned(),
            env: env.to_owned(),
            session: String::new(),
            state: AgentState::Idle,
            step: None,
            seq: None,
            sha: None,
            running_sha: None,
            previous_sha: None,
            release: None,
            port: None,
            updated_at: crate::time::now(),
            deploy_ms: None,
            error: None,
            version: version.to_owned(),
            mac: String::new(),
        }
    }
}

/// The desired order as the fleet summary shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDesired {
    pub seq: u64,
    pub sha: String,
}

/// One agent in a fleet summary: compact, so thousands fit in one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAgent {
    pub agent: String,
    pub state: AgentState,
    pub seq: Option<u64>,
    pub sha12: Option<String>,
    pub running_sha12: Option<String>,
    /// The private port its running release serves on behind the agent's `[proxy]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub updated_at: String,
}

/// The newest rollout of a repo/env as the fleet summary shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRollout {
    pub id: i64,
    pub sha: String,
    pub base_sha: Option<String>,
    /// The current wave, counting from 1.
    pub wave: usize,
    pub waves: usize,
    /// `running`, `completed`, `reverted`, `halted`, `superseded` or `aborted`.
    pub state: String,
}

/// Retained summary of every verified agent of a repo/env, on `fleet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSummary {
    pub v: u32,
    pub repo: String,
    pub env: String,
    pub desired: Option<FleetDesired>,
    /// The newest rollout, if any.
    #[serde(default)]
    pub rollout: Option<FleetRollout>,
    pub agents: Vec<FleetAgent>,
    pub updated_at: String,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The agent's own messages about the deploy.
    Agent,
}

/// One line of deploy output, on `log/{agent}` (not retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub v: u32,
    pub agent: String,
    pub seq: Option<u64>,
    pub step: Option<Step>,
    pub stream: LogStream,
    pub line: String,
    pub at: String,
}

/// What the gateway decided about a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventOutcome {
    Accepted,
    Ignored,
    Duplicate,
}

/// One webhook decision, on `{repo}/events` (not retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub delivery: String,
    pub event: String,
    pub repo: String,
    pub env: Option<String>,
    pub outcome: EventOutcome,
    pub reason: Option<String>,
    pub seq: Option<u64>,
    pub sha: Option<String>,
    pub at: String,
}

/// The first 12 characters of a sha, as release names and fleet entries show it.
pub fn sha12(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// Shortens `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_text(text: &str, max: usize) -> String {
    const MARK: &str = "…[truncated]";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_json_shape() {
        let order = DeployOrder {
            issued_at: "2026-01-01T00:00:00.000Z".into(),
            issued_by: Some("admin".into()),
            key_id: "k".into(),
            sig: "s".into(),
            ..DeployOrder::new(
                7,
                "octo-org/web",
                "production",
                &"a".repeat(40),
                OrderKind::Manual,
            )
        };
        let json: serde_json::Value = serde_json::to_value(&order).unwrap();
        assert_eq!(json["ref"], serde_json::Value::Null);
        assert_eq!(json["targets"], serde_json::Value::Null);
        assert_eq!(json["base_sha"], serde_json::Value::Null);
        assert_eq!(json["kind"], "manual");
        let back: DeployOrder = serde_json::from_value(json).unwrap();
        assert_eq!(back, order);
        assert!(order.validate().is_ok());
    }

    #[test]
    fn each_agent_computes_its_own_sha() {
        let mut order: DeployOrder = serde_json::from_str(
            r#"{"v":1,"seq":1,"repo":"a/b","env":"e","sha":"1111111111111111111111111111111111111111","ref":null,"kind":"push","delivery":null,"issued_at":"t","issued_by":null,"key_id":"k","sig":"s"}"#,
        )
        .unwrap();
        // An order without the fields (the first release's) is for everyone.
        assert_eq!(order.sha_for("web-9"), Some(order.sha.as_str()));
        order.targets = Some(vec!["web-1".into()]);
        assert_eq!(order.sha_for("web-2"), None);
        order.base_sha = Some("2".repeat(40));
        assert_eq!(order.sha_for("web-1"), Some("1".repeat(40).as_str()));
        assert_eq!(order.sha_for("web-2"), Some("2".repeat(40).as_str()));
        assert!(order.validate().is_ok());
        order.targets = Some(vec!["Web 1".into()]);
        assert!(order.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let json = r#"{"v":1,"agent":"a","seq":null,"step":"install","stream":"stdout","line":"x","at":"t","extra":1}"#;
        let line: LogLine = serde_json::from_str(json).unwrap();
        assert_eq!(line.step, Some(Step::Install));
    }

    #[test]
    fn states_use_snake_case() {
        assert_eq!(
            serde_json::to_string(&AgentState::RolledBack).unwrap(),
            "\"rolled_back\""
        );
        assert_eq!(AgentState::RolledBack.as_str(), "rolled_back");
    }

    #[test]
    fn truncation_is_marked_and_bounded() {
        let long = "é".repeat(3000);
        let cut = truncate_text(&long, 1000);
        assert!(cut.len() <= 1000);
        assert!(cut.ends_with("[truncated]"));
        assert_eq!(truncate_text("short", 1000), "short");
    }
}
