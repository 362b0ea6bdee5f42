//! Logging. Structured `tracing` events, JSON in production; and the redaction that keeps
//! personal data out of them.
//!
//! The rule is structural where possible: request logs carry the matched route template, never
//! the URI (query strings hold tokens) or a header or body; the peer address is never recorded.
//! Where text from elsewhere must be logged (an error from an SMTP server or the database), it
//! goes through `redact` first.

use std::sync::LazyLock;

use regex::Regex;
use tracing_subscriber::EnvFilter;

use crate::config::Environment;
use crate::crypto::{Keyring, hex};
use crate::email::EmailAddress;

/// Installs the global subscriber: JSON lines in production, compact text in development.
/// `RUST_LOG` overrides the level (default `info`).
pub fn init(env: Environment) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"))
        // async-stripe logs a warning for every event from another API version and an error
        // for every object its strict types cannot read; we read those objects leniently
        // ourselves (payments::stripe), so its opinions are noise.
        .add_directive("stripe_webhook=off".parse().expect("a valid directive"));
    // Colour codes only for a person at a terminal: in a file, a pipe or journald they are
    // noise that breaks grep and log parsers.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match env {
        Environment::Production => builder.json().flatten_event(true).try_init(),
        Environment::Development => builder.compact().try_init(),
    };
}

/// A log-safe stand-in for an address: the first 8 hex digits of its blind index. Enough to
/// correlate log lines about one person, useless for recovering the address.
pub fn email_tag(keyring: &Keyring, email: &EmailAddress) -> String {
    let index = keyring.blind_index(crate::person::EMAIL_INDEX, email.as_str());
    hex(&index[..4])
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[^\s<>()\[\],;:@]+@[^\s<>()\[\],;:@]+\.[^\s<>()\[\],;:@]+").expect("valid regex")
});
static IPV4: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d{1,3}(?:\.\d{1,3}){3}\b").expect("valid regex"));
/// Anything with two colons among hex digits is a candidate; `Ipv6Addr` decides.
static IPV6_CANDIDATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)[0-9a-f:]*:[0-9a-f]*:[0-9a-f:.]*").expect("valid regex"));
/// `postgres://user:password@host` and the like: the credentials go.
static URL_CREDENTIALS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@").expect("valid regex"));

/// Removes addresses, IPs and URL credentials from text we did not write ourselves.
pub fn redact(text: &str) -> String {
    let text = URL_CREDENTIALS.replace_all(text, "${1}[redacted]@");
    let text = EMAIL.replace_all(&text, "[email]");
    let text = IPV4.replace_all(&text, "[ip]");
    IPV6_CANDIDATE
        .replace_all(&text, |c: &regex::Captures<'_>| {
            let candidate = &c[0];
            if candidate.parse::<std::net::Ipv6Addr>().is_ok() {
                "[ip]".to_owned()
            } else {
                candidate.to_owned()
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_addresses_ips_and_credentials() {
        let smtp = "550 5.1.1 <alice.smith@example.com>: Recipient address rejected from 203.0.113.9 and 2001:db8::1";
        let out = redact(smtp);
        assert!(!out.contains("alice"), "{out}");
        assert!(!out.contains("203.0.113.9"), "{out}");
        assert!(!out.contains("2001:db8"), "{out}");
        assert!(out.contains("Recipient address rejected"), "{out}");
        let url = redact("connect to postgres://pexper:hunter2@db.internal/pexper failed");
        assert!(!url.contains("hunter2"), "{url}");
        assert!(url.contains("db.internal"), "{url}");
    }

    #[test]
    fn redact_leaves_ordinary_messages_alone() {
        let s = "job failed: connection refused (os error 111) after 3 attempts";
        assert_eq!(redact(s), s);
    }
}
