//! The payments section of a privacy export, and what an erasure does here: the accounting
//! record stays (tax law requires amount, currency, date and country) but loses its link to
//! the person; their address goes with their data key when the registry destroys it.

use std::collections::BTreeMap;

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::person::PersonId;
use pexper_platform::personal_data::{ErasureSummary, PersonalData, RetentionRule};
use serde::Serialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentsData;

#[derive(Debug, Serialize, sqlx::FromRow)]
struct ExportedPurchase {
    id: Uuid,
    checkout_session_id: String,
    product: String,
    amount: i64,
    amount_refunded: i64,
    currency: String,
    country: Option<String>,
    status: crate::store::PurchaseStatus,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    paid_at: Option<OffsetDateTime>,
    license_id: Option<Uuid>,
    license_status: Option<String>,
    license: Option<String>,
}

impl PersonalData for PaymentsData {
    fn section(&self) -> &'static str {
        "payments"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        _keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let purchases: Vec<ExportedPurchase> = sqlx::query_as(
            "SELECT p.id, p.checkout_session_id, p.product, p.amount_total AS amount,
                    p.amount_refunded, p.currency, p.country, p.status, p.created_at,
                    p.paid_at, l.id AS license_id,
                    CASE WHEN l.id IS NULL THEN NULL
                         WHEN l.revoked_at IS NULL THEN 'active' ELSE 'revoked' END
                        AS license_status,
                    l.token AS license
             FROM purchase p LEFT JOIN license l ON l.purchase_id = p.id
             WHERE p.person_id = $1 ORDER BY p.created_at",
        )
        .bind(person)
        .fetch_all(conn)
        .await
        .context("failed to export purchases")?;
        Ok(serde_json::json!({
            "purchases": purchases,
            "card_details": "never received: Stripe processes payments, and we keep only the metadata above",
        }))
    }

    fn retention(&self) -> Vec<RetentionRule> {
        vec![
            RetentionRule {
                name: "payments.records",
                keeps: "a purchase record no longer anyone's (unlinked at erasure), with its \
                        licence: 10 years after the purchase, as tax law requires",
                due: "SELECT count(*) FROM purchase
                      WHERE person_id IS NULL AND created_at < now() - interval '10 years'",
                // The licence goes in the same statement (its key to the purchase is checked
                // at the statement's end).
                apply: "WITH old AS (SELECT id FROM purchase
                                     WHERE person_id IS NULL
                                       AND created_at < now() - interval '10 years'),
                             licences AS (DELETE FROM license
                                          WHERE purchase_id IN (SELECT id FROM old))
                        DELETE FROM purchase WHERE id IN (SELECT id FROM old)",
            },
            RetentionRule {
                name: "payments.events",
                keeps: "Stripe's events, and the refunds and disputes they reported: 10 years",
                due: "SELECT count(*) FROM stripe_event
                      WHERE received_at < now() - interval '10 years'",
                apply: "WITH adjustments AS (
                            DELETE FROM payment_adjustment WHERE event_id IN (
                                SELECT id FROM stripe_event
                                WHERE received_at < now() - interval '10 years'))
                        DELETE FROM stripe_event WHERE received_at < now() - interval '10 years'",
            },
        ]
    }

    fn holds(&self) -> Option<&'static str> {
        Some("SELECT person_id FROM purchase WHERE person_id IS NOT NULL")
    }

    fn notice_audience(&self) -> Option<&'static str> {
        Some("SELECT person_id FROM purchase WHERE person_id IS NOT NULL")
    }

    async fn erase(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        // The Checkout Session id names the buyer's session at Stripe and serves no
        // accounting purpose: it becomes a keyed hash, here and on the events that name it.
        let sessions: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT id, checkout_session_id FROM purchase
             WHERE person_id = $1 AND checkout_session_id NOT LIKE 'h:%'",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to read purchases to erase")?;
        for (id, session) in &sessions {
            let hashed = crate::store::hashed_session(keyring, session);
            sqlx::query("UPDATE purchase SET checkout_session_id = $2 WHERE id = $1")
                .bind(id)
                .bind(&hashed)
                .execute(&mut *conn)
                .await
                .context("failed to hash a session id")?;
            sqlx::query("UPDATE stripe_event SET payment_ref = $2 WHERE payment_ref = $1")
                .bind(session)
                .bind(&hashed)
                .execute(&mut *conn)
                .await
                .context("failed to hash an event's session id")?;
        }
        let unlinked = sqlx::query(
            "UPDATE purchase SET person_id = NULL, updated_at = now() WHERE person_id = $1",
        )
        .bind(person)
        .execute(conn)
        .await
        .context("failed to unlink purchases")?
        .rows_affected();
        let mut kept = Vec::new();
        if unlinked > 0 {
            kept.push(format!(
                "{unlinked} purchase record(s), unlinked from the person and kept 10 years for tax law: amount, currency, date, country, and the payment's reference at Stripe (pi_/ch_) that reconciles it with Stripe's payouts; the Checkout Session id is replaced by a keyed hash"
            ));
            kept.push(
                "their licence key(s) stay valid: a licence carries no personal data".to_owned(),
            );
        }
        Ok(ErasureSummary {
            section: self.section(),
            removed: BTreeMap::from([
                ("purchase_links", unlinked),
                ("session_ids", sessions.len() as u64),
            ]),
            kept,
        })
    }
}
