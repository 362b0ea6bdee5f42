//! `pexper-admin db` and `migrate`: the managed local Postgres, the schema, backups that
//! respect erasure (`pexper_platform::db::backup`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pexper_platform::db::backup::{self, JournalEntry};
use pexper_platform::db::managed::ManagedPostgres;
use pexper_platform::{Config, db, keys};
use serde_json::json;

use crate::{connect, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the managed Postgres if it is not running, and say where it listens.
    Start,
    /// Stop the managed Postgres.
    Stop,
    /// Write a backup of the database (managed or DATABASE_URL) to FILE (pg_dump, mode 0600),
    /// sealed under a key wrapped by the master key.
    Backup { file: PathBuf },
    /// Replace the database with the backup in FILE, then erase again everyone erased since
    /// it was taken. Stop every pexper-server first.
    Restore {
        file: PathBuf,
        /// An erasure journal exported with `db journal --json`, for when the live database
        /// (and the journal in it) is lost. May be given several times.
        #[arg(long)]
        journal: Vec<PathBuf>,
        /// FILE is a plain pg_dump, as backups were before they were sealed. Without this, a
        /// file that is not a sealed backup is refused: anyone who can swap a backup for a
        /// plain dump of their making could otherwise have it restored unchecked.
        #[arg(long)]
        unsealed: bool,
    },
    /// The erasure journal (hashes of erased people's ids, and times): export it with
    /// `--json` to keep a copy apart from the backups.
    Journal,
    /// Erase again everyone in the journal (and in exported copies): after a point-in-time
    /// recovery made by other means, e.g. CloudNativePG's.
    Replay {
        /// An erasure journal exported with `db journal --json`. May be given several times.
        #[arg(long)]
        journal: Vec<PathBuf>,
    },
}

pub async fn migrate(json: bool, config: &Config) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    db::migrate_unless_restoring(&pool).await?;
    output::object(json, &json!({"migrated": true}));
    Ok(())
}

pub async fn run(json: bool, config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Start => {
            let managed = db::start_managed(managed_only(config)?).await?;
            output::object(
                json,
                &json!({"running": true, "port": managed.port(), "directory": managed_root(config).display().to_string()}),
            );
        }
        Command::Stop => {
            let root = managed_root(managed_only(config)?);
            let pg_bin = config.pg_bin.clone();
            let was_running = tokio::task::spawn_blocking(move || {
                ManagedPostgres::stop(&root, pg_bin.as_deref())
            })
            .await??;
            output::object(json, &json!({"stopped": was_running}));
        }
        Command::Backup { file } => {
            let master = keys::load_master_keys(config)?;
            let bytes = backup::backup(config, &file, &master).await?;
            output::object(
                json,
                &json!({"file": file.display().to_string(), "bytes": bytes, "sealed": true}),
            );
        }
        Command::Restore {
            file,
            journal,
            unsealed,
        } => {
            let exported = read_journals(&journal)?;
            let master = keys::load_master_keys(config)?;
            let registry = pexper_server::personal_data(config);
            let form = if unsealed {
                backup::Form::Plain
            } else {
                backup::Form::Sealed
            };
            let restored =
                backup::restore(config, &file, form, exported, &master, &registry).await?;
            output::object(json, &serde_json::to_value(restored)?);
        }
        Command::Replay { journal } => {
            let exported = read_journals(&journal)?;
            let master = keys::load_master_keys(config)?;
            let registry = pexper_server::personal_data(config);
            let pool = connect(config).await?;
            let replayed = backup::replay(&pool, exported, &master, &registry).await?;
            output::object(json, &serde_json::to_value(replayed)?);
        }
        Command::Journal => {
            let pool = connect(config).await?;
            let entries = backup::journal_entries(&mut *pool.acquire().await?).await?;
            output::rows(json, &["person_hash", "erased_at"], &entries, |e| {
                vec![e.person_hash.clone(), e.erased_at.to_string()]
            });
        }
    }
    Ok(())
}

/// Journals exported with `db journal --json`.
fn read_journals(paths: &[PathBuf]) -> anyhow::Result<Vec<JournalEntry>> {
    let mut entries = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let more: Vec<JournalEntry> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a journal from `db journal --json`",
                path.display()
            )
        })?;
        entries.extend(more);
    }
    Ok(entries)
}

fn managed_only(config: &Config) -> anyhow::Result<&Config> {
    anyhow::ensure!(
        config.database_url.is_none(),
        "DATABASE_URL is set: the managed Postgres is not in use"
    );
    Ok(config)
}

fn managed_root(config: &Config) -> PathBuf {
    config.data_dir.join("postgres")
}
