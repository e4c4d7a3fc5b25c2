//! Encryption of single values: AES-256-GCM, a fresh random 96-bit nonce per value, and the
//! value's path as additional authenticated data.
//!
//! Binding the path into the tag is what makes a ciphertext moved to another key (or a key
//! renamed) fail to decrypt. A value is stored as the token
//! `ENC[base64(nonce ‖ ciphertext ‖ tag)]`, which is a plain string in JSON and needs no
//! quoting in dotenv.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::Key;

/// AES-GCM's standard nonce length, in bytes.
const NONCE_LEN: usize = 12;
/// AES-GCM's tag length, in bytes.
const TAG_LEN: usize = 16;
const PREFIX: &str = "ENC[";
const SUFFIX: &str = "]";

/// The value cipher of one key.
pub(crate) struct Cipher {
    aead: Aes256Gcm,
}

/// Why a token could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not of the form `ENC[…]` at all: a plaintext value in an encrypted file.
    NotEncrypted,
    /// `ENC[…]` but not valid base64 or too short to hold a nonce and a tag.
    Malformed,
    /// The tag does not verify: tampered, or encrypted for another path or key.
    Authentication,
}

impl Cipher {
    pub(crate) fn new(key: &Key) -> Cipher {
        let k = key.encryption_key();
        Cipher {
            aead: Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(k.as_ref())),
        }
    }

    /// Encrypts `plaintext` for the path whose canonical JSON is `aad`, with a new nonce.
    pub(crate) fn seal(&self, plaintext: &str, aad: &str) -> Result<String, getrandom::Error> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)?;
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("aes-gcm encryption of a config value cannot fail");
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}{SUFFIX}", STANDARD.encode(blob)))
    }

    /// Decrypts a token for the path whose canonical JSON is `aad`.
    pub(crate) fn open(&self, token: &str, aad: &str) -> Result<String, OpenError> {
        let blob = decode_token(token)?;
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Authentication)?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed)
    }
}

/// Whether a leaf string looks like a token (a JSON string literal `"ENC[…]"` in JSON).
pub(crate) fn decode_token(token: &str) -> Result<Vec<u8>, OpenError> {
    let inner = token
        .strip_prefix(PREFIX)
        .and_then(|t| t.strip_suffix(SUFFIX))
        .ok_or(OpenError::NotEncrypted)?;
    let blob = STANDARD.decode(inner).map_err(|_| OpenError::Malformed)?;
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed);
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new(&Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap())
    }

    #[test]
    fn seals_and_opens_with_the_same_path_only() {
        let c = cipher();
        let token = c.seal("s3cret", r#"["a"]"#).unwrap();
        assert!(token.starts_with("ENC[") && token.ends_with(']'));
        assert!(!token.contains("s3cret"));
        assert_eq!(c.open(&token, r#"["a"]"#).unwrap(), "s3cret");
        assert_eq!(c.open(&token, r#"["b"]"#), Err(OpenError::Authentication));
        assert_ne!(
            token,
            c.seal("s3cret", r#"["a"]"#).unwrap(),
            "fresh nonce each time"
        );
    }

    #[test]
    fn classifies_bad_tokens() {
        let c = cipher();
        assert_eq!(c.open("plain", "[]"), Err(OpenError::NotEncrypted));
        assert_eq!(c.open("ENC[!!]", "[]"), Err(OpenError::Malformed));
        assert_eq!(c.open("ENC[AAAA]", "[]"), Err(OpenError::Malformed));
        let mut token = c.seal("v", "[]").unwrap();
        token.replace_range(5..6, if &token[5..6] == "A" { "B" } else { "A" });
        assert_eq!(c.open(&token, "[]"), Err(OpenError::Authentication));
    }
}
