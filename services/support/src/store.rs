//! The support tables: requests and replies, what the person and the operator wrote sealed
//! under the person's data key, each value bound to its row.

use anyhow::Context;
use pexper_platform::address::EmailAddress;
use pexper_platform::crypto::{Field, Keyring};
use pexper_platform::person::{self, PersonId};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

pexper_platform::id!(
    /// A support request.
    SupportRequestId
);

pexper_platform::text_enum!(
    /// Where a request is: waiting for us, answered (and perhaps waiting for them), closed.
    pub enum Status {
        Open = "open",
        Answered = "answered",
        Closed = "closed",
    }
);

pub fn subject_field(id: SupportRequestId) -> Field<'static> {
    Field {
        table: "support_request",
        column: "subject_sealed",
        row: id.0,
    }
}

pub fn message_field(id: SupportRequestId) -> Field<'static> {
    Field {
        table: "support_request",
        column: "message_sealed",
        row: id.0,
    }
}

pub fn reply_field(id: Uuid) -> Field<'static> {
    Field {
        table: "support_reply",
        column: "body_sealed",
        row: id,
    }
}

/// A reference a person can quote: `S-` and eight characters from an alphabet without 0/O
/// and 1/I, random, so it says nothing about how many requests there are.
fn new_reference() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    let code: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("S-{code}")
}

/// Stores a request for `email` (finding or creating its person), sealed. Returns its id.
pub async fn create(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
    subject: Option<&str>,
    message: &str,
) -> anyhow::Result<(SupportRequestId, PersonId)> {
    let person = person::find_or_create(conn, keyring, email).await?;
    let key = person::data_key(conn, keyring, person)
        .await?
        .context("the person vanished")?;
    let id = SupportRequestId(Uuid::now_v7());
    sqlx::query(
        "INSERT INTO support_request (id, reference, person_id, subject_sealed, message_sealed)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(new_reference())
    .bind(person)
    .bind(subject.map(|s| key.seal(subject_field(id), s.as_bytes())))
    .bind(key.seal(message_field(id), message.as_bytes()))
    .execute(conn)
    .await
    .context("failed to store a support request")?;
    Ok((id, person))
}

/// A request as the operator's list shows it: no personal data.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: SupportRequestId,
    pub reference: String,
    pub status: Status,
    pub replies: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
    #[serde(skip)]
    pub person_id: Option<PersonId>,
}

const SELECT: &str = "
    SELECT r.id, r.reference, r.status, r.created_at, r.closed_at, r.person_id,
           (SELECT count(*) FROM support_reply y WHERE y.request_id = r.id) AS replies
    FROM support_request r";

pub async fn list(pool: &PgPool, status: Option<Status>) -> anyhow::Result<Vec<Row>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE $1::text IS NULL OR r.status = $1 ORDER BY r.created_at"
    )))
    .bind(status)
    .fetch_all(pool)
    .await
    .context("failed to list support requests")
}

/// One request, by id or reference.
pub async fn find(pool: &PgPool, id_or_reference: &str) -> anyhow::Result<Option<Row>> {
    let id = Uuid::try_parse(id_or_reference).ok();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE r.id = $1 OR r.reference = $2"
    )))
    .bind(id)
    .bind(id_or_reference.trim().to_ascii_uppercase())
    .fetch_optional(pool)
    .await
    .context("failed to find a support request")
}

/// What the person wrote and what we answered, opened.
#[derive(Debug, Serialize)]
pub struct Opened {
    pub subject: Option<String>,
    pub message: String,
    pub replies: Vec<OpenedReply>,
}

#[derive(Debug, Serialize)]
pub struct OpenedReply {
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
}

pub async fn open(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: SupportRequestId,
    person: PersonId,
) -> anyhow::Result<Opened> {
    let key = person::data_key(conn, keyring, person)
        .await?
        .context("the person is erased")?;
    let (subject, message): (Option<Vec<u8>>, Vec<u8>) =
        sqlx::query_as("SELECT subject_sealed, message_sealed FROM support_request WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let replies: Vec<(Uuid, Vec<u8>, OffsetDateTime)> = sqlx::query_as(
        "SELECT id, body_sealed, created_at FROM support_reply WHERE request_id = $1
         ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Opened {
        subject: subject
            .map(|s| key.open_string(subject_field(id), &s))
            .transpose()?,
        message: key.open_string(message_field(id), &message)?,
        replies: replies
            .into_iter()
            .map(|(reply, body, sent_at)| {
                Ok(OpenedReply {
                    body: key.open_string(reply_field(reply), &body)?,
                    sent_at,
                })
            })
            .collect::<anyhow::Result<_>>()?,
    })
}
