//! Logging refusals once per burst: whoever sends refused messages chooses how many, so
//! each one cannot be a log line. The first refusal of a burst is logged at once; the rest
//! within [`BURST_WINDOW`] are only counted (exactly, in `/metrics`), and their number is
//! logged with the first refusal of the next burst.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a logged refusal further ones are only counted. At most one line per
/// window, so a flood costs six lines a minute; a fixed value, as the exact counts are in
/// `/metrics`.
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Longest text taken from a message's sender into a log line (names come from topics).
pub const MAX_LOGGED_NAME: usize = 64;

/// Decides which refusals of one kind are logged.
#[derive(Debug, Default)]
pub struct BurstLog {
    state: Mutex<BurstState>,
}

#[derive(Debug, Default)]
struct BurstState {
    /// When the current burst's logged refusal was; `None` before the first.
    logged_at: Option<Instant>,
    /// Refusals counted but not logged since then.
    unlogged: u64,
}

impl BurstLog {
    /// Whether the refusal seen at `now` is logged; if so, how many went unlogged since the
    /// last logged one (to log with it).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().expect("burst lock poisoned");
        match s.logged_at {
            Some(at) if now.saturating_duration_since(at) < BURST_WINDOW => {
                s.unlogged += 1;
                None
            }
            _ => {
                s.logged_at = Some(now);
                Some(std::mem::take(&mut s.unlogged))
            }
        }
    }
}

/// `name` cut to [`MAX_LOGGED_NAME`] characters, for a `?` (escaped) log field.
pub fn loggable(name: &str) -> &str {
    name.char_indices()
        .nth(MAX_LOGGED_NAME)
        .map_or(name, |(i, _)| &name[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_of_the_rest() {
        let log = BurstLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(log.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.admit(t0 + BURST_WINDOW), Some(1000));
        assert_eq!(log.admit(t0 + BURST_WINDOW * 3), Some(0));
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        assert_eq!(loggable("web-1"), "web-1");
        let long = "é".repeat(100);
        assert_eq!(loggable(&long).chars().count(), MAX_LOGGED_NAME);
    }
}
