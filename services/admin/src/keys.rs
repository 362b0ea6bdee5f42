//! `pexper-admin keys`: master key versions, what still depends on each, and re-wrapping
//! under the current one. The protocol an operator follows is in the README ("Rotating the
//! master key"); `status` is what tells them when a step is done.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Subcommand;
use pexper_platform::replica::{self, Replica};
use pexper_platform::{Config, keys, person};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{connect, keyring, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Which master versions are configured, what depends on each, and which can be removed.
    Status,
    /// Re-wrap every data key and lookup key under the current master version.
    Rotate {
        /// Development only: first add a freshly generated version to the dev key file.
        #[arg(long)]
        generate: bool,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

/// What depends on master key versions right now.
struct Usage {
    data_keys: Vec<(i32, i64)>,
    lookup_keys: Vec<(i32, i64)>,
    processes: Vec<Replica>,
}

impl Usage {
    async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        Ok(Self {
            data_keys: person::key_versions(pool).await?,
            lookup_keys: keys::lookup_key_versions(pool).await?,
            processes: replica::live(pool).await?,
        })
    }

    /// Data keys wrapped under any version but `current`.
    fn stale_data_keys(&self, current: i32) -> i64 {
        self.data_keys
            .iter()
            .filter(|(v, _)| *v != current)
            .map(|(_, n)| n)
            .sum()
    }

    /// For each version something depends on, what does: keys wrapped under it, and running
    /// processes that wrap new data keys under it.
    fn dependents(&self) -> BTreeMap<i32, Vec<String>> {
        let mut by_version: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (v, n) in &self.data_keys {
            by_version
                .entry(*v)
                .or_default()
                .push(format!("{n} data keys"));
        }
        for (v, n) in &self.lookup_keys {
            by_version
                .entry(*v)
                .or_default()
                .push(format!("{n} lookup keys"));
        }
        for p in &self.processes {
            by_version
                .entry(p.master_version)
                .or_default()
                .push(format!("process {} wraps new keys under it", p.id));
        }
        by_version
    }

    /// Configured versions other than `current` that nothing depends on.
    fn removable(&self, configured: &[i32], current: i32) -> Vec<i32> {
        let dependents = self.dependents();
        configured
            .iter()
            .copied()
            .filter(|v| *v != current && !dependents.contains_key(v))
            .collect()
    }
}

pub async fn run(json: bool, config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status => {
            let master = keys::load_master_keys(config)?;
            let pool = connect(config).await?;
            let usage = Usage::read(&pool).await?;
            let configured: Vec<i32> = master.versions().collect();
            let current = master.current_version();
            output::object(
                json,
                &json!({
                    "current_version": current,
                    "configured_versions": configured,
                    "data_keys_by_version": by_version(&usage.data_keys),
                    "lookup_keys_by_version": by_version(&usage.lookup_keys),
                    "data_keys_to_rotate": usage.stale_data_keys(current),
                    "processes": usage.processes,
                    "in_use": usage.dependents().into_iter().map(|(v, d)| (v.to_string(), json!(d))).collect::<serde_json::Map<_, _>>(),
                    "removable_versions": usage.removable(&configured, current),
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
            let pool = connect(config).await?;
            let keyring = keyring(config, &pool).await?;
            let current = keyring.current_version();
            let total = Usage::read(&pool).await?.stale_data_keys(current);
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
            keys::rewrap_lookup_keys(&pool, &keyring).await?;
            // A process still current on an old version keeps making data keys under it:
            // say so, or the operator would remove a version that is still being written.
            let behind: Vec<String> = Usage::read(&pool)
                .await?
                .processes
                .iter()
                .filter(|p| p.master_version != current)
                .map(|p| format!("{} (version {})", p.id, p.master_version))
                .collect();
            if !behind.is_empty() {
                eprintln!(
                    "warning: running processes still wrap new data keys under an old version: {}; \
                     restart them with version {current} first, then run `keys rotate` again",
                    behind.join(", ")
                );
            }
            output::object(
                json,
                &json!({"current_version": current, "rewrapped": done, "processes_behind": behind}),
            );
        }
    }
    Ok(())
}

fn by_version(counts: &[(i32, i64)]) -> Value {
    counts
        .iter()
        .map(|(v, n)| (v.to_string(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
