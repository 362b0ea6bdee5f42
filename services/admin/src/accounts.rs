//! `pexper-admin accounts`: the list, one account (its address only with a reason, audited),
//! disabling one, ending its sessions — both audited with the operator's reason.

use anyhow::Context;
use clap::Subcommand;
use pexper_accounts::admin;
use pexper_accounts::store::AccountId;
use pexper_platform::{Config, person};
use serde_json::json;
use sqlx::PgPool;

use crate::reveal::Reveal;
use crate::{keyring, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accounts, oldest first; no personal data.
    List,
    /// One account: when opened, password last changed, disabled, live sessions.
    Show {
        id: AccountId,
        #[command(flatten)]
        reveal: Reveal,
    },
    /// Disable an account: no sign-in, every session ended (audited with the reason).
    Disable {
        id: AccountId,
        /// Why: recorded in the audit trail with your name.
        #[arg(long)]
        reason: String,
    },
    /// An account's sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// End every session of an account (audited with the reason).
    Revoke {
        id: AccountId,
        /// Why: recorded in the audit trail with your name.
        #[arg(long)]
        reason: String,
    },
}

fn status(row: &admin::Row) -> &'static str {
    if row.disabled_at.is_some() {
        "disabled"
    } else {
        "active"
    }
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::List => {
            let rows = admin::list(pool).await?;
            output::rows(
                json,
                &["id", "status", "sessions", "created", "password_changed"],
                &rows,
                |r| {
                    vec![
                        r.id.to_string(),
                        status(r).to_owned(),
                        r.sessions.to_string(),
                        r.created_at.date().to_string(),
                        r.password_changed_at.date().to_string(),
                    ]
                },
            );
        }
        Command::Show { id, reveal } => {
            let row = admin::find(pool, id)
                .await?
                .with_context(|| format!("no account {id}"))?;
            let mut value = serde_json::to_value(&row)?;
            value["status"] = json!(status(&row));
            if reveal
                .record(config, pool, None, || {
                    format!("the address of account {id}")
                })
                .await?
            {
                let keyring = keyring(config, pool).await?;
                let address =
                    person::email(&mut *pool.acquire().await?, &keyring, row.person_id).await?;
                value["email"] = json!(address.as_ref().map(|a| a.as_str()));
            }
            output::object(json, &value);
        }
        Command::Disable { id, reason } => {
            let ended = admin::disable(pool, &keyring(config, pool).await?, id, &reason).await?;
            output::object(
                json,
                &json!({"id": id, "status": "disabled", "sessions_ended": ended}),
            );
        }
        Command::Sessions {
            command: SessionsCommand::Revoke { id, reason },
        } => {
            let ended =
                admin::revoke_sessions(pool, &keyring(config, pool).await?, id, &reason).await?;
            output::object(json, &json!({"id": id, "sessions_ended": ended}));
        }
    }
    Ok(())
}
