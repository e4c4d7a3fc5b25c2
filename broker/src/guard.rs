//! What a login may do on the embedded broker, checked on every packet.
//!
//! The gateway supplies the permission model as a [`TopicPolicy`] (its `acl` module, read on
//! every check so SIGHUP reloads apply); this module adds what only the broker can see:
//!
//! - logins: token check, client-id characters, the last will held to the publish rule,
//!   connections per name, and a token bucket of failed logins per source address;
//! - sessions keyed `{username}:{client id}`, so any client id works and no login can take
//!   over another login's session;
//! - [`Quotas`]: message size per topic kind, distinct topics and filters per client name,
//!   and a cap on distinct filters overall (rumqttd keeps a log per distinct filter for as
//!   long as it runs, so the filters a client may create are what bounds that memory);
//! - refusals logged once per burst, with names length-capped and escaped ([`crate::burst`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rumqttd::protocol::{ConnectReturnCode, LastWill, QoS};
use rumqttd::{Authorizer, ConnectionGuard, LoginFuture, LoginRequest, Session, Verdict};

use crate::auth::{Credentials, LoginRefusal};
use crate::burst::{shown, Bursts, BURST_WINDOW};
use crate::topics::{TopicKind, Topics};

/// The permission model: which topics a client name may publish on and subscribe to.
pub trait TopicPolicy: Send + Sync {
    /// Whether `username` may publish on the topic name `topic`.
    fn may_publish(&self, username: &str, topic: &str) -> bool;
    /// Whether `username` may subscribe to `filter`.
    fn may_subscribe(&self, username: &str, filter: &str) -> bool;
}

/// rumqttd's own rule: any logged-in client may publish and subscribe anywhere (quotas
/// still apply). Only for the agent's tests and benchmarks, which run this broker without a
/// gateway; the gateway always supplies its permission model.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenPolicy;

impl TopicPolicy for OpenPolicy {
    fn may_publish(&self, _username: &str, _topic: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _username: &str, _filter: &str) -> bool {
        true
    }
}

/// Limits per client (`[mqtt]` keys of the same names), so one token cannot exhaust the
/// gateway's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Largest payload on `desired`, `status`, `fleet` and `events` topics.
    pub max_message_bytes: usize,
    /// Largest payload on `log` topics.
    pub max_log_bytes: usize,
    /// Distinct topics one client name may publish on while the broker runs; each may hold
    /// one retained message, and rumqttd keeps routing state for each.
    pub max_topics_per_client: usize,
    /// Distinct filters one client name may subscribe to while the broker runs.
    pub max_subscriptions_per_client: usize,
    /// Messages sent to one connection and not yet acknowledged.
    pub max_inflight: usize,
    /// Connections open at once under one client name.
    pub max_connections_per_client: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024,
            max_log_bytes: 8 * 1024,
            max_topics_per_client: 32,
            max_subscriptions_per_client: 64,
            max_inflight: 200,
            max_connections_per_client: 8,
        }
    }
}

impl Quotas {
    /// The largest PUBLISH frame worth reading: the largest payload plus room for the topic
    /// and header. Larger frames close the connection before they are buffered.
    pub fn max_packet_bytes(&self) -> usize {
        self.max_message_bytes.max(self.max_log_bytes) + FRAME_OVERHEAD_BYTES
    }
}

/// Room on top of the largest payload for a topic name, or for a CONNECT whose username or
/// client id is as long as MQTT allows (64 KiB), so such a login is answered and logged.
const FRAME_OVERHEAD_BYTES: usize = 66 * 1024;

/// Distinct filters all clients together may create while the broker runs (rumqttd's router
/// never frees a filter's log; at about 6 KB each this caps that memory near 60 MB).
const MAX_FILTERS_OVERALL: usize = 10_000;

/// Refused packets after which a connection is closed.
const MAX_REFUSALS_PER_CONNECTION: u32 = 20;

/// Failed logins one source address may make at once before its logins wait.
const FAILED_LOGIN_BURST: u32 = 10;

/// How fast an address earns back one failed login.
const FAILED_LOGIN_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a throttled login waits; past it, the login is refused at once, unchecked.
const MAX_LOGIN_WAIT: Duration = Duration::from_secs(3);

