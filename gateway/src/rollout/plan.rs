//! The rollout decisions, pure: which agents a wave is for, and what a running rollout does
//! next given the agents' statuses and the time. The sequencer applies them in the ledger.

use std::collections::BTreeSet;

use orcastrate_broker::message::{sha12, truncate_text};
use orcastrate_broker::{AgentState, AgentStatus};
use sha2::{Digest, Sha256};

use super::config::{Policy, Wave};
use super::Rollout;

/// Longest part of an agent's error quoted in a revert's reason (five agents at most are).
const MAX_ERROR_BYTES: usize = 300;

/// What a running rollout does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet; `hold_from` is the time the current wave became all healthy (kept, set
    /// or cleared).
    Wait { hold_from: Option<u64> },
    /// Publish the next wave; `left_out` are agents of this wave given up on (offline).
    NextWave { left_out: Vec<String> },
    /// The last wave is healthy.
    Complete { left_out: Vec<String> },
    /// Too many failures or a wave timed out: back to the base sha for everyone.
    Revert { reason: String },
}

/// How one agent stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Healthy,
    Failed,
    Offline,
    Pending,
}

fn standing(r: &Rollout, s: &AgentStatus) -> Standing {
    let at_rollout = s.seq.is_some_and(|q| q >= r.first_seq) && s.sha.as_deref() == Some(&r.sha);
    match s.state {
        AgentState::Offline => Standing::Offline,
        AgentState::Healthy if at_rollout => Standing::Healthy,
        // A late push of an older commit: the agent serves a newer healthy sha and keeps
        // it; waiting for it would hold the rollout forever.
        AgentState::Skipped if at_rollout => Standing::Healthy,
        AgentState::Failed | AgentState::RolledBack | AgentState::Unhealthy if at_rollout => {
            Standing::Failed
        }
        _ => Standing::Pending,
    }
}

/// Decides what `r` does at `now_ms`, given every recorded status of its repo/env.
pub fn decide(r: &Rollout, statuses: &[AgentStatus], now_ms: u64) -> Decision {
    let failed: Vec<&AgentStatus> = statuses
        .iter()
        .filter(|s| standing(r, s) == Standing::Failed)
        .collect();
    if failed.len() > r.policy.max_failed as usize {
        let who: Vec<String> = failed
            .iter()
            .take(5)
            .map(|s| {
                // Each agent's error is bounded: the reason travels in replies and events.
                let why = s
                    .error
                    .as_deref()
                    .map(|e| format!(": {}", truncate_text(e, MAX_ERROR_BYTES)))
                    .unwrap_or_default();
                format!("{} {}{}", s.agent, s.state.as_str(), why)
            })
            .collect();
        return Decision::Revert {
            reason: format!(
                "{} of the agents failed at {} (max_failed {}): {}",
                failed.len(),
                sha12(&r.sha),
                r.policy.max_failed,
                who.join("; ")
            ),
        };
    }
    // The agents this wave waits for: its targets, or every agent known.
    let members: Vec<(String, Standing)> = match &r.targets {
        Some(t) => t
            .iter()
            .map(|a| {
                let st = statuses
                    .iter()
                    .find(|s| &s.agent == a)
                    .map_or(Standing::Offline, |s| standing(r, s));
                (a.clone(), st)
            })
            .collect(),
        None => statuses
            .iter()
            .map(|s| (s.agent.clone(), standing(r, s)))
            .collect(),
    };
    let healthy = members.iter().filter(|m| m.1 == Standing::Healthy).count();
    let pending: Vec<&str> = members
        .iter()
        .filter(|m| m.1 == Standing::Pending)
        .map(|m| m.0.as_str())
        .collect();
    let offline: Vec<String> = members
        .iter()
        .filter(|m| m.1 == Standing::Offline)
        .map(|m| m.0.clone())
        .collect();
    let timed_out = r
        .policy
        .wave_timeout_s
        .is_some_and(|t| now_ms >= r.wave_started_ms + t * 1000);
    let done = healthy > 0 && pending.is_empty() && (offline.is_empty() || timed_out);
    if !done {
        if timed_out {
            let mut waiting: Vec<&str> = pending.clone();
            waiting.extend(offline.iter().map(String::as_str));
            waiting.truncate(10);
            return Decision::Revert {
                reason: format!(
                    "wave {} of {} was not healthy at {} within wave_timeout_s = {}: waiting for {}",
                    r.wave + 1,
                    r.policy.waves.len(),
                    sha12(&r.sha),
                    r.policy.wave_timeout_s.unwrap_or_default(),
                    if waiting.is_empty() { "any agent".to_owned() } else { waiting.join(", ") }
                ),
            };
        }
        return Decision::Wait { hold_from: None };
    }
    let left_out = if timed_out { offline } else { Vec::new() };
    if r.wave + 1 >= r.policy.waves.len() {
        return Decision::Complete { left_out };
    }
    let since = r.hold_from_ms.unwrap_or(now_ms);
    if now_ms >= since + r.policy.hold_s * 1000 {
        Decision::NextWave { left_out }
    } else {
        Decision::Wait {
            hold_from: Some(since),
        }
    }
}

