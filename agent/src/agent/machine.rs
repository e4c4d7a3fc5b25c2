//! The agent loop's state as a machine: the settle wait of a new host, the deploy running
//! and the order queued behind it, the periodic health check in flight, and what `--once`
//! waits for. One handler per event, each a pure transition (time is passed in), so the
//! rules are tested without a broker; `event_loop` does the I/O they call for.

use orcastrate_broker::{AgentState, DeployOrder};
use tokio::time::Instant;

use crate::agent::RunOutcome;
use crate::config::SETTLE;
use crate::deploy::Outcome;
use crate::state::Pending;

/// An order is tried at most this often: once, and once more after a restart interrupted it.
pub(super) const MAX_ATTEMPTS: u32 = 2;

/// The settle wait of a host with no floor.
#[derive(Debug)]
enum Settle {
    /// Collecting orders; the deadline starts when the subscription is acknowledged.
    Waiting {
        deadline: Option<Instant>,
        best: Option<Box<DeployOrder>>,
    },
    Done,
}

/// What to do with an order interrupted by a restart.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resume {
    /// Try it again (the attempt number given).
    Retry(DeployOrder, u32),
    /// It was interrupted too often: record this error as its failure.
    GiveUp(DeployOrder, String),
}

/// Decides about the order `state.json` says was in progress at start-up.
pub(super) fn resume(pending: Pending) -> Resume {
    if pending.attempts < MAX_ATTEMPTS {
        Resume::Retry(pending.order, pending.attempts + 1)
    } else {
        let error = format!(
            "gave up on seq {}: interrupted {} times by a restart of the agent",
            pending.order.seq, pending.attempts
        );
        Resume::GiveUp(pending.order, error)
    }
}

/// What an accepted order leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Accepted {
    /// Kept as the best order of the settle wait.
    Held,
    /// Queued; the deploy running (its seq given) must be cancelled if it still can be.
    Queued { supersedes: Option<u64> },
}

/// The loop's state.
#[derive(Debug)]
pub(super) struct Machine {
    settle: Settle,
    /// The seq of the deploy in progress.
    running: Option<u64>,
    /// The order to deploy next, and its attempt number.
    queued: Option<(DeployOrder, u32)>,
    /// A periodic (or the boot) health check runs.
    check_in_flight: bool,
    /// `--once`.
    once: bool,
    ever_connected: bool,
    /// With `--once`: the time to give up when no server answered.
    connect_deadline: Instant,
    /// With `--once`: when the retained order has had its chance to arrive.
    decide_at: Option<Instant>,
    /// How the last deploy that was not cancelled ended.
    last_outcome: Option<Outcome>,
}

impl Machine {
    /// `settling`: a new host (no floor and nothing pending) waits for the newest order.
    pub(super) fn new(settling: bool, once: bool, connect_deadline: Instant) -> Self {
        Self {
            settle: if settling {
                Settle::Waiting {
                    deadline: None,
                    best: None,
                }
            } else {
                Settle::Done
            },
            running: None,
            queued: None,
            check_in_flight: false,
            once,
            ever_connected: false,
            connect_deadline,
            decide_at: None,
            last_outcome: None,
        }
    }

    /// Queues an order (the retry of an interrupted one).
    pub(super) fn queue(&mut self, order: DeployOrder, attempt: u32) {
        self.queued = Some((order, attempt));
    }

    /// The queued order to start now, if no deploy runs.
    pub(super) fn next_deploy(&mut self) -> Option<(DeployOrder, u32)> {
        if self.running.is_some() {
            return None;
        }
        let next = self.queued.take()?;
        self.running = Some(next.0.seq);
        Some(next)
    }

    /// With `--once` and nothing to do: how the agent finishes, once it can tell.
    pub(super) fn verdict(&self, now: Instant) -> Option<RunOutcome> {
        if !self.once || self.running.is_some() || self.queued.is_some() {
            return None;
        }
        if !self.ever_connected && now >= self.connect_deadline {
            return Some(RunOutcome::NoConnection);
        }
        let settling = matches!(self.settle, Settle::Waiting { .. });
        if self.decide_at.is_some_and(|d| now >= d) && !settling {
            return Some(match self.last_outcome {
                None => RunOutcome::UpToDate,
                Some(Outcome::Healthy) => RunOutcome::Healthy,
                Some(Outcome::Skipped) => RunOutcome::Skipped,
                Some(Outcome::RolledBack) => RunOutcome::RolledBack,
                Some(Outcome::Failed | Outcome::Cancelled) => RunOutcome::Failed,
            });
        }
        None
    }

