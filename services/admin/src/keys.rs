//! `pexper-admin keys`: master key versions, and re-wrapping data keys under the current one.

use std::io::Write;

use clap::Subcommand;
use pexper_platform::crypto::Keyring;
use pexper_platform::{Config, keys, person};
use serde_json::json;

use crate::{connect, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Which master versions are configured, and how many data keys each wraps.
    Status,
    /// Re-wrap every data key under the current master version (and re-index addresses).
    Rotate {
        /// Development only: first add a freshly generated version to the dev key file.
        #[arg(long)]
        generate: bool,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

/// Data keys wrapped under any version but `current`.
fn stale(counts: &[(i32, i64)], current: i32) -> i64 {
    counts
        .iter()
        .filter(|(v, _)| *v != current)
        .map(|(_, n)| n)
        .sum()
}

pub async fn run(json: bool, config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status => {
            let master = keys::load_master_keys(config)?;
            let pool = connect(config).await?;
            let counts = person::key_versions(&pool).await?;
            let configured: Vec<i32> = master.versions().collect();
            output::object(
                json,
                &json!({
                    "current_version": master.current_version(),
                    "configured_versions": configured,
                    "data_keys_by_version": counts.iter().map(|(v, n)| (v.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    "data_keys_to_rotate": stale(&counts, master.current_version()),
                }),
            );
        }
        Command::Rotate { generate, batch } => {
            if generate {
                let v = keys::add_dev_version(config)?;
                eprintln!(
                    "added master key version {v} to {}",
                    keys::dev_key_file(config).display()
                );
            }
            let master = keys::load_master_keys(config)?;
            let keyring = Keyring::new(&master);
            let pool = connect(config).await?;
            let total = stale(
                &person::key_versions(&pool).await?,
                master.current_version(),
            );
            let mut done = 0u64;
            loop {
                let n = person::rotate_batch(&pool, &keyring, batch.max(1)).await?;
                if n == 0 {
                    break;
                }
                done += n;
                eprint!("\rre-wrapped {done}/{total} data keys");
                std::io::stderr().flush().ok();
            }
            if done > 0 {
                eprintln!();
            }
            output::object(
                json,
                &json!({"current_version": master.current_version(), "rewrapped": done}),
            );
        }
    }
    Ok(())
}
