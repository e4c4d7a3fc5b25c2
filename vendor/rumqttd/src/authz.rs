//! Authorization of each remote connection, after its login (orcastrate patch).
//!
//! An [`Authorizer`] set on [`crate::ConnectionSettings`] is asked once per CONNECT (with the
//! peer address, the login and the last will) and answers either a CONNACK code, which is
//! written to the client before the connection closes, or a [`Session`]: the client id the
//! router registers (so logins can be kept apart, e.g. `{username}:{client id}`) and a
//! [`ConnectionGuard`] that sees every PUBLISH, SUBSCRIBE and UNSUBSCRIBE the client sends
//! before it reaches the router. The guard is dropped when the connection ends.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::protocol::{ConnectReturnCode, LastWill, QoS};

/// What a client sends in CONNECT, as the authorizer sees it.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The TCP peer, for per-address throttling (`None` where the transport has none).
    pub peer: Option<SocketAddr>,
    /// The client id as sent (may be empty).
    pub client_id: String,
    /// Username and password, if the client sent a login.
    pub login: Option<(String, String)>,
    /// The last will, checked by the same rules as a publish.
    pub will: Option<LastWill>,
}

/// An accepted login.
pub struct Session {
    /// The id the router registers this connection under; it decides which sessions take
    /// over each other.
    pub client_id: String,
    /// Checks every packet of this connection.
    pub guard: Box<dyn ConnectionGuard>,
}

/// The answer to one publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on to the router.
    Allow,
    /// Dropped: a publish is acknowledged and not delivered (MQTT 3.1.1 lets the server do
    /// that), a subscribe filter gets return code 0x80.
    Refuse,
    /// The connection is closed.
    Disconnect,
}

/// Decides, for one connection, what it may publish and subscribe to.
pub trait ConnectionGuard: Send {
    /// A PUBLISH from the client.
    fn publish(&mut self, topic: &str, payload_len: usize, qos: QoS, retain: bool) -> Verdict;
    /// One filter of a SUBSCRIBE from the client.
    fn subscribe(&mut self, filter: &str, qos: QoS) -> Verdict;
    /// One filter of an UNSUBSCRIBE from the client.
    fn unsubscribe(&mut self, _filter: &str) {}
}

/// The future an [`Authorizer`] answers with.
pub type LoginFuture = Pin<Box<dyn Future<Output = Result<Session, ConnectReturnCode>> + Send>>;

/// Decides who may log in, and hands each accepted connection its guard.
pub trait Authorizer: Send + Sync {
    /// Checks a CONNECT; an `Err` code is sent in the CONNACK before the connection closes.
    fn login(&self, request: LoginRequest) -> LoginFuture;
}
