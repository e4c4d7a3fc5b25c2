//! Loopback ports for the processes a test starts.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

/// The first port above the ports handed out here: Linux's ephemeral range starts at 32768.
const RANGE_END: u16 = 32_768;
/// How many ports the kit hands out from, below the ephemeral range.
const RANGE: u16 = 12_000;

/// A loopback port that nothing listens on, for a process the test starts and restarts.
///
/// Ports come from below the kernel's ephemeral range, so no outgoing connection (of this or
/// another test) can take one between this call and the bind, and never the same port twice
/// in one test process; the start depends on the process id, so test binaries running side
/// by side start apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(RANGE)) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < RANGE, "the test kit ran out of ports");
        let port = RANGE_END - RANGE + (start + n * 7) % RANGE;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports
            .iter()
            .all(|&p| (RANGE_END - RANGE..RANGE_END).contains(&p)));
    }
}
