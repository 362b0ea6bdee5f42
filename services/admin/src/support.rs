//! `pexper-admin support`: the queue, one request opened (its address only with a reason,
//! audited), a reply sent by email, closing.

use anyhow::Context;
use clap::Subcommand;
use pexper_platform::{Config, person};
use pexper_support::admin;
use pexper_support::store::Status;
use serde_json::json;
use sqlx::PgPool;

use crate::reveal::Reveal;
use crate::{keyring, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Requests, oldest first; no personal data.
    List {
        #[arg(long)]
        status: Option<Status>,
    },
    /// One request (by id or reference): what they wrote, what we answered.
    Show {
        id: String,
        #[command(flatten)]
        reveal: Reveal,
    },
    /// Answer by email: the body file's text (UTF-8; blank lines separate paragraphs).
    Reply {
        id: String,
        #[arg(long)]
        body_file: std::path::PathBuf,
    },
    /// Close a request.
    Close { id: String },
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::List { status } => {
            let rows = admin::list(pool, status).await?;
            output::rows(
                json,
                &["reference", "status", "replies", "created", "id"],
                &rows,
                |r| {
                    vec![
                        r.reference.clone(),
                        r.status.to_string(),
                        r.replies.to_string(),
                        r.created_at.date().to_string(),
                        r.id.to_string(),
                    ]
                },
            );
        }
        Command::Show { id, reveal } => {
            let row = found(pool, &id).await?;
            let keyring = keyring(config, pool).await?;
            let mut value = serde_json::to_value(&row)?;
            let opened = admin::open(pool, &keyring, &row).await?;
            if let (Some(v), serde_json::Value::Object(o)) =
                (value.as_object_mut(), serde_json::to_value(opened)?)
            {
                v.extend(o);
            }
            let what = || format!("the address of support request {}", row.reference);
            if let (true, Some(person)) = (
                reveal.record(config, pool, None, what).await?,
                row.person_id,
            ) {
                let address = person::email(&mut *pool.acquire().await?, &keyring, person).await?;
                value["email"] = json!(address.as_ref().map(|a| a.as_str()));
            }
            output::object(json, &value);
        }
        Command::Reply { id, body_file } => {
            let body = std::fs::read_to_string(&body_file)
                .with_context(|| format!("failed to read {}", body_file.display()))?;
            anyhow::ensure!(!body.trim().is_empty(), "the reply must say something");
            let row = found(pool, &id).await?;
            admin::reply(pool, &keyring(config, pool).await?, &row, body.trim()).await?;
            output::object(
                json,
                &json!({"reference": row.reference, "status": Status::Answered}),
            );
        }
        Command::Close { id } => {
            let row = found(pool, &id).await?;
            admin::close(pool, &row).await?;
            output::object(
                json,
                &json!({"reference": row.reference, "status": Status::Closed}),
            );
        }
    }
    Ok(())
}

async fn found(pool: &PgPool, id: &str) -> anyhow::Result<pexper_support::store::Row> {
    admin::find(pool, id)
        .await?
        .with_context(|| format!("no support request {id}"))
}
