//! The fleet view: verified agent statuses and the retained `fleet` summary per repo/env.
//!
//! Any token holder can publish anywhere on the embedded broker, so a status only counts if
//! its MAC verifies with the named agent's token, its topic names the same agent/repo/env as
//! its payload, and that agent may report for that repo/env. A genuine old status can be
//! re-published by anyone who kept it, so it also has to be newer (`updated_at`) than the
//! newest held for that agent; a last will (`offline`) carries the time its connection
//! began instead, and counts only if its session is that of the newest status held.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use orcastrate_broker::message::sha12;
use orcastrate_broker::{
    sign, time, AgentState, AgentStatus, FleetAgent, FleetDesired, FleetSummary,
};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::Access;
use crate::decisions::AgentLines;
use crate::ledger::RecordedStatus;
use crate::metrics::Metrics;
use crate::sequencer::{NewestOrders, Sequencer};
use orcastrate_broker::burst::{shown, BurstLog, BURST_WINDOW};

/// How often fleet summaries are published at most, per repo/env.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

type RepoEnv = (String, String);

#[derive(Default)]
struct FleetState {
    agents: HashMap<RepoEnv, BTreeMap<String, AgentStatus>>,
    /// The newest `updated_at` taken from each agent of a repo/env; kept apart from
    /// `agents` because the status held may be a last will, which is older.
    newest_at: HashMap<RepoEnv, HashMap<String, String>>,
    dirty: HashSet<RepoEnv>,
    /// The desired seq each summary was last published with.
    published_desired: HashMap<RepoEnv, u64>,
    /// The bytes of each summary last published: any other retained `fleet` payload is
    /// not the gateway's own.
    published: HashMap<RepoEnv, Vec<u8>>,
}

/// What to do about a message seen on a `fleet` topic (only the gateway writes there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryCheck {
    /// The gateway's own summary (or an empty payload where it has none).
    Own,
    /// Not its own: the true summary goes out again with the next publishing round.
    Replaced,
    /// A summary of a repo/env the gateway knows nothing of: clear it (empty retained).
    Clear,
}

/// Verified statuses of every agent.
pub struct Fleet {
    state: Mutex<FleetState>,
    access: Arc<RwLock<Access>>,
    newest: NewestOrders,
    sequencer: Sequencer,
    metrics: Arc<Metrics>,
    /// Refusals are logged once per burst: anyone with a token chooses how many there are.
    refusals: BurstLog,
    /// Foreign `fleet` messages, logged once per burst likewise.
    foreign_summaries: BurstLog,
    /// Agent state changes, one info line each, bounded per agent.
    state_lines: AgentLines,
}

/// Why a status was not counted (a forger learns nothing from it: nothing is answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Empty, not an `AgentStatus`, or `updated_at` not in the bus format.
    Malformed,
    TopicMismatch,
    UnknownAgent,
    BadMac,
    OutOfScope,
    /// A last will of a session other than the newest status's: the agent is back already.
    StaleOffline,
    /// Not newer than the newest status held for this agent: a replay (or a clock gone back).
    Replay,
}

impl Rejection {
    /// The `reason` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TopicMismatch => "topic_mismatch",
            Self::UnknownAgent => "unknown_agent",
            Self::BadMac => "bad_mac",
            Self::OutOfScope => "out_of_scope",
            Self::StaleOffline => "stale_offline",
            Self::Replay => "replay",
        }
    }
}

impl Fleet {
    /// A fleet view seeded with the statuses recorded in the ledger.
    pub fn new(
        recorded: Vec<RecordedStatus>,
        access: Arc<RwLock<Access>>,
        newest: NewestOrders,
        sequencer: Sequencer,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut state = FleetState::default();
        for RecordedStatus { status, newest_at } in recorded {
            let key = (status.repo.clone(), status.env.clone());
            state.dirty.insert(key.clone());
            state
                .newest_at
                .entry(key.clone())
                .or_default()
                .insert(status.agent.clone(), newest_at);
            state
                .agents
                .entry(key)
                .or_default()
                .insert(status.agent.clone(), status);
        }
        let fleet = Self {
            state: Mutex::new(state),
            access,
            newest,
            sequencer,
            metrics,
            refusals: BurstLog::default(),
            foreign_summaries: BurstLog::default(),
            state_lines: AgentLines::default(),
        };
        fleet.update_connected();
        fleet
    }

