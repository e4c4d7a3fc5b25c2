//! `rumqttc` options that every Orcastrate client uses: credentials, 1 MiB packets both
//! ways, our keep-alive, TLS for `mqtts://` URLs, and MQTT over WebSocket for `ws://` and
//! `wss://` URLs (a gateway's `GET /mqtt` on its HTTP port, or behind a reverse proxy).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions, TlsConfiguration, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Keep-alive of our clients: short enough that a dead agent goes `offline` within a minute.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// A broker URL or TLS setting that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("invalid MQTT server URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("cannot use CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("no trusted root certificates for mqtts://: set SSL_CERT_FILE or a CA file")]
    NoRoots,
}

/// Which certificates a TLS connection trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    System,
    /// The certificates of a PEM file (a private CA or a self-signed server certificate).
    CaFile(PathBuf),
    /// Any certificate: only for a process checking its own listener on loopback.
    OwnListener,
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The HTTP path of MQTT over WebSocket (`ws://`, `wss://`); `None` for MQTT over TCP.
    pub ws_path: Option<String>,
}

impl ServerUrl {
    /// The URL rumqttc's WebSocket transport connects to (`None` for MQTT over TCP).
    pub fn ws_url(&self) -> Option<String> {
        let path = self.ws_path.as_deref()?;
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        Some(format!("{scheme}://{host}:{}{path}", self.port))
    }
}

/// The path of a `ws://` or `wss://` URL without one: where the gateway serves MQTT.
const DEFAULT_WS_PATH: &str = "/mqtt";

