//! Integration tests that run the real `orcastrate-crypt` binary in temporary directories.
//!
//! One binary with a module per area, so it links once.

mod common;

mod batch;
mod edit;
mod errors;
mod exec;
mod fuzz;
mod git;
mod help;
mod modes;
mod prop;
mod rekey;
mod roundtrip;
mod stable;
