//! The agent's layer-4 proxy (`[proxy]`): it owns the service's public socket and sends each
//! new connection to the private loopback port of the release that serves now, so a switch
//! between releases refuses no connection. Connections already open stay on their release
//! until they end; [`Proxy::drain`] waits for them before the old app is stopped.
//! With `proxy_protocol` each connection to the app starts with a PROXY protocol header
//! naming the client (`proxy_protocol.rs`).
//!
//! Across an agent restart the public socket survives through systemd's socket activation
//! (`LISTEN_FDS` from a `.socket` unit, README: "Zero-downtime switches"): systemd holds it, so
//! connections wait in its backlog while the agent restarts instead of being refused.
//! Without it the agent binds `listen` itself and a restart refuses connections until the
//! new agent listens. A crash costs the connections open through the proxy at that moment.
//!
//! Every accepted connection costs one task and two sockets until either side closes it;
//! the kernel's backlog and the process's fd limit bound them, as they would the app.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::ProxyProtocol;

/// How often [`Proxy::drain`] looks whether the old release's connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long a new connection waits for its app to accept (it is being restarted, or was just
/// started by a restarted agent) before the client's connection is closed.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between attempts to reach the app.
const CONNECT_PAUSE: Duration = Duration::from_millis(25);
/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Pause after a failed accept (e.g. out of fds), so that the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The public socket and where its connections go.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    /// The private port of the release serving new connections; 0: none yet.
    target: Arc<AtomicU16>,
    /// Open connections per private port.
    open: Arc<Mutex<HashMap<u16, usize>>>,
    listen: SocketAddr,
    /// The PROXY protocol header each connection to the app starts with, if any.
    protocol: Option<ProxyProtocol>,
}

impl Proxy {
    /// Binds the public address and serves it until `stop` fires, starting each connection
    /// to the app with a `protocol` header if one is given.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound (in use, or a privileged port).
    pub(crate) fn start(
        listen: SocketAddr,
        protocol: Option<ProxyProtocol>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let socket = match inherited(listen)? {
            Some(socket) => socket,
            None => StdListener::bind(listen)?,
        };
        socket.set_nonblocking(true)?;
        let listener = TcpListener::from_std(socket)?;
        let listen = listener.local_addr()?;
        let proxy = Self {
            target: Arc::new(AtomicU16::new(0)),
            open: Arc::new(Mutex::new(HashMap::new())),
            listen,
            protocol,
        };
        tokio::spawn(proxy.clone().serve(listener, stop));
        tracing::info!(%listen, "proxy listening");
        Ok(proxy)
    }

    /// The public address it listens on.
    pub(crate) fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The private port new connections go to; `None` before the first release.
    pub(crate) fn target(&self) -> Option<u16> {
        Some(self.target.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// Sends new connections to `port` from now on.
    pub(crate) fn switch_to(&self, port: u16) {
        let old = self.target.swap(port, Ordering::SeqCst);
        tracing::info!(from = old, to = port, "proxy switched");
    }

    /// Connections open to `port` now.
    pub(crate) fn open_to(&self, port: u16) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&port).copied().unwrap_or(0)
    }

