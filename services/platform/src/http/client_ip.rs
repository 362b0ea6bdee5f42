//! The client address the rate limiter keys on. It lives only in the limiter's memory: it is
//! never logged, stored or handed to a handler.
//!
//! `X-Forwarded-For` is believed only when the peer is a configured trusted proxy
//! (`PEXPER_TRUSTED_PROXY`: addresses, or networks such as a Kubernetes pod range), and then
//! only its last entry — the one that proxy appended.
//! Anyone else could write any address there and dodge the limit.
//!
//! An IPv6 client is keyed by its /64: one subscriber line or host gets a whole /64 and can
//! pick a fresh address for every request. An IPv4 client is keyed by its address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::Request;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

use crate::trusted_proxy::TrustedProxy;

#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted_proxies: Arc<Vec<TrustedProxy>>,
}

impl ClientIp {
    pub fn new(trusted_proxies: Vec<TrustedProxy>) -> Self {
        Self {
            trusted_proxies: Arc::new(trusted_proxies),
        }
    }

    /// The client's address: the peer, or the entry a trusted proxy appended.
    pub fn resolve<T>(&self, req: &Request<T>) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
        if !self.trusted_proxies.iter().any(|p| p.contains(peer)) {
            return Some(peer);
        }
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(forwarded_address);
        Some(forwarded.unwrap_or(peer))
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, and with a port as some proxies
/// write them, `1.2.3.4:5678` or `[2001:db8::1]:443` (or bracketed without a port).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry)
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
}

/// What the limiter counts as one client: an IPv4 address, or an IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        self.resolve(req)
            .map(client_key)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, xff: Option<&str>) -> Request<()> {
        let mut req = Request::builder();
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        let mut req = req.body(()).expect("request");
        let addr: SocketAddr = format!("{peer}:1234").parse().expect("addr");
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let none = ClientIp::new(vec![]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let proxy = |s: &str| s.parse::<TrustedProxy>().expect("proxy");
        assert_eq!(
            none.resolve(&request("198.51.100.7", Some("1.2.3.4"))),
            Some(ip("198.51.100.7"))
        );
        let proxy = ClientIp::new(vec![proxy("10.0.0.1")]);
        assert_eq!(
            proxy.resolve(&request("10.0.0.1", Some("1.2.3.4, 203.0.113.5"))),
            Some(ip("203.0.113.5")),
            "the entry the proxy appended, not one the client wrote"
        );
        assert_eq!(
            proxy.resolve(&request("10.0.0.1", None)),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            proxy.resolve(&request("10.0.0.2", Some("1.2.3.4"))),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn a_trusted_network_trusts_exactly_its_addresses() {
        let proxy = |s: &str| s.parse::<TrustedProxy>().expect("proxy");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let pods = proxy("10.42.0.0/16");
        assert!(pods.contains(ip("10.42.0.0")) && pods.contains(ip("10.42.255.255")));
        assert!(!pods.contains(ip("10.43.0.0")) && !pods.contains(ip("10.41.255.255")));
        assert!(pods.contains(ip("::ffff:10.42.1.1")), "an IPv4-mapped peer");
        assert!(!pods.contains(ip("fd00::1")));
        let v6 = proxy("fd00:10::/64");
        assert!(v6.contains(ip("fd00:10::ffff")) && !v6.contains(ip("fd00:11::1")));
        assert!(proxy("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            proxy("10.0.0.1").contains(ip("10.0.0.1"))
                && !proxy("10.0.0.1").contains(ip("10.0.0.2"))
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/",
            "example.com",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad}");
        }
        let client = ClientIp::new(vec![pods]);
        assert_eq!(
            client.resolve(&request("10.42.7.9", Some("203.0.113.5"))),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client.resolve(&request("10.43.7.9", Some("203.0.113.5"))),
            Some(ip("10.43.7.9"))
        );
    }

    #[test]
    fn forwarded_entries_with_ports_and_brackets_parse() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let proxy = ClientIp::new(vec!["10.0.0.1".parse().expect("proxy")]);
        for (entry, expected) in [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            (" 198.51.100.9 ", "198.51.100.9"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
        ] {
            let header = format!("203.0.113.1, {entry}");
            assert_eq!(
                proxy.resolve(&request("10.0.0.1", Some(&header))),
                Some(ip(expected)),
                "{entry}"
            );
        }
        assert_eq!(
            proxy.resolve(&request("10.0.0.1", Some("1.2.3.4, unknown"))),
            Some(ip("10.0.0.1")),
            "an unreadable last entry is not replaced by one the client wrote"
        );
    }

    #[test]
    fn ipv6_clients_are_one_client_per_64_and_ipv4_clients_per_address() {
        let key = |s: &str| {
            ClientIp::new(vec![])
                .extract(&request_v6_or_v4(s))
                .expect("key")
        };
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    fn request_v6_or_v4(peer: &str) -> Request<()> {
        let mut req = Request::builder().body(()).expect("request");
        let ip: IpAddr = peer.parse().expect("ip");
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 1234)));
        req
    }
}
