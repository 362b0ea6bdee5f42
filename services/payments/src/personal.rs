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

use crate::store::PurchaseId;

#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentsData;

#[derive(Debug, Serialize)]
struct ExportedPurchase {
    id: Uuid,
    checkout_session_id: Option<String>,
    payment_intent_id: Option<String>,
    charge_id: Option<String>,
    product: String,
    price_id: Option<String>,
    amount: i64,
    amount_refunded: i64,
    currency: String,
    country: Option<String>,
    status: crate::store::PurchaseStatus,
    dispute_status: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    paid_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    payment_failed_at: Option<OffsetDateTime>,
    license_id: Option<Uuid>,
    license_status: Option<String>,
    license: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    license_issued_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    license_revoked_at: Option<OffsetDateTime>,
    license_revoked_reason: Option<String>,
}

/// A purchase row as read for the export, before its record and licence are opened.
#[derive(sqlx::FromRow)]
struct PurchaseRow {
    id: PurchaseId,
    product: String,
    status: crate::store::PurchaseStatus,
    created_at: OffsetDateTime,
    paid_at: Option<OffsetDateTime>,
    payment_failed_at: Option<OffsetDateTime>,
    record_sealed: Option<Vec<u8>>,
    license_id: Option<Uuid>,
    license_sealed: Option<Vec<u8>>,
    license_issued_at: Option<OffsetDateTime>,
    license_revoked_at: Option<OffsetDateTime>,
    license_revoked_reason: Option<String>,
}

impl PurchaseRow {
    fn export(self, keyring: &Keyring) -> anyhow::Result<ExportedPurchase> {
        let record = crate::store::open_record(keyring, self.id, self.record_sealed.as_deref())?;
        let license = match self.license_id {
            Some(id) => Some(crate::license::open_token(
                keyring,
                id,
                self.license_sealed.as_deref(),
            )?),
            None => None,
        };
        Ok(ExportedPurchase {
            id: self.id.0,
            checkout_session_id: record.session,
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
            created_at: self.created_at,
            paid_at: self.paid_at,
            payment_failed_at: self.payment_failed_at,
            license_status: self.license_id.map(|_| {
                if self.license_revoked_at.is_none() {
                    "active"
                } else {
                    "revoked"
                }
                .to_owned()
            }),
            license_id: self.license_id,
            license,
            license_issued_at: self.license_issued_at,
            license_revoked_at: self.license_revoked_at,
            license_revoked_reason: self.license_revoked_reason,
        })
    }
}

impl PersonalData for PaymentsData {
    fn section(&self) -> &'static str {
        "payments"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let rows: Vec<PurchaseRow> = sqlx::query_as(
            "SELECT p.id, p.product, p.status, p.created_at, p.paid_at, p.payment_failed_at,
                    p.record_sealed, l.id AS license_id, l.token_sealed AS license_sealed,
                    l.issued_at AS license_issued_at, l.revoked_at AS license_revoked_at,
                    l.revoked_reason AS license_revoked_reason
             FROM purchase p LEFT JOIN license l ON l.purchase_id = p.id
             WHERE p.person_id = $1 ORDER BY p.created_at",
        )
        .bind(person)
        .fetch_all(conn)
        .await
        .context("failed to export purchases")?;
        let purchases = rows
            .into_iter()
            .map(|row| row.export(keyring))
            .collect::<anyhow::Result<Vec<_>>>()?;
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
                      WHERE person_id IS NULL AND created_at < now() - interval '10 years'"
                    .into(),
                // The licence goes in the same statement (its key to the purchase is checked
                // at the statement's end).
                apply: "WITH old AS (SELECT id FROM purchase
                                     WHERE person_id IS NULL
                                       AND created_at < now() - interval '10 years'),
                             licences AS (DELETE FROM license
                                          WHERE purchase_id IN (SELECT id FROM old))
                        DELETE FROM purchase WHERE id IN (SELECT id FROM old)"
                    .into(),
            },
            RetentionRule {
                name: "payments.events",
                keeps: "Stripe's events, and the refunds and disputes they reported: 10 years",
                due: "SELECT count(*) FROM stripe_event
                      WHERE received_at < now() - interval '10 years'"
                    .into(),
                apply: "WITH adjustments AS (
                            DELETE FROM payment_adjustment WHERE event_id IN (
                                SELECT id FROM stripe_event
                                WHERE received_at < now() - interval '10 years'))
                        DELETE FROM stripe_event WHERE received_at < now() - interval '10 years'"
                    .into(),
            },
        ]
    }

    async fn prepare(&self, pool: &sqlx::PgPool, keyring: &Keyring) -> anyhow::Result<()> {
        let sealed = crate::seal::backlog(pool, keyring).await?;
        if sealed > 0 {
            tracing::info!(
                rows = sealed,
                "sealed the payment records kept in clear before"
            );
        }
        Ok(())
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
        // accounting purpose: its clear copy leaves the sealed record (its keyed hash, which
        // finds a late event, stays).
        let records: Vec<(PurchaseId, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT id, record_sealed FROM purchase WHERE person_id = $1 FOR UPDATE",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to read purchases to erase")?;
        let mut sessions = 0u64;
        for (id, sealed) in &records {
            let mut record = crate::store::open_record(keyring, *id, sealed.as_deref())?;
            if record.session.take().is_some() {
                sessions += 1;
            }
            sqlx::query("UPDATE purchase SET record_sealed = $2 WHERE id = $1")
                .bind(id)
                .bind(crate::store::seal_record(keyring, *id, &record))
                .execute(&mut *conn)
                .await
                .context("failed to drop a session id")?;
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
                "{unlinked} purchase record(s), unlinked from the person and kept 10 years for tax law: amount, currency, date, country, and the payment's reference at Stripe (pi_/ch_) that reconciles it with Stripe's payouts, sealed under the deployment's records key; the Checkout Session id only as a keyed hash"
            ));
            kept.push(
                "their licence key(s) stay valid: a licence carries no personal data".to_owned(),
            );
        }
        Ok(ErasureSummary {
            section: self.section(),
            removed: BTreeMap::from([("purchase_links", unlinked), ("session_ids", sessions)]),
            kept,
        })
    }
}
