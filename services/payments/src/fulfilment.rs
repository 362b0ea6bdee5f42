//! What follows from a purchase's state: a paid purchase gets its licence and its receipt,
//! once; a refunded or lost one has its licence revoked.

use pexper_platform::Platform;
use pexper_platform::jobs::{self, BackgroundJob, NewJob};
use sqlx::PgConnection;

use crate::receipt::SendReceipt;
use crate::store::{self, PurchaseId, PurchaseStatus};

/// Recomputes a purchase from everything seen for it, then issues or revokes its licence.
/// Idempotent: any number of deliveries, in any order, end the same.
pub async fn apply(
    conn: &mut PgConnection,
    platform: &Platform,
    id: PurchaseId,
) -> anyhow::Result<()> {
    let state = store::recompute(conn, &platform.keyring, id).await?;
    use PurchaseStatus::*;
    match state.status {
        Paid | PartiallyRefunded | Disputed if state.paid => fulfil(conn, platform, id).await,
        Refunded | DisputeLost => store::revoke_license(conn, id, state.status.as_str()).await,
        Paid | PartiallyRefunded | Disputed | Unpaid | PaymentFailed => Ok(()),
    }
}

/// Issues the purchase's licence and queues the receipt, once: the licence's unique purchase
/// id decides, and the receipt job is written in the same transaction.
async fn fulfil(
    conn: &mut PgConnection,
    platform: &Platform,
    id: PurchaseId,
) -> anyhow::Result<()> {
    let purchase = store::product(conn, id).await?;
    let issued =
        crate::license::issue(conn, platform, id, &purchase.product, purchase.livemode).await?;
    if issued && let Some(person) = purchase.person_id {
        jobs::enqueue(
            conn,
            NewJob::new(&SendReceipt { purchase_id: id })
                .for_person(person)
                .dedupe_key(format!("{}:{id}", SendReceipt::KIND)),
        )
        .await?;
    }
    Ok(())
}
