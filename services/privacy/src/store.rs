//! Privacy requests in Postgres: taking one in, its tokens, its status changes (each one also
//! an audit event, in the same transaction).

use anyhow::Context;
use pexper_platform::crypto::{Field, Keyring, random_token, sha256};
use pexper_platform::person::{self, PersonId};
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::request::PrivacyRequestId;

use crate::audit;
use crate::request::{Jurisdiction, Kind, Status, due_at};

/// How long a verification link and an export link work.
pub const LINK_LIFETIME: Duration = Duration::days(7);

/// A request as it arrives, from the form or from an operator.
#[derive(Debug)]
pub struct NewRequest {
    pub kind: Kind,
    pub jurisdiction: Jurisdiction,
    /// `web` or `email`.
    pub source: &'static str,
    pub details: Option<String>,
    pub received_at: OffsetDateTime,
}

pub fn details_field(request: PrivacyRequestId) -> Field<'static> {
    Field {
        table: "privacy_request",
        column: "details_sealed",
        row: request.0,
    }
}

pub fn outcome_field(request: PrivacyRequestId) -> Field<'static> {
    Field {
        table: "privacy_request",
        column: "outcome_sealed",
        row: request.0,
    }
}

/// A stored request: `new` is false when a recent identical one was found instead.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub id: PrivacyRequestId,
    pub new: bool,
}

/// Stores a request. A second identical web request within 10 minutes is the same request:
/// Marks a request's acknowledgement as held back by the address's mail budget.
pub async fn hold_acknowledgement(
    conn: &mut PgConnection,
    request: PrivacyRequestId,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE privacy_request SET acknowledgement_held_at = now() WHERE id = $1")
        .bind(request)
        .execute(conn)
        .await
        .context("failed to hold an acknowledgement")?;
    Ok(())
}

/// no new row.
pub async fn create(
    conn: &mut PgConnection,
    keyring: &Keyring,
    person: PersonId,
    new: &NewRequest,
) -> anyhow::Result<Created> {
    if new.source == "web" {
        let recent: Option<PrivacyRequestId> = sqlx::query_scalar(
            "SELECT id FROM privacy_request
             WHERE person_id = $1 AND kind = $2 AND status = 'received'
               AND created_at > now() - interval '10 minutes'
             LIMIT 1",
        )
        .bind(person)
        .bind(new.kind)
        .fetch_optional(&mut *conn)
        .await
        .context("failed to look for a recent request")?;
        if let Some(id) = recent {
            return Ok(Created { id, new: false });
        }
    }
    let id = PrivacyRequestId(Uuid::now_v7());
    let details = match new
        .details
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        Some(text) => {
            let key = person::data_key(conn, keyring, person)
                .await?
                .context("the person vanished")?;
            Some(key.seal(details_field(id), text.as_bytes()))
        }
        None => None,
    };
    sqlx::query(
        "INSERT INTO privacy_request (id, person_id, kind, jurisdiction, source, status,
                                      details_sealed, received_at, due_at, verify_by)
         VALUES ($1, $2, $3, $4, $5, 'received', $6, $7, $8, now() + $9)",
    )
    .bind(id)
    .bind(person)
    .bind(new.kind)
    .bind(new.jurisdiction)
    .bind(new.source)
    .bind(details)
    .bind(new.received_at)
    .bind(due_at(new.received_at, new.jurisdiction))
    .bind(LINK_LIFETIME)
    .execute(&mut *conn)
    .await
    .context("failed to store a privacy request")?;
    audit::record(conn, keyring, id, "received", Status::Received, new.source).await?;
    Ok(Created { id, new: true })
}

