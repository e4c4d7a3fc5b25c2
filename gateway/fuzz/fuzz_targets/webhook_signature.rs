//! `github::signature_valid` over any header and body: never a panic, and true only for
//! the header GitHub would send (hex in either case, surrounding spaces allowed).
//!
//! Input: the header up to the first newline, the body after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orcastrate_gateway::github::{sign, signature_valid};

const SECRET: &str = "fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let valid = signature_valid(SECRET, body, Some(&header));
    if valid {
        assert_eq!(header.trim().to_ascii_lowercase(), sign(SECRET, body));
    }
    // The right signature, as GitHub sends it, always passes.
    assert!(signature_valid(SECRET, body, Some(&sign(SECRET, body))));
});
