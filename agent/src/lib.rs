//! The Orcastrate deploy agent: follows the desired state of one repo/env on one host.
//!
//! It subscribes to its `desired` topic, accepts only orders signed by a configured gateway
//! key that are newer than anything it started, builds each release in its own directory,
//! switches `current` atomically, checks health, rolls back by itself, and publishes what it
//! does as a retained, MAC'd status. See `README.md` for users and `docs/protocol.md` at the
//! repository's root for the bus contract.
//!
//! # Layout
//!
//! - [`cli`]: the command line, with environment fallbacks; [`Exit`]: its exit codes.
//! - [`config`]: the TOML shape, validated in stages (pure per-section checks, every problem
//!   at once) into the [`Settings`].
//! - `agent`: recovery and shutdown, and the loop (orders, supersede, settle, retry-once,
//!   health, `--once`) as a state machine with one handler per event.
//! - `accept`: the order acceptance rules.
//! - `connection`: the MQTT client: login, last will, resubscribe, backoff, publishing.
//! - `deploy`: one deploy in the design's sequence, and the rollback.
//! - `git`: the bare cache and checkouts through the `git` CLI.
//! - `release`: the release layout, completion marker, `current` switch, pruning.
//! - `steps`: running commands with scrubbed environments, streaming their output.
//! - `supervisor`: the app process: start, restart, stop, adopt, and how it died.
//! - [`app_log`]: the app's output, one timestamped, rotated log file per release.
//! - `health`: HTTP and command health checks.
//! - `proxy`: the `[proxy]` socket and relay; `proxy_protocol`: the header it can send.
//! - `secrets`: decrypting the per-environment config.
//! - [`handoff`]: secrets moved out of the environment at start-up, the process non-dumpable.
//! - `users`: the `run_as` user of steps and the app.
//! - `state`: `state.json`.
//! - `outcome`: how an order ended, recorded in `state.json` and the status at once.
//! - `status`: the status the agent publishes.
//! - `redact`: credentials in URLs hidden from everything the agent prints or publishes.
//! - `procs`: process groups; `random`: client ids and jitter (files are replaced by
//!   `orcastrate_fs`).

mod accept;
mod agent;
pub mod app_log;
pub mod cli;
pub mod config;
mod connection;
mod deploy;
mod exit;
mod git;
pub mod handoff;
mod health;
mod outcome;
mod procs;
mod proxy;
mod proxy_protocol;
mod random;
mod redact;
mod release;
mod secrets;
mod state;
mod status;
mod steps;
mod supervisor;
mod users;

pub use agent::{run, AgentError, RunOutcome};
pub use cli::{Cli, LogFormat};
pub use config::{ConfigError, HealthCheck, OnShutdown, RunAs, Settings};
pub use exit::Exit;

/// The commented example config (`config/agent.example.toml`).
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/agent.example.toml");
