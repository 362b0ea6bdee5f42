//! `pexper-admin mail`: the outbox (every email is a job), retries, product-update broadcasts.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use pexper_platform::jobs;
use serde_json::json;
use sqlx::PgPool;

use crate::{output, progress};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Email waiting to be sent or given up on (mail jobs).
    Outbox,
    /// Put dead jobs back in the queue (every email is sent by a job).
    Retry,
    /// Send a template to every confirmed, subscribed person (once each, even if re-run).
    Broadcast {
        /// The template; `product-update` takes its subject and body from the flags.
        #[arg(long, value_enum)]
        template: Template,
        #[arg(long)]
        subject: Option<String>,
        /// A UTF-8 text file; blank lines separate paragraphs.
        #[arg(long)]
        body_file: Option<std::path::PathBuf>,
        /// Say how many would get it, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The templates a broadcast can send.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Template {
    ProductUpdate,
}

/// Job kinds that send email, by prefix.
const MAIL_JOBS: [&str; 4] = ["mail.", "waitlist.", "payments.", "privacy."];

pub async fn run(json: bool, pool: &PgPool, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Outbox => {
            let list: Vec<_> = jobs::list(pool, None, 1000)
                .await?
                .into_iter()
                .filter(|j| MAIL_JOBS.iter().any(|p| j.kind.starts_with(p)))
                .collect();
            crate::jobs::print(json, &list);
        }
        Command::Retry => {
            let n = jobs::retry(pool, None).await?;
            output::object(json, &json!({"requeued": n}));
        }
        Command::Broadcast {
            template: Template::ProductUpdate,
            subject,
            body_file,
            dry_run,
        } => {
            let subject = subject.context("--subject is required for product-update")?;
            let path = body_file.context("--body-file is required for product-update")?;
            let body = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            anyhow::ensure!(
                !subject.trim().is_empty() && !body.trim().is_empty(),
                "the subject and the body must not be empty"
            );
            let done = pexper_waitlist::admin::broadcast(
                pool,
                "product-update",
                subject.trim(),
                body.trim(),
                dry_run,
                progress("queued"),
            )
            .await?;
            if done.queued > 0 && !dry_run {
                eprintln!();
            }
            output::object(json, &serde_json::to_value(done)?);
        }
    }
    Ok(())
}
