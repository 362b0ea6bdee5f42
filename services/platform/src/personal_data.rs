//! The one trait every service implements for the data it keeps about a person, and the one
//! registry the privacy service drives for access (export) and deletion (erase) requests.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::crypto::Keyring;
use crate::person::{self, PersonId};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an erase did, in counts and sentences: never personal data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErasureSummary {
    pub section: &'static str,
    /// Rows deleted or unlinked, by kind.
    pub removed: BTreeMap<&'static str, u64>,
    /// What was kept and why (e.g. "2 purchase records, unlinked, kept for tax law").
    pub kept: Vec<String>,
}

/// One kind of personal data and how long it stays (enforced by `retention`).
#[derive(Debug, Clone)]
pub struct RetentionRule {
    /// `service.what`, e.g. `waitlist.unconfirmed`.
    pub name: &'static str,
    /// The period, in words: "unconfirmed signups, 30 days after their link expired".
    pub keeps: &'static str,
    /// `SELECT count(*) …` of the rows due now.
    pub due: Cow<'static, str>,
    /// The statement that removes (or unlinks) them.
    pub apply: Cow<'static, str>,
}

/// A time as every export section writes it: RFC 3339.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A service's view of one person's data.
pub trait PersonalData: Send + Sync {
    /// The section name in an export (`"waitlist"`, `"payments"`, …).
    fn section(&self) -> &'static str;

    /// Everything this service holds about `person`, as one JSON value, decrypted.
    fn export(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> impl Future<Output = anyhow::Result<serde_json::Value>> + Send;

    /// Removes (or unlinks, where law requires a record) what this service holds about
    /// `person`. Runs inside the erasure's transaction, before the person's key is destroyed.
    fn erase(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> impl Future<Output = anyhow::Result<ErasureSummary>> + Send;

    /// Whom this service has a relationship with that a legal notice (a privacy-policy
    /// change) must reach — buyers, confirmed waitlist members, account holders — as a query
    /// selecting `person_id`. `None`: nobody on this service's account.
    fn notice_audience(&self) -> Option<&'static str> {
        None
    }

    /// Whom this service still holds something for, as a query selecting `person_id`: a
    /// person no service holds anything for is erased by retention (`retention`).
    fn holds(&self) -> Option<&'static str> {
        None
    }

    /// How long this service keeps each kind of data, enforced by the retention job.
    fn retention(&self) -> Vec<RetentionRule> {
        Vec::new()
    }

    /// Statements a restore runs once the backup is back (`db::backup::restore`): what must
    /// not come back from a backup taken before a sign-out or a password change (sessions,
    /// unused reset links).
    fn after_restore(&self) -> &'static [&'static str] {
        &[]
    }

    /// Brings rows from before a migration into the shape this service's code reads, where
    /// that needs the keys, which a migration does not have (payments seals what migration 24
    /// set aside). Runs before anything reads them: at server start, in the admin commands
    /// that load the keys, and after a restore or replay, before erasures are replayed.
    /// Must be safe to run again, and from several processes at once.
    fn prepare(
        &self,
        _pool: &PgPool,
        _keyring: &Keyring,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// `PersonalData` as the registry holds it, behind `dyn`: implementations write plain
/// `async fn`s, and this blanket impl boxes their futures, once, here.
pub trait DynPersonalData: Send + Sync {
    fn section(&self) -> &'static str;

    fn export<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        keyring: &'a Keyring,
        person: PersonId,
    ) -> BoxFuture<'a, anyhow::Result<serde_json::Value>>;

    fn erase<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        keyring: &'a Keyring,
        person: PersonId,
    ) -> BoxFuture<'a, anyhow::Result<ErasureSummary>>;

    fn notice_audience(&self) -> Option<&'static str>;

    fn holds(&self) -> Option<&'static str>;

    fn retention(&self) -> Vec<RetentionRule>;

    fn after_restore(&self) -> &'static [&'static str];

    fn prepare<'a>(
        &'a self,
        pool: &'a PgPool,
        keyring: &'a Keyring,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

