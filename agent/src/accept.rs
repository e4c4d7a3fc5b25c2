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
        let settings = Settings::merge(&crate::Cli::default(), &file, "agent.toml").unwrap();
        (dir, settings, signer)
    }

    fn order(signer: &OrderSigner, seq: u64) -> DeployOrder {
        let mut o = DeployOrder {
            v: 1,
            seq,
            repo: "octo-org/web".into(),
            env: "production".into(),
            sha: "ab".repeat(20),
            git_ref: None,
            kind: OrderKind::Push,
            delivery: None,
            issued_at: "2026-01-01T00:00:00.000Z".into(),
            issued_by: None,
            key_id: String::new(),
            sig: String::new(),
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

        let mut v2 = order(&signer, 5);
        v2.v = 2;
        assert!(matches!(
            check(&bytes(&v2), &s, None),
            Err(Refusal::Version(2))
        ));
    }
}
