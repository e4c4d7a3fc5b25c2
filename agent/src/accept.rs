//! Which orders the agent acts on (design: "An agent acts on an order only if …").
//!
//! An order must parse, carry valid names, be for this agent's repo/env, verify with one of
//! the configured gateway keys (by `key_id`), and have a `seq` above the floor. The settle
//! wait of a new host, the ancestor skip and the retry-once live in the agent loop and the
//! deploy, which have the state they need.

use orcastrate_broker::{DeployOrder, NameError, SignError};

use crate::config::Settings;

/// Why an order was not acted on; every variant is logged with its reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// An empty payload clears a retained message: nothing to do.
    #[error("empty payload (retained order cleared)")]
    Empty,
    #[error("not a deploy order: {0}")]
    Malformed(String),
    #[error("unsupported payload version {0}")]
    Version(u32),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("order is for {repo}/{env}, this agent deploys {own}")]
    OtherTarget {
        repo: String,
        env: String,
        own: String,
    },
    #[error(transparent)]
    Signature(#[from] SignError),
    /// `seq` is not above the floor: an order already started (or older: a replay).
    #[error("seq {seq} is not above the floor {floor} (already started, or replayed)")]
    Stale { seq: u64, floor: u64 },
}

/// Checks an order payload against everything but the settle and skip rules.
///
/// # Errors
///
/// The first rule it breaks.
pub(crate) fn check(
    payload: &[u8],
    settings: &Settings,
    floor: Option<u64>,
) -> Result<DeployOrder, Refusal> {
    if payload.is_empty() {
        return Err(Refusal::Empty);
    }
    let order: DeployOrder =
        serde_json::from_slice(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if order.v != orcastrate_broker::PAYLOAD_VERSION {
        return Err(Refusal::Version(order.v));
    }
    order.validate()?;
    if order.repo != settings.repo || order.env != settings.env {
        return Err(Refusal::OtherTarget {
            repo: order.repo,
            env: order.env,
            own: format!("{}/{}", settings.repo, settings.env),
        });
    }
    settings.verifier.verify(&order)?;
    if let Some(floor) = floor {
        if order.seq <= floor {
            return Err(Refusal::Stale {
                seq: order.seq,
                floor,
            });
        }
    }
    Ok(order)
}
