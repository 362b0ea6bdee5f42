//! What `pexper-admin waitlist …` and `pexper-admin mail broadcast` do. Statistics never open
//! an address; only `export` does, for the operator who asks for it.

use anyhow::Context;
use pexper_platform::crypto::{Keyring, sha256};
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person::{self, PersonId, Purpose};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// Unsubscribes a person from product email, as their link does (a complaint report does).
pub use crate::store::unsubscribe;

use crate::emails::{Broadcast, Invitation};
use crate::store::EntryStatus;

/// Rows handled per transaction by the long-running commands.
const BATCH: i64 = 1000;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Stats {
    pub pending: i64,
    pub confirmed: i64,
    pub invited: i64,
    pub subscribed: i64,
    pub unsubscribed: i64,
    pub referrals: i64,
    pub signups_last_7_days: i64,
    pub suppressed_addresses: i64,
}

pub async fn stats(pool: &PgPool) -> anyhow::Result<Stats> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                count(*) FILTER (WHERE status = 'confirmed') AS confirmed,
                count(*) FILTER (WHERE status = 'invited') AS invited,
                count(*) FILTER (WHERE subscribed) AS subscribed,
                count(*) FILTER (WHERE unsubscribed_at IS NOT NULL AND NOT subscribed) AS unsubscribed,
                coalesce(sum(referrals), 0)::bigint AS referrals,
                count(*) FILTER (WHERE created_at > now() - interval '7 days') AS signups_last_7_days,
                (SELECT count(*) FROM email_suppression) AS suppressed_addresses
         FROM waitlist_entry",
    )
    .fetch_one(pool)
    .await
    .context("failed to compute waitlist statistics")
}

/// One entry, as `list` shows it (no address) and `export` writes it (with the address).
#[derive(Debug, Serialize)]
pub struct Row {
    pub position: Option<i64>,
    pub person_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub status: EntryStatus,
    pub subscribed: bool,
    pub referrals: i32,
    pub source: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub signed_up_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub confirmed_at: Option<OffsetDateTime>,
}

type RawRow = (
    Option<i64>,
    Uuid,
    EntryStatus,
    bool,
    i32,
    Option<String>,
    OffsetDateTime,
    Option<OffsetDateTime>,
);

/// Every entry, those waiting first in line order, then the invited, then the pending.
/// With a keyring, addresses are opened (export).
pub async fn rows(pool: &PgPool, bump: i64, keyring: Option<&Keyring>) -> anyhow::Result<Vec<Row>> {
    let raw: Vec<RawRow> = sqlx::query_as(
        "SELECT CASE WHEN status = 'confirmed' THEN
                    row_number() OVER (PARTITION BY status = 'confirmed'
                        ORDER BY confirm_seq - referrals * $1, -referrals, confirm_seq) END,
                person_id, status, subscribed, referrals, source, created_at, confirmed_at
         FROM waitlist_entry
         ORDER BY CASE status WHEN 'confirmed' THEN 0 WHEN 'invited' THEN 1 ELSE 2 END,
                  confirm_seq - referrals * $1, -referrals, confirm_seq, created_at",
    )
    .bind(bump)
    .fetch_all(pool)
    .await
    .context("failed to list the waitlist")?;
    let mut conn = pool.acquire().await?;
    let mut out = Vec::with_capacity(raw.len());
    for (position, person_id, status, subscribed, referrals, source, signed_up_at, confirmed_at) in
        raw
    {
        let person = PersonId(person_id);
        let email = match keyring {
            Some(k) if person::may_process(&mut conn, person, Purpose::OperatorExport).await? => {
                person::email(&mut conn, k, person)
                    .await?
                    .map(|e| e.as_str().to_owned())
            }
            // Restricted: the row, without the address.
            _ => None,
        };
        out.push(Row {
            position,
            person_id,
            email,
            status,
            subscribed,
            referrals,
            source,
            signed_up_at,
            confirmed_at,
        });
    }
    Ok(out)
}

/// What a broadcast or an invitation run did.
#[derive(Debug, Default, Serialize)]
pub struct Queued {
    /// People the mail was queued for by this run.
    pub queued: u64,
    /// People who already had it (an earlier run), or who were skipped.
    pub already: u64,
    pub dry_run: bool,
    /// The broadcast this run queued (not for a dry run or an invitation run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<Uuid>,
}

/// Where a broadcast's delivery stands.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Delivery {
    /// Recipients it was queued for, by every run of the command.
    pub recipients: i64,
    /// Their emails still queued or being sent.
    pub outstanding: i64,
    /// Emails that gave up (`dead`, see `pexper-admin jobs list`).
    pub failed: i64,
}

/// How far a broadcast's delivery has come: its recipients, and its jobs still in the queue.
pub async fn delivery(pool: &PgPool, broadcast: Uuid) -> anyhow::Result<Delivery> {
    let (recipients, outstanding, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM broadcast_delivery WHERE broadcast_id = $1),
                count(*) FILTER (WHERE status <> 'dead'),
                count(*) FILTER (WHERE status = 'dead')
         FROM job WHERE kind = $2 AND payload->>'broadcast_id' = $1::text",
    )
    .bind(broadcast)
    .bind(<Broadcast as pexper_platform::jobs::BackgroundJob>::KIND)
    .fetch_one(pool)
    .await
    .context("failed to read a broadcast's delivery")?;
    Ok(Delivery {
        recipients,
        outstanding,
        failed,
    })
}

