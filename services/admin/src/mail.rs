//! `pexper-admin mail`: the outbox (every email is a job), retries, product-update broadcasts.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use pexper_platform::jobs;
use serde_json::json;
use sqlx::PgPool;

use pexper_server::inbox::{BounceRun, take_bounce};

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
        /// Then show the delivery until every copy is sent (interrupting stops the watching,
        /// not the sending).
        #[arg(long, conflicts_with = "dry_run")]
        follow: bool,
    },
    /// Read bounces (RFC 3464) and complaints (RFC 5965) from a maildir or an mbox: a hard
    /// bounce suppresses the address, a soft one is counted on its message, a complaint
    /// unsubscribes and suppresses. Safe to run again over the same mailbox.
    Bounces {
        /// A maildir (a directory with cur/ and new/) or an mbox file.
        path: std::path::PathBuf,
    },
    /// Read the privacy@ and bounce mailboxes now (`PEXPER_PRIVACY_IMAP_URL`,
    /// `PEXPER_BOUNCE_IMAP_URL`), as the server's recurring job does: letters become privacy
    /// requests, reports suppress addresses.
    Inbox {
        /// Read once and stop (the only mode: the server reads them on its own schedule).
        #[arg(long)]
        once: bool,
    },
    /// Let mail reach an address again that a bounce or a complaint stopped (e.g. after the
    /// person says their mailbox works again); recorded in the audit trail with the reason.
    Unsuppress {
        #[arg(long)]
        email: String,
        /// Why (recorded; anything that looks like an address is redacted).
        #[arg(long)]
        reason: String,
    },
}

/// The templates a broadcast can send.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Template {
    ProductUpdate,
}

/// Job kinds that send email, by prefix.
const MAIL_JOBS: [&str; 4] = ["mail.", "waitlist.", "payments.", "privacy."];

pub async fn run(
    json: bool,
    config: &pexper_platform::Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::Unsuppress { email, reason } => {
            let email = pexper_platform::address::EmailAddress::parse(&email)
                .context("--email is not a valid address")?;
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            let keyring = crate::keyring(config, pool).await?;
            let mut tx = pool.begin().await?;
            let lifted = pexper_platform::suppression::lift(&mut tx, &keyring, &email).await?;
            if let Some(was) = lifted {
                pexper_privacy::admin::record_action(
                    &mut tx,
                    &keyring,
                    "address_unsuppressed",
                    &format!("an address suppressed as {}", was.as_str()),
                    &reason,
                )
                .await?;
            }
            tx.commit().await?;
            output::object(
                json,
                &json!({"unsuppressed": lifted.is_some(), "was": lifted.map(|r| r.as_str())}),
            );
        }
        Command::Inbox { once } => {
            anyhow::ensure!(
                once,
                "mail inbox reads once (--once); the server reads the mailboxes on its own every PEXPER_RECURRING_SECONDS"
            );
            anyhow::ensure!(
                config.privacy_mailbox.is_some() || config.bounce_mailbox.is_some(),
                "set PEXPER_PRIVACY_IMAP_URL or PEXPER_BOUNCE_IMAP_URL (imaps://user@host/FOLDER or maildir:/path)"
            );
            let keyring = crate::keyring(config, pool).await?;
            let run = pexper_server::inbox::read_once(config, pool, &keyring).await?;
            output::object(json, &serde_json::to_value(run)?);
        }
        Command::Bounces { path } => {
            let done = bounces(config, pool, &path).await?;
            output::object(json, &serde_json::to_value(done)?);
        }
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
            follow,
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
            let mut report = serde_json::to_value(&done)?;
            if let (true, Some(id)) = (follow, done.broadcast_id) {
                let mut shown = progress("sent");
                let delivery = loop {
                    let d = pexper_waitlist::admin::delivery(pool, id).await?;
                    let sent = d.recipients - d.outstanding - d.failed;
                    shown(sent as u64, d.recipients as u64);
                    if d.outstanding == 0 {
                        break d;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                };
                eprintln!();
                report["delivery"] = serde_json::to_value(delivery)?;
            }
            output::object(json, &report);
        }
    }
    Ok(())
}

async fn bounces(
    config: &pexper_platform::Config,
    pool: &PgPool,
    path: &std::path::Path,
) -> anyhow::Result<BounceRun> {
    let keyring = crate::keyring(config, pool).await?;
    let sender = pexper_platform::mail::sender(config)?;
    let mut run = BounceRun::default();
    for raw in pexper_platform::mail::bounces::read_mailbox(path)? {
        let mut tx = pool.begin().await?;
        take_bounce(&mut tx, &keyring, sender.email.domain(), &raw, &mut run).await?;
        tx.commit().await?;
    }
    Ok(run)
}
