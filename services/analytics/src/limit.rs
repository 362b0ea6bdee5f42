//! Global rate limits for the collection endpoints, beside the platform's per-client one
//! (keyed by an address this service never sees): token buckets keyed by what the request
//! names (the crash project), or one for everyone (usage events); and the 429 answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pexper_platform::http::ApiError;

/// "Come back later": 429 with `Retry-After` (whole seconds, at least 1), and for Sentry SDKs
/// `X-Sentry-Rate-Limits`, which they honour per category.
pub fn retry_later(
    code: &'static str,
    message: &'static str,
    wait: Duration,
    sentry: bool,
) -> Response {
    let seconds = wait.as_secs().max(1);
    let mut res = ApiError::client(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    if sentry && let Ok(v) = HeaderValue::from_str(&format!("{seconds}::organization")) {
        res.headers_mut().insert("x-sentry-rate-limits", v);
    }
    res
}

/// "Too much is arriving at once": 429, come back in a second.
pub fn busy(sentry: bool) -> Response {
    retry_later(
        "busy",
        "too much is arriving at once; retry later",
        Duration::from_secs(1),
        sentry,
    )
}

/// A failure to store on the ingestion pool: out of connections means busy (429, come back),
/// anything else is ours (a 503 when the database cannot be reached, else 500).
pub fn db_error(e: anyhow::Error, sentry: bool) -> Response {
    if !pexper_platform::outage::pool_timed_out(&e) {
        return ApiError::Internal(e).into_response();
    }
    let mut res = busy(sentry);
    res.extensions_mut()
        .insert(pexper_platform::metrics::PoolTimedOut("ingest"));
    res
}

#[derive(Debug)]
pub struct Limiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq> Limiter<K> {
    /// `rate` tokens a second, up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is free.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_when_to_come_back() {
        let limiter = Limiter::new(1.0, 3.0);
        for _ in 0..3 {
            assert!(limiter.check(1).is_ok());
        }
        let wait = limiter.check(1).expect_err("empty");
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(limiter.check(2).is_ok(), "keys have their own buckets");
    }
}
