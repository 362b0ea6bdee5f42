//! Every request the client makes leaves through here, and nowhere else (a test scans the
//! source for HTTP clients outside this file). Each one is written to the network log the
//! person can read — allowed or blocked, with its purpose, method, host and path, never its
//! headers, query or body. The Offline switch blocks everything; a provider's key is attached
//! only for that provider's own host; a local provider must be on loopback.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::provider::Provider;

/// Why a request is made: shown in the network log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Telemetry,
    CrashReport,
    License,
    Schema,
    Provider(Provider),
}

#[derive(Debug)]
pub struct Request {
    pub purpose: Purpose,
    pub method: &'static str,
    pub url: String,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    /// The provider key and the header it goes in (`Authorization: Bearer …`, `x-api-key`, …).
    pub key: Option<(&'static str, SecretString)>,
    /// Extra non-secret headers (e.g. `anthropic-version`).
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("blocked: {0}")]
    Blocked(&'static str),
    #[error("{0}")]
    Failed(String),
}

/// One line of the network log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub at: i64,
    pub purpose: Purpose,
    pub method: String,
    pub host: String,
    pub path: String,
    /// `sent` or `blocked: why`.
    pub outcome: String,
    pub status: Option<u16>,
}

pub struct Egress {
    offline: bool,
    log: PathBuf,
    agent: ureq::Agent,
}

fn host_and_path(url: &str) -> Option<(String, String, u16, bool)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split(['?', '#']).next().unwrap_or("/").to_owned();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)
        }
        _ => (
            authority.to_owned(),
            if scheme == "https" { 443 } else { 80 },
        ),
    };
    Some((host.to_ascii_lowercase(), path, port, scheme == "https"))
}

pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("offline", &self.offline)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Egress {
    pub fn new(log: PathBuf, offline: bool) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            // Never follow a redirect: it could take a key or a report somewhere else.
            .max_redirects(0)
            // Never a proxy from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY): it would
            // see a local model's prompts while the network log says 127.0.0.1. A proxy, if
            // ever supported, is an explicit setting shown in the log, never for loopback.
            .proxy(None)
            .build()
            .into();
        Self {
            offline,
            log,
            agent,
        }
    }

    pub fn offline(&self) -> bool {
        self.offline
    }

    fn record(&self, entry: &LogEntry) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            && let Ok(line) = serde_json::to_string(entry)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    pub fn log(&self) -> Vec<LogEntry> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The rules every request passes, before any socket is opened.
    fn check(&self, request: &Request, host: &str, https: bool) -> Result<(), EgressError> {
        if self.offline {
            return Err(EgressError::Blocked("offline"));
        }
        if let Purpose::Provider(p) = request.purpose {
            if p.is_local() && !is_loopback(host) {
                return Err(EgressError::Blocked("a local model must be on this device"));
            }
            if request.key.is_some() && p.host() != Some(host) {
                return Err(EgressError::Blocked(
                    "a key goes only to its provider's host",
                ));
            }
            if !p.is_local() && !https {
                return Err(EgressError::Blocked("cloud providers only over HTTPS"));
            }
        } else if request.key.is_some() {
            return Err(EgressError::Blocked("provider keys never go to Pexper"));
        } else if !https && !is_loopback(host) {
            return Err(EgressError::Blocked("Pexper's server only over HTTPS"));
        }
        Ok(())
    }

    pub fn send(&self, request: Request) -> Result<Response, EgressError> {
        let Some((host, path, _port, https)) = host_and_path(&request.url) else {
            return Err(EgressError::Failed("not an http(s) URL".into()));
        };
        let mut entry = LogEntry {
            at: time::OffsetDateTime::now_utc().unix_timestamp(),
            purpose: request.purpose,
            method: request.method.to_owned(),
            host: host.clone(),
            path,
            outcome: "sent".into(),
            status: None,
        };
        if let Err(e) = self.check(&request, &host, https) {
            entry.outcome = e.to_string();
            self.record(&entry);
            return Err(e);
        }
        let mut builder = ureq::http::Request::builder()
            .method(request.method)
            .uri(&request.url);
        if let Some(ct) = request.content_type {
            builder = builder.header("content-type", ct);
        }
        for (k, v) in &request.headers {
            builder = builder.header(*k, v);
        }
        if let Some((header, key)) = &request.key {
            builder = builder.header(*header, key.expose_secret());
        }
        let http = builder
            .body(request.body)
            .map_err(|e| EgressError::Failed(e.to_string()))?;
        let result = self.agent.run(http);
        match result {
            Ok(mut res) => {
                entry.status = Some(res.status().as_u16());
                self.record(&entry);
                let body = res
                    .body_mut()
                    .with_config()
                    .limit(16 * 1024 * 1024)
                    .read_to_vec()
                    .map_err(|e| EgressError::Failed(e.to_string()))?;
                Ok(Response {
                    status: entry.status.unwrap_or(0),
                    body,
                })
            }
            Err(e) => {
                entry.outcome = "failed".into();
                self.record(&entry);
                Err(EgressError::Failed(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path_without_the_query() {
        assert_eq!(
            host_and_path("https://api.openai.com/v1/chat/completions?x=1"),
            Some((
                "api.openai.com".into(),
                "/v1/chat/completions".into(),
                443,
                true
            ))
        );
        assert_eq!(
            host_and_path("http://127.0.0.1:11434/v1/chat/completions"),
            Some((
                "127.0.0.1".into(),
                "/v1/chat/completions".into(),
                11434,
                false
            ))
        );
        assert_eq!(
            host_and_path("http://[::1]:1234/x").map(|h| h.0),
            Some("::1".into())
        );
        assert!(is_loopback("::1") && is_loopback("127.0.0.1") && !is_loopback("10.0.0.1"));
    }
}
