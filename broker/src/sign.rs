//! Order signatures (Ed25519) and status MACs (HMAC-SHA256) over the canonical strings.
//!
//! Signatures are computed over a fixed newline-joined string of the fields as they travel,
//! never over re-serialized JSON, so any JSON encoder on either side agrees. Names are
//! validated to be newline-free where they enter, which keeps the join unambiguous.

use std::collections::HashMap;

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::message::{AgentStatus, DeployOrder};

type HmacSha256 = Hmac<Sha256>;

/// Why an order or key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("order signed with unknown key id {0:?}: add the gateway's public key (orcastrate-gateway public-key) to gateway_public_keys")]
    UnknownKey(String),
    #[error("order signature does not verify: it was not issued by the gateway or was altered")]
    BadSignature,
    #[error("invalid gateway public key {0:?}: expected 32 bytes in base64, as printed by orcastrate-gateway public-key")]
    BadPublicKey(String),
    #[error("invalid signing key file: expected 32 bytes")]
    BadSigningKey,
    #[error("order signed as orcastrate-order-v1 (without targets and base_sha): this agent accepts v2 only; upgrade the gateway")]
    OldSignature,
}

/// The string an order's `sig` covers (v2: v1 plus `base_sha` and `targets` joined with `,`).
pub fn order_canonical(o: &DeployOrder) -> String {
    format!(
        "orcastrate-order-v2{}\n{}\n{}",
        order_fields(o),
        o.base_sha.as_deref().unwrap_or_default(),
        o.targets
            .as_deref()
            .map(|t| t.join(","))
            .unwrap_or_default()
    )
}

/// The string the first release signed; only used to refuse such orders with a clear reason.
fn order_canonical_v1(o: &DeployOrder) -> String {
    format!("orcastrate-order-v1{}", order_fields(o))
}

/// The fields v1 and v2 share, each after a newline.
fn order_fields(o: &DeployOrder) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    format!(
        "\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        o.repo,
        o.env,
        o.seq,
        o.sha,
        opt(&o.git_ref),
        o.kind.as_str(),
        opt(&o.delivery),
        o.issued_at,
        opt(&o.issued_by),
        o.key_id
    )
}

/// The string a status's `mac` covers. A `port` (behind the agent's `[proxy]`) adds a line;
/// without one the string is the one agents and gateways that predate the field sign and
/// verify, so those keep working together.
pub fn status_canonical(s: &AgentStatus) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut canonical = format!(
        "orcastrate-status-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        s.agent,
        s.repo,
        s.env,
        s.session,
        s.state.as_str(),
        s.step.map(|x| x.as_str()).unwrap_or_default(),
        s.seq.map(|x| x.to_string()).unwrap_or_default(),
        opt(&s.sha),
        opt(&s.running_sha),
        opt(&s.previous_sha),
        s.updated_at
    );
    if let Some(port) = s.port {
        canonical.push('\n');
        canonical.push_str(&port.to_string());
    }
    canonical
}

/// The key id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The gateway's signing key.
pub struct OrderSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for OrderSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl OrderSigner {
    /// A new random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Self::from_seed(&seed).expect("32 bytes")
    }

    /// The key from its 32-byte seed (the content of the key file).
    pub fn from_seed(seed: &[u8]) -> Result<Self, SignError> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| SignError::BadSigningKey)?;
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id(&key.verifying_key());
        Ok(Self { key, key_id })
    }

    /// The 32-byte seed, to store in the key file.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key in base64, as agents configure it.
    pub fn public_key_base64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// The key id orders carry.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Sets `key_id` and `sig` of an order.
    pub fn sign(&self, order: &mut DeployOrder) {
        order.key_id = self.key_id.clone();
        let sig = self.key.sign(order_canonical(order).as_bytes());
        order.sig = B64.encode(sig.to_bytes());
    }
}

/// The gateway public keys an agent trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct OrderVerifier {
    keys: HashMap<String, VerifyingKey>,
}

