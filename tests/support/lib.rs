//! The test harness, by concern: `database` (the run's TLS Postgres cluster and a fresh
//! database per test), `app` (`spawn_app`: the whole backend on port 0), `process` (the real
//! binaries as child processes), `smtp` (a real SMTP server on loopback), `dkim` (an
//! independent DKIM verifier), `browser` (headless Chromium over WebDriver), `stripe` (events
//! signed as Stripe signs them), `canary` (personal data to search for), `bench`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_debug_implementations)]
// Stripe's objects are big JSON literals (support/stripe.rs).
#![recursion_limit = "256"]

mod app;
mod bench;
pub mod browser;
pub mod canary;
mod database;
pub mod dkim;
pub mod dovecot;
pub mod metrics;
mod process;
pub mod smtp;
pub mod stripe;
pub mod tempdir;

use std::sync::OnceLock;
use std::time::Duration;

pub use app::{AppOptions, TestApp, spawn_app, spawn_app_with, test_vars};
pub use bench::{
    DurableCluster, bench_args, bench_exit, benchmarking, block_on, builds, check, dkim_signing,
    dkim_vars, goal, openssl_signing_ceiling, peak_rss_mb, production_vars, signing_ceiling,
};
pub use database::{Dump, TableLock, TestDatabase, cluster};
pub use process::{Replicas, ServerProcess, admin, binary, output_within, stderr, stdout};
pub use smtp::SmtpServer;

/// Installs ring as the rustls provider once per test process.
/// A loopback port free at the time of asking (for a server the test starts with its port
/// in its configuration: Dovecot, Prometheus, the metrics listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Logs go to the test's captured output, shown when it fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits spawned tasks, in order: the answers of requests sent all at once.
pub async fn join_all<T>(tasks: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Follows an account's verification link as its page does: the form posts the password
/// chosen there, from the server's own origin `base`.
pub async fn choose_password(
    client: &reqwest::Client,
    link: &str,
    base: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(link)
        .header("origin", base)
        .form(&[("password", password)])
        .send()
        .await
        .unwrap()
}
