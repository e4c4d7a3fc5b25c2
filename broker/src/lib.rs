//! The Orcastrate bus contract, shared by the gateway and every agent.
//!
//! Everything two parts of Orcastrate must agree on lives here, so that it is written once:
//!
//! # Layout
//!
//! - [`config_error`]: [`ConfigError`], the one shape of a configuration problem.
//! - [`names`]: validation of repo, env, agent and sha values where they enter.
//! - [`topics`]: topic builders and the parser for incoming topics.
//! - [`message`]: the JSON payloads (`DeployOrder`, `AgentStatus`, `FleetSummary`, `LogLine`, `Event`).
//! - [`sign`]: Ed25519 order signatures and HMAC status MACs over the canonical strings.
//! - [`auth`]: the MQTT login rules (token check, client-id rule).
//! - [`burst`]: refusals logged once per burst, and names capped for log lines.
//! - [`mqtt`]: `rumqttc` options every client of ours uses.
//! - [`time`]: the one timestamp format.
//! - `embedded` (feature `embedded`): the in-process rumqttd broker with token auth.
//! - `guard` (feature `embedded`): what each login may do there, checked on every packet.

pub mod auth;
pub mod burst;
pub mod config_error;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "embedded")]
pub mod guard;
pub mod message;
pub mod mqtt;
pub mod names;
pub mod sign;
pub mod time;
pub mod topics;

pub use config_error::{ConfigError, Problems};
pub use message::{
    AgentState, AgentStatus, DeployOrder, Event, EventOutcome, FleetAgent, FleetDesired,
    FleetSummary, LogLine, LogStream, OrderKind, Step,
};
pub use names::NameError;
pub use sign::{OrderSigner, OrderVerifier, SignError};
pub use topics::{PrefixError, TopicKind, Topics};

/// Version number carried as `"v"` in every payload.
pub const PAYLOAD_VERSION: u32 = 1;

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "orcastrate";

/// Maximum MQTT packet size every client we ship accepts and sends (rumqttc's default is 10 KiB).
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// `AgentStatus` and `LogLine` payloads are kept under this size; long text is truncated.
pub const MAX_SMALL_PAYLOAD_BYTES: usize = 4096;