/// Parses `mqtt://host:port`, `mqtts://host:port`, `ws://host:port/path` or
/// `wss://host:port/path` (a bare `host:port` means `mqtt://`; a WebSocket URL without a
/// path means `/mqtt`).
pub fn parse_url(url: &str) -> Result<ServerUrl, UrlError> {
    let err = |reason| UrlError::Url {
        url: url.to_owned(),
        reason,
    };
    let scheme = |prefixes: &[&str]| prefixes.iter().find_map(|p| url.strip_prefix(p));
    let (rest, tls, ws) = if let Some(rest) = scheme(&["mqtt://", "tcp://"]) {
        (rest, false, false)
    } else if let Some(rest) = scheme(&["mqtts://", "ssl://"]) {
        (rest, true, false)
    } else if let Some(rest) = scheme(&["ws://"]) {
        (rest, false, true)
    } else if let Some(rest) = scheme(&["wss://"]) {
        (rest, true, true)
    } else if url.contains("://") {
        return Err(err(
            "use mqtt://host:port, mqtts://host:port, ws://host:port/mqtt or wss://host/mqtt",
        ));
    } else {
        (url, false, false)
    };
    let default_port = match (tls, ws) {
        (false, false) => 1883,
        (true, false) => 8883,
        (false, true) => 80,
        (true, true) => 443,
    };
    let (rest, ws_path) = match rest.find('/') {
        Some(i) if ws => (&rest[..i], Some(rest[i..].to_owned())),
        _ if ws => (rest, Some(DEFAULT_WS_PATH.to_owned())),
        _ => (rest.trim_end_matches('/'), None),
    };
    if ws_path
        .as_deref()
        .is_some_and(|p| p.contains(['?', '#', ' ']))
    {
        return Err(err(
            "a WebSocket URL takes a path only, e.g. wss://host/mqtt",
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| err("the port must be a number from 1 to 65535"))?,
        ),
        _ if !rest.is_empty() => (rest, default_port),
        _ => return Err(err("use mqtt://host:port")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(err("use mqtt://host:port"));
    }
    Ok(ServerUrl {
        host: host.to_owned(),
        port,
        tls,
        ws_path,
    })
}

/// Options for one of our clients, trusting the system's roots for `mqtts://`.
pub fn client_options(
    url: &str,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<MqttOptions, UrlError> {
    client_options_with(url, client_id, username, password, &Trust::System)
}

/// Options for one of our clients, with an explicit TLS trust for `mqtts://`.
pub fn client_options_with(
    url: &str,
    client_id: &str,
    username: &str,
    password: &str,
    trust: &Trust,
) -> Result<MqttOptions, UrlError> {
    let server = parse_url(url)?;
    // rumqttc's WebSocket transport takes the whole URL as the "host".
    let host = server.ws_url().unwrap_or_else(|| server.host.clone());
    let mut options = MqttOptions::new(client_id, host, server.port);
    options
        .set_credentials(username, password)
        .set_max_packet_size(crate::MAX_PACKET_BYTES, crate::MAX_PACKET_BYTES)
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true);
    let tls = || Ok::<_, UrlError>(TlsConfiguration::Rustls(Arc::new(tls_config(trust)?)));
    match (server.tls, server.ws_path.is_some()) {
        (false, false) => {}
        (true, false) => {
            options.set_transport(Transport::Tls(tls()?));
        }
        (false, true) => {
            options.set_transport(Transport::Ws);
        }
        (true, true) => {
            options.set_transport(Transport::Wss(tls()?));
        }
    }
    Ok(options)
}

/// A client and its event loop, with Nagle's algorithm off: orders and statuses are small
/// single packets, and rumqttc's default (Nagle on) delays them by up to 40 ms against a
/// peer's delayed ACKs.
pub fn async_client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(trust: &Trust) -> Result<ClientConfig, UrlError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = match trust {
        Trust::OwnListener => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
        Trust::System => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(UrlError::NoRoots);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => builder
            .with_root_certificates(roots_from_file(path)?)
            .with_no_client_auth(),
    };
    Ok(config)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, UrlError> {
    let err = |reason: String| UrlError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| err(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(roots)
}

/// Accepts any server certificate (signatures are still checked): the gateway's health
/// probe connecting to its own listener on loopback has nothing to authenticate.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, tls: bool) -> ServerUrl {
        ServerUrl {
            host: host.into(),
            port,
            tls,
            ws_path: None,
        }
    }

    #[test]
    fn websocket_urls() {
        let ws = |url: &str| {
            let s = parse_url(url).unwrap();
            (s.tls, s.ws_url().unwrap())
        };
        assert_eq!(ws("ws://h:8080/mqtt"), (false, "ws://h:8080/mqtt".into()));
        assert_eq!(ws("ws://h"), (false, "ws://h:80/mqtt".into()));
        assert_eq!(ws("wss://h/mqtt"), (true, "wss://h:443/mqtt".into()));
        assert_eq!(ws("wss://h:8443/a/b"), (true, "wss://h:8443/a/b".into()));
        assert_eq!(ws("ws://[::1]:9/mqtt"), (false, "ws://[::1]:9/mqtt".into()));
        assert!(parse_url("ws://h/mqtt?x=1").is_err());
        assert!(parse_url("wss:///mqtt").is_err());
        assert_eq!(parse_url("mqtt://h:1/").unwrap().ws_url(), None);
        assert!(client_options_with("wss://h/mqtt", "a", "a", "t", &Trust::OwnListener).is_ok());
        let o = client_options("ws://h:8080/mqtt", "a", "a", "t").unwrap();
        assert_eq!(o.broker_address().0, "ws://h:8080/mqtt");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            url("127.0.0.1", 1883, false)
        );
        assert_eq!(
            parse_url("broker.local").unwrap(),
            url("broker.local", 1883, false)
        );
        assert_eq!(parse_url("tcp://h:9").unwrap(), url("h", 9, false));
        assert_eq!(
            parse_url("mqtt://[::1]:1883").unwrap(),
            url("::1", 1883, false)
        );
        assert_eq!(parse_url("mqtts://h").unwrap(), url("h", 8883, true));
        assert_eq!(parse_url("mqtts://h:1").unwrap(), url("h", 1, true));
        assert!(parse_url("http://h:1").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[test]
    fn options_raise_packet_size() {
        let o = client_options("mqtt://127.0.0.1:1", "a", "a", "t").unwrap();
        assert_eq!(o.max_packet_size(), crate::MAX_PACKET_BYTES);
    }

    #[test]
    fn bad_ca_file_is_named() {
        let e = client_options_with(
            "mqtts://h:1",
            "a",
            "a",
            "t",
            &Trust::CaFile("/nonexistent/ca.pem".into()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(client_options_with("mqtts://h:1", "a", "a", "t", &Trust::OwnListener).is_ok());
    }
}
