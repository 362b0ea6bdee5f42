//! The audit trail: every status change of every request, and every operator read of personal
//! data in clear, in one hash chain. Each row's hash covers the previous row's hash and its own
//! fields, so an edited, inserted or deleted row shows at the first hash that no longer
//! matches. No personal data is ever written here (an operator's reason is redacted).
//!
//! Each row names its actor: the operator (`pexper-admin` sets `pexper.actor` on its
//! connections, from `PEXPER_OPERATOR` or the OS user), or `system` for the server's work.

use anyhow::Context;
use pexper_platform::crypto::sha256;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::request::{PrivacyRequestId, Status};

const GENESIS: [u8; 32] = [0; 32];

fn link(
    prev: &[u8],
    request: Option<PrivacyRequestId>,
    event: &str,
    status: &str,
    detail: &str,
    actor: &str,
    at: OffsetDateTime,
) -> [u8; 32] {
    // Length-prefixed fields: no two different rows serialise alike. The actor is covered
    // when there is one; rows from before actors were recorded have none.
    let mut bytes = prev.to_vec();
    let request = request.map(|r| *r.0.as_bytes());
    let mut fields = vec![
        request.as_ref().map_or(&[][..], |r| r.as_slice()),
        event.as_bytes(),
        status.as_bytes(),
        detail.as_bytes(),
    ];
    let at = at.unix_timestamp_nanos().to_be_bytes();
    fields.push(&at);
    if !actor.is_empty() {
        fields.push(actor.as_bytes());
    }
    for field in fields {
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
    append(conn, Some(request), event, status.as_str(), detail).await
}

/// Records that the operator read personal data in clear (`what`, with no address in it),
/// and why; the reason is redacted of anything that looks like an address or a token.
pub async fn record_read(
    conn: &mut PgConnection,
    request: Option<PrivacyRequestId>,
    what: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let reason = pexper_platform::telemetry::redact(reason.trim());
    append(
        conn,
        request,
        "read",
        "",
        &format!("{what}; reason: {reason}"),
    )
    .await
}

/// Records an operator's action on something that is not a privacy request (an account
/// disabled, its sessions ended), and why; `what` names ids only, the reason is redacted.
pub async fn record_action(
    conn: &mut PgConnection,
    event: &str,
    what: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let reason = pexper_platform::telemetry::redact(reason.trim());
    append(conn, None, event, "", &format!("{what}; reason: {reason}")).await
}

/// Takes the audit trail's lock, held to the end of the transaction: one writer at a time.
/// A transaction that will write an event and lock requests takes it first, before any
/// request row: otherwise one that holds a row and waits for the trail deadlocks with one
/// that holds the trail and waits for the row (a verification beside a running erasure).
pub async fn lock(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('privacy_audit', 0))")
        .execute(conn)
        .await
        .context("failed to lock the audit trail")?;
    Ok(())
}

async fn append(
    conn: &mut PgConnection,
    request: Option<PrivacyRequestId>,
    event: &str,
    status: &str,
    detail: &str,
) -> anyhow::Result<()> {
    // One writer at a time, so each row chains to the true last one.
    lock(conn).await?;
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM privacy_audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .context("failed to read the audit trail")?
            .unwrap_or_else(|| GENESIS.to_vec());
    let actor: String = sqlx::query_scalar(
        "SELECT coalesce(nullif(current_setting('pexper.actor', true), ''), 'system')",
    )
    .fetch_one(&mut *conn)
    .await?;
    // Microseconds: what Postgres stores, so the hash can be recomputed from the row.
    let at = OffsetDateTime::now_utc();
    let at = at.replace_nanosecond(at.nanosecond() / 1000 * 1000)?;
    let hash = link(&prev, request, event, status, detail, &actor, at);
    sqlx::query(
        "INSERT INTO privacy_audit (request_id, event, status, detail, actor, at, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(request)
    .bind(event)
    .bind(status)
    .bind(detail)
    .bind(&actor)
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
    pub request_id: Option<PrivacyRequestId>,
    pub event: String,
    pub status: String,
    pub detail: String,
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One request's events, oldest first.
pub async fn of_request(pool: &PgPool, request: PrivacyRequestId) -> anyhow::Result<Vec<Entry>> {
    sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, actor, at FROM privacy_audit
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
        Option<PrivacyRequestId>,
        String,
        String,
        String,
        String,
        OffsetDateTime,
        Vec<u8>,
        Vec<u8>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, actor, at, prev_hash, hash
         FROM privacy_audit ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .context("failed to read the audit trail")?;
    let mut prev = GENESIS.to_vec();
    for (seq, request, event, status, detail, actor, at, prev_hash, hash) in &rows {
        let expected = link(&prev, *request, event, status, detail, actor, *at);
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
