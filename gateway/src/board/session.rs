//! Board sign-ins: a signed cookie `{role}.{expires}.{nonce}.{mac}` (HMAC-SHA256 under a
//! key derived from the gateway's secrets and tokens), so a session outlives a gateway
//! restart (the page's live stream reconnects by itself) and ends when any token changes.
//! The CSRF token is a second MAC over the cookie. Signed-out cookies are remembered until
//! they expire, at most [`MAX_REVOKED`] of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use orcastrate_broker::auth::secrets_equal;
use sha2::Sha256;

/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most signed-out sessions remembered: past it the one closest to expiry is forgotten (its
/// browser deleted the cookie when it signed out), so a flood of sign-outs costs bounded
/// memory.
pub const MAX_REVOKED: usize = 4096;

/// The cookie that carries the session.
pub const COOKIE: &str = "orcastrate_session";

/// What a signed-in person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads and writes.
    Admin,
    /// Reads only; every write is answered 403.
    Viewer,
}

impl Role {
    /// The name the page and the API show.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// One sign-in.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// Sent back by the page in `X-CSRF-Token` on every state-changing request.
    pub csrf: String,
    nonce: String,
    expires: u64,
}

/// Makes and checks session cookies.
pub struct Sessions {
    key: [u8; 32],
    /// Signed-out nonces and when their cookies would have expired (unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
}

fn now_s() -> u64 {
    orcastrate_broker::time::unix_ms() / 1000
}

impl Sessions {
    /// Sessions under a key derived from every secret that grants access: changing any of
    /// them signs everyone out.
    pub fn new(github_secret: &str, admin_tokens: &[String], viewer_tokens: &[String]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"orcastrate board session v1")
            .expect("HMAC takes any key");
        for part in std::iter::once(github_secret)
            .chain(["\0admin"])
            .chain(admin_tokens.iter().map(String::as_str))
            .chain(["\0viewer"])
            .chain(viewer_tokens.iter().map(String::as_str))
        {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        Self {
            key: mac.finalize().into_bytes().into(),
            revoked: Mutex::default(),
        }
    }

    fn mac(&self, what: &str, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(what.as_bytes());
        mac.update(b"\0");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new session for `role`; returns its cookie value and the session.
    pub fn create(&self, role: Role) -> (String, Session) {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let r = if role == Role::Admin { "a" } else { "v" };
        let body = format!(
            "{r}.{}.{}",
            now_s() + SESSION_TTL.as_secs(),
            hex::encode(nonce)
        );
        let value = format!("{body}.{}", self.mac("session", &body));
        let session = self.get(&value).expect("a fresh session is valid");
        (value, session)
    }

    /// The live session of cookie `value`, if it is genuine, unexpired and not signed out.
    pub fn get(&self, value: &str) -> Option<Session> {
        let (body, mac) = value.rsplit_once('.')?;
        if !secrets_equal(mac, &self.mac("session", body)) {
            return None;
        }
        let mut parts = body.split('.');
        let role = match parts.next()? {
            "a" => Role::Admin,
            "v" => Role::Viewer,
            _ => return None,
        };
        let expires: u64 = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_owned();
        if expires <= now_s()
            || self
                .revoked
                .lock()
                .expect("revoked lock poisoned")
                .contains_key(&nonce)
        {
            return None;
        }
        Some(Session {
            role,
            csrf: self.mac("csrf", value),
            nonce,
            expires,
        })
    }

    /// Signs `session` out.
    pub fn remove(&self, session: &Session) {
        let now = now_s();
        let mut revoked = self.revoked.lock().expect("revoked lock poisoned");
        revoked.retain(|_, exp| *exp > now);
        while revoked.len() >= MAX_REVOKED {
            let oldest = revoked
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => revoked.remove(&k),
                None => break,
            };
        }
        revoked.insert(session.nonce.clone(), session.expires);
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_id(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

/// The `Set-Cookie` value of a new session (`Secure` when served over HTTPS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new("secret", &["admin-token-0123456789".into()], &[])
    }

    #[test]
    fn a_cookie_is_checked_signed_out_and_survives_a_restart() {
        let s = sessions();
        let (value, made) = s.create(Role::Viewer);
        let again = sessions(); // a restarted gateway with the same secrets
        assert_eq!(again.get(&value).unwrap().csrf, made.csrf);
        assert_eq!(again.get(&value).unwrap().role, Role::Viewer);
        let forged = value.replacen("v.", "a.", 1);
        assert!(s.get(&forged).is_none(), "the role is signed");
        let other = Sessions::new("secret", &["another-token-0123456789".into()], &[]);
        assert!(other.get(&value).is_none(), "new tokens sign everyone out");
        s.remove(&made);
        assert!(s.get(&value).is_none());
        assert!(s.get("garbage").is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others_and_is_strict() {
        assert_eq!(cookie_id("a=1; orcastrate_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_id("a=1"), None);
        let c = set_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
    }
}