/// Queues `subject`/`body` to every confirmed, subscribed person who has not had this very
/// broadcast yet. Re-running the same command continues it; nobody gets it twice.
pub async fn broadcast(
    pool: &PgPool,
    template: &str,
    subject: &str,
    body: &str,
    dry_run: bool,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Queued> {
    let audience: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM waitlist_entry WHERE subscribed AND status IN ('confirmed', 'invited')",
    )
    .fetch_one(pool)
    .await?;
    let hash = sha256(format!("{template}\0{subject}\0{body}").as_bytes());
    let existing: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM broadcast WHERE content_hash = $1")
            .bind(hash.as_slice())
            .fetch_optional(pool)
            .await?;
    if dry_run {
        let already: i64 = match existing {
            Some(id) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM broadcast_delivery WHERE broadcast_id = $1",
                )
                .bind(id)
                .fetch_one(pool)
                .await?
            }
            None => 0,
        };
        return Ok(Queued {
            queued: (audience - already).max(0) as u64,
            already: already as u64,
            dry_run: true,
            broadcast_id: None,
        });
    }
    sqlx::query(
        "INSERT INTO broadcast (id, content_hash, template, subject, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT ON CONSTRAINT broadcast_content_hash_key DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(hash.as_slice())
    .bind(template)
    .bind(subject)
    .bind(body)
    .execute(pool)
    .await?;
    let id: Uuid = sqlx::query_scalar("SELECT id FROM broadcast WHERE content_hash = $1")
        .bind(hash.as_slice())
        .fetch_one(pool)
        .await?;
    let mut result = Queued::default();
    let mut after = PersonId(Uuid::nil());
    loop {
        // Each batch, in one statement: claim recipients (the primary key refuses repeats)
        // and queue their jobs, with one wake-up for the workers.
        let job = NewJob::new(&Broadcast { broadcast_id: id });
        let people: Vec<PersonId> = sqlx::query_scalar(
            "WITH delivery AS (
                 INSERT INTO broadcast_delivery (broadcast_id, person_id)
                 SELECT $1, e.person_id FROM waitlist_entry e
                 WHERE e.subscribed AND e.status IN ('confirmed', 'invited')
                   AND may_process(e.person_id, 'product_email')
                   AND e.person_id > $6
                   AND NOT EXISTS (SELECT 1 FROM broadcast_delivery d
                                   WHERE d.broadcast_id = $1 AND d.person_id = e.person_id)
                 ORDER BY e.person_id LIMIT $2
                 ON CONFLICT DO NOTHING
                 RETURNING person_id
             ), queued AS (
                 INSERT INTO job (id, kind, payload, person_id, max_attempts)
                 SELECT gen_random_uuid(), $3, $4, person_id, $5 FROM delivery
             )
             SELECT person_id FROM delivery",
        )
        .bind(id)
        .bind(BATCH)
        .bind(job.kind())
        .bind(job.payload())
        .bind(job.attempts_allowed())
        .bind(after)
        .fetch_all(pool)
        .await?;
        jobs::wake_workers(pool, job.kind()).await?;
        // On from the last of this batch: each batch reads only people after it.
        after = people.iter().copied().max().unwrap_or(after);
        if people.is_empty() {
            break;
        }
        result.queued += people.len() as u64;
        progress(result.queued, audience as u64);
    }
    result.already = (audience as u64).saturating_sub(result.queued);
    result.broadcast_id = Some(id);
    Ok(result)
}

/// Marks the next `count` waiting people (by place in line, subscribed) invited and queues
/// their invitation, in batches.
pub async fn invite(
    pool: &PgPool,
    count: i64,
    bump: i64,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Queued> {
    let mut result = Queued::default();
    while (result.queued as i64) < count {
        let take = (count - result.queued as i64).min(BATCH);
        let mut tx = pool.begin().await?;
        let people: Vec<PersonId> = sqlx::query_scalar(
            "UPDATE waitlist_entry SET status = 'invited', invited_at = now(), updated_at = now()
             WHERE person_id IN (
                 SELECT person_id FROM waitlist_entry
                 WHERE status = 'confirmed' AND subscribed
                   AND may_process(person_id, 'invitation')
                 ORDER BY confirm_seq - referrals * $1, -referrals, confirm_seq
                 LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING person_id",
        )
        .bind(bump)
        .bind(take)
        .fetch_all(&mut *tx)
        .await?;
        for person in &people {
            jobs::enqueue(&mut tx, NewJob::new(&Invitation {}).for_person(*person)).await?;
        }
        tx.commit().await?;
        if people.is_empty() {
            break;
        }
        result.queued += people.len() as u64;
        progress(result.queued, count as u64);
    }
    Ok(result)
}
