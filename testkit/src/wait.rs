//! Waiting for what a test expects to happen, with a bound.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