/// Source addresses whose failed logins are remembered (idle ones are forgotten first).
const MAX_THROTTLED_ADDRESSES: usize = 4096;

/// Names and reasons whose refusals are being counted.
const MAX_LOG_KEYS: usize = 1024;

/// The key refusals are counted under while [`MAX_LOG_KEYS`] others are in a burst.
const OTHER_KEY: &str = "(other clients)";

/// The embedded broker's [`Authorizer`].
pub struct BrokerAuthorizer {
    shared: Arc<Shared>,
}

/// State shared by every login and connection of the listener; each connection's guard
/// holds an `Arc` of it until the connection ends.
struct Shared {
    /// The gateway's, replaced in place on SIGHUP; read on every login.
    credentials: Arc<RwLock<Credentials>>,
    /// The gateway's permission model; asked on every publish and subscribe.
    policy: Arc<dyn TopicPolicy>,
    topics: Topics,
    quotas: Quotas,
    throttle: Mutex<Throttle>,
    usage: Mutex<Usage>,
    /// Refusals per reason and name, each logged once per [`BURST_WINDOW`].
    log: Mutex<Bursts<String>>,
}

/// What clients hold now (connections) or have created (topics, filters).
#[derive(Default)]
struct Usage {
    connections: HashMap<String, usize>,
    topics: HashMap<String, HashSet<String>>,
    filters: HashMap<String, HashSet<String>>,
    filters_overall: HashSet<String>,
}

impl BrokerAuthorizer {
    /// An authorizer reading `credentials` and `policy` on every check.
    pub fn new(
        credentials: Arc<RwLock<Credentials>>,
        policy: Arc<dyn TopicPolicy>,
        topics: Topics,
        quotas: Quotas,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                credentials,
                policy,
                topics,
                quotas,
                throttle: Mutex::new(Throttle::default()),
                usage: Mutex::new(Usage::default()),
                log: Mutex::new(Bursts::new(
                    BURST_WINDOW,
                    MAX_LOG_KEYS,
                    OTHER_KEY.to_owned(),
                )),
            }),
        }
    }
}

impl Authorizer for BrokerAuthorizer {
    fn login(&self, request: LoginRequest) -> LoginFuture {
        let shared = self.shared.clone();
        Box::pin(async move { shared.login(request).await })
    }
}

/// Why a login was refused, beyond the token rules.
enum Refusal {
    Login(LoginRefusal),
    Will(String),
    TooManyConnections,
    Throttled,
}

impl Shared {
    async fn login(self: Arc<Self>, request: LoginRequest) -> Result<Session, ConnectReturnCode> {
        let address = request.peer.map(|p| crate::auth::throttle_key(p.ip()));
        if let Some(address) = address {
            let wait = lock(&self.throttle).reserve(address, Instant::now());
            match wait {
                Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Some(_) => {}
                None => {
                    let (user, _) = request.login.clone().unwrap_or_default();
                    self.refused(&user, &request.client_id, request.peer, &Refusal::Throttled);
                    return Err(ConnectReturnCode::ServiceUnavailable);
                }
            }
        }
        let verdict = self.check_login(&request);
        if let Some(address) = address {
            let failed = matches!(verdict, Err(Refusal::Login(_)));
            lock(&self.throttle).settle(address, failed);
        }
        let (username, _) = request.login.clone().unwrap_or_default();
        match verdict {
            Ok(client_id) => Ok(Session {
                client_id,
                guard: Box::new(Guard {
                    shared: self.clone(),
                    username,
                    refusals: 0,
                }),
            }),
            Err(refusal) => {
                self.refused(&username, &request.client_id, request.peer, &refusal);
                Err(match refusal {
                    Refusal::Login(LoginRefusal::BadClientIdCharacter) => {
                        ConnectReturnCode::ClientIdentifierNotValid
                    }
                    Refusal::TooManyConnections => ConnectReturnCode::ServiceUnavailable,
                    _ => ConnectReturnCode::NotAuthorized,
                })
            }
        }
    }

