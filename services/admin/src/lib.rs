//! `pexper-admin`: the operator CLI. It reads the same configuration as the server and talks
//! to Postgres directly. Tables for people, `--json` for scripts; exit 0 ok, 1 error, 2 usage.
//! The binary's `main` lives here so that the tests build and run the very same entry point.
//!
//! One module per area (crates.io's `crates-admin`), each with its arguments and its `run`;
//! the SQL stays in the service that owns the tables.
#![forbid(unsafe_code)]

mod accounts;
mod analytics;
mod db;
mod jobs;
mod keys;
mod mail;
mod output;
mod policy;
mod privacy;
mod purchases;
mod retention;
mod reveal;
mod support;
mod waitlist;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pexper_platform::Config;
use pexper_platform::crypto::Keyring;
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
        command: keys::Command,
    },
    /// The job queue.
    Jobs {
        #[command(subcommand)]
        command: jobs::Command,
    },
    /// The waitlist: statistics, the line, an export, invitations.
    Waitlist {
        #[command(subcommand)]
        command: waitlist::Command,
    },
    /// Email: the outbox (mail jobs), retries, product-update broadcasts.
    Mail {
        #[command(subcommand)]
        command: mail::Command,
    },
    /// Purchases from Stripe: status, amounts, refunds, licence state.
    Purchases {
        #[command(subcommand)]
        command: purchases::Command,
    },
    /// Licence keys: look one up, revoke one.
    Licenses {
        #[command(subcommand)]
        command: purchases::LicensesCommand,
    },
    /// GDPR/CCPA requests: intake from privacy@, the queue, handling, the SLA.
    Privacy {
        #[command(subcommand)]
        command: privacy::Command,
    },
    /// Privacy-policy changes: announced 30 days ahead, by email, to everyone concerned.
    Policy {
        #[command(subcommand)]
        command: policy::Command,
    },
    /// Accounts on pexper.com: list, show, disable, end sessions (changes audited).
    Accounts {
        #[command(subcommand)]
        command: accounts::Command,
    },
    /// Support requests: the queue, reading one, replying by email, closing.
    Support {
        #[command(subcommand)]
        command: support::Command,
    },
    /// How long each kind of personal data is kept; apply the rules now.
    Retention {
        #[command(subcommand)]
        command: retention::Command,
    },
    /// Anonymous usage and crash statistics.
    Analytics {
        #[command(subcommand)]
        command: analytics::Command,
    },
    /// The database: the managed local Postgres, backups, and the erasure journal.
    Db {
        #[command(subcommand)]
        command: db::Command,
    },
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::for_binary("pexper-admin", pexper_platform::config::Role::Admin) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An error can quote what a stranger typed (a request's details): escaped too.
            output::warn(&format!(
                "pexper-admin: {}",
                pexper_platform::telemetry::redact(&format!("{e:#}"))
            ));
            // A request the operator must change (a policy change announced too late) is a
            // usage error, like a bad flag.
            if e.downcast_ref::<pexper_privacy::policy::Refused>()
                .is_some()
            {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Migrate => db::migrate(json, &config).await,
        Command::Db { command } => db::run(json, &config, command).await,
        Command::Keys { command } => keys::run(json, &config, command).await,
        Command::Jobs { command } => jobs::run(json, &connect(&config).await?, command).await,
        Command::Waitlist { command } => {
            waitlist::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Mail { command } => {
            mail::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Purchases { command } => {
            purchases::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Licenses { command } => {
            purchases::licenses(json, &config, &connect(&config).await?, command).await
        }
        Command::Accounts { command } => {
            accounts::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Support { command } => {
            support::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Retention { command } => {
            retention::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Policy { command } => {
            policy::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Privacy {
            command: privacy::Command::Processing { format },
        } => {
            privacy::processing(json || format == privacy::Format::Json, &config);
            Ok(())
        }
        Command::Privacy { command } => {
            privacy::run(json, &config, &connect(&config).await?, command).await
        }
        Command::Analytics { command } => {
            analytics::run(json, &connect(&config).await?, command).await
        }
    }
}

/// The pool every command uses. Its connections name the operator (`pexper.actor`), so the
/// audit trail records who did what.
async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let options = pexper_platform::db::connect_options(config).await?;
    pexper_platform::db::pool(options.options([("pexper.actor", operator())])).await
}

/// Who runs this command: `PEXPER_OPERATOR`, else the OS user; only the characters of a user
/// name or an address, so it passes as a connection option unescaped.
fn operator() -> String {
    let name: String = ["PEXPER_OPERATOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()))
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._@-".contains(*c))
        .take(64)
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// The keyring, for the commands that open or look up an address or a record. Rows from before
/// a migration that needed the keys are brought up to date first (`PersonalData::prepare`), as
/// the server does at start, so no command meets one.
async fn keyring(config: &Config, pool: &PgPool) -> anyhow::Result<Keyring> {
    let master = pexper_platform::keys::load_master_keys(config)?;
    let keyring = pexper_platform::keys::keyring(pool, &master).await?;
    pexper_server::personal_data(config)
        .prepare(pool, &keyring)
        .await?;
    Ok(keyring)
}

/// A progress line on stderr (`label done/total`), rewritten in place.
fn progress(label: &'static str) -> impl FnMut(u64, u64) {
    move |done, total| {
        eprint!("\r{label} {done}/{total}");
        std::io::stderr().flush().ok();
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
