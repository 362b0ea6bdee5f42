//! pexper-desktop: the minimal local-first client. Workflows, settings and provider keys live
//! on the device; AI traffic goes straight from the device to the provider (or stays on it,
//! for local models); our backend hears only what the person allows — anonymous usage events
//! and crash reports — and nothing before they choose.
//!
//! The core is here, usable without a window: `store` (atomic files), `secrets` (keys behind
//! a trait), `egress` (the only place that opens a connection, and its network log),
//! `providers`, `telemetry` (the gate and the outbox), `crash` (the panic hook), `license`
//! (offline verification), and `cli` (the scriptable surface).
#![forbid(unsafe_code)]

pub mod cli;
pub mod crash;
pub mod egress;
pub mod license;
pub mod providers;
pub mod secrets;
pub mod store;
pub mod telemetry;