    /// Every login rule; on success the connection is counted and the internal client id
    /// returned.
    fn check_login(&self, request: &LoginRequest) -> Result<String, Refusal> {
        let (username, password) = request.login.clone().unwrap_or_default();
        self.credentials
            .read()
            .map_err(|_| Refusal::Login(LoginRefusal::BadCredentials))?
            .check_credentials(&request.client_id, &username, &password)
            .map_err(Refusal::Login)?;
        if let Some(will) = &request.will {
            self.check_will(&username, will).map_err(Refusal::Will)?;
        }
        let mut usage = lock(&self.usage);
        let open = usage.connections.entry(username.clone()).or_default();
        if *open >= self.quotas.max_connections_per_client {
            return Err(Refusal::TooManyConnections);
        }
        *open += 1;
        // Sessions are keyed by login, so `web-1` logged in as `watcher` is not agent web-1;
        // an empty id gets a random one, as rumqttd would assign.
        let client_id = if request.client_id.is_empty() {
            format!("{username}:{}", random_suffix())
        } else {
            format!("{username}:{}", request.client_id)
        };
        Ok(client_id)
    }

    fn check_will(&self, username: &str, will: &LastWill) -> Result<(), String> {
        let topic = std::str::from_utf8(&will.topic).map_err(|_| "not UTF-8".to_owned())?;
        self.check_publish(username, topic, will.message.len())
    }

    /// Permission, size and topic quota of one publish.
    fn check_publish(&self, username: &str, topic: &str, len: usize) -> Result<(), String> {
        if !self.policy.may_publish(username, topic) {
            return Err(format!("may not publish on {}", shown(topic)));
        }
        let limit = match self.topics.parse(topic) {
            Some(TopicKind::Log { .. }) => self.quotas.max_log_bytes,
            _ => self.quotas.max_message_bytes,
        };
        if len > limit {
            return Err(format!(
                "a {len}-byte message on {} is over its {limit}-byte limit",
                shown(topic)
            ));
        }
        let mut usage = lock(&self.usage);
        let topics = usage.topics.entry(username.to_owned()).or_default();
        if !topics.contains(topic) {
            if topics.len() >= self.quotas.max_topics_per_client {
                return Err(format!(
                    "published on {} distinct topics, the max_topics_per_client quota",
                    topics.len()
                ));
            }
            topics.insert(topic.to_owned());
        }
        Ok(())
    }

    /// Permission and filter quotas of one subscription.
    fn check_subscribe(&self, username: &str, filter: &str) -> Result<(), String> {
        if !self.policy.may_subscribe(username, filter) {
            return Err(format!("may not subscribe to {}", shown(filter)));
        }
        let mut usage = lock(&self.usage);
        let Usage {
            filters,
            filters_overall,
            ..
        } = &mut *usage;
        let mine = filters.entry(username.to_owned()).or_default();
        if mine.contains(filter) {
            return Ok(());
        }
        if mine.len() >= self.quotas.max_subscriptions_per_client {
            return Err(format!(
                "subscribed to {} distinct filters, the max_subscriptions_per_client quota",
                mine.len()
            ));
        }
        if !filters_overall.contains(filter) && filters_overall.len() >= MAX_FILTERS_OVERALL {
            return Err(format!(
                "the broker holds {MAX_FILTERS_OVERALL} distinct filters, its limit"
            ));
        }
        filters_overall.insert(filter.to_owned());
        mine.insert(filter.to_owned());
        Ok(())
    }

    fn refused(&self, username: &str, client_id: &str, peer: Option<SocketAddr>, why: &Refusal) {
        let (reason, detail) = match why {
            Refusal::Login(r) => ("login refused", r.to_string()),
            Refusal::Will(d) => ("login refused: last will", d.clone()),
            Refusal::TooManyConnections => (
                "login refused",
                format!(
                    "already {} connections under this name (max_connections_per_client)",
                    self.quotas.max_connections_per_client
                ),
            ),
            Refusal::Throttled => (
                "login refused unchecked",
                "too many failed logins from this address; retry in a few seconds".to_owned(),
            ),
        };
        let key = match (why, peer) {
            (Refusal::Throttled, Some(p)) => format!("{reason}\n{}", p.ip()),
            _ => format!("{reason}\n{}", shown(username)),
        };
        if let Some(count) = lock(&self.log).note(key, Instant::now()) {
            tracing::warn!(
                username = %shown(username),
                client_id = %shown(client_id),
                peer = ?peer,
                reason = %detail,
                count,
                "MQTT {reason}"
            );
        }
    }
}