/// A new link token for a request while it still belongs to someone; only its hash is
/// stored. `None` once the request's person is erased.
///
/// The request's row is locked while the token is written: an erasure unlinks the request
/// (waiting for the lock) before it deletes the request's tokens, so a mail job that read
/// the address just before cannot leave a link behind it (`personal::erase`).
pub async fn new_token(
    conn: &mut PgConnection,
    request: PrivacyRequestId,
    purpose: &str,
    expires_at: OffsetDateTime,
) -> anyhow::Result<Option<String>> {
    let token = random_token();
    let stored = sqlx::query(
        "WITH linked AS (
             SELECT id FROM privacy_request WHERE id = $2 AND person_id IS NOT NULL FOR SHARE
         )
         INSERT INTO privacy_token (token_hash, request_id, purpose, expires_at)
         SELECT $1, id, $3, $4 FROM linked",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .bind(request)
    .bind(purpose)
    .bind(expires_at)
    .execute(conn)
    .await
    .context("failed to store a link token")?
    .rows_affected();
    Ok((stored == 1).then_some(token))
}

/// A request its person has just verified.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    pub request: PrivacyRequestId,
    pub kind: Kind,
    pub person: PersonId,
    pub due: OffsetDateTime,
}

/// Whether a verification link can still be used, was used, or is unknown or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Usable,
    Used,
    Invalid,
}

/// What the verification link `token` is now (reads only: opening a link changes nothing).
pub async fn verify_link(conn: &mut PgConnection, token: &str) -> anyhow::Result<LinkState> {
    // A request that expired unverified took its link with it, used or not.
    let row: Option<(bool, bool, String)> = sqlx::query_as(
        "SELECT t.used_at IS NOT NULL, t.expires_at > now(), r.status::text
         FROM privacy_token t JOIN privacy_request r ON r.id = t.request_id
         WHERE t.token_hash = $1 AND t.purpose = 'verify'",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to read a verification token")?;
    Ok(match row {
        Some((_, _, status)) if status == "expired" => LinkState::Invalid,
        Some((true, _, _)) => LinkState::Used,
        Some((false, true, status)) if status == "received" => LinkState::Usable,
        _ => LinkState::Invalid,
    })
}

/// Uses a verification token (once, before it expires) and marks its request verified;
/// `None` if the token is unknown, used or expired, or its request no longer waits.
pub async fn verify(
    conn: &mut PgConnection,
    keyring: &Keyring,
    token: &str,
) -> anyhow::Result<Option<Verified>> {
    audit::lock(conn).await?;
    let request: Option<PrivacyRequestId> = sqlx::query_scalar(
        "UPDATE privacy_token SET used_at = now()
         WHERE token_hash = $1 AND purpose = 'verify' AND used_at IS NULL AND expires_at > now()
         RETURNING request_id",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to use a verification token")?;
    let Some(request) = request else {
        return Ok(None);
    };
    let row: Option<(Kind, Option<PersonId>, OffsetDateTime)> = sqlx::query_as(
        "UPDATE privacy_request SET status = 'verified', verified_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'received'
         RETURNING kind, person_id, due_at",
    )
    .bind(request)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to verify a request")?;
    let Some((kind, Some(person), due)) = row else {
        return Ok(None);
    };
    audit::record(conn, keyring, request, "verified", Status::Verified, "").await?;
    Ok(Some(Verified {
        request,
        kind,
        person,
        due,
    }))
}

/// Moves a request to `to` if it is in one of `from`, with an audit event; returns its kind
/// and person, or `None` if it was not in such a state.
pub async fn transition(
    conn: &mut PgConnection,
    keyring: &Keyring,
    request: PrivacyRequestId,
    from: &[Status],
    to: Status,
    event: &str,
    detail: &str,
) -> anyhow::Result<Option<(Kind, Option<PersonId>)>> {
    // The trail's lock before the request's row (`audit::lock`).
    audit::lock(conn).await?;
    let closes = [Status::Completed, Status::Rejected, Status::Expired].contains(&to);
    let row: Option<(Kind, Option<PersonId>)> = sqlx::query_as(
        "UPDATE privacy_request
         SET status = $3, updated_at = now(),
             closed_at = CASE WHEN $4 THEN now() ELSE closed_at END
         WHERE id = $1 AND status = ANY($2)
         RETURNING kind, person_id",
    )
    .bind(request)
    .bind(from)
    .bind(to)
    .bind(closes)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to change a request's status")?;
    let Some((kind, person)) = row else {
        return Ok(None);
    };
    audit::record(conn, keyring, request, event, to, detail).await?;
    Ok(Some((kind, person)))
}
