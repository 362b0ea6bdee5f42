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
use pexper_platform::crypto::{Keyring, hex};
use pexper_platform::person::PersonId;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

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

/// Records what became of an event, and which payment (session, intent or charge) it was about.
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

/// What an erased buyer's purchase keeps of its Checkout Session id: a keyed hash (`h:` and
/// hex), so that a late event, or an operator holding the id, still finds the purchase while
/// the row no longer names a session at Stripe.
pub fn hashed_session(keyring: &Keyring, session_id: &str) -> String {
    format!(
        "h:{}",
        hex(&keyring.blind_index("stripe-session", session_id))
    )
}

/// The forms a session id can be stored in: as Stripe wrote it, or hashed at erasure.
pub fn session_forms(keyring: &Keyring, session_id: &str) -> Vec<String> {
    vec![session_id.to_owned(), hashed_session(keyring, session_id)]
}

/// The purchase of this session, if we have it, with the session id as stored.
pub async fn purchase_of_session(
    conn: &mut PgConnection,
    keyring: &Keyring,
    session_id: &str,
) -> anyhow::Result<Option<(PurchaseId, String)>> {
    sqlx::query_as(
        "SELECT id, checkout_session_id FROM purchase WHERE checkout_session_id = ANY($1)",
    )
    .bind(session_forms(keyring, session_id))
    .fetch_optional(conn)
    .await
    .context("failed to look up a purchase")
}

/// Creates the purchase of a session we have not seen. Call under `lock(session_id)`.
pub async fn insert_purchase(
    conn: &mut PgConnection,
    facts: &SessionFacts,
    person: Option<PersonId>,
) -> anyhow::Result<PurchaseId> {
    let id = PurchaseId(Uuid::now_v7());
    sqlx::query(
        "INSERT INTO purchase (id, checkout_session_id, payment_intent_id, person_id, product,
                               price_id, amount_total, currency, country, livemode, paid_at,
                               payment_failed_at, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 CASE WHEN $11 THEN $13::timestamptz END, CASE WHEN $12 THEN $13::timestamptz END,
                 'unpaid', $14)",
    )
    .bind(id)
    .bind(&facts.session_id)
    .bind(&facts.payment_intent_id)
    .bind(person)
    .bind(&facts.product)
    .bind(&facts.price_id)
    .bind(facts.amount_total)
    .bind(&facts.currency)
    .bind(&facts.country)
    .bind(facts.livemode)
    .bind(facts.paid)
    .bind(facts.failed)
    .bind(facts.occurred_at)
    .bind(facts.created_at)
    .execute(conn)
    .await
    .context("failed to insert a purchase")?;
    Ok(id)
}

/// Adds what a later event for the same session says. Flags only ever turn on; the buyer
/// link is never rewritten (an erased buyer stays erased).
pub async fn update_purchase(
    conn: &mut PgConnection,
    id: PurchaseId,
    facts: &SessionFacts,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE purchase SET
             payment_intent_id = COALESCE(payment_intent_id, $2),
             paid_at = CASE WHEN $3 THEN LEAST(COALESCE(paid_at, $5), $5) ELSE paid_at END,
             payment_failed_at = CASE WHEN $4 THEN COALESCE(payment_failed_at, $5)
                                      ELSE payment_failed_at END,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&facts.payment_intent_id)
    .bind(facts.paid)
    .bind(facts.failed)
    .bind(facts.occurred_at)
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
    event: &EventRecord<'_>,
    adjustment: &Adjustment,
) -> anyhow::Result<Option<PurchaseId>> {
    let (kind, amount, status) = match adjustment {
        Adjustment::Refund {
            amount_refunded, ..
        } => ("refund", Some(*amount_refunded), None),
        Adjustment::Dispute { status, .. } => ("dispute", None, Some(status.as_str())),
    };
    sqlx::query(
        "INSERT INTO payment_adjustment (event_id, kind, payment_intent_id, charge_id,
                                         amount_refunded, dispute_status, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.id)
    .bind(kind)
    .bind(adjustment.payment_intent_id())
    .bind(adjustment.charge_id())
    .bind(amount)
    .bind(status)
    .bind(event.occurred_at)
    .execute(&mut *conn)
    .await
    .context("failed to record a refund or dispute")?;

    sqlx::query_scalar(
        "SELECT id FROM purchase
         WHERE payment_intent_id = $1 OR (charge_id IS NOT NULL AND charge_id = $2)
         LIMIT 1",
    )
    .bind(adjustment.payment_intent_id())
    .bind(adjustment.charge_id())
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

/// Recomputes a purchase's state from its facts and every refund and dispute seen for it.
/// Idempotent.
pub async fn recompute(conn: &mut PgConnection, id: PurchaseId) -> anyhow::Result<Recomputed> {
    let (pi, charge, paid, failed, total): (Option<String>, Option<String>, bool, bool, i64) =
        sqlx::query_as(
            "SELECT payment_intent_id, charge_id, paid_at IS NOT NULL, payment_failed_at IS NOT NULL,
                    amount_total
             FROM purchase WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .context("failed to load a purchase")?;
    // Learn the charge id from any adjustment naming our payment intent, so disputes that
    // name only the charge find us too.
    let charge = match charge {
        Some(c) => Some(c),
        None => sqlx::query_scalar(
            "SELECT charge_id FROM payment_adjustment
             WHERE payment_intent_id = $1 AND charge_id IS NOT NULL LIMIT 1",
        )
        .bind(&pi)
        .fetch_optional(&mut *conn)
        .await
        .context("failed to read adjustments")?,
    };
    let (refunded, dispute): (Option<i64>, Option<String>) = sqlx::query_as(
        "WITH mine AS (
             SELECT * FROM payment_adjustment
             WHERE payment_intent_id = $1 OR (charge_id IS NOT NULL AND charge_id = $2))
         SELECT (SELECT max(amount_refunded) FROM mine WHERE kind = 'refund'),
                (SELECT dispute_status FROM mine WHERE kind = 'dispute'
                 ORDER BY occurred_at DESC, dispute_status IN ('won', 'lost') DESC, event_id DESC
                 LIMIT 1)",
    )
    .bind(&pi)
    .bind(&charge)
    .fetch_one(&mut *conn)
    .await
    .context("failed to read adjustments")?;
    let refunded = refunded.unwrap_or(0);
    let status = status(paid, failed, total, refunded, dispute.as_deref());
    sqlx::query(
        "UPDATE purchase SET charge_id = $2, amount_refunded = $3, dispute_status = $4,
                             status = $5, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&charge)
    .bind(refunded)
    .bind(&dispute)
    .bind(status)
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