/// One connection's checks.
struct Guard {
    shared: Arc<Shared>,
    username: String,
    refusals: u32,
}

impl Guard {
    fn verdict(&mut self, what: &str, checked: Result<(), String>) -> Verdict {
        let Err(detail) = checked else {
            return Verdict::Allow;
        };
        self.refusals += 1;
        let key = format!("{what}\n{}", shown(&self.username));
        if let Some(count) = lock(&self.shared.log).note(key, Instant::now()) {
            tracing::warn!(
                username = %shown(&self.username),
                reason = %detail,
                count,
                "MQTT {what} refused"
            );
        }
        if self.refusals >= MAX_REFUSALS_PER_CONNECTION {
            // Per burst too: a client may open connection after connection to refuse.
            let key = format!("closed\n{}", shown(&self.username));
            if let Some(count) = lock(&self.shared.log).note(key, Instant::now()) {
                tracing::warn!(
                    username = %shown(&self.username),
                    refusals = self.refusals,
                    connections = count,
                    "MQTT connection closed after repeated refusals"
                );
            }
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

impl ConnectionGuard for Guard {
    fn publish(&mut self, topic: &str, payload_len: usize, _qos: QoS, _retain: bool) -> Verdict {
        let checked = self
            .shared
            .check_publish(&self.username, topic, payload_len);
        self.verdict("publish", checked)
    }

    fn subscribe(&mut self, filter: &str, _qos: QoS) -> Verdict {
        let checked = self.shared.check_subscribe(&self.username, filter);
        self.verdict("subscribe", checked)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut usage = lock(&self.shared.usage);
        if let Some(open) = usage.connections.get_mut(&self.username) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                usage.connections.remove(&self.username);
            }
        }
    }
}

/// Failed logins per source address, as a token bucket kept as its "theoretical arrival
/// time" (GCRA): each failure moves it one interval on; an address may be up to a burst of
/// intervals ahead of now before its logins wait.
#[derive(Default)]
struct Throttle {
    next: HashMap<IpAddr, Instant>,
}

impl Throttle {
    /// Reserves one failure's worth for a login from `address`: how long it must wait, or
    /// `None` if it would wait too long.
    fn reserve(&mut self, address: IpAddr, now: Instant) -> Option<Duration> {
        if self.next.len() >= MAX_THROTTLED_ADDRESSES && !self.next.contains_key(&address) {
            self.next.retain(|_, t| *t > now);
        }
        let burst = FAILED_LOGIN_INTERVAL * FAILED_LOGIN_BURST;
        let tat = self.next.get(&address).copied().unwrap_or(now).max(now);
        let wait = (tat + FAILED_LOGIN_INTERVAL).saturating_duration_since(now + burst);
        if wait > MAX_LOGIN_WAIT {
            return None;
        }
        if self.next.len() < MAX_THROTTLED_ADDRESSES || self.next.contains_key(&address) {
            self.next.insert(address, tat + FAILED_LOGIN_INTERVAL);
        }
        Some(wait)
    }

    /// Gives the reservation back when the login succeeded.
    fn settle(&mut self, address: IpAddr, failed: bool) {
        if failed {
            return;
        }
        if let Some(t) = self.next.get_mut(&address) {
            *t = t.checked_sub(FAILED_LOGIN_INTERVAL).unwrap_or(*t);
        }
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these leaves counts at worst slightly off: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_wait_after_a_burst_and_other_addresses_do_not() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..FAILED_LOGIN_BURST {
            assert_eq!(t.reserve(a, now), Some(Duration::ZERO));
        }
        assert_eq!(t.reserve(a, now), Some(FAILED_LOGIN_INTERVAL));
        assert_eq!(t.reserve(b, now), Some(Duration::ZERO));
        // Waits are capped: past MAX_LOGIN_WAIT the login is refused unchecked.
        let refused = (0..20).filter(|_| t.reserve(a, now).is_none()).count();
        assert!(refused > 0);
        // A success gives its reservation back.
        let before = t.next[&b];
        t.settle(b, false);
        assert!(t.next[&b] < before);
        // Time heals.
        assert_eq!(
            t.reserve(a, now + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
    }
}
