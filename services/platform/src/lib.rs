//! The shared platform of the Pexper backend: configuration, Postgres (managed or external,
//! always TLS-capable), envelope encryption and the blind index, people, the job queue, mail,
//! the HTTP stack and the personal-data registry. Services build on it and on nothing of each
//! other's.
#![forbid(unsafe_code)]

pub mod address;
pub mod batch;
pub mod config;
pub mod core;
pub mod crypto;
pub mod data_map;
pub mod db;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod mail;
pub mod mailbox;
pub mod metrics;
pub mod outage;
pub mod person;
pub mod personal_data;
pub mod replica;
pub mod retention;
pub mod shutdown;
pub mod state;
pub mod suppression;
pub mod telemetry;
pub mod trusted_proxy;
mod types;

pub use config::Config;
pub use state::{Platform, Service};
