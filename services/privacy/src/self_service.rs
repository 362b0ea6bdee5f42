//! Access and deletion from a signed-in account (services/accounts): the person proved who
//! they are by their password just now, so the request is verified as it is made and there is
//! no second round trip by email. Each is a privacy request of source `account`, and its
//! audit events name `self-service` as the actor.

use anyhow::Context;
use pexper_platform::Platform;
use pexper_platform::jobs;
use pexper_platform::person::PersonId;
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::export;

pub use crate::export::attachment;
use crate::jobs::Process;
use crate::request::{Jurisdiction, Kind, PrivacyRequestId, Status};
use crate::store::{self, NewRequest};

/// Takes in a request of `kind` and verifies it, in the caller's transaction.
async fn verified(
    conn: &mut PgConnection,
    platform: &Platform,
    person: PersonId,
    kind: Kind,
) -> anyhow::Result<PrivacyRequestId> {
    sqlx::query("SELECT set_config('pexper.actor', 'self-service', true)")
        .execute(&mut *conn)
        .await
        .context("failed to name the actor")?;
    let new = NewRequest {
        kind,
        jurisdiction: Jurisdiction::default(),
        source: "account",
        details: None,
        received_at: OffsetDateTime::now_utc(),
    };
    let id = store::create(conn, &platform.keyring, person, &new)
        .await?
        .id;
    store::transition(
        conn,
        &platform.keyring,
        id,
        &[Status::Received],
        Status::Verified,
        "verified",
        "signed in, password confirmed",
    )
    .await?;
    Ok(id)
}

/// The person's access export, built now (the same document a verified access request
/// produces, also kept for its link's lifetime), as JSON bytes to download.
pub async fn export(platform: &Platform, person: PersonId) -> anyhow::Result<Vec<u8>> {
    let mut tx = platform.pool.begin().await?;
    let id = verified(&mut tx, platform, person, Kind::Access).await?;
    store::transition(
        &mut tx,
        &platform.keyring,
        id,
        &[Status::Verified],
        Status::Processing,
        "processing",
        "self-service",
    )
    .await?;
    let (sections, document) = export::build(platform, &mut tx, id, person).await?;
    store::transition(
        &mut tx,
        &platform.keyring,
        id,
        &[Status::Processing],
        Status::Completed,
        "export_ready",
        &format!("sections: {sections}; downloaded from the account"),
    )
    .await?;
    tx.commit()
        .await
        .context("failed to commit a self-service export")?;
    Ok(document)
}

/// Starts the erasure of everything about the person (the same as a verified deletion
/// request: the confirmation email, then the key destroyed), in the caller's transaction.
pub async fn erase(
    conn: &mut PgConnection,
    platform: &Platform,
    person: PersonId,
) -> anyhow::Result<PrivacyRequestId> {
    let id = verified(conn, platform, person, Kind::Deletion).await?;
    jobs::enqueue(conn, Process::job(id, person)).await?;
    Ok(id)
}
