//! Who is on the other end of a request, for the failure throttles of the sign-in form, the admin
//! token and the device token endpoint: a wrong guess slows down the address that sent it, not
//! everyone (a throttle shared by all would let anybody lock the admin or a device out).
//!
//! The address is the TCP peer's, unless the peer is a trusted proxy (`TRUSTED_PROXIES`, by
//! default loopback only): then `X-Forwarded-For` is read from the right, skipping trusted hops,
//! and the first address that is not one is the client. Entries left of it were written by the
//! client and are not believed. IPv6 clients are grouped by their /64, the block one host usually
//! gets.

use std::net::{IpAddr, SocketAddr};

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::HeaderMap;
use ipnet::IpNet;

use crate::state::AppState;

/// The TCP peer of a connection; `crate::http::server` puts it in every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The throttle scope of the request's client ([`throttle_scope`] of [`client_ip`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientScope(pub String);

impl ClientScope {
    pub fn of(parts: &Parts, state: &AppState) -> Self {
        let peer = parts.extensions.get::<PeerAddr>().copied();
        ClientScope(throttle_scope(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

impl FromRequestParts<AppState> for ClientScope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientScope::of(parts, state))
    }
}

/// Whether the request came through a trusted proxy ([`from_trusted_proxy`]).
#[derive(Clone, Copy, Debug)]
pub struct ViaTrustedProxy(pub bool);

impl FromRequestParts<AppState> for ViaTrustedProxy {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ViaTrustedProxy(from_trusted_proxy(
            parts,
            &state.config.trusted_proxies,
        )))
    }
}

/// The client's address as this request shows it (see the module docs); `None` without a peer
/// (a request that did not come through `crate::http::server`).
pub fn client_ip(peer: Option<PeerAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut client = canonical(peer?.0.ip());
    if !is_trusted(client, trusted) {
        if headers.contains_key("x-forwarded-for") {
            warn_untrusted_proxy_once(client);
        }
        return Some(client);
    }
    // Every X-Forwarded-For header, in order: a proxy may add its own line instead of appending.
    // Split as bytes: a line whose client-written part is not ASCII still ends with the hops
    // the proxies appended (a line dropped whole made the client look like the proxy).
    let hops: Vec<Option<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|hop| std::str::from_utf8(hop).ok().map(str::trim))
        .collect();
    for hop in hops.iter().rev() {
        // A hop that is not an address ends the chain: the trusted proxy right of it is the
        // nearest thing to the client that can be named.
        let Some(ip) = hop.and_then(parse_hop) else {
            break;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    Some(client)
}

/// Whether the request's TCP peer is a trusted proxy (`TRUSTED_PROXIES`), whose forwarded headers
/// are believed.
pub fn from_trusted_proxy(parts: &Parts, trusted: &[IpNet]) -> bool {
    parts
        .extensions
        .get::<PeerAddr>()
        .is_some_and(|peer| is_trusted(canonical(peer.0.ip()), trusted))
}

/// Says once per process that a peer sent `X-Forwarded-For` without being a trusted proxy: if it
/// is the deployment's reverse proxy (on another host, or a container network), every client has
/// its address to the throttles and sign-in limits, and one client's failures slow down all.
fn warn_untrusted_proxy_once(peer: IpAddr) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            peer = %peer,
            "x_forwarded_for_from_untrusted_peer: if this is your reverse proxy, add its address \
             to TRUSTED_PROXIES, or every client counts as the proxy for the sign-in and token \
             throttles"
        );
    }
}

/// The throttle's name for a client: its address, an IPv6 one cut to its /64; `unknown` without
/// one.
pub fn throttle_scope(client: Option<IpAddr>) -> String {
    match client {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let net = ipnet::Ipv6Net::new(v6, 64).map(|n| n.trunc());
            net.map_or_else(|_| v6.to_string(), |n| n.to_string())
        }
        None => "unknown".into(),
    }
}

