//! The Orcastrate gateway: verified GitHub webhooks in, signed desired-state orders out.
//!
//! # Layout
//!
//! - [`config`]: TOML, environment and flags, validated into [`config::Settings`].
//! - [`github`]: webhook signatures and what a payload asks for.
//! - [`sequencer`]: the single writer that decides, numbers, commits and publishes orders.
//! - [`ledger`]: the SQLite tables.
//! - [`rollout`]: waves, their health gate and the fleet-wide revert.
//! - [`bus`] and [`watch`]: publishing on, and listening to, the embedded broker or an
//!   external MQTT engine.
//! - [`acl`], [`engine_auth`] and [`engine_config`]: topic permissions, and the login/ACL
//!   hooks and files for an external engine.
//! - [`decisions`]: one info line per webhook, order and agent state change, and the
//!   start-up warnings.
//! - [`fleet`]: verified agent statuses and the retained fleet summaries (refusals logged
//!   once per burst by `orcastrate_broker::burst`).
//! - [`http`]: webhook routes, `/healthz`, `/metrics`, the admin API.
//! - [`listener`]: the HTTP accept loop and its connection limits, timeouts and shutdown.
//! - [`websocket`]: MQTT over WebSocket at `GET /mqtt`, into the embedded broker.
//! - [`serve`]: wiring it all together; [`cli`] and [`client`]: the command line; [`exit`]:
//!   its exit codes; [`view`]: the `watch` command; [`agent_config`]: the `agent-config`
//!   command.

pub mod acl;
pub mod agent_config;
pub mod board;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod decisions;
pub mod engine_auth;
pub mod engine_config;
pub mod exit;
pub mod fleet;
pub mod forwarded;
pub mod github;
pub mod health;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod rollout;
pub mod sequencer;
pub mod serve;
pub mod throttle;
pub mod tls;
pub mod view;
pub mod watch;
pub mod websocket;

pub use serve::Gateway;