impl<T: PersonalData> DynPersonalData for T {
    fn notice_audience(&self) -> Option<&'static str> {
        PersonalData::notice_audience(self)
    }

    fn holds(&self) -> Option<&'static str> {
        PersonalData::holds(self)
    }

    fn retention(&self) -> Vec<RetentionRule> {
        PersonalData::retention(self)
    }

    fn after_restore(&self) -> &'static [&'static str] {
        PersonalData::after_restore(self)
    }

    fn prepare<'a>(
        &'a self,
        pool: &'a PgPool,
        keyring: &'a Keyring,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(PersonalData::prepare(self, pool, keyring))
    }

    fn section(&self) -> &'static str {
        PersonalData::section(self)
    }

    fn export<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        keyring: &'a Keyring,
        person: PersonId,
    ) -> BoxFuture<'a, anyhow::Result<serde_json::Value>> {
        Box::pin(PersonalData::export(self, conn, keyring, person))
    }

    fn erase<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        keyring: &'a Keyring,
        person: PersonId,
    ) -> BoxFuture<'a, anyhow::Result<ErasureSummary>> {
        Box::pin(PersonalData::erase(self, conn, keyring, person))
    }
}

/// Every service's `PersonalData`, in export order.
#[derive(Clone, Default)]
pub struct Registry {
    parts: Vec<Arc<dyn DynPersonalData>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.parts.iter().map(|p| p.section()))
            .finish()
    }
}

impl Registry {
    pub fn new(parts: Vec<Arc<dyn DynPersonalData>>) -> Self {
        Self { parts }
    }

