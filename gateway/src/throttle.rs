//! Wrong secrets are throttled per source address: each source has a bucket of refusals
//! (a burst, earned back at a steady rate); past it, its attempts are not even checked.
//! Used by the engine's login hook and by the HTTP routes that take a token (the operator
//! API and the board's sign-in), so guessing costs the guesser time, not us log lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};

/// Refusals a source may have at once before its attempts go unchecked ...
const REFUSALS_BURST: f64 = 10.0;
/// ... and how many a second it earns back.
const REFUSALS_PER_S: f64 = 1.0;
/// Sources tracked at once; past it, sources not yet tracked are throttled too.
const MAX_SOURCES: usize = 10_000;

/// A token bucket of refusals per source.
#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Throttle {
    /// Whether `source` may have its next attempt checked.
    pub fn may_try(&self, source: &str) -> bool {
        let mut buckets = self.buckets.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        if let Some((tokens, at)) = buckets.get_mut(source) {
            *tokens = (*tokens + at.elapsed().as_secs_f64() * REFUSALS_PER_S).min(REFUSALS_BURST);
            *at = now;
            return *tokens >= 1.0;
        }
        if buckets.len() < MAX_SOURCES {
            return true;
        }
        // Forget the sources that have earned their whole burst back.
        buckets.retain(|_, (tokens, at)| {
            *tokens + at.elapsed().as_secs_f64() * REFUSALS_PER_S < REFUSALS_BURST
        });
        buckets.len() < MAX_SOURCES
    }

    /// Takes one refusal from `source`'s bucket.
    pub fn refused(&self, source: &str) {
        let mut buckets = self.buckets.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        let (tokens, at) = buckets
            .entry(source.to_owned())
            .or_insert((REFUSALS_BURST, now));
        *tokens = (*tokens + at.elapsed().as_secs_f64() * REFUSALS_PER_S).min(REFUSALS_BURST) - 1.0;
        *at = now;
    }
}

/// The request's client (the listener records it: the TCP peer, or behind a trusted proxy
/// the client it names, [`crate::forwarded`]) as the throttle's source: its IPv4 address or
/// IPv6 /64, as the broker throttles logins.
pub fn source(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| orcastrate_broker::auth::throttle_key(a.ip()).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_past_its_burst_is_throttled_and_others_are_not() {
        let throttle = Throttle::default();
        for _ in 0..REFUSALS_BURST as usize {
            assert!(throttle.may_try("10.0.0.1"));
            throttle.refused("10.0.0.1");
        }
        assert!(!throttle.may_try("10.0.0.1"));
        assert!(throttle.may_try("10.0.0.2"));
    }
}
