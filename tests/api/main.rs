//! The integration tests: one binary (each extra one would link the whole server again), a
//! module per area. Every test is black-box where it can be: HTTP, the CLI and the real
//! binaries, against a real TLS Postgres and a real SMTP server (`pexper_tests`, in
//! `tests/support/`).
#![allow(clippy::unwrap_used)]

mod accessibility;
mod accounts;
mod analytics;
mod architecture;
mod completeness;
mod contract;
mod deploy;
mod desktop;
mod faults;
mod http;
mod inbox;
mod kubernetes;
mod mail;
mod metrics;
mod payments;
mod privacy;
mod product_email;
mod queue;
mod replicas;
mod retention;
mod storage;
mod support;
mod waitlist;
