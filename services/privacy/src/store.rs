//! Privacy requests in Postgres: taking one in, its tokens, its status changes (each one also
//! an audit event, in the same transaction), and what it asks the job queue to do.

use anyhow::Context;
use pexper_platform::core::operator_notice;
use pexper_platform::crypto::{Field, Keyring, random_token, sha256};
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person::{self, PersonId};
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::audit;
use crate::jobs::{PROCESS_JOB, RECEIVED_MAIL_JOB, RequestPayload};
use crate::request::{Jurisdiction, Kind, due_at, status};

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

pub fn details_field(request: Uuid) -> Field<'static> {
    Field {
        table: "privacy_request",
        column: "details_sealed",
        row: request,
    }
}

pub fn outcome_field(request: Uuid) -> Field<'static> {
    Field {
        table: "privacy_request",
        column: "outcome_sealed",
        row: request,
    }
}

/// Takes a request in and queues its acknowledgement (with the verification link). A second
/// identical web request within 10 minutes is the same request: no new row, no new email.
pub async fn create(
    conn: &mut PgConnection,
    keyring: &Keyring,
    person: PersonId,
    new: &NewRequest,
) -> anyhow::Result<Uuid> {
    if new.source == "web" {
        let recent: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM privacy_request
             WHERE person_id = $1 AND kind = $2 AND status = 'received'
               AND created_at > now() - interval '10 minutes'
             LIMIT 1",
        )
        .bind(person)
        .bind(new.kind.as_str())
        .fetch_optional(&mut *conn)
        .await
        .context("failed to look for a recent request")?;
        if let Some(id) = recent {
            return Ok(id);
        }
    }
    let id = Uuid::now_v7();
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
    .bind(new.kind.as_str())
    .bind(new.jurisdiction.as_str())
    .bind(new.source)
    .bind(details)
    .bind(new.received_at)
    .bind(due_at(new.received_at, new.jurisdiction))
    .bind(LINK_LIFETIME)
    .execute(&mut *conn)
    .await
    .context("failed to store a privacy request")?;
    audit::record(conn, id, "received", status::RECEIVED, new.source).await?;
    // A request from the web form is kept whatever happens, but its acknowledgement comes out
    // of the address's daily budget: the form must not be a way to flood someone's inbox.
    // One made by an operator (from a letter to privacy@) is always acknowledged.
    if new.source != "web" || person::take_request_mail(conn, person).await? {
        jobs::enqueue(
            conn,
            NewJob::new(RECEIVED_MAIL_JOB, RequestPayload { request_id: id }).for_person(person),
        )
        .await?;
    } else {
        tracing::info!(request = %id, "daily mail budget spent; acknowledgement not sent");
    }
    Ok(id)
}

/// A new link token for a request; only its hash is stored.
pub async fn new_token(
    conn: &mut PgConnection,
    request: Uuid,
    purpose: &str,
    expires_at: OffsetDateTime,
) -> anyhow::Result<String> {
    let token = random_token();
    sqlx::query(
        "INSERT INTO privacy_token (token_hash, request_id, purpose, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .bind(request)
    .bind(purpose)
    .bind(expires_at)
    .execute(conn)
    .await
    .context("failed to store a link token")?;
    Ok(token)
}

/// What a verification link did.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    Verified {
        kind: Kind,
    },
    /// Unknown, used, expired, or its request is no longer waiting.
    Invalid,
}

/// Uses a verification token (once, before it expires): the request is the person's, and
/// access and deletion start by themselves; the others go to the operator.
pub async fn verify(conn: &mut PgConnection, token: &str) -> anyhow::Result<Verification> {
    let request: Option<Uuid> = sqlx::query_scalar(
        "UPDATE privacy_token SET used_at = now()
         WHERE token_hash = $1 AND purpose = 'verify' AND used_at IS NULL AND expires_at > now()
         RETURNING request_id",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to use a verification token")?;
    let Some(request) = request else {
        return Ok(Verification::Invalid);
    };
    let row: Option<(String, Option<PersonId>, OffsetDateTime)> = sqlx::query_as(
        "UPDATE privacy_request SET status = 'verified', verified_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'received'
         RETURNING kind, person_id, due_at",
    )
    .bind(request)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to verify a request")?;
    let Some((kind, Some(person), due)) = row else {
        return Ok(Verification::Invalid);
    };
    let kind = Kind::parse(&kind).context("a stored kind no longer parses")?;
    audit::record(conn, request, "verified", status::VERIFIED, "").await?;
    if kind.is_automatic() {
        jobs::enqueue(
            conn,
            NewJob::new(
                PROCESS_JOB,
                RequestPayload {
                    request_id: request,
                },
            )
            .for_person(person)
            .dedupe_key(format!("{PROCESS_JOB}:{request}")),
        )
        .await?;
    } else {
        jobs::enqueue(
            conn,
            operator_notice(
                format!("Verified {} request to handle", kind.as_str()),
                vec![
                    format!("Request {request} ({}) is verified and waits for you.", kind.as_str()),
                    format!("It is due {}.", due.date()),
                    format!("Read it: pexper-admin privacy show {request}"),
                    format!(
                        "Then: pexper-admin privacy complete {request} --note \"…\" (or reject … --reason \"…\")"
                    ),
                ],
            ),
        )
        .await?;
    }
    Ok(Verification::Verified { kind })
}

/// Moves a request to `to` if it is in one of `from`, with an audit event; returns its kind
/// and person, or `None` if it was not in such a state.
pub async fn transition(
    conn: &mut PgConnection,
    request: Uuid,
    from: &[&str],
    to: &str,
    event: &str,
    detail: &str,
) -> anyhow::Result<Option<(Kind, Option<PersonId>)>> {
    let closes = [status::COMPLETED, status::REJECTED, status::EXPIRED].contains(&to);
    let row: Option<(String, Option<PersonId>)> = sqlx::query_as(
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
    audit::record(conn, request, event, to, detail).await?;
    Ok(Some((
        Kind::parse(&kind).context("a stored kind no longer parses")?,
        person,
    )))
}
