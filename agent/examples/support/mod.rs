//! Helpers shared by the agent benchmarks (`bench_refusals`, `bench_rollback`) and the agent's
//! integration tests, which include it with `#[path = ...] mod support;`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use orcastrate_broker::auth::Credentials;
use orcastrate_broker::embedded::{EmbeddedBroker, EmbeddedSettings};
use orcastrate_broker::Topics;

/// An embedded broker on loopback `port` that lets `logins` (name, token) in, with no topic
/// permissions: a benchmark's own clients (a watcher, an attacker) must reach the agent,
/// where the gateway's broker would refuse them before they got there.
pub(crate) fn open_broker(port: u16, logins: &[(&str, &str)]) -> anyhow::Result<EmbeddedBroker> {
    let creds = Credentials::new(
        logins
            .iter()
            .map(|(name, token)| ((*name).to_owned(), (*token).to_owned())),
    );
    Ok(EmbeddedBroker::start(
        &EmbeddedSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            topics: Topics::default(),
            quotas: Default::default(),
        },
        Arc::new(RwLock::new(creds)),
        Arc::new(orcastrate_broker::guard::OpenPolicy),
    )?)
}
