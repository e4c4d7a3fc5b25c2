//! Which orders the agent acts on (design: "An agent acts on an order only if …").
//!
//! An order must parse, carry valid names, be for this agent's repo/env, verify with one of
//! the configured gateway keys (by `key_id`), and have a `seq` above the floor. The settle
//! wait of a new host, the ancestor skip and the retry-once live in the agent loop and the
//! deploy, which have the state they need.

use std::collections::HashMap;
use std::time::Duration;

use orcastrate_broker::burst::Bursts;
use orcastrate_broker::{DeployOrder, NameError, SignError};
use tokio::time::Instant;

use crate::config::Settings;

/// Largest order payload parsed. A real order is well under 1 KiB; anything much bigger is
/// refused before JSON parsing costs anything.
pub(crate) const MAX_ORDER_BYTES: usize = 64 * 1024;

/// Refusals of one kind are logged at most once per this window, then counted: a flood of
/// forged orders costs a few log lines, not one per message.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(1);

/// Why an order was not acted on; every variant is logged with its reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// An empty payload clears a retained message: nothing to do.
    #[error("empty payload (retained order cleared)")]
    Empty,
    #[error("payload of {0} bytes is over the {MAX_ORDER_BYTES}-byte limit of an order")]
    TooLarge(usize),
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
    /// A rollout wave for other agents that names no base sha: nothing for this one yet.
    #[error("order seq {seq} is for other agents and names no base sha for this one")]
    NotTargeted { seq: u64 },
    /// `seq` is not above the floor: an order already started (or older: a replay).
    #[error("seq {seq} is not above the floor {floor} (already started, or replayed)")]
    Stale { seq: u64, floor: u64 },
}

impl Refusal {
    /// The kind of refusal, for counting them apart in [`RefusalLog`].
    fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge(_) => "too large",
            Self::Malformed(_) => "malformed",
            Self::Version(_) => "version",
            Self::Name(_) => "name",
            Self::OtherTarget { .. } => "other target",
            Self::Signature(SignError::UnknownKey(_)) => "unknown key",
            Self::Signature(_) => "signature",
            Self::Stale { .. } => "stale",
            Self::NotTargeted { .. } => "not targeted",
        }
    }
}

/// Checks an order payload against everything but the settle and skip rules, and returns
/// it with `sha` set to what this agent runs: the order's `sha` if `targets` names this
/// agent (or is null), else its `base_sha` (design: Rollouts). The signature was verified
/// over the fields as received, before that.
///
/// The cheap rules come first (size, parse, names, target, floor) and the Ed25519
/// verification last, so a flood of forged or replayed orders costs little CPU.
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
    if payload.len() > MAX_ORDER_BYTES {
        return Err(Refusal::TooLarge(payload.len()));
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
    if let Some(floor) = floor {
        if order.seq <= floor {
            return Err(Refusal::Stale {
                seq: order.seq,
                floor,
            });
        }
    }
    settings.verifier.verify(&order)?;
    let mut order = order;
    if !order.targets_agent(&settings.name) {
        let Some(base) = order.base_sha.clone() else {
            return Err(Refusal::NotTargeted { seq: order.seq });
        };
        order.sha = base;
    }
    Ok(order)
}

/// Logs refused orders without letting a flood of them flood the log: the first refusal of
/// each kind at once with its reason, the rest of a burst as one line a window with a count
/// and the latest reason.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    bursts: Bursts<&'static str>,
    /// The reason of the latest refusal of each kind counted but not yet logged.
    last_reason: HashMap<&'static str, String>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        // The kinds are a fixed set: the overflow key is never used.
        Self {
            bursts: Bursts::new(REFUSAL_LOG_WINDOW, usize::MAX, "other"),
            last_reason: HashMap::new(),
        }
    }
}

impl RefusalLog {
    /// Records one refusal: logged with its reason if none of its kind was within the
    /// window, otherwise counted (and the count written once the window has passed).
    pub(crate) fn refused(&mut self, refusal: &Refusal, now: Instant) {
        let kind = refusal.kind();
        match self.bursts.note(kind, now.into_std()) {
            Some(1) => tracing::warn!(reason = %refusal, "order refused"),
            Some(count) => {
                self.last_reason.remove(kind);
                log_count(kind, count, &refusal.to_string());
            }
            None => {
                self.last_reason.insert(kind, refusal.to_string());
            }
        }
    }

    /// When [`RefusalLog::flush`] has counts to write, if ever.
    pub(crate) fn next_flush(&self) -> Option<Instant> {
        self.bursts.next_flush().map(Instant::from_std)
    }

    /// Writes the count of every burst whose window has passed; `true` if there were any.
    pub(crate) fn flush(&mut self, now: Instant) -> bool {
        let due = self.bursts.flush(now.into_std());
        for (kind, count) in &due {
            let reason = self.last_reason.remove(kind).unwrap_or_default();
            log_count(kind, *count, &reason);
        }
        !due.is_empty()
    }
}

