//! `pexper-admin jobs`: what the queue holds, and dead jobs put back in it.

use clap::Subcommand;
use pexper_platform::jobs::{self, JobId, JobRow, JobStatus};
use serde_json::json;
use sqlx::PgPool;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Jobs waiting, running or dead.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        status: Option<JobStatus>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put a dead job (or, with --all, every dead job) back in the queue.
    Retry {
        id: Option<JobId>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

pub async fn run(json: bool, pool: &PgPool, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List { status, limit } => print(json, &jobs::list(pool, status, limit).await?),
        Command::Retry { id, all } => {
            anyhow::ensure!(id.is_some() || all, "name a job id, or pass --all");
            let n = jobs::retry(pool, id).await?;
            if let (Some(id), 0) = (id, n) {
                anyhow::bail!("no dead job {id}");
            }
            output::object(json, &json!({"requeued": n}));
        }
    }
    Ok(())
}

/// Jobs as a table, or JSON.
pub fn print(json: bool, list: &[JobRow]) {
    output::rows(
        json,
        &["id", "kind", "status", "attempts", "run_at", "last_error"],
        list,
        |j| {
            vec![
                j.id.to_string(),
                j.kind.clone(),
                j.status.to_string(),
                format!("{}/{}", j.attempts, j.max_attempts),
                j.run_at.to_string(),
                j.last_error.clone().unwrap_or_default(),
            ]
        },
    );
}
