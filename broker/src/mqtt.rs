//! `rumqttc` options that every Orcastrate client uses.

use std::time::Duration;

use rumqttc::MqttOptions;

/// Keep-alive of our clients: short enough that a dead agent goes `offline` within a minute.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// A broker URL that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MQTT server URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: &'static str,
}

/// Host and port of an `mqtt://host:port` URL (a bare `host:port` is accepted too).
pub fn parse_url(url: &str) -> Result<(String, u16), UrlError> {
    let err = |reason| UrlError {
        url: url.to_owned(),
        reason,
    };
    let rest = if let Some(rest) = url.strip_prefix("mqtt://").or(url.strip_prefix("tcp://")) {
        rest
    } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err(err(
            "TLS URLs are not supported by this build yet: use mqtt:// (behind a TLS tunnel if needed)",
        ));
    } else if url.contains("://") {
        return Err(err("use mqtt://host:port"));
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => (
            host,
            port.parse::<u16>()
                .map_err(|_| err("the port must be a number from 1 to 65535"))?,
        ),
        None if !rest.is_empty() => (rest, 1883),
        _ => return Err(err("use mqtt://host:port")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// Options for one of our clients: credentials, 1 MiB packets both ways, our keep-alive.
pub fn client_options(
    url: &str,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<MqttOptions, UrlError> {
    let (host, port) = parse_url(url)?;
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_credentials(username, password)
        .set_max_packet_size(crate::MAX_PACKET_BYTES, crate::MAX_PACKET_BYTES)
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true);
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(
            parse_url("broker.local").unwrap(),
            ("broker.local".into(), 1883)
        );
        assert_eq!(parse_url("tcp://h:9").unwrap(), ("h".into(), 9));
        assert_eq!(
            parse_url("mqtt://[::1]:1883").unwrap(),
            ("::1".into(), 1883)
        );
        assert!(parse_url("http://h:1").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[test]
    fn options_raise_packet_size() {
        let o = client_options("mqtt://127.0.0.1:1", "a", "a", "t").unwrap();
        assert_eq!(o.max_packet_size(), crate::MAX_PACKET_BYTES);
    }
}
