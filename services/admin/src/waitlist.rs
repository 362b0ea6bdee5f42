//! `pexper-admin waitlist`: counts, the line, an export with addresses, invitations.

use clap::{Subcommand, ValueEnum};
use pexper_platform::Config;
use pexper_waitlist::admin;
use sqlx::PgPool;

use crate::{keyring, output, progress};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Counts by state; never opens an address.
    Stats,
    /// The line, in order, without addresses.
    List,
    /// Every entry with its address (decrypted for the operator who asks; audited).
    Export {
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Why you need the addresses: recorded in the audit trail with your name.
        #[arg(long)]
        reason: String,
    },
    /// Invite the next N people in line (subscribed), queueing their invitation email.
    Invite {
        #[arg(long)]
        count: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::Stats => {
            output::object(json, &serde_json::to_value(admin::stats(pool).await?)?);
        }
        Command::List => {
            let rows = admin::rows(pool, config.referral_bump, None).await?;
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
                        r.status.to_string(),
                        r.subscribed.to_string(),
                        r.referrals.to_string(),
                        r.signed_up_at.to_string(),
                    ]
                },
            );
        }
        Command::Export { format, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            let keyring = keyring(config, pool).await?;
            let rows = admin::rows(pool, config.referral_bump, Some(&keyring)).await?;
            let shown = rows.iter().filter(|r| r.email.is_some()).count();
            let what = format!("waitlist export: {shown} addresses");
            pexper_privacy::admin::record_read(
                &mut *pool.acquire().await?,
                &keyring,
                None,
                &what,
                &reason,
            )
            .await?;
            if json || format == Format::Json {
                output::say(&serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!("position,email,status,subscribed,referrals,source,signed_up_at,confirmed_at");
            for r in &rows {
                let fields = [
                    r.position.map(|p| p.to_string()).unwrap_or_default(),
                    r.email.clone().unwrap_or_default(),
                    r.status.to_string(),
                    r.subscribed.to_string(),
                    r.referrals.to_string(),
                    r.source.clone().unwrap_or_default(),
                    r.signed_up_at.to_string(),
                    r.confirmed_at.map(|t| t.to_string()).unwrap_or_default(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                output::say(&line.join(","));
            }
        }
        Command::Invite { count } => {
            anyhow::ensure!(count > 0, "--count must be at least 1");
            let done =
                admin::invite(pool, count, config.referral_bump, progress("invited")).await?;
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
