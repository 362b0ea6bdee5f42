//! `pexper-admin`: the operator CLI. It reads the same configuration as the server and talks
//! to Postgres directly. Tables for people, `--json` for scripts; exit 0 ok, 1 error, 2 usage.
//! The binary's `main` lives here so that the tests build and run the very same entry point.
#![forbid(unsafe_code)]

mod output;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pexper_platform::crypto::Keyring;
use pexper_platform::db::managed::ManagedPostgres;
use pexper_platform::jobs::{self, JobId};
use pexper_platform::{Config, db, keys, person};
use serde_json::json;
use sqlx::PgPool;

#[derive(Debug, Parser)]
#[command(name = "pexper-admin", version, about = "Operate the Pexper backend")]
struct Cli {
    /// Print JSON (an array of objects, or an object) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations (idempotent; safe beside running servers).
    Migrate,
    /// Master key versions and the data keys wrapped under them.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The job queue.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The waitlist: statistics, the line, an export, invitations.
    Waitlist {
        #[command(subcommand)]
        command: WaitlistCommand,
    },
    /// Email: the outbox (mail jobs), retries, product-update broadcasts.
    Mail {
        #[command(subcommand)]
        command: MailCommand,
    },
    /// Purchases from Stripe: status, amounts, refunds, licence state.
    Purchases {
        #[command(subcommand)]
        command: PurchasesCommand,
    },
    /// Licence keys: look one up, revoke one.
    Licenses {
        #[command(subcommand)]
        command: LicensesCommand,
    },
    /// GDPR/CCPA requests: intake from privacy@, the queue, handling, the SLA.
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Anonymous usage and crash statistics.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// The managed local Postgres (when DATABASE_URL is unset).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
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

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Jobs waiting, running or dead.
    List {
        /// Only jobs in this state: queued, running or dead.
        #[arg(long, value_parser = ["queued", "running", "dead"])]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put a dead job (or, with --all, every dead job) back in the queue.
    Retry {
        id: Option<uuid::Uuid>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WaitlistCommand {
    /// Counts by state; never opens an address.
    Stats,
    /// The line, in order, without addresses.
    List,
    /// Every entry with its address (decrypted for the operator who asks).
    Export {
        #[arg(long, value_parser = ["csv", "json"], default_value = "csv")]
        format: String,
    },
    /// Invite the next N people in line (subscribed), queueing their invitation email.
    Invite {
        #[arg(long)]
        count: i64,
    },
}

#[derive(Debug, Subcommand)]
enum MailCommand {
    /// Email waiting to be sent or given up on (mail jobs).
    Outbox,
    /// Put dead jobs back in the queue (every email is sent by a job).
    Retry,
    /// Send a template to every confirmed, subscribed person (once each, even if re-run).
    Broadcast {
        /// The template; `product-update` takes its subject and body from the flags.
        #[arg(long, value_parser = ["product-update"])]
        template: String,
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

#[derive(Debug, Subcommand)]
enum PurchasesCommand {
    /// Newest first, without addresses.
    List {
        #[arg(long, value_parser = ["unpaid", "paid", "payment_failed", "partially_refunded", "refunded", "disputed", "dispute_lost"])]
        status: Option<String>,
        /// Only the purchases of the buyer with this address (matched by blind index).
        #[arg(long, value_name = "EMAIL")]
        buyer: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One purchase (by id or Checkout Session id) and the events that shaped it.
    Show {
        id: String,
        /// Also decrypt and show the buyer's address.
        #[arg(long)]
        email: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LicensesCommand {
    /// A licence by its id, its purchase (id or session id), or the licence key itself.
    Show { id: String },
    /// Revoke a licence (the desktop app's online check then says `revoked`).
    Revoke { id: String },
}

const KINDS: [&str; 7] = [
    "access",
    "portability",
    "deletion",
    "correction",
    "restriction",
    "objection",
    "opt_out_of_sale",
];

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// Take in a request that arrived by email; the person gets an acknowledgement with a
    /// verification link.
    Intake {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = KINDS)]
        kind: String,
        #[arg(long, value_parser = ["gdpr", "ccpa", "other"], default_value = "other")]
        jurisdiction: String,
        /// When it arrived (YYYY-MM-DD or RFC 3339; default now): the due date counts from it.
        #[arg(long)]
        received_at: Option<String>,
        /// What they asked, in their words (stored encrypted).
        #[arg(long)]
        note: Option<String>,
        /// Where it came from; only `email` is taken in by hand.
        #[arg(long, value_parser = ["email"], default_value = "email")]
        source: String,
    },
    /// The queue, soonest due first.
    List {
        /// Only open requests past their due date.
        #[arg(long)]
        overdue: bool,
        /// Only open requests due within this many days.
        #[arg(long, value_name = "DAYS")]
        due_within: Option<i64>,
        #[arg(long, value_parser = ["received", "verified", "processing", "completed", "rejected", "expired"])]
        status: Option<String>,
    },
    /// One request: what the person wrote, its audit trail.
    Show {
        id: uuid::Uuid,
        /// Also decrypt and show the person's address.
        #[arg(long)]
        email: bool,
    },
    /// Take a verified request in hand (access and deletion: run their processing again).
    Process { id: uuid::Uuid },
    /// Close a request as done; the note is emailed to the person.
    Complete {
        id: uuid::Uuid,
        #[arg(long)]
        note: String,
    },
    /// Refuse a request; the reason is emailed to the person.
    Reject {
        id: uuid::Uuid,
        #[arg(long)]
        reason: String,
    },
    /// Open, due soon, overdue; median days to close and share closed on time (90 days).
    Sla,
    /// Check the audit trail's hash chain.
    Audit,
}

#[derive(Debug, Subcommand)]
enum AnalyticsCommand {
    /// Top features, sessions, median session duration, crash-free rate per release, top
    /// crash signatures; cohorts under 5 sessions show as "<5".
    Report {
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Start the managed Postgres if it is not running, and say where it listens.
    Start,
    /// Stop the managed Postgres.
    Stop,
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::for_binary("pexper-admin") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "pexper-admin: {}",
                pexper_platform::telemetry::redact(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    db::pool(db::connect_options(config).await?).await
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Migrate => {
            let pool = connect(&config).await?;
            db::migrate(&pool).await?;
            output::object(json, &json!({"migrated": true}));
        }
        Command::Keys { command } => keys_command(json, &config, command).await?,
        Command::Jobs { command } => {
            let pool = connect(&config).await?;
            match command {
                JobsCommand::List { status, limit } => {
                    print_jobs(json, &jobs::list(&pool, status.as_deref(), limit).await?);
                }
                JobsCommand::Retry { id, all } => {
                    anyhow::ensure!(id.is_some() || all, "name a job id, or pass --all");
                    let n = jobs::retry(&pool, id.map(JobId)).await?;
                    if let (Some(id), 0) = (id, n) {
                        anyhow::bail!("no dead job {id}");
                    }
                    output::object(json, &json!({"requeued": n}));
                }
            }
        }
        Command::Waitlist { command } => waitlist_command(json, &config, command).await?,
        Command::Mail { command } => mail_command(json, &config, command).await?,
        Command::Purchases { command } => purchases_command(json, &config, command).await?,
        Command::Licenses { command } => licenses_command(json, &config, command).await?,
        Command::Privacy { command } => privacy_command(json, &config, command).await?,
        Command::Analytics {
            command: AnalyticsCommand::Report { days },
        } => {
            anyhow::ensure!(days >= 1, "--days must be at least 1");
            let pool = connect(&config).await?;
            let report = pexper_analytics::report::report(&pool, days).await?;
            print_report(json, &report);
        }
        Command::Db { command } => {
            anyhow::ensure!(
                config.database_url.is_none(),
                "DATABASE_URL is set: the managed Postgres is not in use"
            );
            let root = config.data_dir.join("postgres");
            match command {
                DbCommand::Start => {
                    let managed = db::start_managed(&config).await?;
                    output::object(
                        json,
                        &json!({"running": true, "port": managed.port(), "directory": root.display().to_string()}),
                    );
                }
                DbCommand::Stop => {
                    let pg_bin = config.pg_bin.clone();
                    let was_running = tokio::task::spawn_blocking(move || {
                        ManagedPostgres::stop(&root, pg_bin.as_deref())
                    })
                    .await??;
                    output::object(json, &json!({"stopped": was_running}));
                }
            }
        }
    }
    Ok(())
}

async fn keys_command(json: bool, config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Status => {
            let master = keys::load_master_keys(config)?;
            let pool = connect(config).await?;
            let counts = person::key_versions(&pool).await?;
            let configured: Vec<i32> = master.versions().collect();
            let stale: i64 = counts
                .iter()
                .filter(|(v, _)| *v != master.current_version())
                .map(|(_, n)| n)
                .sum();
            output::object(
                json,
                &json!({
                    "current_version": master.current_version(),
                    "configured_versions": configured,
                    "data_keys_by_version": counts.iter().map(|(v, n)| (v.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    "data_keys_to_rotate": stale,
                }),
            );
        }
        KeysCommand::Rotate { generate, batch } => {
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
            let total: i64 =
                sqlx::query_scalar("SELECT count(*) FROM person WHERE key_version <> $1")
                    .bind(master.current_version())
                    .fetch_one(&pool)
                    .await
                    .context("failed to count data keys")?;
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

fn progress(label: &'static str) -> impl FnMut(u64, u64) {
    move |done, total| {
        eprint!("\r{label} {done}/{total}");
        std::io::stderr().flush().ok();
    }
}

async fn waitlist_command(
    json: bool,
    config: &Config,
    command: WaitlistCommand,
) -> anyhow::Result<()> {
    use pexper_waitlist::admin;
    let pool = connect(config).await?;
    match command {
        WaitlistCommand::Stats => {
            output::object(json, &serde_json::to_value(admin::stats(&pool).await?)?);
        }
        WaitlistCommand::List => {
            let rows = admin::rows(&pool, config.referral_bump, None).await?;
            output::rows(
                json,
                &[
                    "position",
                    "person_id",
                    "status",
                    "subscribed",
                    "referrals",
                    "signed_up_at",
                ],
                &rows,
                |r| {
                    vec![
                        r.position
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into()),
                        r.person_id.to_string(),
                        r.status.clone(),
                        r.subscribed.to_string(),
                        r.referrals.to_string(),
                        r.signed_up_at.to_string(),
                    ]
                },
            );
        }
        WaitlistCommand::Export { format } => {
            let keyring = Keyring::new(&keys::load_master_keys(config)?);
            let rows = admin::rows(&pool, config.referral_bump, Some(&keyring)).await?;
            if json || format == "json" {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "position,email,status,subscribed,referrals,source,signed_up_at,confirmed_at"
                );
                for r in &rows {
                    let fields = [
                        r.position.map(|p| p.to_string()).unwrap_or_default(),
                        r.email.clone().unwrap_or_default(),
                        r.status.clone(),
                        r.subscribed.to_string(),
                        r.referrals.to_string(),
                        r.source.clone().unwrap_or_default(),
                        r.signed_up_at.to_string(),
                        r.confirmed_at.map(|t| t.to_string()).unwrap_or_default(),
                    ];
                    println!(
                        "{}",
                        fields
                            .iter()
                            .map(|f| csv_field(f))
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
            }
        }
        WaitlistCommand::Invite { count } => {
            anyhow::ensure!(count > 0, "--count must be at least 1");
            let done =
                admin::invite(&pool, count, config.referral_bump, progress("invited")).await?;
            if done.queued > 0 {
                eprintln!();
            }
            output::object(json, &serde_json::to_value(done)?);
        }
    }
    Ok(())
}

/// RFC 4180 quoting, after neutralising formulas: a cell that starts with `=`, `+`, `-`, `@`,
/// a tab or a carriage return is run by spreadsheets (`=HYPERLINK(…)@example.com` is a valid
/// address), so it gets a leading `'`, as OWASP's CSV-injection guidance says.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

async fn mail_command(json: bool, config: &Config, command: MailCommand) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    match command {
        MailCommand::Outbox => {
            let list: Vec<_> = jobs::list(&pool, None, 1000)
                .await?
                .into_iter()
                .filter(|j| {
                    ["mail.", "waitlist.", "payments.", "privacy."]
                        .iter()
                        .any(|p| j.kind.starts_with(p))
                })
                .collect();
            print_jobs(json, &list);
        }
        MailCommand::Retry => {
            let n = jobs::retry(&pool, None).await?;
            output::object(json, &json!({"requeued": n}));
        }
        MailCommand::Broadcast {
            template,
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
                &pool,
                &template,
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

async fn purchases_command(
    json: bool,
    config: &Config,
    command: PurchasesCommand,
) -> anyhow::Result<()> {
    use pexper_payments::{admin, format_amount};
    let pool = connect(config).await?;
    match command {
        PurchasesCommand::List {
            status,
            buyer,
            limit,
        } => {
            let rows = match buyer {
                None => admin::list(&pool, status.as_deref(), None, limit).await?,
                Some(address) => {
                    let email = pexper_platform::email::EmailAddress::parse(&address)
                        .context("--buyer is not a valid address")?;
                    let keyring = Keyring::new(&keys::load_master_keys(config)?);
                    let mut conn = pool.acquire().await?;
                    match person::find(&mut conn, &keyring, &email).await? {
                        Some(p) => admin::list(&pool, status.as_deref(), Some(p), limit).await?,
                        // Nobody by that address: an empty list.
                        None => Vec::new(),
                    }
                }
            };
            output::rows(
                json,
                &[
                    "id",
                    "checkout_session_id",
                    "amount",
                    "refunded",
                    "status",
                    "license",
                    "created_at",
                ],
                &rows,
                |r| {
                    vec![
                        r.id.to_string(),
                        r.checkout_session_id.clone(),
                        format_amount(r.amount, &r.currency),
                        format_amount(r.amount_refunded, &r.currency),
                        r.status.clone(),
                        r.license_status.clone(),
                        r.created_at.to_string(),
                    ]
                },
            );
        }
        PurchasesCommand::Show { id, email } => {
            let row = admin::find(&pool, &id)
                .await?
                .with_context(|| format!("no purchase {id}"))?;
            let mut value = serde_json::to_value(&row)?;
            let events: Vec<_> = admin::events(&pool, &row)
                .await?
                .into_iter()
                .map(
                    |(id, kind, at)| json!({"id": id, "type": kind, "occurred_at": at.to_string()}),
                )
                .collect();
            value["events"] = json!(events);
            if email {
                let keyring = Keyring::new(&keys::load_master_keys(config)?);
                let address = admin::buyer_email(&pool, &keyring, &row).await?;
                value["email"] = json!(address.as_ref().map(|a| a.as_str()));
            }
            output::object(json, &value);
        }
    }
    Ok(())
}

async fn licenses_command(
    json: bool,
    config: &Config,
    command: LicensesCommand,
) -> anyhow::Result<()> {
    use pexper_payments::admin;
    let pool = connect(config).await?;
    match command {
        LicensesCommand::Show { id } => {
            let row = admin::license(&pool, &id)
                .await?
                .with_context(|| format!("no licence {id}"))?;
            output::object(json, &serde_json::to_value(row)?);
        }
        LicensesCommand::Revoke { id } => {
            let revoked = admin::revoke(&pool, &id)
                .await?
                .with_context(|| format!("no licence {id}"))?;
            output::object(json, &json!({"revoked": revoked}));
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
fn parse_instant(s: &str) -> anyhow::Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let date = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .with_context(|| format!("`{s}` is neither YYYY-MM-DD nor an RFC 3339 time"))?;
    Ok(date.midnight().assume_utc())
}

async fn privacy_command(
    json: bool,
    config: &Config,
    command: PrivacyCommand,
) -> anyhow::Result<()> {
    use pexper_privacy::admin;
    use pexper_privacy::request::{Jurisdiction, Kind};
    let pool = connect(config).await?;
    let keyring =
        || -> anyhow::Result<Keyring> { Ok(Keyring::new(&keys::load_master_keys(config)?)) };
    match command {
        PrivacyCommand::Intake {
            email,
            kind,
            jurisdiction,
            received_at,
            note,
            source: _,
        } => {
            let email = pexper_platform::email::EmailAddress::parse(&email)
                .context("--email is not a valid address")?;
            let received_at = match received_at {
                Some(s) => parse_instant(&s)?,
                None => time::OffsetDateTime::now_utc(),
            };
            anyhow::ensure!(
                received_at <= time::OffsetDateTime::now_utc(),
                "--received-at is in the future"
            );
            let id = admin::intake(
                &pool,
                &keyring()?,
                &email,
                Kind::parse(&kind).context("unknown kind")?,
                Jurisdiction::parse(&jurisdiction).context("unknown jurisdiction")?,
                received_at,
                note,
            )
            .await?;
            let row = admin::find(&pool, id)
                .await?
                .context("the request vanished")?;
            output::object(json, &serde_json::to_value(row)?);
        }
        PrivacyCommand::List {
            overdue,
            due_within,
            status,
        } => {
            let rows = admin::list(&pool, status.as_deref(), overdue, due_within).await?;
            output::rows(
                json,
                &["id", "kind", "status", "received_at", "due_at", "days_left"],
                &rows,
                |r| {
                    vec![
                        r.id.to_string(),
                        r.kind.clone(),
                        r.status.clone(),
                        r.received_at.date().to_string(),
                        r.due_at.date().to_string(),
                        match r.days_left {
                            Some(d) if d < 0 => format!("overdue {}d", -d),
                            Some(d) => d.to_string(),
                            None => "-".into(),
                        },
                    ]
                },
            );
        }
        PrivacyCommand::Show { id, email } => {
            let row = admin::find(&pool, id)
                .await?
                .with_context(|| format!("no privacy request {id}"))?;
            let mut value = serde_json::to_value(&row)?;
            let private = admin::private_parts(&pool, &keyring()?, &row, email).await?;
            if let (Some(v), Some(p)) = (value.as_object_mut(), private.as_object()) {
                v.extend(p.clone());
            }
            value["audit"] = serde_json::to_value(admin::audit_of(&pool, id).await?)?;
            output::object(json, &value);
        }
        PrivacyCommand::Process { id } => {
            admin::process(&pool, id).await?;
            output::object(json, &json!({"id": id, "processing": true}));
        }
        PrivacyCommand::Complete { id, note } => {
            anyhow::ensure!(!note.trim().is_empty(), "--note must say what was done");
            admin::close(&pool, &keyring()?, id, true, note.trim()).await?;
            output::object(json, &json!({"id": id, "status": "completed"}));
        }
        PrivacyCommand::Reject { id, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            admin::close(&pool, &keyring()?, id, false, reason.trim()).await?;
            output::object(json, &json!({"id": id, "status": "rejected"}));
        }
        PrivacyCommand::Sla => {
            output::object(json, &serde_json::to_value(admin::sla(&pool).await?)?);
        }
        PrivacyCommand::Audit => {
            let check = admin::verify_audit(&pool).await?;
            let intact = check.broken_at.is_none();
            output::object(json, &serde_json::to_value(&check)?);
            anyhow::ensure!(
                intact,
                "the audit trail is broken at event {}",
                check.broken_at.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The analytics report: JSON as is, or sections for people.
fn print_report(json: bool, report: &serde_json::Value) {
    if json {
        output::object(true, report);
        return;
    }
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "last {} day(s); sessions: {}; median session: {} s (cohorts under {} sessions show as <{})",
        report["days"],
        cell(&report["sessions"]),
        cell(&report["median_session_duration_s"]),
        report["k_threshold"],
        report["k_threshold"]
    );
    let table = |title: &str, key: &str, headers: &[&str]| {
        println!("\n{title}");
        let rows = report[key].as_array().cloned().unwrap_or_default();
        output::rows(false, headers, &rows, |r| {
            headers.iter().map(|h| cell(&r[*h])).collect()
        });
    };
    table(
        "Top features",
        "top_features",
        &["feature", "uses", "sessions"],
    );
    table(
        "Crash-free sessions by release",
        "crash_free_by_release",
        &["release", "sessions", "crashed", "crash_free_rate"],
    );
    table(
        "Top crash signatures",
        "top_crash_signatures",
        &["signature", "exception_type", "reports"],
    );
}

fn print_jobs(json: bool, list: &[jobs::JobRow]) {
    output::rows(
        json,
        &["id", "kind", "status", "attempts", "run_at", "last_error"],
        list,
        |j| {
            vec![
                j.id.to_string(),
                j.kind.clone(),
                j.status.clone(),
                format!("{}/{}", j.attempts, j.max_attempts),
                j.run_at.to_string(),
                j.last_error.clone().unwrap_or_default(),
            ]
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised_and_quoted() {
        assert_eq!(csv_field("=1+1@example.com"), "'=1+1@example.com");
        assert_eq!(csv_field("+cmd@example.com"), "'+cmd@example.com");
        assert_eq!(csv_field("-2@example.com"), "'-2@example.com");
        assert_eq!(csv_field("@sum@example.com"), "'@sum@example.com");
        assert_eq!(csv_field("\t=x"), "'\t=x");
        assert_eq!(csv_field("=a,b"), "\"'=a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("ada@example.com"), "ada@example.com");
        assert_eq!(csv_field("a-b"), "a-b", "only a leading sign counts");
    }
}
