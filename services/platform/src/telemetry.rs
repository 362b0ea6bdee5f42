//! Logging. Structured `tracing` events, JSON in production; and the redaction that keeps
//! personal data out of them.
//!
//! The rule is structural where possible: request logs carry the matched route template, never
//! the URI (query strings hold tokens) or a header or body; the peer address is never recorded.
//! Where text from elsewhere must be logged (an error from an SMTP server or the database), it
//! goes through `redact` first.

use tracing_subscriber::EnvFilter;

use crate::address::EmailAddress;
use crate::config::Environment;
use crate::crypto::{Keyring, hex};

/// Dependencies' levels that no `RUST_LOG` lowers (see `init`).
const CAPPED: [&str; 6] = [
    "axum::serve=debug",
    "hyper=info",
    "hyper_util=info",
    "h2=info",
    "rustls=info",
    "reqwest=info",
];

/// Installs the global subscriber: JSON lines in production, compact text in development.
/// `RUST_LOG` overrides the level (default `info`).
pub fn init(env: Environment) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"))
        // async-stripe logs a warning for every event from another API version and an error
        // for every object its strict types cannot read; we read those objects leniently
        // ourselves (payments::stripe), so its opinions are noise.
        .add_directive("stripe_webhook=off".parse().expect("a valid directive"));
    // Whatever `RUST_LOG` asks, the libraries that log a peer's address, a request's head or
    // raw bytes at their finest levels stay above them: `RUST_LOG=trace` must not put an IP
    // address or a token in a log line (axum logs every accepted connection's peer at trace).
    let filter = CAPPED.iter().fold(filter, |f, d| {
        f.add_directive(d.parse().expect("a valid directive"))
    });
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

/// Removes secrets, addresses and IPs from text we did not write ourselves (the one scrubber,
/// shared with the crash intake and the desktop app).
pub use pexper_wire::scrub::redact;