fn log_count(kind: &str, count: u64, last_reason: &str) {
    tracing::warn!(
        count,
        kind,
        last_reason,
        "more orders refused since the last line about them"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use orcastrate_broker::{OrderKind, OrderSigner};

    fn setup() -> (tempfile::TempDir, Settings, OrderSigner) {
        let dir = tempfile::tempdir().unwrap();
        let signer = OrderSigner::generate();
        let file = FileConfig {
            name: Some("web-1".into()),
            server: Some(crate::config::ServerList::One("mqtt://127.0.0.1:1".into())),
            token: Some("t".into()),
            repo: Some("Octo-Org/Web".into()),
            env: Some("production".into()),
            root: Some(dir.path().to_path_buf()),
            gateway_public_keys: Some(vec![signer.public_key_base64()]),
            ..FileConfig::default()
        };
        let env = crate::config::Environment::current();
        let settings = Settings::merge(&crate::Cli::default(), &file, "agent.toml", &env).unwrap();
        (dir, settings, signer)
    }

    fn order(signer: &OrderSigner, seq: u64) -> DeployOrder {
        let mut o = DeployOrder {
            issued_at: "2026-01-01T00:00:00.000Z".into(),
            ..DeployOrder::new(
                seq,
                "octo-org/web",
                "production",
                &"ab".repeat(20),
                OrderKind::Push,
            )
        };
        signer.sign(&mut o);
        o
    }

    fn bytes(o: &DeployOrder) -> Vec<u8> {
        serde_json::to_vec(o).unwrap()
    }

    #[test]
    fn accepts_a_signed_order_above_the_floor() {
        let (_d, s, signer) = setup();
        let o = order(&signer, 10);
        assert_eq!(check(&bytes(&o), &s, None).unwrap(), o);
        assert_eq!(check(&bytes(&o), &s, Some(9)).unwrap(), o);
        assert!(matches!(
            check(&bytes(&o), &s, Some(10)),
            Err(Refusal::Stale { seq: 10, floor: 10 })
        ));
        assert!(matches!(
            check(&bytes(&o), &s, Some(11)),
            Err(Refusal::Stale { .. })
        ));
    }

    #[test]
    fn an_agent_outside_the_wave_runs_the_base_sha() {
        let (_d, s, signer) = setup();
        let mut o = order(&signer, 10);
        o.targets = Some(vec!["web-2".into()]);
        signer.sign(&mut o);
        assert!(matches!(
            check(&bytes(&o), &s, None),
            Err(Refusal::NotTargeted { seq: 10 })
        ));
        o.base_sha = Some("cd".repeat(20));
        signer.sign(&mut o);
        let got = check(&bytes(&o), &s, None).unwrap();
        assert_eq!(got.sha, "cd".repeat(20));
        o.targets = Some(vec!["web-2".into(), "web-1".into()]);
        signer.sign(&mut o);
        assert_eq!(check(&bytes(&o), &s, None).unwrap().sha, "ab".repeat(20));
    }

    #[test]
    fn refusals_are_logged_once_per_window_with_a_count() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let forged = Refusal::Signature(SignError::BadSignature);
        log.refused(&forged, t0);
        assert_eq!(log.next_flush(), None);
        for i in 0..1000 {
            log.refused(&forged, t0 + Duration::from_micros(i));
        }
        // Another kind is logged at once, not hidden by the burst.
        log.refused(&Refusal::Version(9), t0);
        assert_eq!(log.next_flush(), Some(t0 + REFUSAL_LOG_WINDOW));
        assert_eq!(log.bursts.suppressed(&"signature"), 1000);
        assert!(!log.flush(t0 + Duration::from_millis(500)));
        assert_eq!(log.bursts.suppressed(&"signature"), 1000);
        assert!(log.flush(t0 + REFUSAL_LOG_WINDOW));
        assert_eq!(log.bursts.suppressed(&"signature"), 0);
        assert!(log.last_reason.is_empty());
        assert_eq!(log.next_flush(), None);
    }

    #[test]
    fn refuses_with_reasons() {
        let (_d, s, signer) = setup();
        assert!(matches!(check(b"", &s, None), Err(Refusal::Empty)));
        assert!(matches!(check(b"{}", &s, None), Err(Refusal::Malformed(_))));

        let mut other_env = order(&signer, 5);
        other_env.env = "staging".into();
        signer.sign(&mut other_env);
        let e = check(&bytes(&other_env), &s, None).unwrap_err();
        assert!(e.to_string().contains("octo-org/web/staging"), "{e}");

        let mut forged = order(&signer, 5);
        OrderSigner::generate().sign(&mut forged);
        assert!(matches!(
            check(&bytes(&forged), &s, None),
            Err(Refusal::Signature(SignError::UnknownKey(_)))
        ));

        let mut tampered = order(&signer, 5);
        tampered.seq = 6;
        assert!(matches!(
            check(&bytes(&tampered), &s, None),
            Err(Refusal::Signature(SignError::BadSignature))
        ));

        let mut bad_name = order(&signer, 5);
        bad_name.sha = "XYZ".into();
        assert!(matches!(
            check(&bytes(&bad_name), &s, None),
            Err(Refusal::Name(_))
        ));

        let huge = vec![b' '; MAX_ORDER_BYTES + 1];
        assert!(matches!(check(&huge, &s, None), Err(Refusal::TooLarge(_))));

        let mut v2 = order(&signer, 5);
        v2.v = 2;
        assert!(matches!(
            check(&bytes(&v2), &s, None),
            Err(Refusal::Version(2))
        ));
    }
}