/// The agents of wave `wave` (0-based) of rollout `id`: `None` for the last wave (every
/// agent), else the earlier wave's agents, the names this wave adds, and agents of `known`
/// in the rollout's stable order (SHA-256 of `{id}\n{agent}`) up to its share; at least one.
pub fn wave_targets(
    policy: &Policy,
    wave: usize,
    id: i64,
    known: &[String],
    earlier: Option<&[String]>,
) -> Option<Vec<String>> {
    if wave + 1 >= policy.waves.len() {
        return None;
    }
    let mut set: BTreeSet<String> = earlier.unwrap_or_default().iter().cloned().collect();
    let mut share = 0u8;
    for w in &policy.waves[..=wave] {
        match w {
            Wave::Agents(a) => set.extend(a.iter().cloned()),
            Wave::Share(p) => share = share.max(*p),
        }
    }
    let want = (known.len() * usize::from(share)).div_ceil(100).max(1);
    let mut order: Vec<(Vec<u8>, &String)> = known
        .iter()
        .map(|a| (Sha256::digest(format!("{id}\n{a}")).to_vec(), a))
        .collect();
    order.sort();
    for (_, agent) in order {
        if set.len() >= want {
            break;
        }
        set.insert(agent.clone());
    }
    Some(set.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::RolloutState;
    use orcastrate_broker::OrderKind;

    const SHA: &str = "1111111111111111111111111111111111111111";
    const BASE: &str = "2222222222222222222222222222222222222222";

    fn rollout(policy: Policy, targets: Option<Vec<&str>>) -> Rollout {
        Rollout {
            id: 7,
            repo: "a/b".into(),
            env: "prod".into(),
            sha: SHA.into(),
            base_sha: Some(BASE.into()),
            kind: OrderKind::Push,
            first_seq: 100,
            wave_seq: 100,
            wave: 0,
            policy,
            targets: targets.map(|t| t.into_iter().map(str::to_owned).collect()),
            state: RolloutState::Running,
            reason: None,
            wave_started_ms: 1_000_000,
            hold_from_ms: None,
            left_out: Vec::new(),
            started_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn status(agent: &str, state: AgentState, seq: u64, sha: &str) -> AgentStatus {
        serde_json::from_value(serde_json::json!({
            "v": 1, "agent": agent, "host": "h", "repo": "a/b", "env": "prod", "session": "s",
            "state": state, "step": null, "seq": seq, "sha": sha, "running_sha": sha,
            "previous_sha": null, "release": null, "updated_at": "t", "deploy_ms": null,
            "error": "health check failed", "version": "0", "mac": ""
        }))
        .unwrap()
    }

    fn waves() -> Policy {
        Policy {
            waves: vec![
                Wave::Agents(vec!["web-1".into()]),
                Wave::Share(50),
                Wave::Share(100),
            ],
            hold_s: 60,
            wave_timeout_s: Some(600),
            max_failed: 0,
        }
    }

    #[test]
    fn one_failure_reverts_a_fleet_without_a_rollout_table() {
        let r = rollout(Policy::all_at_once(), None);
        let ok = status("web-1", AgentState::Healthy, 100, SHA);
        let deploying = status("web-2", AgentState::Deploying, 100, SHA);
        assert_eq!(
            decide(&r, &[ok.clone(), deploying], 0),
            Decision::Wait { hold_from: None }
        );
        let bad = status("web-2", AgentState::RolledBack, 100, SHA);
        let Decision::Revert { reason } = decide(&r, &[ok.clone(), bad], 0) else {
            panic!("not reverted")
        };
        assert!(
            reason.contains("web-2 rolled_back: health check failed"),
            "{reason}"
        );
        // A failure at an older order or another sha is not this rollout's.
        let old = status("web-2", AgentState::Failed, 99, SHA);
        let base = status("web-3", AgentState::Failed, 100, BASE);
        assert_eq!(
            decide(&r, &[ok.clone(), old, base], 0),
            Decision::Wait { hold_from: None }
        );
        assert_eq!(
            decide(&r, &[ok], 0),
            Decision::Complete { left_out: vec![] }
        );
    }

    #[test]
    fn max_failed_tolerates_that_many() {
        let mut p = Policy::all_at_once();
        p.max_failed = 1;
        let r = rollout(p, None);
        let s = [
            status("web-1", AgentState::Unhealthy, 100, SHA),
            status("web-2", AgentState::Healthy, 100, SHA),
        ];
        // One tolerated failure: the others being healthy completes the wave.
        assert!(matches!(decide(&r, &s, 0), Decision::Complete { .. }));
        let s = [
            status("web-1", AgentState::Unhealthy, 100, SHA),
            status("web-2", AgentState::Failed, 101, SHA),
        ];
        assert!(matches!(decide(&r, &s, 0), Decision::Revert { .. }));
    }

    #[test]
    fn a_healthy_wave_holds_then_moves_on() {
        let mut r = rollout(waves(), Some(vec!["web-1"]));
        let s = [
            status("web-1", AgentState::Healthy, 100, SHA),
            status("web-2", AgentState::Healthy, 100, BASE),
        ];
        let t0 = r.wave_started_ms + 5_000;
        assert_eq!(
            decide(&r, &s, t0),
            Decision::Wait {
                hold_from: Some(t0)
            }
        );
        r.hold_from_ms = Some(t0);
        assert_eq!(
            decide(&r, &s, t0 + 59_999),
            Decision::Wait {
                hold_from: Some(t0)
            }
        );
        assert_eq!(
            decide(&r, &s, t0 + 60_000),
            Decision::NextWave { left_out: vec![] }
        );
        // Not healthy any more during the hold: the hold starts over.
        let s = [status("web-1", AgentState::Deploying, 101, SHA)];
        assert_eq!(
            decide(&r, &s, t0 + 60_000),
            Decision::Wait { hold_from: None }
        );
    }

    #[test]
    fn a_wave_times_out_but_leaves_offline_agents_out() {
        let r = rollout(waves(), Some(vec!["web-1", "web-2"]));
        let late = r.wave_started_ms + 600_000;
        let s = [
            status("web-1", AgentState::Healthy, 100, SHA),
            status("web-2", AgentState::Offline, 90, BASE),
        ];
        assert_eq!(decide(&r, &s, late - 1), Decision::Wait { hold_from: None });
        assert_eq!(
            decide(&r, &s, late),
            Decision::Wait {
                hold_from: Some(late)
            }
        );
        let s = [
            status("web-1", AgentState::Healthy, 100, SHA),
            status("web-2", AgentState::Deploying, 100, SHA),
        ];
        let Decision::Revert { reason } = decide(&r, &s, late) else {
            panic!("no revert")
        };
        assert!(
            reason.contains("wave 1 of 3") && reason.contains("web-2"),
            "{reason}"
        );
    }

    #[test]
    fn waves_pick_a_stable_cumulative_share() {
        let known: Vec<String> = (1..=10).map(|i| format!("web-{i}")).collect();
        let p = waves();
        let w0 = wave_targets(&p, 0, 7, &known, None).unwrap();
        assert_eq!(w0, ["web-1"]);
        let w1 = wave_targets(&p, 1, 7, &known, Some(&w0)).unwrap();
        assert_eq!(w1.len(), 5);
        assert!(w1.contains(&"web-1".to_owned()));
        assert_eq!(wave_targets(&p, 1, 7, &known, Some(&w0)).unwrap(), w1);
        // Another rollout picks another sample.
        let other = wave_targets(&p, 1, 8, &known, Some(&w0)).unwrap();
        assert_ne!(other, w1);
        assert_eq!(wave_targets(&p, 2, 7, &known, Some(&w1)), None);
        // At least one agent, even of an empty fleet share.
        let tiny = Policy {
            waves: vec![Wave::Share(1), Wave::Share(100)],
            ..p
        };
        assert_eq!(wave_targets(&tiny, 0, 7, &known, None).unwrap().len(), 1);
    }
}
