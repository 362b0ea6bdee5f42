//! What `pexper-admin accounts …` does: the list, one account, disabling one, ending its
//! sessions. Each change is recorded in the privacy audit trail with the operator's name and
//! reason; nothing here shows an address (the CLI's `--email --reason` does, audited).

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::person::PersonId;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::store::{self, AccountId};

/// An account, as an operator sees it: no address, no password hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: AccountId,
    pub person_id: PersonId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub password_changed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    /// Live sessions.
    pub sessions: i64,
}

const SELECT: &str = "SELECT a.id, a.person_id, a.created_at, a.password_changed_at, a.disabled_at,
        (SELECT count(*) FROM account_session s
         WHERE s.account_id = a.id AND s.expires_at > now()
           AND s.last_seen_at > now() - interval '7 days') AS sessions
 FROM account a";

pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<Row>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} ORDER BY a.created_at"
    )))
    .fetch_all(pool)
    .await
    .context("failed to list accounts")
}

pub async fn find(pool: &PgPool, id: AccountId) -> anyhow::Result<Option<Row>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE a.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
        .context("failed to load an account")
}

/// Disables an account (no sign-in, no session) and ends its sessions; audited.
pub async fn disable(
    pool: &PgPool,
    keyring: &Keyring,
    id: AccountId,
    reason: &str,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE account SET disabled_at = coalesce(disabled_at, now()), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .context("failed to disable an account")?
    .rows_affected();
    anyhow::ensure!(updated == 1, "no account {id}");
    let ended = store::end_sessions(&mut tx, id, None).await?;
    pexper_privacy::admin::record_action(
        &mut tx,
        keyring,
        "account_disabled",
        &format!("account {id}, {ended} sessions ended"),
        reason,
    )
    .await?;
    tx.commit().await?;
    Ok(ended)
}

/// Ends every session of an account; audited.
pub async fn revoke_sessions(
    pool: &PgPool,
    keyring: &Keyring,
    id: AccountId,
    reason: &str,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    anyhow::ensure!(
        store::account(&mut tx, id).await?.is_some(),
        "no account {id}"
    );
    let ended = store::end_sessions(&mut tx, id, None).await?;
    pexper_privacy::admin::record_action(
        &mut tx,
        keyring,
        "sessions_revoked",
        &format!("account {id}, {ended} sessions ended"),
        reason,
    )
    .await?;
    tx.commit().await?;
    Ok(ended)
}
