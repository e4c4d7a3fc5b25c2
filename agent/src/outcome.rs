//! How an order ended, recorded in one place: `state.json`'s `last` (re-published after a
//! restart), the rollback history, and the status the agent publishes.

use orcastrate_broker::AgentStatus;

use crate::state::{self, HealthyRelease, LastOutcome, SharedState};
use crate::status::StatusBoard;

/// The end of one order, as the agent remembers and reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// What `state.json` keeps; its state, seq, sha and error also go to the status.
    pub(crate) last: LastOutcome,
    /// A release that passed its health check, added to the rollback history.
    pub(crate) healthy: Option<HealthyRelease>,
    /// The sha the status says runs now.
    pub(crate) running_sha: Option<String>,
    /// The status keeps naming the release it named (the one a failure before the switch
    /// worked on) instead of `last.release`.
    pub(crate) keep_status_release: bool,
}

impl Record {
    /// Applies the record to a status: a pure change, so it is tested on its own.
    fn apply(&self, s: &mut AgentStatus) {
        let last = &self.last;
        s.state = last.state;
        s.seq.clone_from(&last.seq);
        s.sha.clone_from(&last.sha);
        s.running_sha.clone_from(&self.running_sha);
        if !self.keep_status_release {
            s.release.clone_from(&last.release);
        }
        if last.deploy_ms.is_some() {
            s.deploy_ms = last.deploy_ms;
        }
        s.error.clone_from(&last.error);
    }
}

/// Records how an order ended: clears the pending order, stores `last` (and a healthy
/// release) in `state.json`, then publishes the status.
pub(crate) fn record(state: &SharedState, status: &StatusBoard, record: Record) {
    state::update(state, |s| {
        if let Some(healthy) = record.healthy.clone() {
            s.push_healthy(healthy);
        }
        s.pending = None;
        s.last = Some(record.last.clone());
    });
    status.update(|s| record.apply(s));
}

#[cfg(test)]
mod tests {
    use orcastrate_broker::AgentState;

    use super::*;

    fn status() -> AgentStatus {
        let mut s: AgentStatus = serde_json::from_value(serde_json::json!({
            "v": 1, "agent": "a", "host": "h", "repo": "o/r", "env": "prod", "session": "",
            "state": "deploying", "updated_at": "", "version": "", "mac": ""
        }))
        .unwrap();
        s.seq = Some(7);
        s.sha = Some("new".into());
        s.release = Some("0007-new".into());
        s.deploy_ms = Some(1);
        s
    }

    fn last(state: AgentState, release: Option<&str>, ms: Option<u64>) -> LastOutcome {
        LastOutcome {
            state,
            seq: Some(7),
            sha: Some("new".into()),
            release: release.map(str::to_owned),
            previous_sha: None,
            deploy_ms: ms,
            error: Some("why".into()),
        }
    }

    #[test]
    fn a_failure_before_the_switch_keeps_naming_the_release_it_built() {
        let mut s = status();
        Record {
            last: last(AgentState::Failed, None, Some(40)),
            healthy: None,
            running_sha: Some("old".into()),
            keep_status_release: true,
        }
        .apply(&mut s);
        assert_eq!(s.state, AgentState::Failed);
        assert_eq!(s.release.as_deref(), Some("0007-new"));
        assert_eq!(s.running_sha.as_deref(), Some("old"));
        assert_eq!(s.deploy_ms, Some(40));
        assert_eq!(s.error.as_deref(), Some("why"));
    }

    #[test]
    fn a_skip_clears_the_release_and_keeps_the_time() {
        let mut s = status();
        Record {
            last: last(AgentState::Skipped, None, None),
            healthy: None,
            running_sha: None,
            keep_status_release: false,
        }
        .apply(&mut s);
        assert_eq!(s.release, None);
        assert_eq!(s.deploy_ms, Some(1));
        assert_eq!(s.seq, Some(7));
    }

    #[test]
    fn a_rollback_names_the_release_restored() {
        let mut s = status();
        Record {
            last: last(AgentState::RolledBack, Some("0005-old"), Some(90)),
            healthy: None,
            running_sha: Some("old".into()),
            keep_status_release: false,
        }
        .apply(&mut s);
        assert_eq!(s.state, AgentState::RolledBack);
        assert_eq!(s.release.as_deref(), Some("0005-old"));
        assert_eq!(s.deploy_ms, Some(90));
    }
}
