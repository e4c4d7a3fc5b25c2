//! Logging refusals once per burst: whoever sends refused requests or messages chooses how
//! many, so each one cannot be a log line. The first refusal is logged at once; the rest
//! within [`BURST_WINDOW`] are only counted, and their number is logged with the next line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a logged refusal further ones are only counted. At most one line per
/// window, so a flood costs six lines a minute; a fixed value, as the exact counts are in
/// `/metrics`.
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Longest text taken from a message's sender into a log line (names come from topics).
pub const MAX_LOGGED_NAME: usize = 64;

/// Counts one kind of refusal and says when to log it: the first time, then at most once
/// per [`BURST_WINDOW`], with how many there were since the last line.
#[derive(Debug, Default)]
pub struct BurstLog {
    state: Mutex<BurstState>,
}

#[derive(Debug, Default)]
struct BurstState {
    /// When the last line was logged; `None` before the first.
    logged_at: Option<Instant>,
    /// Refusals since then, this one included.
    count: u64,
}

impl BurstLog {
    /// Counts a refusal; `Some(n)` if it is to be logged, `n` being the refusals since the
    /// last line, this one included.
    pub fn note(&self) -> Option<u64> {
        self.note_at(Instant::now())
    }

    fn note_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().expect("burst log lock poisoned");
        s.count += 1;
        match s.logged_at {
            Some(at) if now.saturating_duration_since(at) < BURST_WINDOW => None,
            _ => {
                s.logged_at = Some(now);
                Some(std::mem::take(&mut s.count))
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
    fn one_line_per_window_with_the_count_since_the_last() {
        let log = BurstLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note_at(t0), Some(1));
        for i in 1..=1000 {
            assert_eq!(log.note_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.note_at(t0 + BURST_WINDOW), Some(1001));
        assert_eq!(log.note_at(t0 + BURST_WINDOW * 3), Some(1));
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        assert_eq!(loggable("web-1"), "web-1");
        let long = "é".repeat(100);
        assert_eq!(loggable(&long).chars().count(), MAX_LOGGED_NAME);
    }
}
