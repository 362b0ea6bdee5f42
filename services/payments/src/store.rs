//! Purchases, refunds, disputes and licences in Postgres, applied so that neither duplicate
//! deliveries nor the order events arrive in change the outcome.
//!
//! - An event id is recorded first in the event's transaction: a redelivery (even a concurrent
//!   one, which waits on the primary key) finds it and does nothing.
//! - A purchase is keyed by its Checkout Session; its payment facts are sticky flags.
//! - Refunds and disputes are kept as rows whether or not their purchase exists yet, and a
//!   purchase's refund/dispute state is recomputed from all of them whenever either side
//!   changes. An advisory lock on the payment intent serialises the two sides, so a refund
//!   committed a moment before its purchase is still seen.

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::person::PersonId;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::seal::{self, AdjustmentRecord, PurchaseRecord, payment_hash, session_hash};

pexper_platform::id!(PurchaseId);

pexper_platform::text_enum!(
    /// A purchase's state, computed from its facts (`status`), never set by an event alone.
    pub enum PurchaseStatus {
        Unpaid = "unpaid",
        Paid = "paid",
        PaymentFailed = "payment_failed",
        PartiallyRefunded = "partially_refunded",
        Refunded = "refunded",
        Disputed = "disputed",
        DisputeLost = "dispute_lost",
    }
);

/// What we record of a verified event before acting on it.
#[derive(Debug)]
pub struct EventRecord<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub livemode: bool,
    pub occurred_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// A refund or dispute whose purchase we have not seen yet: kept for when it lands.
    Pending,
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Pending => "pending",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Records the event id; `false` if it was recorded already (a redelivery).
pub async fn record_event(
    conn: &mut PgConnection,
    event: &EventRecord<'_>,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO stripe_event (id, type, livemode, occurred_at, outcome)
         VALUES ($1, $2, $3, $4, 'ignored')
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(event.id)
    .bind(event.kind)
    .bind(event.livemode)
    .bind(event.occurred_at)
    .execute(conn)
    .await
    .context("failed to record a Stripe event")?;
    Ok(inserted.rows_affected() == 1)
}

/// Records what became of an event, and which payment (session, intent or charge) it was
/// about, as a keyed hash (`seal::ref_hash`).
pub async fn set_outcome(
    conn: &mut PgConnection,
    event_id: &str,
    outcome: Outcome,
    payment_ref: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE stripe_event SET outcome = $2, payment_ref = $3 WHERE id = $1")
        .bind(event_id)
        .bind(outcome.as_str())
        .bind(payment_ref)
        .execute(conn)
        .await
        .context("failed to record an event's outcome")?;
    Ok(())
}

/// Serialises everything that touches one payment (its session, its intent) until commit.
pub async fn lock(conn: &mut PgConnection, key: &str) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('payments:' || $1, 0))")
        .bind(key)
        .execute(conn)
        .await
        .context("failed to lock a payment")?;
    Ok(())
}

/// A Checkout Session as one event describes it.
#[derive(Debug)]
pub struct SessionFacts {
    pub session_id: String,
    pub payment_intent_id: Option<String>,
    pub product: String,
    pub price_id: Option<String>,
    pub amount_total: i64,
    pub currency: String,
    pub country: Option<String>,
    pub livemode: bool,
    pub created_at: OffsetDateTime,
    pub paid: bool,
    pub failed: bool,
    pub occurred_at: OffsetDateTime,
}

/// The purchase of this session, if we have it.
pub async fn purchase_of_session(
    conn: &mut PgConnection,
    keyring: &Keyring,
    session_id: &str,
) -> anyhow::Result<Option<PurchaseId>> {
    sqlx::query_scalar("SELECT id FROM purchase WHERE checkout_session_hash = $1")
        .bind(session_hash(keyring, session_id))
        .fetch_optional(conn)
        .await
        .context("failed to look up a purchase")
}

