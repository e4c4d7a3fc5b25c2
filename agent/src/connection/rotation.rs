//! The reconnection state of the agent's MQTT connection, as pure transitions.

use std::time::Duration;

/// First pause after every server failed; doubled up to [`BACKOFF_MAX`], with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest pause between connection rounds.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The reconnection state: which server to try next, when a round of them all failed and
/// how long to pause, and how often the subscription was refused in a row.
///
/// Pure transitions, one per event, so the rotation is tested without a broker; the poll
/// loop does the I/O they call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rotation {
    servers: usize,
    /// Index of the server connected to or tried next.
    pub(super) server: usize,
    /// Servers that failed since the last CONNACK or the last pause.
    failed_in_round: usize,
    /// Rounds of failures in a row, for the backoff.
    round: u32,
    /// Refused subscriptions in a row (each retried after a growing pause).
    refused: u32,
    /// A CONNACK was received on the current connection.
    connected: bool,
}

/// What the poll loop does after a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AfterFailure {
    /// The connection had been established (lost, rather than not made).
    pub(super) was_connected: bool,
    /// Every server failed: pause for [`backoff`] of this round before the next try.
    pub(super) backoff_round: Option<u32>,
}

impl Rotation {
    pub(super) fn new(servers: usize) -> Self {
        Self {
            servers: servers.max(1),
            server: 0,
            failed_in_round: 0,
            round: 0,
            refused: 0,
            connected: false,
        }
    }

    pub(super) fn on_connack(&mut self) {
        self.connected = true;
        self.failed_in_round = 0;
        self.round = 0;
    }

    /// The subscription was refused: returns the backoff round of the retry.
    pub(super) fn on_subscription_refused(&mut self) -> u32 {
        let round = self.refused;
        self.refused = self.refused.saturating_add(1);
        round
    }

    pub(super) fn on_subscribed(&mut self) {
        self.refused = 0;
    }

    pub(super) fn on_failure(&mut self) -> AfterFailure {
        let was_connected = std::mem::take(&mut self.connected);
        if was_connected {
            // A lost connection starts a new round from the first (preferred) server.
            self.failed_in_round = 0;
            self.server = 0;
        } else {
            self.failed_in_round += 1;
            self.server = (self.server + 1) % self.servers;
        }
        let backoff_round = (self.failed_in_round >= self.servers).then(|| {
            self.failed_in_round = 0;
            let round = self.round;
            self.round = self.round.saturating_add(1);
            round
        });
        AfterFailure {
            was_connected,
            backoff_round,
        }
    }
}

/// Capped exponential backoff with jitter (50–100 % of the step).
pub(super) fn backoff(round: u32) -> Duration {
    let step = BACKOFF_MIN
        .saturating_mul(1u32 << round.min(10))
        .min(BACKOFF_MAX);
    let jitter = crate::random::random_u64() % 500;
    step.mul_f64(0.5 + jitter as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for round in 0..40 {
            let b = backoff(round);
            assert!(b <= BACKOFF_MAX, "{b:?}");
            assert!(b >= BACKOFF_MIN / 2, "{b:?}");
        }
    }

    #[test]
    fn failures_rotate_through_the_servers_then_back_off() {
        let mut r = Rotation::new(3);
        let tries: Vec<_> = (0..7)
            .map(|_| (r.on_failure().backoff_round, r.server))
            .collect();
        assert_eq!(
            tries,
            [
                (None, 1),
                (None, 2),
                (Some(0), 0),
                (None, 1),
                (None, 2),
                (Some(1), 0),
                (None, 1)
            ]
        );
    }

    #[test]
    fn a_lost_connection_starts_again_from_the_first_server() {
        let mut r = Rotation::new(3);
        r.on_failure();
        r.on_failure();
        assert_eq!(r.server, 2);
        r.on_connack();
        let after = r.on_failure();
        assert!(after.was_connected);
        assert_eq!(after.backoff_round, None);
        assert_eq!(r.server, 0);
        // The backoff restarted with the connection.
        r.on_failure();
        r.on_failure();
        assert_eq!(r.on_failure().backoff_round, Some(0));
        assert!(!r.on_failure().was_connected);
    }

    #[test]
    fn one_server_backs_off_after_each_failure() {
        let mut r = Rotation::new(1);
        assert_eq!(r.on_failure().backoff_round, Some(0));
        assert_eq!(r.on_failure().backoff_round, Some(1));
        r.on_connack();
        assert_eq!(r.on_failure().backoff_round, None);
        assert_eq!(r.on_failure().backoff_round, Some(0));
    }

    #[test]
    fn refused_subscriptions_back_off_until_one_is_granted() {
        let mut r = Rotation::new(2);
        assert_eq!(r.on_subscription_refused(), 0);
        assert_eq!(r.on_subscription_refused(), 1);
        r.on_subscribed();
        assert_eq!(r.on_subscription_refused(), 0);
    }
}