    /// Waits until no connection to `port` is open, or `within` passed; returns how many
    /// were still open then.
    pub(crate) async fn drain(&self, port: u16, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let open = self.open_to(port);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Waits until no connection is open, or `within` passed; returns how many were still
    /// open then (the agent stopping: the app may keep serving, the connections through this
    /// process cannot).
    pub(crate) async fn drain_all(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let open: usize = self
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .sum();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stop.cancelled() => return,
            };
            match accepted {
                Ok((client, peer)) => {
                    let _ = client.set_nodelay(true);
                    tokio::spawn(self.clone().relay(client, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy cannot accept");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    }

    /// Copies between `client` and the app serving now. Until there is one (start-up) or
    /// while it does not accept (it is being restarted), the client waits up to
    /// [`CONNECT_PATIENCE`] rather than being refused. With `proxy_protocol`, the app first
    /// gets the header naming `peer` and the public address it connected to.
    async fn relay(self, mut client: TcpStream, peer: SocketAddr) {
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let (mut app, _open) = loop {
            let error = match self.target() {
                Some(port) => {
                    let open = Open::new(&self.open, port);
                    match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
                        Ok(app) => break (app, open),
                        Err(e) => e.to_string(),
                    }
                }
                None => "no release serves yet".to_owned(),
            };
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(%error, "proxy cannot reach the app; closing the connection");
                return;
            }
            tokio::time::sleep(CONNECT_PAUSE).await;
        };
        let _ = app.set_nodelay(true);
        if let Some(protocol) = self.protocol {
            let public = client.local_addr().unwrap_or(self.listen);
            let header = crate::proxy_protocol::relayed(protocol, peer, public);
            if let Err(e) = app.write_all(&header).await {
                tracing::warn!(error = %e, "proxy cannot write the PROXY header to the app");
                return;
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
    }
}

/// Counts a connection as open to its port while it lives.
struct Open {
    open: Arc<Mutex<HashMap<u16, usize>>>,
    port: u16,
}

impl Open {
    fn new(open: &Arc<Mutex<HashMap<u16, usize>>>, port: u16) -> Self {
        *open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(port)
            .or_default() += 1;
        Self {
            open: open.clone(),
            port,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.port) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.port);
            }
        }
    }
}

/// The listening socket systemd passed (`LISTEN_FDS`, for this process if `LISTEN_PID` says
/// so), made close-on-exec so the app does not inherit it.
#[allow(unsafe_code)]
fn inherited(listen: SocketAddr) -> std::io::Result<Option<StdListener>> {
    use std::os::fd::FromRawFd as _;
    let fds: u32 = match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) if n >= 1 => n,
        _ => return Ok(None),
    };
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(None);
        }
    }
    // SAFETY: systemd passes `fds` open descriptors from 3 on; the first is ours, taken
    // once (start-up), and checked to be a listening TCP socket before use.
    let socket = unsafe { StdListener::from_raw_fd(LISTEN_FDS_START) };
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr = socket.local_addr().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("LISTEN_FDS={fds}: descriptor 3 is not a TCP socket ({e})"),
        )
    })?;
    if addr.port() != listen.port() {
        tracing::warn!(%addr, %listen, "the socket systemd passed is not on [proxy] listen's port; serving it anyway");
    }
    tracing::info!(%addr, "proxy uses the socket systemd passed");
    Ok(Some(socket))
}

/// A free private loopback port for a new release, from the kernel.
///
/// # Errors
///
/// When no port can be bound on 127.0.0.1.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    async fn echo_server(tag: &'static [u8]) -> u16 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(tag).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    async fn ask(stream: &mut TcpStream) -> Vec<u8> {
        stream.write_all(b"?").await.unwrap();
        let mut buf = [0u8; 1];
        stream.read_exact(&mut buf).await.unwrap();
        buf.to_vec()
    }

    #[tokio::test]
    async fn new_connections_follow_the_switch_and_old_ones_drain() {
        let (a, b) = (echo_server(b"a").await, echo_server(b"b").await);
        let stop = CancellationToken::new();
        let proxy = Proxy::start((Ipv4Addr::LOCALHOST, 0).into(), None, stop.clone()).unwrap();
        proxy.switch_to(a);
        let mut old = TcpStream::connect(proxy.listen()).await.unwrap();
        assert_eq!(ask(&mut old).await, b"a");
        proxy.switch_to(b);
        let mut new = TcpStream::connect(proxy.listen()).await.unwrap();
        assert_eq!(ask(&mut new).await, b"b");
        // The open connection stays on its release until it ends.
        assert_eq!(ask(&mut old).await, b"a");
        assert_eq!(proxy.drain(a, Duration::from_millis(100)).await, 1);
        drop(old);
        assert_eq!(proxy.drain(a, Duration::from_secs(10)).await, 0);
        assert_eq!(proxy.open_to(b), 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn the_app_reads_the_client_address_before_the_data() {
        for (protocol, expect_v1) in [(ProxyProtocol::V1, true), (ProxyProtocol::V2, false)] {
            let app = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let stop = CancellationToken::new();
            let proxy = Proxy::start(
                (Ipv4Addr::LOCALHOST, 0).into(),
                Some(protocol),
                stop.clone(),
            )
            .unwrap();
            proxy.switch_to(app.local_addr().unwrap().port());
            let mut client = TcpStream::connect(proxy.listen()).await.unwrap();
            let me = client.local_addr().unwrap();
            client.write_all(b"hello").await.unwrap();
            let (mut seen, _) = app.accept().await.unwrap();
            let expected = crate::proxy_protocol::relayed(protocol, me, proxy.listen());
            let mut got = vec![0u8; expected.len() + 5];
            seen.read_exact(&mut got).await.unwrap();
            assert_eq!(&got[..expected.len()], expected.as_slice());
            assert_eq!(&got[expected.len()..], b"hello");
            if expect_v1 {
                let line = format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                    me.port(),
                    proxy.listen().port()
                );
                assert_eq!(expected, line.as_bytes());
            }
            stop.cancel();
        }
    }
}
