//! What `pexper-admin purchases …` and `pexper-admin licenses …` do. A buyer's address is
//! opened only when the operator asks for it (`purchases show --email`).

use anyhow::Context;
use pexper_platform::address::EmailAddress;
use pexper_platform::crypto::Keyring;
use pexper_platform::person::{self, PersonId};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::seal::session_hash;
use crate::store::{PurchaseId, PurchaseStatus};

/// One purchase, as `purchases list` and `show` print it: its record opened.
#[derive(Debug, Serialize)]
pub struct PurchaseRow {
    pub id: PurchaseId,
    /// In clear while the buyer is linked; after their erasure only its keyed hash is kept.
    pub checkout_session_id: String,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
    pub product: String,
    pub price_id: Option<String>,
    pub amount: i64,
    pub amount_refunded: i64,
    pub currency: String,
    pub country: Option<String>,
    pub status: PurchaseStatus,
    pub dispute_status: Option<String>,
    pub livemode: bool,
    /// `active`, `revoked` or `none`.
    pub license_status: String,
    pub license_id: Option<Uuid>,
    /// Whether a buyer is linked (false once they were erased).
    pub has_buyer: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub paid_at: Option<OffsetDateTime>,
    #[serde(skip)]
    pub person_id: Option<PersonId>,
    /// The keyed hashes its events are recorded under.
    #[serde(skip)]
    refs: Vec<String>,
}

/// A purchase as stored, before its record is opened.
#[derive(sqlx::FromRow)]
struct Stored {
    id: PurchaseId,
    checkout_session_hash: String,
    payment_intent_hash: Option<String>,
    charge_hash: Option<String>,
    product: String,
    status: PurchaseStatus,
    livemode: bool,
    license_status: String,
    license_id: Option<Uuid>,
    created_at: OffsetDateTime,
    paid_at: Option<OffsetDateTime>,
    person_id: Option<PersonId>,
    record_sealed: Option<Vec<u8>>,
}

impl Stored {
    fn open(self, keyring: &Keyring) -> anyhow::Result<PurchaseRow> {
        let record = crate::store::open_record(keyring, self.id, self.record_sealed.as_deref())?;
        let refs = [
            Some(self.checkout_session_hash.clone()),
            self.payment_intent_hash,
            self.charge_hash,
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(PurchaseRow {
            id: self.id,
            checkout_session_id: record.session.unwrap_or(self.checkout_session_hash),
            payment_intent_id: record.payment_intent,
            charge_id: record.charge,
            product: self.product,
            price_id: record.price,
            amount: record.amount_total,
            amount_refunded: record.amount_refunded,
            currency: record.currency,
            country: record.country,
            status: self.status,
            dispute_status: record.dispute_status,
            livemode: self.livemode,
            license_status: self.license_status,
            license_id: self.license_id,
            has_buyer: self.person_id.is_some(),
            created_at: self.created_at,
            paid_at: self.paid_at,
            person_id: self.person_id,
            refs,
        })
    }
}

const SELECT: &str = "
    SELECT p.id, p.checkout_session_hash, p.payment_intent_hash, p.charge_hash, p.product,
           p.status, p.livemode,
           CASE WHEN l.id IS NULL THEN 'none'
                WHEN l.revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS license_status,
           l.id AS license_id, p.created_at, p.paid_at, p.person_id, p.record_sealed
    FROM purchase p LEFT JOIN license l ON l.purchase_id = p.id";

/// A Checkout Session id as an operator may type it: as Stripe shows it, or as `purchases list`
/// shows an erased buyer's (its keyed hash).
fn stored_session(keyring: &Keyring, typed: &str) -> String {
    if typed.starts_with("h:") {
        typed.to_owned()
    } else {
        session_hash(keyring, typed)
    }
}

/// Newest first; `status` filters, `buyer` limits to one person's purchases.
pub async fn list(
    pool: &PgPool,
    keyring: &Keyring,
    status: Option<PurchaseStatus>,
    buyer: Option<PersonId>,
    limit: i64,
) -> anyhow::Result<Vec<PurchaseRow>> {
    let rows: Vec<Stored> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE ($1::text IS NULL OR p.status = $1)
                    AND ($2::uuid IS NULL OR p.person_id = $2)
         ORDER BY p.created_at DESC, p.id DESC LIMIT $3"
    )))
    .bind(status)
    .bind(buyer)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list purchases")?;
    rows.into_iter().map(|row| row.open(keyring)).collect()
}

