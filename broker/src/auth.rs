//! MQTT login rules, shared by the embedded broker and the HTTP auth endpoint for external engines.
//!
//! Username = client name, password = its token. The embedded broker takes any client id
//! ([`Credentials::check_credentials`]) and keeps logins apart by keying sessions
//! `{username}:{client id}` inside. An external engine keys sessions by the id alone, so its
//! HTTP auth hook keeps the stricter rule ([`Credentials::check_login`]): the id must be
//! empty, the username, or `{username}:{suffix}`. Ids with `/ + # $` are refused everywhere
//! (rumqtt #1062: such an id reconnecting poisons rumqttd's listener for everyone).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a login was refused (for logs; the client only sees a closed connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No username or no password.
    Anonymous,
    /// Unknown user or wrong token.
    BadCredentials,
    /// A client id that is not empty, the username, or `{username}:{suffix}`.
    ForeignClientId,
    /// A client id with a character rumqttd cannot register.
    BadClientIdCharacter,
}

impl std::fmt::Display for LoginRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Anonymous => "anonymous login",
            Self::BadCredentials => "unknown client name or wrong token",
            Self::ForeignClientId => "client id must be empty, the client name, or name:suffix",
            Self::BadClientIdCharacter => "client id contains one of / + # $",
        })
    }
}

/// Whether `client_id` may be used by `username`.
pub fn check_client_id(client_id: &str, username: &str) -> Result<(), LoginRefusal> {
    if client_id.contains(['/', '+', '#', '$']) {
        return Err(LoginRefusal::BadClientIdCharacter);
    }
    let ok = client_id.is_empty()
        || client_id == username
        || client_id
            .strip_prefix(username)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|suffix| !suffix.is_empty());
    if ok {
        Ok(())
    } else {
        Err(LoginRefusal::ForeignClientId)
    }
}

/// Compares two secrets in constant time (hashing first, so lengths do not leak either).
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// Client names and their tokens.
#[derive(Clone, Default)]
pub struct Credentials {
    tokens: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("clients", &self.tokens.len())
            .finish()
    }
}

impl Credentials {
    /// Credentials from `(name, token)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            tokens: pairs.into_iter().collect(),
        }
    }

    /// Adds or replaces one client.
    pub fn insert(&mut self, name: String, token: String) {
        self.tokens.insert(name, token);
    }

    /// The embedded broker's login rules: any client id without `/ + # $`, and the token.
    pub fn check_credentials(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(), LoginRefusal> {
        if username.is_empty() || password.is_empty() {
            return Err(LoginRefusal::Anonymous);
        }
        if client_id.contains(['/', '+', '#', '$']) {
            return Err(LoginRefusal::BadClientIdCharacter);
        }
        match self.tokens.get(username) {
            Some(token) if secrets_equal(password, token) => Ok(()),
            _ => Err(LoginRefusal::BadCredentials),
        }
    }

    /// The login rules for an external engine, which keys sessions by client id alone:
    /// [`Self::check_credentials`] and the client id must be empty, the username, or
    /// `{username}:{suffix}`.
    pub fn check_login(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(), LoginRefusal> {
        if username.is_empty() || password.is_empty() {
            return Err(LoginRefusal::Anonymous);
        }
        check_client_id(client_id, username)?;
        match self.tokens.get(username) {
            Some(token) if secrets_equal(password, token) => Ok(()),
            _ => Err(LoginRefusal::BadCredentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_rules() {
        let c = Credentials::new([("web-1".to_owned(), "t0k".to_owned())]);
        assert_eq!(c.check_login("", "web-1", "t0k"), Ok(()));
        assert_eq!(c.check_login("web-1", "web-1", "t0k"), Ok(()));
        assert_eq!(c.check_login("web-1:cli", "web-1", "t0k"), Ok(()));
        assert_eq!(c.check_login("", "", ""), Err(LoginRefusal::Anonymous));
        assert_eq!(
            c.check_login("", "web-1", "nope"),
            Err(LoginRefusal::BadCredentials)
        );
        assert_eq!(
            c.check_login("", "web-2", "t0k"),
            Err(LoginRefusal::BadCredentials)
        );
        assert_eq!(
            c.check_login("web-2", "web-1", "t0k"),
            Err(LoginRefusal::ForeignClientId)
        );
        assert_eq!(
            c.check_login("web-1:", "web-1", "t0k"),
            Err(LoginRefusal::ForeignClientId)
        );
        assert_eq!(
            c.check_login("web-1x", "web-1", "t0k"),
            Err(LoginRefusal::ForeignClientId)
        );
        for bad in ["web-1/x", "web-1:+", "#", "$SYS"] {
            assert_eq!(
                c.check_login(bad, "web-1", "t0k"),
                Err(LoginRefusal::BadClientIdCharacter)
            );
        }
    }

    #[test]
    fn the_embedded_broker_takes_any_client_id_without_wildcards() {
        let c = Credentials::new([("web-1".to_owned(), "t0k".to_owned())]);
        for id in ["", "web-1", "web-2", "mqttjs_3f2a9c1b", "paho-123"] {
            assert_eq!(c.check_credentials(id, "web-1", "t0k"), Ok(()), "{id}");
        }
        assert_eq!(
            c.check_credentials("web-1", "web-1", "nope"),
            Err(LoginRefusal::BadCredentials)
        );
        assert_eq!(
            c.check_credentials("x", "", ""),
            Err(LoginRefusal::Anonymous)
        );
        for bad in ["web-1/x", "a+", "#", "$SYS"] {
            assert_eq!(
                c.check_credentials(bad, "web-1", "t0k"),
                Err(LoginRefusal::BadClientIdCharacter)
            );
        }
    }

    #[test]
    fn secret_compare() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
