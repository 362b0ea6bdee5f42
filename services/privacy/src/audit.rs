//! The audit trail: every status change of every request, in one hash chain. Each row's hash
//! covers the previous row's hash and its own fields, so an edited, inserted or deleted row
//! shows at the first hash that no longer matches. No personal data is ever written here.

use anyhow::Context;
use pexper_platform::crypto::sha256;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::request::{PrivacyRequestId, Status};

const GENESIS: [u8; 32] = [0; 32];

fn link(
    prev: &[u8],
    request: PrivacyRequestId,
    event: &str,
    status: &str,
    detail: &str,
    at: OffsetDateTime,
) -> [u8; 32] {
    // Length-prefixed fields: no two different rows serialise alike.
    let mut bytes = prev.to_vec();
    for field in [
        request.0.as_bytes().as_slice(),
        event.as_bytes(),
        status.as_bytes(),
        detail.as_bytes(),
        &at.unix_timestamp_nanos().to_be_bytes(),
    ] {
        bytes.extend((field.len() as u64).to_be_bytes());
        bytes.extend(field);
    }
    sha256(&bytes)
}

/// Appends an event, in the caller's transaction. `detail` must hold no personal data
/// (counts, ids, reasons chosen from a list).
pub async fn record(
    conn: &mut PgConnection,
    request: PrivacyRequestId,
    event: &str,
    status: Status,
    detail: &str,
) -> anyhow::Result<()> {
    // One writer at a time, so each row chains to the true last one.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('privacy_audit', 0))")
        .execute(&mut *conn)
        .await
        .context("failed to lock the audit trail")?;
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM privacy_audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .context("failed to read the audit trail")?
            .unwrap_or_else(|| GENESIS.to_vec());
    // Microseconds: what Postgres stores, so the hash can be recomputed from the row.
    let at = OffsetDateTime::now_utc();
    let at = at.replace_nanosecond(at.nanosecond() / 1000 * 1000)?;
    let hash = link(&prev, request, event, status.as_str(), detail, at);
    sqlx::query(
        "INSERT INTO privacy_audit (request_id, event, status, detail, at, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(request)
    .bind(event)
    .bind(status)
    .bind(detail)
    .bind(at)
    .bind(&prev)
    .bind(hash.as_slice())
    .execute(conn)
    .await
    .context("failed to append to the audit trail")?;
    Ok(())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub seq: i64,
    pub request_id: PrivacyRequestId,
    pub event: String,
    pub status: String,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One request's events, oldest first.
pub async fn of_request(pool: &PgPool, request: PrivacyRequestId) -> anyhow::Result<Vec<Entry>> {
    sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, at FROM privacy_audit
         WHERE request_id = $1 ORDER BY seq",
    )
    .bind(request)
    .fetch_all(pool)
    .await
    .context("failed to read the audit trail")
}

/// The result of checking the whole chain.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub events: u64,
    /// The first row whose hash does not follow from its predecessor and its own fields.
    pub broken_at: Option<i64>,
}

pub async fn verify(pool: &PgPool) -> anyhow::Result<Verification> {
    type Row = (
        i64,
        PrivacyRequestId,
        String,
        String,
        String,
        OffsetDateTime,
        Vec<u8>,
        Vec<u8>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, at, prev_hash, hash
         FROM privacy_audit ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .context("failed to read the audit trail")?;
    let mut prev = GENESIS.to_vec();
    for (seq, request, event, status, detail, at, prev_hash, hash) in &rows {
        let expected = link(&prev, *request, event, status, detail, *at);
        if *prev_hash != prev || hash.as_slice() != expected.as_slice() {
            return Ok(Verification {
                events: rows.len() as u64,
                broken_at: Some(*seq),
            });
        }
        prev = hash.clone();
    }
    Ok(Verification {
        events: rows.len() as u64,
        broken_at: None,
    })
}
