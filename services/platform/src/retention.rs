//! Retention: how long each kind of personal data is kept, enforced by a recurring job.
//!
//! Each service states its rules next to its data (`PersonalData::retention`): a name, the
//! period in words (for `pexper-admin retention status` and PRIVACY.md), a query counting the
//! rows due and a statement removing them. One rule belongs to no service: a person whom no
//! service holds anything for any more (`PersonalData::holds`), with no job waiting for them,
//! is erased, their key destroyed and the erasure journalled like any other.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::crypto::Keyring;
use crate::jobs::{BackgroundJob, Job, JobError};
use crate::person::PersonId;
use crate::personal_data::Registry;
use crate::state::Platform;

/// The rule of people no service holds anything for, which is the platform's own.
const ORPHANS: &str = "people.unlinked";
const ORPHANS_KEEPS: &str =
    "a person (sealed address and key) that no service holds anything for: erased after a day";

/// A rule as `retention status` shows it.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub rule: &'static str,
    pub keeps: &'static str,
    pub due: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_run_at: Option<OffsetDateTime>,
    pub last_removed: Option<i64>,
}

/// Every rule, with what is due now and when it last ran.
pub async fn status(pool: &PgPool, registry: &Registry) -> anyhow::Result<Vec<RuleStatus>> {
    let mut rules = Vec::new();
    for rule in registry.retention() {
        let due: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(rule.due.as_ref()))
            .fetch_one(pool)
            .await
            .with_context(|| format!("failed to count what {} has due", rule.name))?;
        rules.push((rule.name, rule.keeps, due));
    }
    rules.push((
        ORPHANS,
        ORPHANS_KEEPS,
        orphans(pool, registry).await?.len() as i64,
    ));
    let mut out = Vec::new();
    for (rule, keeps, due) in rules {
        let last: Option<(OffsetDateTime, i64)> =
            sqlx::query_as("SELECT last_run_at, last_removed FROM retention_run WHERE rule = $1")
                .bind(rule)
                .fetch_optional(pool)
                .await?;
        out.push(RuleStatus {
            rule,
            keeps,
            due,
            last_run_at: last.map(|(at, _)| at),
            last_removed: last.map(|(_, n)| n),
        });
    }
    Ok(out)
}

/// Applies every rule once; returns what each removed. The service rules run first, so a
/// person they leave with nothing is erased in the same run.
pub async fn run(
    pool: &PgPool,
    keyring: &Keyring,
    registry: &Registry,
) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let mut done = Vec::new();
    for rule in registry.retention() {
        let removed = sqlx::query(sqlx::AssertSqlSafe(rule.apply.as_ref()))
            .execute(pool)
            .await
            .with_context(|| format!("retention rule {} failed", rule.name))?
            .rows_affected() as i64;
        record(pool, rule.name, removed).await?;
        done.push((rule.name, removed));
    }
    let mut erased = 0;
    for person in orphans(pool, registry).await? {
        // The list is a moment old: a sign-up, purchase, support or privacy request may have
        // come for this person since. So the person is locked (a use case that finds them
        // takes a key-share lock on the row, `person::find_or_create`, and so waits for this
        // or is waited for) and the rule checked again, in the transaction that erases.
        let mut tx = pool.begin().await?;
        let locked: Option<PersonId> =
            sqlx::query_scalar("SELECT id FROM person WHERE id = $1 FOR UPDATE")
                .bind(person)
                .fetch_optional(&mut *tx)
                .await
                .context("failed to lock an unlinked person")?;
        if locked.is_some() && is_orphan(&mut tx, registry, person).await? {
            registry.erase(&mut tx, keyring, person).await?;
            erased += 1;
        }
        tx.commit().await?;
    }
    record(pool, ORPHANS, erased).await?;
    done.push((ORPHANS, erased));
    Ok(done)
}

async fn record(pool: &PgPool, rule: &str, removed: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO retention_run (rule, last_run_at, last_removed) VALUES ($1, now(), $2)
         ON CONFLICT (rule) DO UPDATE SET last_run_at = now(), last_removed = $2",
    )
    .bind(rule)
    .bind(removed)
    .execute(pool)
    .await
    .context("failed to record a retention run")?;
    Ok(())
}

/// The rule for people older than a day whom no service holds anything for, who are not
/// being erased and have no job waiting, as a condition on `p`.
fn orphan_condition(registry: &Registry) -> String {
    let holds = registry.holds();
    let held = if holds.is_empty() {
        "SELECT NULL::uuid WHERE false".to_owned()
    } else {
        holds.join(" UNION ")
    };
    // The queries are each service's own constants, not input.
    format!(
        "p.erasing_since IS NULL AND p.created_at < now() - interval '1 day'
         AND p.id NOT IN (SELECT person_id FROM ({held}) h WHERE person_id IS NOT NULL)
         AND NOT EXISTS (SELECT 1 FROM job j WHERE j.person_id = p.id)"
    )
}

async fn orphans(pool: &PgPool, registry: &Registry) -> anyhow::Result<Vec<PersonId>> {
    let sql = format!(
        "SELECT p.id FROM person p WHERE {} ORDER BY p.id",
        orphan_condition(registry)
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .context("failed to find unlinked people")
}

/// Whether `person` is still unlinked, read now (a statement of its own sees what committed
/// before it started, so after the row lock: everything that was waiting on it).
async fn is_orphan(
    conn: &mut sqlx::PgConnection,
    registry: &Registry,
    person: PersonId,
) -> anyhow::Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM person p WHERE p.id = $1 AND {})",
        orphan_condition(registry)
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(person)
        .fetch_one(conn)
        .await
        .context("failed to check an unlinked person again")
}

/// The recurring job that applies every rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Retention {}

impl BackgroundJob for Retention {
    const KIND: &'static str = "platform.retention";
    type Context = Platform;

    async fn run(self, platform: Platform, _job: &Job) -> Result<(), JobError> {
        let done = run(&platform.pool, &platform.keyring, &platform.personal_data).await?;
        let removed: i64 = done.iter().map(|(_, n)| n).sum();
        tracing::info!(removed, "retention applied");
        Ok(())
    }
}