impl OrderVerifier {
    /// Trusts each base64 public key.
    ///
    /// # Errors
    ///
    /// [`SignError::BadPublicKey`] naming the first key that is not 32 bytes of base64.
    pub fn new<S: AsRef<str>>(public_keys: &[S]) -> Result<Self, SignError> {
        let mut keys = HashMap::new();
        for text in public_keys {
            let text = text.as_ref().trim();
            let bad = || SignError::BadPublicKey(text.chars().take(60).collect());
            let bytes: [u8; 32] = B64
                .decode(text)
                .map_err(|_| bad())?
                .try_into()
                .map_err(|_| bad())?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
            // A weak (small-order) key would accept forged signatures.
            if key.is_weak() {
                return Err(bad());
            }
            keys.insert(key_id(&key), key);
        }
        Ok(Self { keys })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies an order's signature with the key its `key_id` names.
    pub fn verify(&self, order: &DeployOrder) -> Result<(), SignError> {
        let key = self
            .keys
            .get(&order.key_id)
            .ok_or_else(|| SignError::UnknownKey(order.key_id.chars().take(40).collect()))?;
        let sig_bytes: [u8; 64] = B64
            .decode(&order.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignError::BadSignature)?;
        let sig = Signature::from_bytes(&sig_bytes);
        if key
            .verify_strict(order_canonical(order).as_bytes(), &sig)
            .is_ok()
        {
            return Ok(());
        }
        // A v1 signature cannot say which agents an order is for: refused, but named.
        if order.targets.is_none()
            && order.base_sha.is_none()
            && key
                .verify_strict(order_canonical_v1(order).as_bytes(), &sig)
                .is_ok()
        {
            return Err(SignError::OldSignature);
        }
        Err(SignError::BadSignature)
    }
}

/// The hex MAC of a status under the agent's token.
pub fn status_mac(token: &str, status: &AgentStatus) -> String {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(status_canonical(status).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Sets the `mac` of a status.
pub fn seal_status(token: &str, status: &mut AgentStatus) {
    status.mac = status_mac(token, status);
}

/// Whether a status's `mac` verifies under `token` (constant-time).
pub fn verify_status(token: &str, status: &AgentStatus) -> bool {
    let Ok(given) = hex::decode(&status.mac) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(status_canonical(status).as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentState, OrderKind, Step};

    fn order() -> DeployOrder {
        DeployOrder {
            git_ref: Some("refs/heads/main".into()),
            delivery: Some("d-1".into()),
            issued_at: "2026-01-01T00:00:00.000Z".into(),
            ..DeployOrder::new(
                1_700_000_000_000,
                "octo-org/web",
                "production",
                "0123456789abcdef0123456789abcdef01234567",
                OrderKind::Push,
            )
        }
    }

    #[test]
    fn canonical_order_string() {
        let mut o = order();
        o.key_id = "kid".into();
        assert_eq!(
            order_canonical(&o),
            "orcastrate-order-v2\nocto-org/web\nproduction\n1700000000000\n0123456789abcdef0123456789abcdef01234567\nrefs/heads/main\npush\nd-1\n2026-01-01T00:00:00.000Z\n\nkid\n\n"
        );
        o.targets = Some(vec!["web-1".into(), "web-2".into()]);
        o.base_sha = Some("f".repeat(40));
        assert!(order_canonical(&o).ends_with(&format!("\nkid\n{}\nweb-1,web-2", "f".repeat(40))));
    }

    #[test]
    fn targets_and_base_are_signed_and_v1_is_refused() {
        let signer = OrderSigner::generate();
        let verifier = OrderVerifier::new(&[signer.public_key_base64()]).unwrap();
        let mut o = order();
        o.targets = Some(vec!["web-1".into()]);
        o.base_sha = Some("f".repeat(40));
        signer.sign(&mut o);
        assert_eq!(verifier.verify(&o), Ok(()));
        let mut widened = o.clone();
        widened.targets = None;
        assert_eq!(verifier.verify(&widened), Err(SignError::BadSignature));
        let mut rebased = o.clone();
        rebased.base_sha = Some("e".repeat(40));
        assert_eq!(verifier.verify(&rebased), Err(SignError::BadSignature));

        // The first release's signature over the v1 string.
        let mut old = order();
        old.key_id = signer.key_id().to_owned();
        let sig = signer.key.sign(order_canonical_v1(&old).as_bytes());
        old.sig = B64.encode(sig.to_bytes());
        assert_eq!(verifier.verify(&old), Err(SignError::OldSignature));
    }

    #[test]
    fn sign_and_verify() {
        let signer = OrderSigner::generate();
        let mut o = order();
        signer.sign(&mut o);
        let verifier = OrderVerifier::new(&[signer.public_key_base64()]).unwrap();
        assert_eq!(verifier.verify(&o), Ok(()));

        let mut tampered = o.clone();
        tampered.sha = "f".repeat(40);
        assert_eq!(verifier.verify(&tampered), Err(SignError::BadSignature));
        let mut tampered = o.clone();
        tampered.seq += 1;
        assert_eq!(verifier.verify(&tampered), Err(SignError::BadSignature));

        let other = OrderSigner::generate();
        let mut forged = order();
        other.sign(&mut forged);
        assert!(matches!(
            verifier.verify(&forged),
            Err(SignError::UnknownKey(_))
        ));
        // A forger who copies the trusted key id still fails.
        forged.key_id = signer.key_id().to_owned();
        assert_eq!(verifier.verify(&forged), Err(SignError::BadSignature));
    }

    #[test]
    fn seed_round_trip() {
        let a = OrderSigner::generate();
        let b = OrderSigner::from_seed(&a.seed()).unwrap();
        assert_eq!(a.public_key_base64(), b.public_key_base64());
        assert!(OrderSigner::from_seed(&[0u8; 31]).is_err());
        assert!(OrderVerifier::new(&["not base64!"]).is_err());
        // The all-zero key is a small-order point: refused.
        assert!(OrderVerifier::new(&[B64.encode([0u8; 32])]).is_err());
    }

    #[test]
    fn status_mac_covers_fields() {
        let mut s = AgentStatus {
            session: "s1".into(),
            state: AgentState::Deploying,
            step: Some(Step::Install),
            seq: Some(5),
            sha: Some("a".repeat(40)),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            ..AgentStatus::idle("web-1", "h", "octo-org/web", "production", "0.1.0")
        };
        seal_status("token", &mut s);
        assert!(verify_status("token", &s));
        assert!(!verify_status("other", &s));
        let mut t = s.clone();
        t.state = AgentState::Healthy;
        assert!(!verify_status("token", &t));
        let mut t = s.clone();
        t.mac = "zz".into();
        assert!(!verify_status("token", &t));

        // `port` adds a line when present; absent, the string is unchanged (older agents and
        // gateways keep verifying each other), and the JSON has no `port` at all.
        let before = status_canonical(&s);
        assert!(!serde_json::to_string(&s).unwrap().contains("port"));
        let mut p = s.clone();
        p.port = Some(41234);
        assert_eq!(status_canonical(&p), format!("{before}\n41234"));
        assert!(!verify_status("token", &p), "sealed without the port");
        seal_status("token", &mut p);
        assert!(verify_status("token", &p));
        let back: AgentStatus = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert!(verify_status("token", &back));
        let mut t = p.clone();
        t.port = Some(41235);
        assert!(!verify_status("token", &t));
        t.port = None;
        assert!(!verify_status("token", &t));
    }
}
