//! `pexper-admin policy announce`: a change of the privacy policy, announced at least 30 days
//! ahead to everyone we have a relationship with (`pexper_privacy::policy`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pexper_platform::Config;
use pexper_privacy::policy::{self, PolicyVersion, Refused};
use sqlx::PgPool;

use crate::{output, progress};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a new version and email its summary to every buyer and confirmed waitlist
    /// member (unsubscribed or not; not to suppressed addresses), once each. Safe to re-run.
    Announce {
        /// The version's name, e.g. 2027-01.
        #[arg(long)]
        version: String,
        /// The day it takes effect (YYYY-MM-DD): at least 30 days from today.
        #[arg(long)]
        effective: String,
        /// A UTF-8 text file: what changes (blank lines separate paragraphs).
        #[arg(long)]
        summary_file: PathBuf,
        /// Say how many would get it; record and send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    let Command::Announce {
        version,
        effective,
        summary_file,
        dry_run,
    } = command;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let effective_at = time::Date::parse(&effective, format).map_err(|_| {
        Refused(format!(
            "--effective {effective} is not a date like 2027-01-31"
        ))
    })?;
    let summary = std::fs::read_to_string(&summary_file)
        .with_context(|| format!("failed to read {}", summary_file.display()))?;
    let new = PolicyVersion {
        version,
        effective_at,
        summary,
    };
    let registry = pexper_server::personal_data(config);
    let done = policy::announce(pool, &registry, &new, dry_run, progress("queued")).await?;
    if done.queued > 0 {
        eprintln!();
    }
    output::object(json, &serde_json::to_value(done)?);
    Ok(())
}