    /// When `--once` must look at its verdict again.
    pub(super) fn once_wake(&self) -> Option<Instant> {
        if !self.once {
            None
        } else if !self.ever_connected {
            Some(self.connect_deadline)
        } else {
            self.decide_at
        }
    }

    /// When the settle wait ends.
    pub(super) fn settle_deadline(&self) -> Option<Instant> {
        match &self.settle {
            Settle::Waiting { deadline, .. } => *deadline,
            Settle::Done => None,
        }
    }

    pub(super) fn on_connected(&mut self) {
        self.ever_connected = true;
    }

    /// The subscription was acknowledged: returns whether the settle wait starts now.
    pub(super) fn on_subscribed(&mut self, now: Instant) -> bool {
        let mut started = false;
        if let Settle::Waiting {
            deadline: deadline @ None,
            ..
        } = &mut self.settle
        {
            *deadline = Some(now + SETTLE);
            started = true;
        }
        if self.once && self.decide_at.is_none() {
            // Retained orders arrive right after the subscription is acknowledged.
            self.decide_at = Some(now + SETTLE);
        }
        started
    }

    /// The settle wait ended: queues the newest order seen, and returns it.
    pub(super) fn on_settle_deadline(&mut self) -> Option<&DeployOrder> {
        if let Settle::Waiting {
            best: Some(order), ..
        } = std::mem::replace(&mut self.settle, Settle::Done)
        {
            self.queued = Some((*order, 1));
        }
        self.queued.as_ref().map(|(order, _)| order)
    }

    /// The newest seq started or about to be, with `stored`, the floor in `state.json`.
    pub(super) fn floor(&self, stored: Option<u64>) -> Option<u64> {
        [stored, self.running, self.queued.as_ref().map(|q| q.0.seq)]
            .into_iter()
            .flatten()
            .max()
    }

    /// An order passed the acceptance rules.
    pub(super) fn on_accepted(&mut self, order: DeployOrder) -> Accepted {
        if let Settle::Waiting { best, .. } = &mut self.settle {
            if best.as_ref().is_none_or(|b| order.seq > b.seq) {
                *best = Some(Box::new(order));
            }
            return Accepted::Held;
        }
        self.queued = Some((order, 1));
        Accepted::Queued {
            supersedes: self.running,
        }
    }

    /// The deploy in progress ended: returns whether it counts (it was not cancelled), so
    /// the agent prunes.
    pub(super) fn on_deploy_finished(&mut self, outcome: Outcome) -> bool {
        self.running = None;
        if outcome == Outcome::Cancelled {
            return false;
        }
        self.last_outcome = Some(outcome);
        true
    }

    /// The health tick: returns whether to start a check (none runs, no deploy runs, and
    /// the agent reports `healthy` or `unhealthy`).
    pub(super) fn on_health_tick(&mut self, state: AgentState) -> bool {
        let start = self.running.is_none()
            && !self.check_in_flight
            && matches!(state, AgentState::Healthy | AgentState::Unhealthy);
        self.check_in_flight |= start;
        start
    }

    /// The check after starting the current release at boot is in flight.
    pub(super) fn on_boot_check(&mut self) {
        self.check_in_flight = true;
    }

