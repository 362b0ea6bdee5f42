//! The purchase confirmation: a transactional email (no marketing, so no unsubscribe) that
//! delivers the licence key. Sent from the job queue, never inside the webhook.

use pexper_platform::Platform;
use pexper_platform::jobs::{BackgroundJob, Job, JobError};
use pexper_platform::mail;
use pexper_platform::person;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::PurchaseId;

/// The job names the purchase; everything else is read when it runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendReceipt {
    pub purchase_id: PurchaseId,
}

impl BackgroundJob for SendReceipt {
    const KIND: &'static str = "payments.receipt";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        send_receipt(platform, job, self.purchase_id).await
    }
}

#[derive(Debug, Clone)]
pub struct Receipt {
    pub product: String,
    pub amount: String,
    pub date: String,
    pub order: String,
    pub license: String,
}

pexper_platform::email_template!(
    Receipt,
    "purchase-receipt",
    Requested,
    "emails/purchase-receipt/subject.txt",
    "emails/purchase-receipt/body.txt",
    "emails/purchase-receipt/body.html"
);

async fn send_receipt(
    platform: Platform,
    job: &Job,
    purchase_id: PurchaseId,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    #[derive(sqlx::FromRow)]
    struct Row {
        product: String,
        record_sealed: Option<Vec<u8>>,
        paid_at: OffsetDateTime,
        license_id: Uuid,
        token_sealed: Option<Vec<u8>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT p.product, p.record_sealed, COALESCE(p.paid_at, p.created_at) AS paid_at,
                l.id AS license_id, l.token_sealed
         FROM purchase p JOIN license l ON l.purchase_id = p.id
         WHERE p.id = $1 AND p.person_id = $2 AND l.revoked_at IS NULL",
    )
    .bind(purchase_id)
    .bind(person)
    .fetch_optional(&mut *conn)
    .await?;
    // Refunded before we got to it, or the buyer was erased: nothing to send.
    let Some(row) = row else {
        return Ok(());
    };
    let keyring = &platform.keyring;
    let record = crate::store::open_record(keyring, purchase_id, row.record_sealed.as_deref())?;
    let license = crate::license::open_token(keyring, row.license_id, row.token_sealed.as_deref())?;
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let receipt = Receipt {
        product: product_name(&row.product),
        amount: format_amount(record.amount_total, &record.currency),
        date: row.paid_at.date().to_string(),
        order: purchase_id.to_string(),
        license,
    };
    mail::send_template(
        &platform,
        &mut conn,
        job,
        Some(person),
        to,
        &receipt,
        vec![],
    )
    .await
}

fn product_name(product: &str) -> String {
    match product {
        "pexper" => "Pexper (one-time purchase)".to_owned(),
        other => other.to_owned(),
    }
}

/// Minor units to a readable amount: `4900, "usd"` → `49.00 USD`. Stripe's zero-decimal
/// currencies have no minor unit.
pub fn format_amount(amount: i64, currency: &str) -> String {
    const ZERO_DECIMAL: &[&str] = &[
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    let code = currency.to_ascii_uppercase();
    if ZERO_DECIMAL.contains(&currency) {
        return format!("{amount} {code}");
    }
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    format!("{sign}{}.{:02} {code}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use pexper_platform::mail::EmailTemplate;

    use super::*;

    #[test]
    fn amounts_read_like_prices() {
        assert_eq!(format_amount(4900, "usd"), "49.00 USD");
        assert_eq!(format_amount(5, "eur"), "0.05 EUR");
        assert_eq!(format_amount(4900, "jpy"), "4900 JPY");
        assert_eq!(format_amount(-250, "gbp"), "-2.50 GBP");
    }

    #[test]
    fn the_receipt_carries_the_licence_and_no_unsubscribe_link() {
        let rendered = Receipt {
            product: product_name("pexper"),
            amount: format_amount(4900, "usd"),
            date: "2026-11-27".into(),
            order: "0193a7c0-0000-7000-8000-000000000001".into(),
            license: "PEXPER1.abc.def".into(),
        }
        .render()
        .expect("renders");
        assert_eq!(rendered.subject, "Your Pexper licence key");
        for body in [&rendered.text, &rendered.html] {
            assert!(body.contains("PEXPER1.abc.def"));
            assert!(body.contains("49.00 USD"));
            assert!(!body.to_lowercase().contains("unsubscribe"));
        }
    }
}
