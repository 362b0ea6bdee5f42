//! `pexper-admin db` and `migrate`: the managed local Postgres, and the schema.

use clap::Subcommand;
use pexper_platform::db::managed::ManagedPostgres;
use pexper_platform::{Config, db};
use serde_json::json;

use crate::{connect, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the managed Postgres if it is not running, and say where it listens.
    Start,
    /// Stop the managed Postgres.
    Stop,
}

pub async fn migrate(json: bool, config: &Config) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    db::migrate(&pool).await?;
    output::object(json, &json!({"migrated": true}));
    Ok(())
}

pub async fn run(json: bool, config: &Config, command: Command) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.database_url.is_none(),
        "DATABASE_URL is set: the managed Postgres is not in use"
    );
    let root = config.data_dir.join("postgres");
    match command {
        Command::Start => {
            let managed = db::start_managed(config).await?;
            output::object(
                json,
                &json!({"running": true, "port": managed.port(), "directory": root.display().to_string()}),
            );
        }
        Command::Stop => {
            let pg_bin = config.pg_bin.clone();
            let was_running = tokio::task::spawn_blocking(move || {
                ManagedPostgres::stop(&root, pg_bin.as_deref())
            })
            .await??;
            output::object(json, &json!({"stopped": was_running}));
        }
    }
    Ok(())
}