    pub fn sections(&self) -> Vec<&'static str> {
        self.parts.iter().map(|p| p.section()).collect()
    }

    /// Every service's retention rules.
    pub fn retention(&self) -> Vec<RetentionRule> {
        self.parts.iter().flat_map(|p| p.retention()).collect()
    }

    /// Every service's `PersonalData::prepare`, in turn.
    pub async fn prepare(&self, pool: &PgPool, keyring: &Keyring) -> anyhow::Result<()> {
        for part in &self.parts {
            part.prepare(pool, keyring)
                .await
                .with_context(|| format!("failed to prepare the {} section", part.section()))?;
        }
        Ok(())
    }

    /// Every service's statements to run after a restore (`PersonalData::after_restore`).
    pub fn after_restore(&self) -> Vec<&'static str> {
        self.parts
            .iter()
            .flat_map(|p| p.after_restore().iter().copied())
            .collect()
    }

    /// Every service's query of whom it holds something for.
    pub fn holds(&self) -> Vec<&'static str> {
        self.parts.iter().filter_map(|p| p.holds()).collect()
    }

    /// Every person some service has a relationship with (`PersonalData::notice_audience`),
    /// once each, leaving out anyone being erased.
    pub async fn notice_audience(&self, conn: &mut PgConnection) -> anyhow::Result<Vec<PersonId>> {
        let queries: Vec<&str> = self
            .parts
            .iter()
            .filter_map(|p| p.notice_audience())
            .collect();
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        // The queries are each service's own constants, not input.
        let sql = format!(
            "SELECT DISTINCT a.person_id FROM ({}) a JOIN person p ON p.id = a.person_id
             WHERE p.erasing_since IS NULL ORDER BY 1",
            queries.join(" UNION ")
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(conn)
            .await
            .context("failed to list the notice audience")
    }

    /// One JSON object with a section per service.
    pub async fn export(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let mut doc = serde_json::Map::new();
        for part in &self.parts {
            let section = part
                .export(conn, keyring, person)
                .await
                .with_context(|| format!("failed to export the {} section", part.section()))?;
            doc.insert(part.section().to_owned(), section);
        }
        Ok(serde_json::Value::Object(doc))
    }

    /// Runs every service's erase, then destroys the person's data key. Call inside a
    /// transaction: either all of it happens or none.
    pub async fn erase(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<Vec<ErasureSummary>> {
        let summaries = self.erase_sections(conn, keyring, person).await?;
        person::destroy(conn, person).await?;
        Ok(summaries)
    }

    /// Every service's erase, leaving the person row (their sealed address and data key) for a
    /// last message — the deletion confirmation — after which the caller must
    /// `person::destroy` them. The row is detached from the address (`person::detach`): what
    /// arrives for it meanwhile goes to a new person, and outlives this one.
    pub async fn erase_sections(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<Vec<ErasureSummary>> {
        let mut summaries = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            summaries.push(
                part.erase(conn, keyring, person)
                    .await
                    .with_context(|| format!("failed to erase the {} section", part.section()))?,
            );
        }
        person::detach(conn, person).await?;
        person::journal_erasure(conn, person).await?;
        Ok(summaries)
    }
}

/// The platform's own section: the address, and the history of emails sent to it; and the
/// platform's own retention rules.
#[derive(Debug, Clone, Copy)]
pub struct EmailRecords {
    backup_retention_days: u32,
}

impl EmailRecords {
    pub fn new(config: &crate::Config) -> Self {
        Self {
            backup_retention_days: config.backup_retention_days,
        }
    }
}

impl PersonalData for EmailRecords {
    fn section(&self) -> &'static str {
        "email"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let address = person::email(conn, keyring, person).await?;
        let history: Vec<(String, Option<String>, time::OffsetDateTime, i32)> = sqlx::query_as(
            "SELECT template, message_id, sent_at, soft_bounces FROM email_event
             WHERE person_id = $1 ORDER BY sent_at",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to read email history")?;
        let history: Vec<_> = history
            .into_iter()
            .map(|(template, message_id, sent_at, soft_bounces)| {
                serde_json::json!({
                    "email": template,
                    "message_id": message_id,
                    "sent_at": rfc3339(sent_at),
                    "soft_bounces": soft_bounces,
                })
            })
            .collect();
        let known_since: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT created_at FROM person WHERE id = $1")
                .bind(person)
                .fetch_optional(&mut *conn)
                .await
                .context("failed to read a person")?;
        let suppressed = match &address {
            Some(address) => crate::suppression::status(conn, keyring, address).await?,
            None => None,
        };
        let restricted = person::restricted_since(conn, person).await?;
        Ok(serde_json::json!({
            "person_id": person,
            "known_since": known_since.map(rfc3339),
            "address": address.as_ref().map(|a| a.as_str()),
            "emails_sent": history,
            "suppressed": suppressed.map(|(reason, since)| serde_json::json!({
                "reason": reason,
                "since": rfc3339(since),
            })),
            "processing_restricted_since": restricted.map(rfc3339),
        }))
    }

    fn retention(&self) -> Vec<RetentionRule> {
        // A day past the backups' horizon: a backup taken just before an erasure is the last
        // that could bring the person back, and it is gone by then.
        let journal_past = format!(
            "erased_at < now() - make_interval(days => {})",
            u64::from(self.backup_retention_days) + 1
        );
        vec![
            RetentionRule {
                name: "mail.history",
                keeps: "the history of emails sent to a person (template, time): 2 years",
                due: "SELECT count(*) FROM email_event WHERE sent_at < now() - interval '2 years'".into(),
                apply: "DELETE FROM email_event WHERE sent_at < now() - interval '2 years'".into(),
            },
            RetentionRule {
                name: "mail.reports",
                keeps: "hashes of bounce and complaint reports already read: 1 year",
                due: "SELECT count(*) FROM mail_report WHERE received_at < now() - interval '1 year'".into(),
                apply: "DELETE FROM mail_report WHERE received_at < now() - interval '1 year'".into(),
            },
            RetentionRule {
                name: "platform.erasure_journal",
                keeps: "the erasure journal (a SHA-256 of an erased person's id, and when): as \
                        long as a backup taken before the erasure may be restored, \
                        PEXPER_BACKUP_RETENTION_DAYS (30 by default) and a day",
                due: format!("SELECT count(*) FROM erasure_journal WHERE {journal_past}").into(),
                apply: format!("DELETE FROM erasure_journal WHERE {journal_past}").into(),
            },
            RetentionRule {
                name: "jobs.dead",
                keeps: "jobs given up on (ids, at most an address's keyed hash): 30 days",
                due: "SELECT count(*) FROM job WHERE status = 'dead' AND updated_at < now() - interval '30 days'".into(),
                apply: "DELETE FROM job WHERE status = 'dead' AND updated_at < now() - interval '30 days'".into(),
            },
        ]
    }

    async fn erase(
        &self,
        conn: &mut PgConnection,
        _keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        let jobs = crate::jobs::cancel_for_person(conn, person).await?;
        let history = sqlx::query("DELETE FROM email_event WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await
            .context("failed to delete email history")?
            .rows_affected();
        Ok(ErasureSummary {
            section: PersonalData::section(self),
            removed: BTreeMap::from([("queued_jobs", jobs), ("email_history", history)]),
            kept: vec![],
        })
    }
}
