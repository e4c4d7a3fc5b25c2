//! `orcastrate-gateway watch`: a human view of the bus, one readable line per webhook
//! decision, order and agent status change, live.
//!
//! It is an MQTT client like `mosquitto_sub` (a `role = "watcher"` login), so it works
//! wherever the bus is reachable, embedded broker or external engine, and needs no admin
//! token. (Not to be confused with [`crate::watch`], the gateway's own bus listener.)
//! Retained orders and statuses arrive first, so the view starts with what runs now.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use orcastrate_broker::mqtt::{client_options_with, Trust};
use orcastrate_broker::{
    names, AgentStatus, ConfigError, DeployOrder, Event, EventOutcome, TopicKind, Topics,
};
use rumqttc::{Client, Event as MqttEvent, Incoming, QoS};

use crate::cli::WatchArgs;
use crate::decisions::sha7;

/// Longest text from the bus (an error, a reason) shown on one line.
const MAX_TEXT: usize = 160;

/// Runs until interrupted; returns an error if the first connection fails.
///
/// # Errors
///
/// A bad `--repo`/`--env`/`--server`, or a refused or impossible first login.
pub fn run(args: &WatchArgs) -> anyhow::Result<()> {
    // A bad name is a usage error (exit 2), as in every other command.
    let flag =
        |key: &str, e: names::NameError| ConfigError::new("the command line", key, e.to_string());
    let repo = args
        .repo
        .as_deref()
        .map(names::repo)
        .transpose()
        .map_err(|e| flag("--repo", e))?;
    let env = args
        .env
        .as_deref()
        .map(|e| names::env(e).map(str::to_owned))
        .transpose()
        .map_err(|e| flag("--env", e))?;
    let trust = match &args.ca_file {
        Some(path) => Trust::CaFile(path.clone()),
        None => Trust::System,
    };
    let client_id = format!("{}-watch-{}", args.user, std::process::id());
    let mut options =
        client_options_with(&args.server, &client_id, &args.user, &args.token, &trust)
            .context("--server")?;
    options.set_keep_alive(Duration::from_secs(20));
    let (client, mut connection) = Client::new(options, 16);
    let topics = Topics::new(&args.prefix);
    let filters = filters(&args.prefix, repo.as_deref(), env.as_deref());
    let mut view = View::default();
    let mut connected_once = false;
    for notification in connection.iter() {
        match notification {
            Ok(MqttEvent::Incoming(Incoming::ConnAck(_))) => {
                for f in &filters {
                    client.subscribe(f, QoS::AtMostOnce)?;
                }
            }
            Ok(MqttEvent::Incoming(Incoming::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    anyhow::bail!(
                        "the bus refused a subscription of {}: give it a role = \"watcher\" client whose scopes cover what you watch",
                        args.user
                    );
                }
                if !connected_once {
                    eprintln!(
                        "watching {} as {} (Ctrl-C to stop)",
                        filters.join(" "),
                        args.user
                    );
                }
                connected_once = true;
            }
            Ok(MqttEvent::Incoming(Incoming::Publish(p))) => {
                if let Some(line) = view.line(&topics, env.as_deref(), &p.topic, &p.payload) {
                    println!("{line}");
                }
            }
            Ok(_) => {}
            Err(e) if !connected_once => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot watch the bus at {} as {}: check --server, --user and --token",
                        args.server, args.user
                    )
                });
            }
            Err(e) => {
                eprintln!("connection lost ({e}); reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Ok(())
}

/// What to subscribe to: orders, statuses and events of the repo/env asked for.
fn filters(prefix: &str, repo: Option<&str>, env: Option<&str>) -> Vec<String> {
    let repo = repo.unwrap_or("+/+");
    let env = env.unwrap_or("+");
    vec![
        format!("{prefix}/{repo}/{env}/desired"),
        format!("{prefix}/{repo}/{env}/status/+"),
        format!("{prefix}/{repo}/events"),
    ]
}

/// An agent: repo, env, name.
type AgentKey = (String, String, String);

/// What makes a status line new: state, step, seq.
type Shown = (&'static str, Option<&'static str>, Option<u64>);

/// The last status shown of each agent, so only changes make a line.
#[derive(Default)]
struct View {
    shown: HashMap<AgentKey, Shown>,
}

impl View {
    /// The line for one message, if it says something new.
    fn line(
        &mut self,
        topics: &Topics,
        env: Option<&str>,
        topic: &str,
        payload: &[u8],
    ) -> Option<String> {
        match topics.parse(topic)? {
            TopicKind::Desired { .. } => {
                let o: DeployOrder = serde_json::from_slice(payload).ok()?;
                Some(order_line(&o))
            }
            TopicKind::Status { .. } => {
                let s: AgentStatus = serde_json::from_slice(payload).ok()?;
                let key = (s.repo.clone(), s.env.clone(), s.agent.clone());
                let now = (s.state.as_str(), s.step.map(|st| st.as_str()), s.seq);
                if self.shown.get(&key) == Some(&now) {
                    return None;
                }
                self.shown.insert(key, now);
                Some(status_line(&s))
            }
            TopicKind::Events { .. } => {
                let e: Event = serde_json::from_slice(payload).ok()?;
                if env.is_some() && e.env.as_deref() != env {
                    return None;
                }
                Some(event_line(&e))
            }
            _ => None,
        }
    }
}

/// `HH:MM:SS` of a bus timestamp (`YYYY-MM-DDTHH:MM:SS.sssZ`).
fn clock(at: &str) -> &str {
    at.get(11..19).unwrap_or(at)
}

/// Text from the bus on one line: its first line, control characters escaped, cut.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out: String = first
        .chars()
        .take(MAX_TEXT)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if first.chars().count() > MAX_TEXT || text.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

fn order_line(o: &DeployOrder) -> String {
    format!(
        "{} {} {}  order {} {} {} by {}{}",
        clock(&o.issued_at),
        o.repo,
        o.env,
        o.seq,
        o.kind.as_str(),
        sha7(&o.sha),
        o.issued_by.as_deref().map_or("-".into(), one_line),
        o.git_ref
            .as_deref()
            .map_or(String::new(), |r| format!(" ({})", one_line(r))),
    )
}

fn status_line(s: &AgentStatus) -> String {
    let mut line = format!(
        "{} {} {}  {} {}",
        clock(&s.updated_at),
        s.repo,
        s.env,
        s.agent,
        s.state.as_str()
    );
    if let Some(step) = s.step {
        line.push(' ');
        line.push_str(step.as_str());
    }
    if let Some(sha) = &s.sha {
        line.push(' ');
        line.push_str(sha7(sha));
    }
    if let Some(running) = s
        .running_sha
        .as_deref()
        .filter(|r| Some(*r) != s.sha.as_deref())
    {
        line.push_str(" running ");
        line.push_str(sha7(running));
    }
    if let Some(error) = s.error.as_deref().filter(|e| !e.is_empty()) {
        line.push_str(": ");
        line.push_str(&one_line(error));
    }
    line
}

fn event_line(e: &Event) -> String {
    let outcome = match e.outcome {
        EventOutcome::Accepted => "accepted",
        EventOutcome::Ignored => "ignored",
        EventOutcome::Duplicate => "duplicate",
    };
    let mut line = format!(
        "{} {} {}  webhook {} {}: {outcome}",
        clock(&e.at),
        e.repo,
        e.env.as_deref().unwrap_or("-"),
        one_line(&e.event),
        one_line(&e.delivery),
    );
    if let (Some(seq), Some(sha)) = (e.seq, &e.sha) {
        line.push_str(&format!(" seq {seq} {}", sha7(sha)));
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!(" ({})", one_line(reason)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_narrow_to_the_repo_and_env_asked_for() {
        assert_eq!(
            filters("orcastrate", Some("octo-org/web"), Some("production")),
            [
                "orcastrate/octo-org/web/production/desired",
                "orcastrate/octo-org/web/production/status/+",
                "orcastrate/octo-org/web/events"
            ]
        );
        assert_eq!(filters("o", None, None)[1], "o/+/+/+/status/+");
    }

    #[test]
    fn text_from_the_bus_stays_on_one_line() {
        assert_eq!(one_line("exit 1\nCannot find module"), "exit 1…");
        assert_eq!(one_line("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(one_line(&"x".repeat(500)).chars().count(), MAX_TEXT + 1);
    }
}