    /// A health check ended: returns whether its result applies (no deploy started since).
    pub(super) fn on_health_report(&mut self) -> bool {
        self.check_in_flight = false;
        self.running.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use orcastrate_broker::OrderKind;

    use super::*;

    fn order(seq: u64) -> DeployOrder {
        DeployOrder {
            issued_at: String::new(),
            ..DeployOrder::new(seq, "o/r", "prod", &format!("{seq:040x}"), OrderKind::Push)
        }
    }

    #[test]
    fn a_new_host_takes_the_newest_order_seen_while_settling() {
        let t0 = Instant::now();
        let mut m = Machine::new(true, false, t0);
        assert_eq!(m.settle_deadline(), None);
        assert!(m.on_subscribed(t0));
        assert_eq!(m.settle_deadline(), Some(t0 + SETTLE));
        assert!(!m.on_subscribed(t0 + Duration::from_secs(1)), "starts once");
        assert_eq!(m.on_accepted(order(5)), Accepted::Held);
        assert_eq!(m.on_accepted(order(9)), Accepted::Held);
        assert_eq!(m.on_accepted(order(7)), Accepted::Held);
        assert_eq!(m.next_deploy(), None, "nothing starts while settling");
        assert_eq!(m.on_settle_deadline().map(|o| o.seq), Some(9));
        assert_eq!(m.settle_deadline(), None);
        assert_eq!(m.next_deploy().map(|(o, a)| (o.seq, a)), Some((9, 1)));
    }

    #[test]
    fn a_newer_order_supersedes_the_running_one_and_raises_the_floor() {
        let mut m = Machine::new(false, false, Instant::now());
        assert_eq!(
            m.on_accepted(order(3)),
            Accepted::Queued { supersedes: None }
        );
        assert_eq!(m.floor(Some(1)), Some(3));
        assert!(m.next_deploy().is_some());
        assert_eq!(
            m.on_accepted(order(4)),
            Accepted::Queued {
                supersedes: Some(3)
            }
        );
        assert_eq!(m.floor(Some(1)), Some(4));
        assert_eq!(m.next_deploy(), None, "one deploy at a time");
        assert!(!m.on_deploy_finished(Outcome::Cancelled));
        assert_eq!(m.next_deploy().map(|(o, _)| o.seq), Some(4));
        assert!(m.on_deploy_finished(Outcome::Healthy));
        assert_eq!(m.floor(None), None);
    }

    #[test]
    fn once_reports_the_last_outcome_after_the_retained_order_had_its_chance() {
        let t0 = Instant::now();
        let mut m = Machine::new(false, true, t0 + Duration::from_secs(30));
        assert_eq!(m.verdict(t0), None);
        assert_eq!(m.once_wake(), Some(t0 + Duration::from_secs(30)));
        m.on_connected();
        m.on_subscribed(t0);
        assert_eq!(m.once_wake(), Some(t0 + SETTLE));
        assert_eq!(m.verdict(t0), None);
        m.on_accepted(order(2));
        m.next_deploy();
        assert_eq!(m.verdict(t0 + SETTLE), None, "a deploy runs");
        m.on_deploy_finished(Outcome::RolledBack);
        assert_eq!(m.verdict(t0 + SETTLE), Some(RunOutcome::RolledBack));
    }

    #[test]
    fn once_gives_up_without_a_server_and_is_up_to_date_without_an_order() {
        let t0 = Instant::now();
        let m = Machine::new(false, true, t0);
        assert_eq!(m.verdict(t0), Some(RunOutcome::NoConnection));
        let mut m = Machine::new(false, true, t0);
        m.on_connected();
        m.on_subscribed(t0);
        assert_eq!(m.verdict(t0 + SETTLE), Some(RunOutcome::UpToDate));
        assert_eq!(Machine::new(false, false, t0).verdict(t0), None);
    }

    #[test]
    fn health_checks_never_overlap_nor_run_during_a_deploy() {
        let mut m = Machine::new(false, false, Instant::now());
        assert!(!m.on_health_tick(AgentState::Idle));
        assert!(m.on_health_tick(AgentState::Healthy));
        assert!(!m.on_health_tick(AgentState::Healthy), "one in flight");
        m.on_accepted(order(1));
        m.next_deploy();
        assert!(!m.on_health_report(), "a deploy started since");
        assert!(!m.on_health_tick(AgentState::Unhealthy));
        m.on_deploy_finished(Outcome::Failed);
        m.on_boot_check();
        assert!(!m.on_health_tick(AgentState::Unhealthy));
        assert!(m.on_health_report());
        assert!(m.on_health_tick(AgentState::Unhealthy));
    }

    #[test]
    fn an_order_interrupted_twice_is_given_up() {
        let p = |attempts| Pending {
            order: order(6),
            attempts,
        };
        assert_eq!(resume(p(1)), Resume::Retry(order(6), 2));
        match resume(p(2)) {
            Resume::GiveUp(o, error) => {
                assert_eq!(o.seq, 6);
                assert!(error.contains("interrupted 2 times"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