/// A purchase by its id or its Checkout Session id.
pub async fn find(
    pool: &PgPool,
    keyring: &Keyring,
    id_or_session: &str,
) -> anyhow::Result<Option<PurchaseRow>> {
    let id = Uuid::parse_str(id_or_session).ok();
    let row: Option<Stored> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.id = $1 OR p.checkout_session_hash = $2"
    )))
    .bind(id)
    .bind(stored_session(keyring, id_or_session))
    .fetch_optional(pool)
    .await
    .context("failed to find a purchase")?;
    row.map(|row| row.open(keyring)).transpose()
}

/// The buyer of a purchase, decrypted: only for an operator who asked.
pub async fn buyer_email(
    pool: &PgPool,
    keyring: &Keyring,
    row: &PurchaseRow,
) -> anyhow::Result<Option<EmailAddress>> {
    let Some(person) = row.person_id else {
        return Ok(None);
    };
    let mut conn = pool.acquire().await?;
    person::email(&mut conn, keyring, person).await
}

/// The events that told us about a purchase, oldest first: `(event id, type, occurred_at)`.
pub async fn events(
    pool: &PgPool,
    row: &PurchaseRow,
) -> anyhow::Result<Vec<(String, String, OffsetDateTime)>> {
    sqlx::query_as(
        "SELECT id, type, occurred_at FROM stripe_event WHERE payment_ref = ANY($1)
         ORDER BY occurred_at, received_at",
    )
    .bind(&row.refs)
    .fetch_all(pool)
    .await
    .context("failed to list a purchase's events")
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct LicenseRow {
    pub id: Uuid,
    pub purchase_id: PurchaseId,
    pub product: String,
    /// `active` or `revoked`.
    pub status: String,
    pub revoked_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The signed licence, as the buyer received it (opened from `token_sealed`).
    #[sqlx(skip)]
    pub license: String,
    #[serde(skip)]
    token_sealed: Option<Vec<u8>>,
}

/// A licence by its id, its purchase's id or session id, or the licence string itself.
pub async fn license(
    pool: &PgPool,
    keyring: &Keyring,
    query: &str,
) -> anyhow::Result<Option<LicenseRow>> {
    let mut conn = pool.acquire().await?;
    let Some(id) = resolve_license(&mut conn, keyring, query).await? else {
        return Ok(None);
    };
    let row: Option<LicenseRow> = sqlx::query_as(
        "SELECT id, purchase_id, product,
                CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS status,
                revoked_reason, issued_at, revoked_at, token_sealed
         FROM license WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to load a licence")?;
    row.map(|mut row| {
        row.license = crate::license::open_token(keyring, row.id, row.token_sealed.as_deref())?;
        Ok(row)
    })
    .transpose()
}

/// A licence's id from what an operator typed: a licence id, a purchase id, a Checkout Session
/// id, or the licence string (found by the id it claims, and only if it is the one we issued).
async fn resolve_license(
    conn: &mut PgConnection,
    keyring: &Keyring,
    query: &str,
) -> anyhow::Result<Option<Uuid>> {
    let query = query.trim();
    if let Some(claimed) = pexper_wire::license::claimed_id(query) {
        let Ok(id) = Uuid::parse_str(&claimed) else {
            return Ok(None);
        };
        let sealed: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT token_sealed FROM license WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .context("failed to find a licence")?;
        return Ok(match sealed {
            Some(sealed)
                if crate::license::open_token(keyring, id, sealed.as_deref())? == query =>
            {
                Some(id)
            }
            _ => None,
        });
    }
    let id = Uuid::parse_str(query).ok();
    sqlx::query_scalar(
        "SELECT l.id FROM license l JOIN purchase p ON p.id = l.purchase_id
         WHERE l.id = $1 OR l.purchase_id = $1 OR p.checkout_session_hash = $2
         LIMIT 1",
    )
    .bind(id)
    .bind(stored_session(keyring, query))
    .fetch_optional(conn)
    .await
    .context("failed to find a licence")
}

/// Revokes a licence by an operator's decision. `false` if it was revoked already.
pub async fn revoke(pool: &PgPool, keyring: &Keyring, query: &str) -> anyhow::Result<Option<bool>> {
    let mut conn = pool.acquire().await?;
    let Some(id) = resolve_license(&mut conn, keyring, query).await? else {
        return Ok(None);
    };
    let done = sqlx::query(
        "UPDATE license SET revoked_at = now(), revoked_reason = 'operator'
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await
    .context("failed to revoke a licence")?;
    Ok(Some(done.rows_affected() == 1))
}
