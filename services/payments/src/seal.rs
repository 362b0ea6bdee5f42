//! Purchase records sealed under the deployment's records key (`Keyring::records_key`), and
//! Stripe's references kept only as keyed hashes, so that a copy of the database (a dump, a
//! backup, a disk) says neither what anyone paid nor which payment at Stripe a row is.
//!
//! The records key is the deployment's, not the buyer's: tax law makes us keep the record for
//! 10 years after the buyer is erased, and erasing them destroys their key.

use anyhow::Context;
use pexper_platform::crypto::{Field, Keyring, hex};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What a purchase was (`purchase.record_sealed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    /// The Checkout Session id in clear, while the buyer is linked: erasure drops it, and
    /// only its hash (`checkout_session_hash`) stays.
    pub session: Option<String>,
    /// pi_…: reconciles the purchase with Stripe's payouts.
    pub payment_intent: Option<String>,
    /// ch_…: learnt from a refund or dispute.
    pub charge: Option<String>,
    pub price: Option<String>,
    /// Minor units.
    pub amount_total: i64,
    pub currency: String,
    /// ISO 3166 country of the billing address, for VAT and sales tax.
    pub country: Option<String>,
    /// Cumulative, as Stripe reports it on the charge.
    pub amount_refunded: i64,
    /// The latest dispute status by event time.
    pub dispute_status: Option<String>,
}

/// What a refund or dispute event said (`payment_adjustment.sealed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentRecord {
    pub payment_intent: Option<String>,
    pub charge: Option<String>,
    /// A refund: the charge's cumulative amount refunded.
    pub amount_refunded: Option<i64>,
    /// A dispute: its status in this event.
    pub dispute_status: Option<String>,
}

/// A Checkout Session id as it is stored: a keyed hash (`h:` and hex). Erased purchases from
/// before sealing hold the same hash, so they are found by it too.
pub fn session_hash(keyring: &Keyring, session_id: &str) -> String {
    format!(
        "h:{}",
        hex(&keyring.blind_index("stripe-session", session_id))
    )
}

/// A payment intent or charge id (pi_…, ch_…) as it is stored: a keyed hash.
pub fn payment_hash(keyring: &Keyring, payment_id: &str) -> String {
    format!(
        "h:{}",
        hex(&keyring.blind_index("stripe-payment", payment_id))
    )
}

/// Any Stripe reference as `stripe_event.payment_ref` stores it.
pub fn ref_hash(keyring: &Keyring, stripe_id: &str) -> String {
    if stripe_id.starts_with("cs_") {
        session_hash(keyring, stripe_id)
    } else {
        payment_hash(keyring, stripe_id)
    }
}

/// Seals `value` for its place (table, column, row) under the records key.
pub fn seal<T: Serialize>(
    keyring: &Keyring,
    table: &str,
    column: &str,
    row: Uuid,
    value: &T,
) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("a record serialises");
    keyring
        .records_key()
        .seal(Field { table, column, row }, &json)
}

/// Opens what `seal` sealed in this place.
pub fn open<T: DeserializeOwned>(
    keyring: &Keyring,
    table: &str,
    column: &str,
    row: Uuid,
    sealed: Option<&[u8]>,
) -> anyhow::Result<T> {
    let sealed = sealed.with_context(|| {
        format!("{table} {row} is not sealed yet (payments::seal::backlog seals it at start)")
    })?;
    let json = keyring
        .records_key()
        .open(Field { table, column, row }, sealed)
        .with_context(|| format!("{table}.{column} of {row} does not open"))?;
    serde_json::from_slice(&json).with_context(|| format!("{table}.{column} of {row} is malformed"))
}

/// Seals what migration 24 set aside in `payments_unsealed` (rows from before purchase records
/// were sealed) and empties it, in one transaction under a lock: a second process starting at
/// the same moment waits, then finds nothing left, so none serves while a row is half done.
pub async fn backlog(pool: &PgPool, keyring: &Keyring) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('payments:unsealed', 0))")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT source, id, clear FROM payments_unsealed ORDER BY source, id")
            .fetch_all(&mut *tx)
            .await
            .context("failed to read the unsealed payments")?;
    for (source, id, clear) in &rows {
        seal_one(&mut tx, keyring, source, id, clear)
            .await
            .with_context(|| format!("failed to seal {source} {id}"))?;
    }
    sqlx::query("DELETE FROM payments_unsealed")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

async fn seal_one(
    conn: &mut PgConnection,
    keyring: &Keyring,
    source: &str,
    id: &str,
    clear: &serde_json::Value,
) -> anyhow::Result<()> {
    let text = |name: &str| clear[name].as_str().map(str::to_owned);
    let hashed = |value: &Option<String>| value.as_deref().map(|v| payment_hash(keyring, v));
    match source {
        "purchase" => {
            let row = Uuid::parse_str(id)?;
            // An erased buyer's session id was hashed already; it is not kept in clear.
            let session = text("session").filter(|s| !s.starts_with("h:"));
            let record = PurchaseRecord {
                session: session.clone(),
                payment_intent: text("payment_intent"),
                charge: text("charge"),
                price: text("price"),
                amount_total: clear["amount_total"].as_i64().context("no amount")?,
                currency: text("currency").context("no currency")?,
                country: text("country"),
                amount_refunded: clear["amount_refunded"].as_i64().unwrap_or(0),
                dispute_status: text("dispute_status"),
            };
            let session_hash = match &session {
                Some(s) => session_hash(keyring, s),
                None => text("session").context("no session")?,
            };
            sqlx::query(
                "UPDATE purchase SET checkout_session_hash = $2, payment_intent_hash = $3,
                                     charge_hash = $4, record_sealed = $5
                 WHERE id = $1",
            )
            .bind(row)
            .bind(session_hash)
            .bind(hashed(&record.payment_intent))
            .bind(hashed(&record.charge))
            .bind(seal(keyring, "purchase", "record_sealed", row, &record))
            .execute(conn)
            .await?;
        }
        "payment_adjustment" => {
            let row = Uuid::parse_str(id)?;
            let record = AdjustmentRecord {
                payment_intent: text("payment_intent"),
                charge: text("charge"),
                amount_refunded: clear["amount_refunded"].as_i64(),
                dispute_status: text("dispute_status"),
            };
            sqlx::query(
                "UPDATE payment_adjustment SET payment_intent_hash = $2, charge_hash = $3,
                                               sealed = $4
                 WHERE id = $1",
            )
            .bind(row)
            .bind(hashed(&record.payment_intent))
            .bind(hashed(&record.charge))
            .bind(seal(keyring, "payment_adjustment", "sealed", row, &record))
            .execute(conn)
            .await?;
        }
        "stripe_event" => {
            let reference = text("payment_ref").context("no reference")?;
            sqlx::query("UPDATE stripe_event SET payment_ref = $2 WHERE id = $1")
                .bind(id)
                .bind(ref_hash(keyring, &reference))
                .execute(conn)
                .await?;
        }
        "license" => {
            let row = Uuid::parse_str(id)?;
            let token = text("token").context("no token")?;
            sqlx::query("UPDATE license SET token_sealed = $2 WHERE id = $1")
                .bind(row)
                .bind(seal(keyring, "license", "token_sealed", row, &token))
                .execute(conn)
                .await?;
        }
        other => anyhow::bail!("unknown source {other}"),
    }
    Ok(())
}
