use crate::authz::{ConnectionGuard, LoginRequest, Verdict};
use crate::link::local::{LinkError, LinkRx, LinkTx};
use crate::link::network;
use crate::link::network::Network;
use crate::local::LinkBuilder;
use crate::protocol::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, Protocol, PubAck, PubAckReason, QoS,
    SubAck, SubscribeReasonCode,
};
use crate::router::{Event, Notification};
use crate::{ConnectionId, ConnectionSettings};

use flume::{RecvError, SendError, Sender, TrySendError};
use std::cmp::min;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::error::Elapsed;
use tokio::{select, time};
use tracing::{trace, Span};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O")]
    Io(#[from] io::Error),
    #[error("Zero keep alive")]
    ZeroKeepAlive,
    #[error("Not connect packet")]
    NotConnectPacket(Packet),
    #[error("Network {0}")]
    Network(#[from] network::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Got new session, disconnecting old one")]
    SessionEnd,
    #[error("Persistent session requires valid client id")]
    InvalidClientId,
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Authentication error")]
    InvalidAuth,
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Link error = {0}")]
    Link(#[from] LinkError),
    #[error("Not authorized")]
    NotAuthorized,
}

/// Orchestrates between Router and Network.
pub struct RemoteLink<P> {
    connect: Connect,
    pub(crate) connection_id: ConnectionId,
    network: Network<P>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    notifications: VecDeque<Notification>,
    pub(crate) will_delay_interval: u32,
    /// Checks each packet read from the network (see [`crate::Authorizer`]).
    guard: Option<Box<dyn ConnectionGuard>>,
    /// SUBSCRIBE packet ids with refused filters: the positions the router's SUBACK lacks.
    refused_filters: HashMap<u16, Vec<usize>>,
}

impl<P: Protocol> RemoteLink<P> {
    pub async fn new(
        router_tx: Sender<(ConnectionId, Event)>,
        tenant_id: Option<String>,
        mut network: Network<P>,
        connect_packet: Packet,
        dynamic_filters: bool,
        assigned_client_id: Option<String>,
        guard: Option<Box<dyn ConnectionGuard>>,
    ) -> Result<RemoteLink<P>, Error> {
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = connect_packet else {
            return Err(Error::NotConnectPacket(connect_packet));
        };

        // Register this connection with the router. Router replys with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex max connection limit)
        let client_id = assigned_client_id.as_ref().unwrap_or(&connect.client_id);
        let clean_session = connect.clean_session;

        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);

        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);

        // The Server delays publishing the Client’s Will Message until
        // the Will Delay Interval has passed or the Session ends, whichever happens first
        let will_delay_interval = min(session_expiry, delay_interval);

        let (link_tx, link_rx, notification) = LinkBuilder::new(client_id, router_tx)
            .tenant_id(tenant_id)
            .clean_session(clean_session)
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            .build()?;

        let id = link_rx.id();
        Span::current().record("connection_id", id);

        if let Some(mut packet) = notification.into() {
            if let Packet::ConnAck(_ack, props) = &mut packet {
                let mut new_props = props.clone().unwrap_or_default();
                new_props.assigned_client_identifier = assigned_client_id;
                *props = Some(new_props);
                network.write(packet).await?;
            }
        }

        Ok(RemoteLink {
            connect,
            connection_id: id,
            network,
            link_tx,
            link_rx,
            notifications: VecDeque::with_capacity(100),
            will_delay_interval,
            guard,
            refused_filters: HashMap::new(),
        })
    }

    pub async fn start(&mut self) -> Result<(), Error> {
        self.network.set_keepalive(self.connect.keep_alive);

        // Note:
        // Shouldn't result in bounded queue deadlocks because of blocking n/w send
        loop {
            select! {
                o = self.network.read() => {
                    let packet = o?;
                    let len = match self.guard.as_mut() {
                        None => {
                            let mut buffer = self.link_tx.buffer();
                            buffer.push_back(packet);
                            self.network.readv(&mut buffer)?;
                            buffer.len()
                        }
                        Some(guard) => {
                            let mut packets = VecDeque::from([packet]);
                            self.network.readv(&mut packets)?;
                            let replies = authorize(guard.as_mut(), &mut packets, &mut self.refused_filters)?;
                            if !replies.is_empty() {
                                self.network.writev(replies).await?;
                            }
                            if packets.is_empty() {
                                continue;
                            }
                            let mut buffer = self.link_tx.buffer();
                            buffer.extend(packets);
                            buffer.len()
                        }
                    };

                    trace!("Packets read from network, count = {}", len);
                    self.link_tx.notify().await?;
                }
                // Receive from router when previous when state isn't in collision
                // due to previously received data request
                o = self.link_rx.exchange(&mut self.notifications) => {
                    o?;
                    let mut packets = VecDeque::new();
                    let mut unscheduled = false;

                    for notif in self.notifications.drain(..) {
                        if let Some(mut packet) = notif.into() {
                            if let Packet::SubAck(suback, _) = &mut packet {
                                if let Some(refused) = self.refused_filters.remove(&suback.pkid) {
                                    for at in refused {
                                        let at = at.min(suback.return_codes.len());
                                        suback.return_codes.insert(at, SubscribeReasonCode::Failure);
                                    }
                                }
                            }
                            packets.push_back(packet);
                        } else {
                            unscheduled = true;
                        }

                    }
                    self.network.writev(packets).await?;
                    if unscheduled {
                        self.link_rx.wake().await?;
                    }
                }
            }
        }
    }
}