/// The group of a [`throttle_scope`] for the admin token's throttle
/// (`crate::credentials::throttle`): an IPv4 address's /24, an IPv6 /64's /48, the block one site
/// usually holds; anything else stands for itself.
pub fn throttle_group(scope: &str) -> String {
    let net = match scope.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match scope.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return scope.to_string(),
        },
    };
    let wider = match net {
        IpNet::V4(v4) => ipnet::Ipv4Net::new(v4.addr(), 24).map(|n| IpNet::V4(n.trunc())),
        IpNet::V6(v6) => ipnet::Ipv6Net::new(v6.addr(), 48).map(|n| IpNet::V6(n.trunc())),
    };
    wider.map_or_else(|_| scope.to_string(), |n| n.to_string())
}

pub(crate) fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets (`1.2.3.4:5678`,
/// `[::1]:80`, `[::1]`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let bracketed = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    bracketed
        .unwrap_or(hop)
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_trusted_proxies as parse_trusted;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> Option<PeerAddr> {
        Some(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 40000)))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn throttle_groups_are_a_v4_24_and_a_v6_48() {
        let scope = |a: &str| throttle_scope(ip(a));
        assert_eq!(throttle_group(&scope("198.51.100.77")), "198.51.100.0/24");
        assert_eq!(
            throttle_group(&scope("2001:db8:1:2:3::9")),
            "2001:db8:1::/48"
        );
        assert_eq!(throttle_group("unknown"), "unknown");
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = parse_trusted("127.0.0.1/8").unwrap();
        let h = headers(&["198.51.100.1"]);
        assert_eq!(
            client_ip(peer("203.0.113.9"), &h, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let trusted = parse_trusted("127.0.0.1, 10.0.0.0/8").unwrap();
        // The client forged the leftmost entry; the proxies appended the rest.
        let h = headers(&["198.51.100.1, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &trusted),
            ip("203.0.113.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(peer("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
        // A garbled hop ends the chain at the nearest trusted proxy.
        let h = headers(&["203.0.113.7, garbage, 10.1.2.3"]);
        assert_eq!(client_ip(peer("127.0.0.1"), &h, &trusted), ip("10.1.2.3"));
        // Ports and IPv4-mapped peers.
        let h = headers(&["203.0.113.7:5555"]);
        assert_eq!(
            client_ip(peer("::ffff:127.0.0.1"), &h, &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(client_ip(None, &h, &trusted), None);
        let h = headers(&["[2001:db8::7]", "[2001:db8::8]:443"]);
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &trusted),
            ip("2001:db8::8")
        );
        let h = headers(&["[2001:db8::7]"]);
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &trusted),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn a_line_the_client_began_with_other_bytes_still_names_the_hops_appended_to_it() {
        let trusted = parse_trusted("127.0.0.1").unwrap();
        let mut h = HeaderMap::new();
        let line = http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").unwrap();
        h.append("x-forwarded-for", line);
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &trusted),
            ip("203.0.113.7")
        );
        // A hop that is not an address still ends the chain, at the trusted hop right of it.
        let trusted = parse_trusted("127.0.0.0/8").unwrap();
        let mut h = HeaderMap::new();
        let line = http::HeaderValue::from_bytes(b"203.0.113.7, \xff, 127.0.0.2").unwrap();
        h.append("x-forwarded-for", line);
        assert_eq!(client_ip(peer("127.0.0.1"), &h, &trusted), ip("127.0.0.2"));
    }

    #[test]
    fn without_trusted_proxies_forwarded_headers_are_ignored() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(client_ip(peer("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        assert_eq!(
            throttle_scope(ip("2001:db8:1:2:aaaa::1")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            throttle_scope(ip("2001:db8:1:2:bbbb::9")),
            throttle_scope(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            throttle_scope(ip("2001:db8:1:3::1")),
            throttle_scope(ip("2001:db8:1:2::1"))
        );
        assert_eq!(throttle_scope(ip("203.0.113.7")), "203.0.113.7");
        assert_eq!(throttle_scope(None), "unknown");
    }
}
