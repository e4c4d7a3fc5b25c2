//! The test kit shared by the gateway, agent and end-to-end tests (and the benchmarks): one
//! piece of code for each job every test has, in the way ripgrep's `tests/util.rs` serves
//! every ripgrep test.
//!
//! It depends on none of the workspace's crates, so the gateway's and agent's own tests can
//! use it without building those crates twice; it speaks to them as users do (git, MQTT,
//! HTTP, signed webhooks).
//!
//! # Layout
//!
//! - [`free_port`]: loopback ports below the ephemeral range.
//! - [`eventually`]: polling with a bound and a message naming what was awaited.
//! - [`InProcess`]: a server (the gateway, an agent) on a thread and runtime of its own.
//! - [`git`]: a bare "GitHub" origin with a work clone to commit and push from.
//! - [`app`]: the sample Node app every test deploys (`fixtures/server.js`) and how to ask
//!   it who it is.
//! - [`github`]: webhook signatures and payloads made from GitHub's own fixtures.
//! - [`mqtt`]: a synchronous MQTT client that subscribes and waits for messages.
//! - [`http`]: a JSON-over-HTTP client that never fails on a status.
//! - [`logs`]: counting events in a log that sums up floods (`count=N`).
//! - [`procs`]: the processes a test left behind under a directory.
//! - [`files`]: what a deploy left on disk (symlinks, file trees).

pub mod app;
pub mod files;
pub mod git;
pub mod github;
pub mod http;
mod in_process;
pub mod logs;
pub mod mqtt;
mod ports;
pub mod procs;
pub mod receiver;
mod wait;

pub use in_process::{Ended, InProcess, Stop};
pub use ports::free_port;
pub use wait::eventually;
