//! `pexper-admin retention`: how long each kind of personal data is kept, what is due now, and
//! applying the rules by hand (the server's recurring job applies them every period).

use clap::Subcommand;
use pexper_platform::{Config, retention};
use serde_json::json;
use sqlx::PgPool;

use crate::{keyring, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every rule: what it keeps and for how long, the rows due now, its last run.
    Status,
    /// Apply every rule now.
    Run,
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    let registry = pexper_server::personal_data(config);
    match command {
        Command::Status => {
            let rules = retention::status(pool, &registry).await?;
            output::rows(
                json,
                &["rule", "due", "last run", "removed", "keeps"],
                &rules,
                |r| {
                    vec![
                        r.rule.to_owned(),
                        r.due.to_string(),
                        r.last_run_at
                            .map(|t| t.date().to_string())
                            .unwrap_or_else(|| "never".into()),
                        r.last_removed
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into()),
                        r.keeps.to_owned(),
                    ]
                },
            );
        }
        Command::Run => {
            let done = retention::run(pool, &keyring(config, pool).await?, &registry).await?;
            let removed: serde_json::Map<String, serde_json::Value> = done
                .into_iter()
                .map(|(rule, n)| (rule.to_owned(), json!(n)))
                .collect();
            output::object(json, &json!({ "removed": removed }));
        }
    }
    Ok(())
}
