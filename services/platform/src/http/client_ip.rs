//! The client address the rate limiter keys on. It lives only in the limiter's memory: it is
//! never logged, stored or handed to a handler.
//!
//! `X-Forwarded-For` is believed only when the peer is a configured trusted proxy
//! (`PEXPER_TRUSTED_PROXY`), and then only its last entry — the one that proxy appended.
//! Anyone else could write any address there and dodge the limit.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::Request;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted_proxies: Arc<Vec<IpAddr>>,
}

impl ClientIp {
    pub fn new(trusted_proxies: Vec<IpAddr>) -> Self {
        Self {
            trusted_proxies: Arc::new(trusted_proxies),
        }
    }

    pub fn resolve<T>(&self, req: &Request<T>) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())?;
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back();
        Some(forwarded.unwrap_or(peer))
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        self.resolve(req).ok_or(GovernorError::UnableToExtractKey)
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
        assert_eq!(
            none.resolve(&request("198.51.100.7", Some("1.2.3.4"))),
            Some(ip("198.51.100.7"))
        );
        let proxy = ClientIp::new(vec![ip("10.0.0.1")]);
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
}