/// Creates the purchase of a session we have not seen. Call under `lock(session_id)`.
pub async fn insert_purchase(
    conn: &mut PgConnection,
    keyring: &Keyring,
    facts: &SessionFacts,
    person: Option<PersonId>,
) -> anyhow::Result<PurchaseId> {
    let id = PurchaseId(Uuid::now_v7());
    let record = PurchaseRecord {
        session: Some(facts.session_id.clone()),
        payment_intent: facts.payment_intent_id.clone(),
        charge: None,
        price: facts.price_id.clone(),
        amount_total: facts.amount_total,
        currency: facts.currency.clone(),
        country: facts.country.clone(),
        amount_refunded: 0,
        dispute_status: None,
    };
    sqlx::query(
        "INSERT INTO purchase (id, checkout_session_hash, payment_intent_hash, person_id, product,
                               livemode, paid_at, payment_failed_at, status, created_at,
                               record_sealed)
         VALUES ($1, $2, $3, $4, $5, $6,
                 CASE WHEN $7 THEN $9::timestamptz END, CASE WHEN $8 THEN $9::timestamptz END,
                 'unpaid', $10, $11)",
    )
    .bind(id)
    .bind(session_hash(keyring, &facts.session_id))
    .bind(
        facts
            .payment_intent_id
            .as_deref()
            .map(|pi| payment_hash(keyring, pi)),
    )
    .bind(person)
    .bind(&facts.product)
    .bind(facts.livemode)
    .bind(facts.paid)
    .bind(facts.failed)
    .bind(facts.occurred_at)
    .bind(facts.created_at)
    .bind(seal_record(keyring, id, &record))
    .execute(conn)
    .await
    .context("failed to insert a purchase")?;
    Ok(id)
}

pub fn seal_record(keyring: &Keyring, id: PurchaseId, record: &PurchaseRecord) -> Vec<u8> {
    seal::seal(keyring, "purchase", "record_sealed", id.0, record)
}

/// Opens a purchase's sealed record.
pub fn open_record(
    keyring: &Keyring,
    id: PurchaseId,
    sealed: Option<&[u8]>,
) -> anyhow::Result<PurchaseRecord> {
    seal::open(keyring, "purchase", "record_sealed", id.0, sealed)
}

/// A purchase's record, locked until commit, for a change to it.
async fn record_for_update(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: PurchaseId,
) -> anyhow::Result<PurchaseRecord> {
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT record_sealed FROM purchase WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .context("failed to load a purchase")?;
    open_record(keyring, id, sealed.as_deref())
}

