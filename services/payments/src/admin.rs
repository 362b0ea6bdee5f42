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

use crate::store::{PurchaseId, PurchaseStatus};

/// One purchase, as `purchases list` and `show` print it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct PurchaseRow {
    pub id: PurchaseId,
    pub checkout_session_id: String,
    pub payment_intent_id: Option<String>,
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
}

const SELECT: &str = "
    SELECT p.id, p.checkout_session_id, p.payment_intent_id, p.product, p.price_id,
           p.amount_total AS amount, p.amount_refunded, p.currency, p.country, p.status,
           p.dispute_status, p.livemode,
           CASE WHEN l.id IS NULL THEN 'none'
                WHEN l.revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS license_status,
           l.id AS license_id, p.person_id IS NOT NULL AS has_buyer, p.created_at, p.paid_at,
           p.person_id
    FROM purchase p LEFT JOIN license l ON l.purchase_id = p.id";

/// Newest first; `status` filters, `buyer` limits to one person's purchases.
pub async fn list(
    pool: &PgPool,
    status: Option<PurchaseStatus>,
    buyer: Option<PersonId>,
    limit: i64,
) -> anyhow::Result<Vec<PurchaseRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE ($1::text IS NULL OR p.status = $1)
                    AND ($2::uuid IS NULL OR p.person_id = $2)
         ORDER BY p.created_at DESC, p.id DESC LIMIT $3"
    )))
    .bind(status)
    .bind(buyer)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list purchases")
}

/// A purchase by its id or its Checkout Session id (also once hashed at its buyer's erasure).
pub async fn find(
    pool: &PgPool,
    keyring: &Keyring,
    id_or_session: &str,
) -> anyhow::Result<Option<PurchaseRow>> {
    let id = Uuid::parse_str(id_or_session).ok();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.id = $1 OR p.checkout_session_id = ANY($2)"
    )))
    .bind(id)
    .bind(crate::store::session_forms(keyring, id_or_session))
    .fetch_optional(pool)
    .await
    .context("failed to find a purchase")
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
        "SELECT e.id, e.type, e.occurred_at FROM stripe_event e, purchase p
         WHERE p.id = $1
           AND e.payment_ref IN (p.checkout_session_id, p.payment_intent_id, p.charge_id)
         ORDER BY e.occurred_at, e.received_at",
    )
    .bind(row.id)
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
    /// The signed licence, as the buyer received it.
    pub license: String,
}

/// A licence by its id, its purchase's id or session id, or the licence string itself.
pub async fn license(pool: &PgPool, query: &str) -> anyhow::Result<Option<LicenseRow>> {
    let mut conn = pool.acquire().await?;
    let Some(id) = resolve_license(&mut conn, query).await? else {
        return Ok(None);
    };
    sqlx::query_as(
        "SELECT id, purchase_id, product,
                CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS status,
                revoked_reason, issued_at, revoked_at, token AS license
         FROM license WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to load a licence")
}

async fn resolve_license(conn: &mut PgConnection, query: &str) -> anyhow::Result<Option<Uuid>> {
    let query = query.trim();
    let id = Uuid::parse_str(query).ok();
    sqlx::query_scalar(
        "SELECT l.id FROM license l JOIN purchase p ON p.id = l.purchase_id
         WHERE l.id = $1 OR l.purchase_id = $1 OR p.checkout_session_id = $2 OR l.token = $2
         LIMIT 1",
    )
    .bind(id)
    .bind(query)
    .fetch_optional(conn)
    .await
    .context("failed to find a licence")
}

/// Revokes a licence by an operator's decision. `false` if it was revoked already.
pub async fn revoke(pool: &PgPool, query: &str) -> anyhow::Result<Option<bool>> {
    let mut conn = pool.acquire().await?;
    let Some(id) = resolve_license(&mut conn, query).await? else {
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
