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

/// What `mail bounces` did, by report.
#[derive(Debug, Default, serde::Serialize)]
struct BounceRun {
    messages: u64,
    not_reports: u64,
    already_seen: u64,
    unmatched: u64,
    hard_bounces: u64,
    soft_bounces: u64,
    complaints: u64,
}

async fn bounces(
    config: &pexper_platform::Config,
    pool: &PgPool,
    path: &std::path::Path,
) -> anyhow::Result<BounceRun> {
    use pexper_platform::mail::bounces::{self, Applied, ReportKind};
    let keyring = crate::keyring(config, pool).await?;
    let sender = pexper_platform::mail::sender(config)?;
    let mut run = BounceRun::default();
    for raw in bounces::read_mailbox(path)? {
        run.messages += 1;
        let Some(report) = bounces::parse(&raw) else {
            run.not_reports += 1;
            continue;
        };
        let mut tx = pool.begin().await?;
        let applied = bounces::apply(&mut tx, &keyring, sender.email.domain(), &report).await?;
        tx.commit().await?;
        match applied {
            Applied::AlreadySeen => run.already_seen += 1,
            Applied::Unmatched => run.unmatched += 1,
            Applied::Done(ReportKind::HardBounce, _) => run.hard_bounces += 1,
            Applied::Done(ReportKind::SoftBounce, _) => run.soft_bounces += 1,
            Applied::Done(ReportKind::Complaint, person) => {
                run.complaints += 1;
                if let Some(person) = person {
                    pexper_waitlist::admin::unsubscribe(pool, person).await?;
                }
            }
        }
    }
    Ok(run)
}
