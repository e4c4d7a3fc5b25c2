//! Refusals logged once per burst, and names as a log line may show them.
//!
//! Whoever sends refused logins, packets or orders chooses how many, so each one cannot be a
//! log line: the first refusal of a kind is logged at once, the rest within a window are only
//! counted, and their number goes with the next line (or, for a caller that polls
//! [`Bursts::flush`], once the window has passed). The embedded broker's guard, the gateway's
//! hooks and fleet view, and the agent's order checks all count this way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a logged refusal further ones are only counted, unless a caller has its
/// own reason for another window. At most one line per window, so a flood costs six lines
/// a minute; a fixed value, as the exact counts are in the gateway's `/metrics`.
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Longest text (in characters) taken from a sender into a log line: names come from
/// topics, client ids and logins, which a sender may make 64 KiB long.
pub const MAX_LOGGED_CHARS: usize = 64;

/// Counts refusals per key and says when to log them: the first at once, then at most once
/// per window, with how many there were since the last line.
///
/// At most `max_keys` keys are tracked (idle ones are forgotten first); past that the rest
/// are counted together under the overflow key, so the memory a flood of distinct names
/// costs is bounded.
#[derive(Debug)]
pub struct Bursts<K> {
    window: Duration,
    max_keys: usize,
    overflow: K,
    bursts: HashMap<K, Burst>,
}

#[derive(Debug)]
struct Burst {
    /// When the last line about this key was written.
    logged_at: Instant,
    /// Refusals since then not yet in a line.
    suppressed: u64,
}

impl<K: Hash + Eq + Clone> Bursts<K> {
    /// Bursts of `window`, tracking up to `max_keys` keys and the rest under `overflow`.
    pub fn new(window: Duration, max_keys: usize, overflow: K) -> Self {
        Self {
            window,
            max_keys,
            overflow,
            bursts: HashMap::new(),
        }
    }

    /// Records one refusal under `key`; `Some(n)` when a line is to be written now, `n`
    /// being the refusals it covers (this one and those counted since the last line).
    pub fn note(&mut self, key: K, now: Instant) -> Option<u64> {
        let key = self.admit(key, now);
        let window = self.window;
        match self.bursts.get_mut(&key) {
            Some(b) if now.saturating_duration_since(b.logged_at) < window => {
                b.suppressed += 1;
                None
            }
            Some(b) => {
                let total = b.suppressed + 1;
                b.logged_at = now;
                b.suppressed = 0;
                Some(total)
            }
            None => {
                self.bursts.insert(
                    key,
                    Burst {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(1)
            }
        }
    }

    /// `key`, or the overflow key when `max_keys` others are in a burst.
    fn admit(&mut self, key: K, now: Instant) -> K {
        if self.bursts.len() < self.max_keys || self.bursts.contains_key(&key) {
            return key;
        }
        let window = self.window;
        self.bursts
            .retain(|_, b| now.saturating_duration_since(b.logged_at) < window);
        if self.bursts.len() < self.max_keys {
            key
        } else {
            self.overflow.clone()
        }
    }

    /// When [`Bursts::flush`] will have counts to write, if ever.
    pub fn next_flush(&self) -> Option<Instant> {
        self.bursts
            .values()
            .filter(|b| b.suppressed > 0)
            .map(|b| b.logged_at + self.window)
            .min()
    }

    /// The counts whose window has passed, each with its key, to be written now.
    pub fn flush(&mut self, now: Instant) -> Vec<(K, u64)> {
        let window = self.window;
        self.bursts
            .iter_mut()
            .filter(|(_, b)| {
                b.suppressed > 0 && now.saturating_duration_since(b.logged_at) >= window
            })
            .map(|(k, b)| {
                b.logged_at = now;
                (k.clone(), std::mem::take(&mut b.suppressed))
            })
            .collect()
    }

    /// Refusals under `key` counted since its last line.
    pub fn suppressed(&self, key: &K) -> u64 {
        self.bursts.get(key).map_or(0, |b| b.suppressed)
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.bursts.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.bursts.is_empty()
    }
}

/// One kind of refusal counted per [`BURST_WINDOW`], shareable between tasks.
#[derive(Debug)]
pub struct BurstLog(Mutex<Bursts<()>>);

impl Default for BurstLog {
    fn default() -> Self {
        Self(Mutex::new(Bursts::new(BURST_WINDOW, 1, ())))
    }
}

impl BurstLog {
    /// Counts a refusal; `Some(n)` if it is to be logged, `n` being the refusals since the
    /// last line, this one included.
    pub fn note(&self) -> Option<u64> {
        // A panic while holding it leaves a count at worst slightly off: keep going.
        let mut bursts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bursts.note((), Instant::now())
    }
}

/// A name or topic as a log shows it: escaped (a `\n` cannot start a forged line) and cut to
/// [`MAX_LOGGED_CHARS`] characters, saying how long it was.
pub fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(MAX_LOGGED_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if value.chars().nth(MAX_LOGGED_CHARS).is_some() {
        out.push_str(&format!("…({} bytes)", value.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_since_the_last() {
        let mut log = Bursts::new(BURST_WINDOW, 16, "other");
        let t0 = Instant::now();
        assert_eq!(log.note("k", t0), Some(1));
        for i in 1..50 {
            assert_eq!(log.note("k", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.suppressed(&"k"), 49);
        assert_eq!(log.note("k", t0 + BURST_WINDOW), Some(50));
        assert_eq!(log.note("k", t0 + BURST_WINDOW * 3), Some(1));
        // Another key is logged at once, not hidden by the burst.
        assert_eq!(log.note("j", t0), Some(1));
    }

    #[test]
    fn many_distinct_keys_stay_bounded() {
        let mut log = Bursts::new(BURST_WINDOW, 1024, "(others)".to_owned());
        let t0 = Instant::now();
        let lines = (0..1024 * 3)
            .filter(|i| log.note(format!("name-{i}"), t0).is_some())
            .count();
        assert_eq!(lines, 1024 + 1, "the rest counted together");
        assert!(log.len() <= 1024 + 1);
        // Once the window has passed, idle keys make room for new ones.
        assert_eq!(log.note("new".into(), t0 + BURST_WINDOW), Some(1));
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn counts_are_flushed_once_their_window_has_passed() {
        let window = Duration::from_secs(1);
        let mut log = Bursts::new(window, 16, "other");
        let t0 = Instant::now();
        log.note("signature", t0);
        assert_eq!(log.next_flush(), None, "nothing counted yet");
        for i in 0..1000 {
            log.note("signature", t0 + Duration::from_micros(i));
        }
        assert_eq!(log.next_flush(), Some(t0 + window));
        assert!(log.flush(t0 + window / 2).is_empty());
        assert_eq!(log.flush(t0 + window), vec![("signature", 1000)]);
        assert_eq!(log.next_flush(), None);
        // Within the window after a flush, refusals are counted again.
        assert_eq!(log.note("signature", t0 + window), None);
    }

    #[test]
    fn a_shared_burst_log_counts_one_kind() {
        let log = BurstLog::default();
        assert_eq!(log.note(), Some(1));
        assert_eq!(log.note(), None);
    }

    #[test]
    fn names_in_logs_are_escaped_and_capped() {
        assert_eq!(shown("web-1"), "web-1");
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = "x".repeat(65_000);
        let s = shown(&long);
        assert!(s.len() < 100, "{s}");
        assert!(s.ends_with("…(65000 bytes)"), "{s}");
        let wide = "é".repeat(100);
        assert!(
            shown(&wide).ends_with("…(200 bytes)"),
            "cut on a character boundary"
        );
    }
}
