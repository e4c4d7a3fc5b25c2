//! Who a request is from when it comes through a reverse proxy we trust (`[http]
//! trusted_proxies`): the nearest address in `X-Forwarded-For` that is not itself a trusted
//! proxy. Throttles, the MQTT-over-WebSocket logins and logs then count the client, so one
//! client behind a shared proxy cannot lock everyone behind it out. From any other peer the
//! header is anyone's to write and is ignored.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client of a request from `peer`. Port 0 when it came from a forwarded address (the
/// client's own port is not forwarded).
pub fn client(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    // Proxies append, so the rightmost entries are the ones trusted proxies wrote; header
    // lines in order, as if joined with commas (RFC 9110).
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return SocketAddr::new(ip.to_canonical(), 0),
            // What a trusted proxy wrote is not an address: keep the proxy's.
            None => return peer,
        }
    }
    peer
}

/// `192.0.2.1`, `2001:db8::1`, or either with a port (`192.0.2.1:443`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str, forwarded: &[&str], trusted: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for line in forwarded {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client(peer.parse().unwrap(), &headers, &trusted)
            .ip()
            .to_string()
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let proxy = "127.0.0.1:40000";
        let lo = ["127.0.0.1/32"];
        // No proxies trusted, or the peer is not one: the header is ignored.
        assert_eq!(from(proxy, &["203.0.113.7"], &[]), "127.0.0.1");
        assert_eq!(
            from("198.51.100.1:1", &["203.0.113.7"], &lo),
            "198.51.100.1"
        );
        // From a trusted proxy: the address it appended.
        assert_eq!(from(proxy, &["203.0.113.7"], &lo), "203.0.113.7");
        // What the client wrote itself, left of it, is not believed.
        assert_eq!(from(proxy, &["10.9.9.9, 203.0.113.7"], &lo), "203.0.113.7");
        assert_eq!(
            from(proxy, &["10.9.9.9", "203.0.113.7"], &lo),
            "203.0.113.7"
        );
        // A chain of trusted proxies is skipped.
        let chain = ["127.0.0.1/32", "10.0.0.0/8"];
        assert_eq!(
            from(proxy, &["203.0.113.7, 10.0.0.2"], &chain),
            "203.0.113.7"
        );
        // IPv6, ports, and IPv4-mapped peers.
        assert_eq!(from(proxy, &["[2001:db8::1]:443"], &lo), "2001:db8::1");
        assert_eq!(from(proxy, &["203.0.113.7:5555"], &lo), "203.0.113.7");
        assert_eq!(
            from("[::ffff:127.0.0.1]:1", &["203.0.113.7"], &lo),
            "203.0.113.7"
        );
        // No header, or garbage where the proxy wrote: the proxy's own address.
        assert_eq!(from(proxy, &[], &lo), "127.0.0.1");
        assert_eq!(from(proxy, &["203.0.113.7, unknown"], &lo), "127.0.0.1");
        // Only trusted proxies in the header: the nearest one.
        assert_eq!(from(proxy, &["127.0.0.1"], &lo), "127.0.0.1");
    }
}