/// Asks the guard about each PUBLISH and SUBSCRIBE in `packets`, removing what it refuses,
/// and returns the acknowledgements the client gets for refused packets. Filters refused
/// from a SUBSCRIBE that keeps others are noted in `refused_filters`, so the router's SUBACK
/// can be completed with 0x80 at their positions.
fn authorize(
    guard: &mut dyn ConnectionGuard,
    packets: &mut VecDeque<Packet>,
    refused_filters: &mut HashMap<u16, Vec<usize>>,
) -> Result<VecDeque<Packet>, Error> {
    let mut replies = VecDeque::new();
    let mut result = Ok(());
    packets.retain_mut(|packet| {
        if result.is_err() {
            return false;
        }
        match packet {
            Packet::Publish(publish, _) => {
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    result = Err(Error::NotAuthorized);
                    return false;
                };
                match guard.publish(topic, publish.payload.len(), publish.qos, publish.retain) {
                    Verdict::Allow => true,
                    // QoS 2 would need the PUBREC/PUBREL exchange the router keeps: close.
                    Verdict::Refuse if publish.qos != QoS::ExactlyOnce => {
                        if publish.qos == QoS::AtLeastOnce {
                            let reason = PubAckReason::NotAuthorized;
                            let ack = PubAck {
                                pkid: publish.pkid,
                                reason,
                            };
                            replies.push_back(Packet::PubAck(ack, None));
                        }
                        false
                    }
                    Verdict::Refuse | Verdict::Disconnect => {
                        result = Err(Error::NotAuthorized);
                        false
                    }
                }
            }
            Packet::Subscribe(subscribe, _) => {
                let mut refused = Vec::new();
                for (at, filter) in subscribe.filters.iter().enumerate() {
                    match guard.subscribe(&filter.path, filter.qos) {
                        Verdict::Allow => {}
                        Verdict::Refuse => refused.push(at),
                        Verdict::Disconnect => {
                            result = Err(Error::NotAuthorized);
                            return false;
                        }
                    }
                }
                if refused.is_empty() {
                    return true;
                }
                if refused.len() == subscribe.filters.len() {
                    let return_codes = vec![SubscribeReasonCode::Failure; refused.len()];
                    let ack = SubAck {
                        pkid: subscribe.pkid,
                        return_codes,
                    };
                    replies.push_back(Packet::SubAck(ack, None));
                    return false;
                }
                for at in refused.iter().rev() {
                    subscribe.filters.remove(*at);
                }
                refused_filters.insert(subscribe.pkid, refused);
                true
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                for filter in &unsubscribe.filters {
                    guard.unsubscribe(filter);
                }
                true
            }
            _ => true,
        }
    });
    result.map(|()| replies)
}

