//! The 32-byte config key, its public fingerprint (the key id), and the sub-keys derived
//! from it.
//!
//! The raw key is never used directly: the value cipher and the file MAC each get their own
//! sub-key, derived with HMAC-SHA256 under a fixed label, so a weakness in one use cannot
//! leak into the other. The key id is derived the same way and is safe to print.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::Error;

/// Bytes in a key: AES-256 wants 32.
pub const KEY_LEN: usize = 32;

/// HMAC labels for the derived sub-keys; part of the format (see README "Keys").
const LABEL_ENCRYPTION: &[u8] = b"orcastrate-crypt v1 encryption";
const LABEL_MAC: &[u8] = b"orcastrate-crypt v1 mac";
const LABEL_KEY_ID: &[u8] = b"orcastrate-crypt v1 key id";

/// Bytes of the key-id HMAC that are shown: 8 bytes (16 hex digits) are plenty to tell a
/// handful of environment keys apart, and short enough to read in an error message.
const KEY_ID_BYTES: usize = 8;

/// A config key: 32 secret bytes, given as standard base64.
///
/// `Debug` prints only the key id, and the bytes are zeroed when the key is dropped.
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl Key {
    /// Parses a key from standard base64 (surrounding whitespace, such as the newline at the
    /// end of a key file, is ignored).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if the text is not base64 or does not decode to 32 bytes. The
    /// message never repeats the text.
    pub fn from_base64(text: &str) -> Result<Key, Error> {
        let invalid = |reason: &str| Error::InvalidKey {
            origin: None,
            reason: reason.to_owned(),
        };
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| invalid("not standard base64"))?,
        );
        if decoded.len() != KEY_LEN {
            return Err(invalid(&format!(
                "expected {KEY_LEN} bytes after base64 decoding, got {}",
                decoded.len()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(Key { bytes })
    }

    /// Makes a new random key from the operating system's generator.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the system generator is unavailable.
    pub fn generate() -> Result<Key, Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(bytes.as_mut()).map_err(|e| {
            Error::io(
                "read random bytes from",
                "the system generator",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(Key { bytes })
    }

    /// The key as standard base64, for `keygen`; zeroed when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes.as_ref()))
    }

    /// The public fingerprint of the key: 16 lowercase hex digits.
    ///
    /// Stored in every encrypted file so that a wrong key is reported as such rather than
    /// as tampering, and so that `textconv` and `merge-driver` can pick the right key among
    /// several. It reveals nothing useful about the key.
    pub fn id(&self) -> String {
        hex::encode(&self.derive(LABEL_KEY_ID)[..KEY_ID_BYTES])
    }

    /// The AES-256-GCM key for values.
    pub(crate) fn encryption_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive(LABEL_ENCRYPTION)
    }

    /// The HMAC-SHA256 key for the file MAC.
    pub(crate) fn mac_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive(LABEL_MAC)
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(self.bytes.as_ref())
            .expect("hmac accepts keys of any length");
        mac.update(label);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        use subtle::ConstantTimeEq as _;
        self.bytes.ct_eq(other.bytes.as_ref()).into()
    }
}

impl Eq for Key {}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn parses_and_prints_base64() {
        let key = Key::from_base64(&format!("  {SAMPLE}\n")).unwrap();
        assert_eq!(key.to_base64().as_str(), SAMPLE);
        assert_eq!(key.id().len(), 16);
        assert_eq!(key.id(), Key::from_base64(SAMPLE).unwrap().id());
    }

    #[test]
    fn rejects_short_and_non_base64_keys_without_echoing_them() {
        let err = Key::from_base64("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("expected 32 bytes"), "{err}");
        assert!(!err.contains("c2hvcnQ"), "{err}");
        let err = Key::from_base64("not base64!").unwrap_err().to_string();
        assert!(!err.contains("not base64!"), "{err}");
    }

    #[test]
    fn debug_shows_only_the_id() {
        let key = Key::from_base64(SAMPLE).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains(&key.id()));
        assert!(!debug.contains(SAMPLE));
    }

    #[test]
    fn generated_keys_differ() {
        let a = Key::generate().unwrap();
        let b = Key::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(Key::from_base64(&a.to_base64()).unwrap(), a);
    }
}