/// Adds what a later event for the same session says. Flags only ever turn on; the buyer
/// link is never rewritten (an erased buyer stays erased).
pub async fn update_purchase(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: PurchaseId,
    facts: &SessionFacts,
) -> anyhow::Result<()> {
    let mut record = record_for_update(conn, keyring, id).await?;
    if record.payment_intent.is_none() {
        record.payment_intent = facts.payment_intent_id.clone();
    }
    sqlx::query(
        "UPDATE purchase SET
             payment_intent_hash = $2,
             paid_at = CASE WHEN $3 THEN LEAST(COALESCE(paid_at, $5), $5) ELSE paid_at END,
             payment_failed_at = CASE WHEN $4 THEN COALESCE(payment_failed_at, $5)
                                      ELSE payment_failed_at END,
             record_sealed = $6,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(
        record
            .payment_intent
            .as_deref()
            .map(|pi| payment_hash(keyring, pi)),
    )
    .bind(facts.paid)
    .bind(facts.failed)
    .bind(facts.occurred_at)
    .bind(seal_record(keyring, id, &record))
    .execute(conn)
    .await
    .context("failed to update a purchase")?;
    Ok(())
}

/// A refund or a dispute event, kept whether or not its purchase is here yet.
#[derive(Debug)]
pub enum Adjustment {
    /// `amount_refunded` is the charge's cumulative total.
    Refund {
        payment_intent_id: Option<String>,
        charge_id: String,
        amount_refunded: i64,
    },
    Dispute {
        payment_intent_id: Option<String>,
        charge_id: Option<String>,
        status: String,
    },
}

impl Adjustment {
    pub fn payment_intent_id(&self) -> Option<&str> {
        match self {
            Adjustment::Refund {
                payment_intent_id, ..
            }
            | Adjustment::Dispute {
                payment_intent_id, ..
            } => payment_intent_id.as_deref(),
        }
    }

    pub fn charge_id(&self) -> Option<&str> {
        match self {
            Adjustment::Refund { charge_id, .. } => Some(charge_id),
            Adjustment::Dispute { charge_id, .. } => charge_id.as_deref(),
        }
    }
}

/// Keeps the adjustment; returns its purchase if that is here already. Call under a lock on
/// its payment intent (or charge).
pub async fn record_adjustment(
    conn: &mut PgConnection,
    keyring: &Keyring,
    event: &EventRecord<'_>,
    adjustment: &Adjustment,
) -> anyhow::Result<Option<PurchaseId>> {
    let (kind, amount_refunded, dispute_status) = match adjustment {
        Adjustment::Refund {
            amount_refunded, ..
        } => ("refund", Some(*amount_refunded), None),
        Adjustment::Dispute { status, .. } => ("dispute", None, Some(status.clone())),
    };
    let record = AdjustmentRecord {
        payment_intent: adjustment.payment_intent_id().map(str::to_owned),
        charge: adjustment.charge_id().map(str::to_owned),
        amount_refunded,
        dispute_status,
    };
    let id = Uuid::now_v7();
    let intent = record
        .payment_intent
        .as_deref()
        .map(|v| payment_hash(keyring, v));
    let charge = record.charge.as_deref().map(|v| payment_hash(keyring, v));
    sqlx::query(
        "INSERT INTO payment_adjustment (id, event_id, kind, payment_intent_hash, charge_hash,
                                         sealed, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(event.id)
    .bind(kind)
    .bind(&intent)
    .bind(&charge)
    .bind(seal::seal(
        keyring,
        "payment_adjustment",
        "sealed",
        id,
        &record,
    ))
    .bind(event.occurred_at)
    .execute(&mut *conn)
    .await
    .context("failed to record a refund or dispute")?;

    sqlx::query_scalar(
        "SELECT id FROM purchase
         WHERE payment_intent_hash = $1 OR (charge_hash IS NOT NULL AND charge_hash = $2)
         LIMIT 1",
    )
    .bind(intent)
    .bind(charge)
    .fetch_optional(conn)
    .await
    .context("failed to find a refund's purchase")
}

/// A purchase's state, from its facts: a pure function so the rules read in one place.
pub fn status(
    paid: bool,
    failed: bool,
    amount_total: i64,
    amount_refunded: i64,
    dispute: Option<&str>,
) -> PurchaseStatus {
    match dispute {
        Some("lost") => return PurchaseStatus::DisputeLost,
        _ if amount_refunded > 0 && amount_refunded >= amount_total => {
            return PurchaseStatus::Refunded;
        }
        Some("won" | "warning_closed") | None => {}
        Some(_) => return PurchaseStatus::Disputed,
    }
    if amount_refunded > 0 {
        PurchaseStatus::PartiallyRefunded
    } else if paid {
        PurchaseStatus::Paid
    } else if failed {
        PurchaseStatus::PaymentFailed
    } else {
        PurchaseStatus::Unpaid
    }
}

/// What a purchase is after `recompute`.
#[derive(Debug, Clone, Copy)]
pub struct Recomputed {
    pub status: PurchaseStatus,
    pub paid: bool,
}

/// One refund or dispute as stored.
#[derive(sqlx::FromRow)]
struct StoredAdjustment {
    id: Uuid,
    payment_intent_hash: Option<String>,
    sealed: Option<Vec<u8>>,
    occurred_at: OffsetDateTime,
    event_id: String,
}

/// One refund or dispute as `recompute` weighs it: opened.
struct Seen {
    record: AdjustmentRecord,
    intent_hash: Option<String>,
    occurred_at: OffsetDateTime,
    event_id: String,
}

/// Every refund and dispute naming this payment intent or charge (by their hashes), opened.
async fn adjustments(
    conn: &mut PgConnection,
    keyring: &Keyring,
    intent: Option<&str>,
    charge: Option<&str>,
) -> anyhow::Result<Vec<Seen>> {
    let rows: Vec<StoredAdjustment> = sqlx::query_as(
        "SELECT id, payment_intent_hash, sealed, occurred_at, event_id
         FROM payment_adjustment
         WHERE payment_intent_hash = $1 OR (charge_hash IS NOT NULL AND charge_hash = $2)",
    )
    .bind(intent)
    .bind(charge)
    .fetch_all(&mut *conn)
    .await
    .context("failed to read adjustments")?;
    rows.into_iter()
        .map(|row| {
            Ok(Seen {
                record: seal::open(
                    keyring,
                    "payment_adjustment",
                    "sealed",
                    row.id,
                    row.sealed.as_deref(),
                )?,
                intent_hash: row.payment_intent_hash,
                occurred_at: row.occurred_at,
                event_id: row.event_id,
            })
        })
        .collect()
}

/// Recomputes a purchase's state from its facts and every refund and dispute seen for it.
/// Idempotent.
pub async fn recompute(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: PurchaseId,
) -> anyhow::Result<Recomputed> {
    let (intent, paid, failed, sealed): (Option<String>, bool, bool, Option<Vec<u8>>) =
        sqlx::query_as(
            "SELECT payment_intent_hash, paid_at IS NOT NULL, payment_failed_at IS NOT NULL,
                    record_sealed
             FROM purchase WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .context("failed to load a purchase")?;
    let mut record = open_record(keyring, id, sealed.as_deref())?;
    // Learn the charge id from any adjustment naming our payment intent, so disputes that
    // name only the charge find us too.
    if record.charge.is_none() && intent.is_some() {
        record.charge = adjustments(conn, keyring, intent.as_deref(), None)
            .await?
            .into_iter()
            .filter(|seen| seen.intent_hash == intent)
            .find_map(|seen| seen.record.charge);
    }
    let charge = record.charge.as_deref().map(|c| payment_hash(keyring, c));
    let mine = adjustments(conn, keyring, intent.as_deref(), charge.as_deref()).await?;
    record.amount_refunded = mine
        .iter()
        .filter_map(|seen| seen.record.amount_refunded)
        .max()
        .unwrap_or(0);
    // The latest dispute status by event time; at the same time a closing status (won, lost)
    // over an open one, then the later event id.
    record.dispute_status = mine
        .iter()
        .filter(|seen| seen.record.dispute_status.is_some())
        .max_by_key(|seen| {
            let status = seen.record.dispute_status.as_deref();
            (
                seen.occurred_at,
                matches!(status, Some("won" | "lost")),
                seen.event_id.as_str(),
            )
        })
        .and_then(|seen| seen.record.dispute_status.clone());
    let status = status(
        paid,
        failed,
        record.amount_total,
        record.amount_refunded,
        record.dispute_status.as_deref(),
    );
    sqlx::query(
        "UPDATE purchase SET charge_hash = $2, status = $3, record_sealed = $4, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&charge)
    .bind(status)
    .bind(seal_record(keyring, id, &record))
    .execute(&mut *conn)
    .await
    .context("failed to update a purchase")?;

    Ok(Recomputed { status, paid })
}

/// What a licence is issued from.
#[derive(Debug, sqlx::FromRow)]
pub struct Product {
    pub product: String,
    pub livemode: bool,
    pub person_id: Option<PersonId>,
}

pub async fn product(conn: &mut PgConnection, id: PurchaseId) -> anyhow::Result<Product> {
    sqlx::query_as("SELECT product, livemode, person_id FROM purchase WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .context("failed to load a purchase")
}

/// Revokes the purchase's licence, if it has one that is still valid.
pub async fn revoke_license(
    conn: &mut PgConnection,
    id: PurchaseId,
    reason: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE license SET revoked_at = now(), revoked_reason = $2
         WHERE purchase_id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(reason)
    .execute(conn)
    .await
    .context("failed to revoke a licence")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{PurchaseStatus, status};

    #[test]
    fn status_follows_money_not_event_order() {
        assert_eq!(status(false, false, 4900, 0, None), PurchaseStatus::Unpaid);
        assert_eq!(status(true, false, 4900, 0, None), PurchaseStatus::Paid);
        assert_eq!(
            status(false, true, 4900, 0, None),
            PurchaseStatus::PaymentFailed
        );
        assert_eq!(
            status(true, true, 4900, 0, None),
            PurchaseStatus::Paid,
            "paid wins over an old failure"
        );
        assert_eq!(
            status(true, false, 4900, 1000, None),
            PurchaseStatus::PartiallyRefunded
        );
        assert_eq!(
            status(true, false, 4900, 4900, None),
            PurchaseStatus::Refunded
        );
        assert_eq!(
            status(false, false, 4900, 4900, None),
            PurchaseStatus::Refunded,
            "refund before purchase"
        );
        assert_eq!(
            status(true, false, 4900, 0, Some("needs_response")),
            PurchaseStatus::Disputed
        );
        assert_eq!(
            status(true, false, 4900, 0, Some("won")),
            PurchaseStatus::Paid
        );
        assert_eq!(
            status(true, false, 4900, 0, Some("lost")),
            PurchaseStatus::DisputeLost
        );
        assert_eq!(
            status(true, false, 0, 0, None),
            PurchaseStatus::Paid,
            "a free (100% coupon) order"
        );
    }
}