    /// Takes a status published on `status/{agent}` of `repo`/`env`.
    pub fn on_status(
        &self,
        repo: &str,
        env: &str,
        agent: &str,
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let result = self
            .verify(repo, env, agent, payload)
            .and_then(|status| self.take(status));
        let status = match result {
            Ok(Some(status)) => {
                self.metrics.status("accepted");
                status
            }
            // The status held, again: the retained copy an engine sends on every
            // (re)subscribe. Neither news nor an attack.
            Ok(None) => return Ok(()),
            Err(reason) => {
                self.refused(repo, env, agent, reason);
                return Err(reason);
            }
        };
        self.update_connected();
        let payload = String::from_utf8_lossy(payload).into_owned();
        self.sequencer.record_status(status, payload);
        Ok(())
    }

    /// Holds a verified status if it is the agent's newest (see the module doc), and marks
    /// its summary for publishing; `None` if it is the one held already.
    fn take(&self, status: AgentStatus) -> Result<Option<AgentStatus>, Rejection> {
        let key = (status.repo.clone(), status.env.clone());
        let mut guard = self.state.lock().expect("fleet lock poisoned");
        let state = &mut *guard;
        let agents = state.agents.entry(key.clone()).or_default();
        if agents.get(&status.agent) == Some(&status) {
            return Ok(None);
        }
        let newest_at = state.newest_at.entry(key.clone()).or_default();
        if status.state == AgentState::Offline {
            if agents
                .get(&status.agent)
                .is_some_and(|prev| prev.session != status.session)
            {
                // A last will from an older connection: the agent is back already.
                return Err(Rejection::StaleOffline);
            }
        } else if newest_at
            .get(&status.agent)
            .is_some_and(|newest| *newest >= status.updated_at)
        {
            return Err(Rejection::Replay);
        }
        match newest_at.get_mut(&status.agent) {
            Some(newest) if *newest >= status.updated_at => {}
            Some(newest) => newest.clone_from(&status.updated_at),
            None => {
                newest_at.insert(status.agent.clone(), status.updated_at.clone());
            }
        }
        self.state_lines.log(agents.get(&status.agent), &status);
        agents.insert(status.agent.clone(), status.clone());
        state.dirty.insert(key);
        Ok(Some(status))
    }

    /// Counts a refused status, and logs it if it starts a burst.
    fn refused(&self, repo: &str, env: &str, agent: &str, reason: Rejection) {
        self.metrics.status("rejected");
        self.metrics.status_refused(reason.as_str());
        if let Some(count) = self.refusals.note() {
            tracing::warn!(
                agent = %shown(agent),
                repo = %shown(repo),
                env = %shown(env),
                reason = reason.as_str(),
                refused_since_last_line = count,
                "agent status refused; more refusals in the next {}s are only counted (orcastrate_agent_statuses_refused_total)",
                BURST_WINDOW.as_secs()
            );
        }
    }

    fn verify(
        &self,
        repo: &str,
        env: &str,
        agent: &str,
        payload: &[u8],
    ) -> Result<AgentStatus, Rejection> {
        if payload.is_empty() {
            return Err(Rejection::Malformed);
        }
        let status: AgentStatus =
            serde_json::from_slice(payload).map_err(|_| Rejection::Malformed)?;
        if !time::is_timestamp(&status.updated_at) {
            return Err(Rejection::Malformed);
        }
        if status.agent != agent || status.repo != repo || status.env != env {
            return Err(Rejection::TopicMismatch);
        }
        let access = self.access.read().expect("access lock poisoned");
        let client = access.client(agent).ok_or(Rejection::UnknownAgent)?;
        if !sign::verify_status(&client.token, &status) {
            return Err(Rejection::BadMac);
        }
        if !client.may_report(repo, env) {
            return Err(Rejection::OutOfScope);
        }
        Ok(status)
    }

