//! The PROXY protocol header (`[proxy] proxy_protocol`, HAProxy's proxy-protocol.txt): the
//! first bytes the agent's proxy writes on each connection to the app, so that the app sees
//! the client's address instead of 127.0.0.1. Version 1 is a text line, version 2 a binary
//! block; both carry the client's address and the public address it connected to.
//!
//! Only the encoder lives here (a few lines, no crate needed); apps parse the header with
//! their server's own support (nginx `listen … proxy_protocol`, HAProxy `accept-proxy`,
//! Node's `proxy-protocol-js`, Go's `go-proxyproto`).

use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyProtocol;

/// The 12 bytes every version 2 header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY: the connection was relayed for a client.
const V2_PROXY: u8 = 0x21;
/// Version 2, command LOCAL: the proxy's own connection (a health check); no addresses.
const V2_LOCAL: u8 = 0x20;
/// Address family and transport: TCP over IPv4.
const V2_TCP4: u8 = 0x11;
/// TCP over IPv6.
const V2_TCP6: u8 = 0x21;
/// Unspecified (with LOCAL).
const V2_UNSPEC: u8 = 0x00;

/// The header for a connection from `client` to the public address `public`.
pub(crate) fn relayed(protocol: ProxyProtocol, client: SocketAddr, public: SocketAddr) -> Vec<u8> {
    let (client, public) = same_family(client, public);
    match protocol {
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                public.ip(),
                client.port(),
                public.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut addresses = Vec::with_capacity(36);
            let family = match (client.ip(), public.ip()) {
                (IpAddr::V4(c), IpAddr::V4(p)) => {
                    addresses.extend_from_slice(&c.octets());
                    addresses.extend_from_slice(&p.octets());
                    V2_TCP4
                }
                (c, p) => {
                    addresses.extend_from_slice(&v6(c).octets());
                    addresses.extend_from_slice(&v6(p).octets());
                    V2_TCP6
                }
            };
            addresses.extend_from_slice(&client.port().to_be_bytes());
            addresses.extend_from_slice(&public.port().to_be_bytes());
            v2(V2_PROXY, family, &addresses)
        }
    }
}

/// The header for a connection the agent makes itself (its HTTP health check on the
/// release's private port): v1 `UNKNOWN`, v2 `LOCAL`, which the spec says receivers accept
/// and use the real connection's addresses for.
pub(crate) fn local(protocol: ProxyProtocol) -> Vec<u8> {
    match protocol {
        ProxyProtocol::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyProtocol::V2 => v2(V2_LOCAL, V2_UNSPEC, &[]),
    }
}

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + addresses.len());
    out.extend_from_slice(V2_SIGNATURE);
    out.push(command);
    out.push(family);
    // At most 36 bytes of addresses: always fits.
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(addresses);
    out
}

/// Both addresses in one family, as the header needs: IPv4-mapped IPv6 addresses (a
/// dual-stack `[::]` listener's view of IPv4 clients) become IPv4; if the two still differ,
/// both are written as IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let plain = |s: SocketAddr| match s.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), s.port()),
            None => s,
        },
        IpAddr::V4(_) => s,
    };
    let (a, b) = (plain(a), plain(b));
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        let wide = |s: SocketAddr| SocketAddr::new(IpAddr::V6(v6(s.ip())), s.port());
        (wide(a), wide(b))
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_is_the_specs_text_line() {
        // proxy-protocol.txt 2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".
        assert_eq!(
            relayed(
                ProxyProtocol::V1,
                addr("192.168.0.1:56324"),
                addr("192.168.0.11:443")
            ),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            relayed(
                ProxyProtocol::V1,
                addr("[2001:db8::1]:56324"),
                addr("[2001:db8::2]:443")
            ),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
        );
        // Within the 107 bytes the spec allows a receiver to expect.
        let longest = relayed(
            ProxyProtocol::V1,
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        );
        assert_eq!(longest.len(), 104);
        assert_eq!(local(ProxyProtocol::V1), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_is_the_specs_binary_block() {
        let ipv4 = relayed(
            ProxyProtocol::V2,
            addr("192.168.0.1:56324"),
            addr("192.168.0.11:443"),
        );
        let mut expected = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A".to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        expected.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        expected.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]);
        assert_eq!(ipv4, expected);

        let ipv6 = relayed(
            ProxyProtocol::V2,
            addr("[2001:db8::1]:56324"),
            addr("[2001:db8::2]:443"),
        );
        assert_eq!(&ipv6[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(ipv6.len(), 16 + 36);
        assert_eq!(&ipv6[16..18], &[0x20, 0x01]);
        assert_eq!(ipv6[31], 1);
        assert_eq!(ipv6[47], 2);
        assert_eq!(&ipv6[48..], &[0xDC, 0x04, 0x01, 0xBB]);

        let mut local_v2 = V2_SIGNATURE.to_vec();
        local_v2.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(local(ProxyProtocol::V2), local_v2);
    }

    #[test]
    fn mapped_addresses_become_ipv4_and_mixed_ones_ipv6() {
        // A dual-stack [::] listener sees IPv4 clients as ::ffff:a.b.c.d.
        assert_eq!(
            relayed(
                ProxyProtocol::V1,
                addr("[::ffff:10.0.0.7]:5000"),
                addr("[::ffff:10.0.0.1]:3000")
            ),
            b"PROXY TCP4 10.0.0.7 10.0.0.1 5000 3000\r\n"
        );
        assert_eq!(
            relayed(
                ProxyProtocol::V1,
                addr("10.0.0.7:5000"),
                addr("[2001:db8::2]:3000")
            ),
            b"PROXY TCP6 ::ffff:10.0.0.7 2001:db8::2 5000 3000\r\n"
        );
    }
}
