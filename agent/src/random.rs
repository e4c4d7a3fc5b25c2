//! Randomness for client ids and reconnection jitter.

/// A random number from the OS.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS source failing is not recoverable and not expected; fall back to the clock.
    if getrandom::fill(&mut bytes).is_err() {
        return orcastrate_broker::time::unix_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    u64::from_le_bytes(bytes)
}
