//! `pexper-admin purchases` and `licenses`: what Stripe told us, and the licences it led to.

use anyhow::Context;
use clap::Subcommand;
use pexper_payments::{PurchaseStatus, admin, format_amount};
use pexper_platform::address::EmailAddress;
use pexper_platform::{Config, person};
use serde_json::json;
use sqlx::PgPool;

use crate::reveal::Reveal;
use crate::{keyring, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Newest first, without addresses.
    List {
        #[arg(long)]
        status: Option<PurchaseStatus>,
        /// Only the purchases of the buyer with this address (matched by blind index).
        #[arg(long, value_name = "EMAIL")]
        buyer: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One purchase (by id or Checkout Session id) and the events that shaped it.
    Show {
        id: String,
        #[command(flatten)]
        reveal: Reveal,
    },
}

#[derive(Debug, Subcommand)]
pub enum LicensesCommand {
    /// A licence by its id, its purchase (id or session id), or the licence key itself.
    Show { id: String },
    /// Revoke a licence (the desktop app's online check then says `revoked`).
    Revoke { id: String },
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::List {
            status,
            buyer,
            limit,
        } => {
            let keyring = keyring(config, pool).await?;
            let rows = match buyer {
                None => admin::list(pool, &keyring, status, None, limit).await?,
                Some(address) => {
                    let email =
                        EmailAddress::parse(&address).context("--buyer is not a valid address")?;
                    let mut conn = pool.acquire().await?;
                    match person::find(&mut conn, &keyring, &email).await? {
                        Some(p) => admin::list(pool, &keyring, status, Some(p), limit).await?,
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
                        r.status.to_string(),
                        r.license_status.clone(),
                        r.created_at.to_string(),
                    ]
                },
            );
        }
        Command::Show { id, reveal } => {
            let keyring = keyring(config, pool).await?;
            let row = admin::find(pool, &keyring, &id)
                .await?
                .with_context(|| format!("no purchase {id}"))?;
            let mut value = serde_json::to_value(&row)?;
            let events: Vec<_> = admin::events(pool, &row)
                .await?
                .into_iter()
                .map(
                    |(id, kind, at)| json!({"id": id, "type": kind, "occurred_at": at.to_string()}),
                )
                .collect();
            value["events"] = json!(events);
            let what = || format!("the buyer's address of purchase {}", row.id);
            if reveal.record(config, pool, None, what).await? {
                let address = admin::buyer_email(pool, &keyring, &row).await?;
                value["email"] = json!(address.as_ref().map(|a| a.as_str()));
            }
            output::object(json, &value);
        }
    }
    Ok(())
}

pub async fn licenses(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: LicensesCommand,
) -> anyhow::Result<()> {
    let keyring = keyring(config, pool).await?;
    match command {
        LicensesCommand::Show { id } => {
            let row = admin::license(pool, &keyring, &id)
                .await?
                .with_context(|| format!("no licence {id}"))?;
            output::object(json, &serde_json::to_value(row)?);
        }
        LicensesCommand::Revoke { id } => {
            let revoked = admin::revoke(pool, &keyring, &id)
                .await?
                .with_context(|| format!("no licence {id}"))?;
            output::object(json, &json!({"revoked": revoked}));
        }
    }
    Ok(())
}
