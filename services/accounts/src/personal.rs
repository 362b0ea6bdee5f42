//! The accounts section of an export (when the account was opened, its sessions' devices —
//! never the password or its hash), erasure (the account, its sessions and links, its
//! pending sign-ups, and the address's failed sign-in count), and retention.

use std::collections::BTreeMap;

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::jobs::BackgroundJob;
use pexper_platform::person::{self, PersonId};
use pexper_platform::personal_data::{ErasureSummary, PersonalData, RetentionRule};
use sqlx::PgConnection;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, Default)]
pub struct AccountData;

#[derive(Debug, serde::Serialize, sqlx::FromRow)]
struct ExportedAccount {
    #[serde(with = "time::serde::rfc3339")]
    opened_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    password_changed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    disabled_at: Option<OffsetDateTime>,
}

/// A session as the export gives it: every one still stored, live or not.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
struct ExportedSession {
    id: uuid::Uuid,
    device: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    /// When the password was last typed in this session (export and deletion need it fresh).
    #[serde(with = "time::serde::rfc3339")]
    reauthenticated_at: OffsetDateTime,
}

/// A sign-up waiting for its address to be verified.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
struct PendingSignup {
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

impl PersonalData for AccountData {
    fn section(&self) -> &'static str {
        "account"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        _keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let row: Option<AccountRow> = sqlx::query_as(
            "SELECT id, created_at AS opened_at, password_changed_at, disabled_at
             FROM account WHERE person_id = $1",
        )
        .bind(person)
        .fetch_optional(&mut *conn)
        .await
        .context("failed to export an account")?;
        // A sign-up whose address is not verified yet is theirs too.
        let pending: Vec<PendingSignup> = sqlx::query_as(
            "SELECT created_at, expires_at FROM account_signup WHERE person_id = $1
             ORDER BY created_at",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to export pending sign-ups")?;
        let (account, sessions) = match row {
            None if pending.is_empty() => return Ok(serde_json::Value::Null),
            None => (serde_json::Value::Null, Vec::new()),
            Some(AccountRow { id, account }) => {
                let mut account = serde_json::to_value(account)?;
                account["id"] = serde_json::json!(id);
                let sessions: Vec<ExportedSession> = sqlx::query_as(
                    "SELECT id, device, created_at, last_seen_at, expires_at, reauthenticated_at
                     FROM account_session WHERE account_id = $1 ORDER BY created_at",
                )
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .context("failed to export sessions")?;
                (account, sessions)
            }
        };
        Ok(serde_json::json!({
            "account": account,
            "password": "stored only as an argon2id hash, which is not included",
            "sessions": sessions,
            "pending_signups": pending,
        }))
    }

    fn notice_audience(&self) -> Option<&'static str> {
        Some("SELECT person_id FROM account")
    }

    fn after_restore(&self) -> &'static [&'static str] {
        &[
            "DELETE FROM account_session",
            "UPDATE account_reset SET used_at = now() WHERE used_at IS NULL",
            // Reset requests and emails still queued in the backup would make new links as it
            // was then.
            "DELETE FROM job WHERE kind IN ('accounts.reset_request', 'accounts.reset_mail')",
        ]
    }

    fn holds(&self) -> Option<&'static str> {
        Some("SELECT person_id FROM account UNION SELECT person_id FROM account_signup")
    }

    fn retention(&self) -> Vec<RetentionRule> {
        vec![
            RetentionRule {
                name: "accounts.signups",
                keeps: "a sign-up never verified: until its link expires (2 days)",
                due: "SELECT count(*) FROM account_signup WHERE expires_at < now()".into(),
                apply: "DELETE FROM account_signup WHERE expires_at < now()".into(),
            },
            RetentionRule {
                name: "accounts.sessions",
                keeps: "a session: until it ends (7 days unused, 30 days after sign-in, or signed out)",
                due: "SELECT count(*) FROM account_session
                      WHERE expires_at < now() OR last_seen_at < now() - interval '7 days'".into(),
                apply: "DELETE FROM account_session
                        WHERE expires_at < now() OR last_seen_at < now() - interval '7 days'".into(),
            },
            RetentionRule {
                name: "accounts.reset_links",
                keeps: "a password-reset link: a day after it expired (an hour after it was sent)",
                due: "SELECT count(*) FROM account_reset WHERE expires_at < now() - interval '1 day'".into(),
                apply: "DELETE FROM account_reset WHERE expires_at < now() - interval '1 day'".into(),
            },
            RetentionRule {
                name: "accounts.reset_requests",
                keeps: "a password-reset request not yet decided (an address's keyed hash): its hour",
                due: "SELECT count(*) FROM job WHERE kind = 'accounts.reset_request'
                      AND status <> 'running' AND created_at < now() - interval '1 hour'".into(),
                apply: "DELETE FROM job WHERE kind = 'accounts.reset_request'
                        AND status <> 'running' AND created_at < now() - interval '1 hour'".into(),
            },
            RetentionRule {
                name: "accounts.failed_sign_ins",
                keeps: "the count of an address's failed sign-ins (under a keyed hash): a day after the last",
                due: "SELECT count(*) FROM signin_throttle WHERE updated_at < now() - interval '1 day'".into(),
                apply: "DELETE FROM signin_throttle WHERE updated_at < now() - interval '1 day'".into(),
            },
        ]
    }

    async fn erase(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        // Sessions and reset links go with the account (ON DELETE CASCADE).
        let accounts = sqlx::query("DELETE FROM account WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await
            .context("failed to delete an account")?
            .rows_affected();
        let signups = sqlx::query("DELETE FROM account_signup WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await
            .context("failed to delete pending sign-ups")?
            .rows_affected();
        let mut throttle = 0;
        if let Some(email) = person::email(conn, keyring, person).await? {
            // Reset decisions still queued carry the address's blind index, not the person.
            sqlx::query(
                "DELETE FROM job WHERE kind = $1 AND status <> 'running'
                 AND payload->>'email_index' = $2",
            )
            .bind(<crate::mail::DecideReset as BackgroundJob>::KIND)
            .bind(crate::mail::index_in_payload(&person::email_index(
                keyring, &email,
            )))
            .execute(&mut *conn)
            .await
            .context("failed to cancel reset decisions")?;
            let key = keyring.blind_index(crate::throttle::SIGNIN_INDEX, email.as_str());
            throttle = sqlx::query("DELETE FROM signin_throttle WHERE key = $1")
                .bind(key.as_slice())
                .execute(&mut *conn)
                .await
                .context("failed to delete a sign-in count")?
                .rows_affected();
        }
        Ok(ErasureSummary {
            section: "account",
            removed: BTreeMap::from([
                ("accounts", accounts),
                ("pending_signups", signups),
                ("failed_sign_in_counts", throttle),
            ]),
            kept: vec![],
        })
    }
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    id: crate::store::AccountId,
    #[sqlx(flatten)]
    account: ExportedAccount,
}