/// Read MQTT connect packet from network and verify it.
/// authentication and checks are done here.
pub async fn mqtt_connect<P>(
    config: Arc<ConnectionSettings>,
    network: &mut Network<P>,
    peer: Option<SocketAddr>,
) -> Result<(Packet, Option<Box<dyn ConnectionGuard>>), Error>
where
    P: Protocol,
{
    // Wait for MQTT connect packet and error out if it's not received in time to prevent
    // DOS attacks by filling total connections that the server can handle with idle open
    // connections which results in server rejecting new connections
    let connection_timeout_ms = config.connection_timeout_ms.into();
    let packet = time::timeout(Duration::from_millis(connection_timeout_ms), async {
        let packet = network.read().await?;
        Ok::<_, network::Error>(packet)
    })
    .await??;

    let mut packet = packet;
    let (connect, _props, will, login) = match packet {
        Packet::Connect(ref mut connect, ref props, ref will, _, ref login) => {
            (connect, props, will, login)
        }
        packet => return Err(Error::NotConnectPacket(packet)),
    };

    let empty_client_id = connect.client_id.is_empty();
    let clean_session = connect.clean_session;
    let mut guard = None;

    if let Some(authorizer) = &config.authorizer {
        let request = LoginRequest {
            peer,
            client_id: connect.client_id.clone(),
            login: login
                .as_ref()
                .map(|l| (l.username.clone(), l.password.clone())),
            will: will.clone(),
        };
        match authorizer.login(request).await {
            Ok(session) => {
                connect.client_id = session.client_id;
                guard = Some(session.guard);
            }
            Err(code) => {
                let ack = ConnAck {
                    session_present: false,
                    code,
                };
                network.write(Packet::ConnAck(ack, None)).await?;
                return Err(Error::InvalidAuth);
            }
        }
    } else if let Err(e) = handle_auth(config.clone(), login.as_ref(), &connect.client_id).await {
        // Say why before closing, as MQTT 3.1.1 asks (3.2.2.3), instead of a bare close.
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        };
        network.write(Packet::ConnAck(ack, None)).await?;
        return Err(e);
    }

    Span::current().record("client_id", &connect.client_id);

    // When keep_alive feature is disabled client can live forever, which is not good in
    // distributed broker context so currenlty we don't allow it.
    if connect.keep_alive == 0 {
        return Err(Error::ZeroKeepAlive);
    }

    if empty_client_id && !clean_session {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ClientIdentifierNotValid,
        };

        let packet = Packet::ConnAck(ack, None);
        network.write(packet).await?;

        return Err(Error::InvalidClientId);
    }

    // Ok((connect, props, lastwill, lastwill_props))
    Ok((packet, guard))
}

async fn handle_auth(
    config: Arc<ConnectionSettings>,
    login: Option<&Login>,
    client_id: &str,
) -> Result<(), Error> {
    if config.auth.is_none() && config.external_auth.is_none() {
        return Ok(());
    }

    // if authentication is configured and connect packet doesn't have login details
    // return an error
    let Some(login) = login else {
        return Err(Error::InvalidAuth);
    };

    let username = &login.username;
    let password = &login.password;

    if let Some(auth) = &config.external_auth {
        if !auth(
            client_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
        )
        .await
        {
            return Err(Error::InvalidAuth);
        }

        return Ok(());
    }

    if let Some(pairs) = &config.auth {
        if let Some(stored_password) = pairs.get(username) {
            if stored_password.as_bytes().ct_eq(password.as_bytes()).into() {
                return Ok(());
            }
        }

        return Err(Error::InvalidAuth);
    }

    Err(Error::InvalidAuth)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use crate::{protocol::Login, ConnectionSettings};

    use super::handle_auth;

    fn config() -> ConnectionSettings {
        ConnectionSettings {
            connection_timeout_ms: 0,
            max_payload_size: 0,
            max_inflight_count: 0,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            authorizer: None,
        }
    }

    fn login() -> Login {
        Login {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }
    }

    #[tokio::test]
    async fn no_login_no_auth() {
        let cfg = Arc::new(config());
        let r = handle_auth(cfg, None, "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn some_login_no_auth() {
        let cfg = Arc::new(config());
        let login = login();
        let r = handle_auth(cfg, Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_matches_static_auth() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert(login.username.clone(), login.password.clone());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_no_external() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn login_fails_static_matches_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { true };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_fails_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { false };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn external_auth_clousre_or_fnptr_type_check_or_fail_compile() {
        let closure = |_: String, _: String, _: String| async { false };
        async fn fnptr(_: String, _: String, _: String) -> bool {
            true
        }

        let mut cfg = config();
        cfg.set_auth_handler(closure);
        cfg.set_auth_handler(fnptr);
    }
}
