//! Where a browser says a state-changing request comes from.

use axum::http::{HeaderMap, header};

/// CORS does not stop a cross-site *form* post (it needs no preflight), so we check where a
/// browser says the request comes from: `Origin` must be allowed when present; without it,
/// `Sec-Fetch-Site: cross-site` is refused. Clients that are not browsers send neither.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        return allowed.iter().any(|a| a.trim_end_matches('/') == origin);
    }
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|site| site != "cross-site")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn only_allowed_origins_and_no_cross_site_browsers_may_post() {
        let allowed = vec!["https://pexper.com".to_owned()];
        assert!(origin_allowed(
            &headers(&[("origin", "https://pexper.com")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://evil.example")]),
            &allowed
        ));
        assert!(!origin_allowed(&headers(&[("origin", "null")]), &allowed));
        assert!(!origin_allowed(
            &headers(&[("sec-fetch-site", "cross-site")]),
            &allowed
        ));
        assert!(origin_allowed(
            &headers(&[("sec-fetch-site", "same-site")]),
            &allowed
        ));
        assert!(
            origin_allowed(&headers(&[]), &allowed),
            "curl and servers send neither"
        );
    }
}