    fn update_connected(&self) {
        let state = self.state.lock().expect("fleet lock poisoned");
        let n = state
            .agents
            .values()
            .flat_map(|m| m.values())
            .filter(|s| s.state != AgentState::Offline)
            .count();
        self.metrics
            .connected_agents
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The summary of one repo/env as it stands.
    pub fn summary(&self, repo: &str, env: &str) -> FleetSummary {
        let desired = self
            .newest
            .read()
            .expect("newest-orders lock poisoned")
            .get(&(repo.to_owned(), env.to_owned()))
            .map(|o| FleetDesired {
                seq: o.order.seq,
                sha: o.order.sha.clone(),
            });
        let state = self.state.lock().expect("fleet lock poisoned");
        let agents = state
            .agents
            .get(&(repo.to_owned(), env.to_owned()))
            .map(|m| {
                m.values()
                    .map(|s| FleetAgent {
                        agent: s.agent.clone(),
                        state: s.state,
                        seq: s.seq,
                        sha12: s.sha.as_deref().map(sha12),
                        running_sha12: s.running_sha.as_deref().map(sha12),
                        port: s.port,
                        updated_at: s.updated_at.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        FleetSummary {
            v: orcastrate_broker::PAYLOAD_VERSION,
            repo: repo.to_owned(),
            env: env.to_owned(),
            desired,
            rollout: self
                .sequencer
                .rollout_view(repo, env)
                .map(|r| r.fleet_view()),
            agents,
            updated_at: time::now(),
        }
    }

    /// Checks a message seen on the `fleet` topic of `repo`/`env` against the summary last
    /// published there (byte for byte, as the `desired` guard does; the caller has let
    /// echoes of earlier ones through with [`Bus::take_echo`]). A foreign one is
    /// replaced within a publishing interval, so a flood of forgeries costs at most one
    /// publish per second per repo/env.
    pub fn on_summary(&self, repo: &str, env: &str, payload: &[u8]) -> SummaryCheck {
        let known_order = self
            .newest
            .read()
            .expect("newest-orders lock poisoned")
            .contains_key(&(repo.to_owned(), env.to_owned()));
        let key = (repo.to_owned(), env.to_owned());
        let check = {
            let mut state = self.state.lock().expect("fleet lock poisoned");
            match state.published.get(&key) {
                Some(own) if own.as_slice() == payload => SummaryCheck::Own,
                _ if known_order || state.agents.contains_key(&key) => {
                    state.dirty.insert(key);
                    SummaryCheck::Replaced
                }
                _ if payload.is_empty() => SummaryCheck::Own,
                _ => SummaryCheck::Clear,
            }
        };
        if check != SummaryCheck::Own {
            self.metrics.foreign_summaries.inc();
            if let Some(count) = self.foreign_summaries.note() {
                tracing::warn!(
                    repo = %shown(repo),
                    env = %shown(env),
                    action = ?check,
                    foreign_since_last_line = count,
                    "a fleet summary the gateway did not publish; replacing it (more in the next {}s are only counted)",
                    BURST_WINDOW.as_secs()
                );
            }
        }
        check
    }

    /// Marks every summary for publishing again (after the bus reconnects).
    pub fn mark_all_dirty(&self) {
        let keys: Vec<RepoEnv> = self
            .newest
            .read()
            .expect("newest-orders lock poisoned")
            .keys()
            .cloned()
            .collect();
        let mut state = self.state.lock().expect("fleet lock poisoned");
        let known: Vec<RepoEnv> = state.agents.keys().cloned().collect();
        state.dirty.extend(keys.into_iter().chain(known));
    }

    /// The repo/envs whose summary changed since it was last published.
    fn take_dirty(&self) -> Vec<RepoEnv> {
        let newest: Vec<(RepoEnv, u64)> = self
            .newest
            .read()
            .expect("newest-orders lock poisoned")
            .iter()
            .map(|(k, o)| (k.clone(), o.order.seq))
            .collect();
        let rollouts = self.sequencer.take_changed_rollouts();
        let mut state = self.state.lock().expect("fleet lock poisoned");
        state.dirty.extend(rollouts);
        for (key, seq) in newest {
            if state.published_desired.get(&key) != Some(&seq) {
                state.published_desired.insert(key.clone(), seq);
                state.dirty.insert(key);
            }
        }
        state.dirty.drain().collect()
    }

    /// Publishes changed summaries, at most once per [`SUMMARY_INTERVAL`] each, until cancelled.
    pub async fn publish_loop(self: Arc<Self>, bus: Bus, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            for (repo, env) in self.take_dirty() {
                let summary = self.summary(&repo, &env);
                let payload = serde_json::to_vec(&summary).expect("summaries serialize");
                self.state
                    .lock()
                    .expect("fleet lock poisoned")
                    .published
                    .insert((repo.clone(), env.clone()), payload.clone());
                // Remembered as our own, so its echo is not taken for a forgery.
                bus.publish_order(&bus.topics().fleet(&repo, &env), || Some(payload))
                    .await;
            }
        }
    }
}
