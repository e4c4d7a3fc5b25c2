//! HTTPS for the gateway's HTTP listener: the rustls (ring) acceptor that
//! [`crate::listener`] runs over each accepted connection, under the same limits as plain
//! HTTP.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Builds the TLS acceptor from PEM files (certificate chain, private key).
///
/// # Errors
///
/// When a file cannot be read or holds no usable certificate or key; the message names it.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("cannot read [http] tls_cert {}", cert.display()))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "[http] tls_cert {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!("[http] tls_cert {} holds no certificate", cert.display());
    }
    let key_pem = std::fs::read(key)
        .with_context(|| format!("cannot read [http] tls_key {}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .with_context(|| format!("[http] tls_key {} holds no PEM private key", key.display()))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .context("[http] tls_cert and tls_key do not make a usable pair")?;
    let mut config = config;
    // HTTP/1.1 only: the listener serves no HTTP/2 (see `crate::listener`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
