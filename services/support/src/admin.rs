//! What `pexper-admin support …` does: the queue, one request opened, a reply sent by email,
//! closing. Replies are sealed under the person's key like what they wrote.

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person;
use sqlx::PgPool;
use uuid::Uuid;

use crate::mail::SendReply;
use crate::store::{self, Row, Status};

pub use crate::store::{Opened, find, list};

/// What the person wrote and what we answered, opened for the operator.
pub async fn open(pool: &PgPool, keyring: &Keyring, row: &Row) -> anyhow::Result<Opened> {
    let person = row.person_id.context("the request's person is erased")?;
    store::open(&mut *pool.acquire().await?, keyring, row.id, person).await
}

/// Seals a reply, marks the request answered and queues the email, in one transaction.
pub async fn reply(pool: &PgPool, keyring: &Keyring, row: &Row, body: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        row.status != Status::Closed,
        "request {} is closed",
        row.reference
    );
    let person = row.person_id.context("the request's person is erased")?;
    let mut tx = pool.begin().await?;
    let key = person::data_key(&mut tx, keyring, person)
        .await?
        .context("the request's person is erased")?;
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO support_reply (id, request_id, body_sealed) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(row.id)
        .bind(key.seal(store::reply_field(id), body.as_bytes()))
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE support_request SET status = 'answered', updated_at = now() WHERE id = $1")
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    jobs::enqueue(
        &mut tx,
        NewJob::new(&SendReply { reply_id: id }).for_person(person),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn close(pool: &PgPool, row: &Row) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE support_request SET status = 'closed', closed_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(row.id)
    .execute(pool)
    .await?;
    Ok(())
}
