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
        self.check(username, password, || {
            if client_id.contains(['/', '+', '#', '$']) {
                Err(LoginRefusal::BadClientIdCharacter)
            } else {
                Ok(())
            }
        })
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
        self.check(username, password, || check_client_id(client_id, username))
    }

    /// The rules both logins share, in their order: no anonymous login, then `client_id`'s
    /// own rule, then the token.
    fn check(
        &self,
        username: &str,
        password: &str,
        client_id: impl FnOnce() -> Result<(), LoginRefusal>,
    ) -> Result<(), LoginRefusal> {
        if username.is_empty() || password.is_empty() {
            return Err(LoginRefusal::Anonymous);
        }
        client_id()?;
        match self.tokens.get(username) {
            Some(token) if secrets_equal(password, token) => Ok(()),
            _ => Err(LoginRefusal::BadCredentials),
        }
    }
}

/// What wrong secrets are throttled per: the IPv4 address, or the IPv6 /64 (one host's
/// usual share, so a host cannot dodge its throttle by changing addresses within it).
pub fn throttle_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_throttled_per_ipv4_address_and_per_ipv6_slash_64() {
        let key = |ip: &str| throttle_key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(
            key("192.0.2.7"),
            "192.0.2.7".parse::<std::net::IpAddr>().unwrap()
        );
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    use LoginRefusal::{Anonymous, BadClientIdCharacter, BadCredentials, ForeignClientId};

    /// A `(client id, username, password)` login and the answer it must get.
    type Case<'a> = (&'a str, &'a str, &'a str, Result<(), LoginRefusal>);

    /// Asserts the answer of `check` to each case, for the one client `web-1` (token `t0k`).
    #[track_caller]
    fn answers(
        check: fn(&Credentials, &str, &str, &str) -> Result<(), LoginRefusal>,
        cases: &[Case<'_>],
    ) {
        let c = Credentials::new([("web-1".to_owned(), "t0k".to_owned())]);
        for (id, user, password, want) in cases {
            assert_eq!(
                check(&c, id, user, password),
                *want,
                "{id:?} {user:?} {password:?}"
            );
        }
    }

    /// Client ids with MQTT wildcards or separators, refused by either check.
    fn wildcard_ids<'a>(ids: &[&'a str]) -> Vec<Case<'a>> {
        ids.iter()
            .map(|&id| (id, "web-1", "t0k", Err(BadClientIdCharacter)))
            .collect()
    }

    #[test]
    fn login_rules() {
        let mut cases = vec![
            ("", "web-1", "t0k", Ok(())),
            ("web-1", "web-1", "t0k", Ok(())),
            ("web-1:cli", "web-1", "t0k", Ok(())),
            ("", "", "", Err(Anonymous)),
            ("", "web-1", "nope", Err(BadCredentials)),
            ("", "web-2", "t0k", Err(BadCredentials)),
            ("web-2", "web-1", "t0k", Err(ForeignClientId)),
            ("web-1:", "web-1", "t0k", Err(ForeignClientId)),
            ("web-1x", "web-1", "t0k", Err(ForeignClientId)),
        ];
        cases.extend(wildcard_ids(&["web-1/x", "web-1:+", "#", "$SYS"]));
        answers(Credentials::check_login, &cases);
    }

    #[test]
    fn the_embedded_broker_takes_any_client_id_without_wildcards() {
        let mut cases: Vec<Case<'_>> = ["", "web-1", "web-2", "mqttjs_3f2a9c1b", "paho-123"]
            .iter()
            .map(|&id| (id, "web-1", "t0k", Ok(())))
            .collect();
        cases.push(("web-1", "web-1", "nope", Err(BadCredentials)));
        cases.push(("x", "", "", Err(Anonymous)));
        cases.extend(wildcard_ids(&["web-1/x", "a+", "#", "$SYS"]));
        answers(Credentials::check_credentials, &cases);
    }

    #[test]
    fn secret_compare() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
