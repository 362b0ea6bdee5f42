//! Letters to privacy@ taken in as requests (issue 29), each in the caller's transaction:
//! every letter once (`privacy_letter`, keyed by its Message-ID), on the clock from the moment
//! our server received it, acknowledged as a reply in its language (`jobs::received_mail`).
//! The mailbox reader (`pexper-server`'s inbox job) marks a message read only after the
//! transaction commits, so a crash between the two takes it in again as the same request.

use anyhow::Context;
use pexper_platform::address::EmailAddress;
use pexper_platform::core::operator_notice;
use pexper_platform::crypto::Keyring;
use pexper_platform::jobs;
use pexper_platform::person::{self, PersonId};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::intake::{self, Acknowledge};
use crate::letter::{self, Letter, NotALetter};
use crate::reply::{ReplyTo, reply_field};
use crate::request::{Jurisdiction, Kind, PrivacyRequestId};
use crate::store::{NewRequest, details_field};

/// What became of one message in the privacy@ mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A new request (`unclassified` when its right was unclear: the operator is told).
    Request(PrivacyRequestId, Kind),
    /// Taken in before (delivered twice, or read again after a crash): nothing new.
    Again,
    /// A person's reply to our mail about an open request: added to that request's details,
    /// and the operator is told.
    Reply(PrivacyRequestId),
    /// Not a person's letter: no request and no answer (no mail loops).
    NotALetter(NotALetter),
    /// A letter with no address we could answer: the operator is told to read it.
    NoSender,
}

impl Taken {
    /// Whether a person still has to read the message in the mailbox (it is left unread
    /// there): a letter with no address to answer, and our own mail come back (the
    /// operator's notices go to privacy@ too).
    pub fn for_a_person(self) -> bool {
        matches!(self, Taken::NoSender | Taken::NotALetter(NotALetter::Ours))
    }
}

/// Takes one message in. `whole` is false when the reader took only its headers (a message
/// over its size limit): it becomes an `unclassified` request for the operator. `our_domain`
/// is the domain we send from.
pub async fn take_in(
    conn: &mut PgConnection,
    keyring: &Keyring,
    raw: &[u8],
    whole: bool,
    our_domain: &str,
) -> anyhow::Result<Taken> {
    let mut letter = match letter::read(raw, our_domain) {
        Ok(letter) => letter,
        Err(why) => return Ok(Taken::NotALetter(why)),
    };
    if !whole {
        letter.kind = None;
    }
    let claimed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO privacy_letter (key, dmarc_failed, language) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING RETURNING true",
    )
    .bind(letter.key.as_slice())
    .bind(letter.dmarc_failed)
    .bind(letter.language.code())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to claim a letter")?;
    if claimed.is_none() {
        return Ok(Taken::Again);
    }
    let Some(email) = letter
        .from
        .as_deref()
        .and_then(|from| EmailAddress::parse(from).ok())
    else {
        jobs::enqueue(
            conn,
            operator_notice(
                "A letter to privacy@ with no address to answer",
                vec![
                    "A message in the privacy@ mailbox has no sender address we can answer (or it is not mail at all).".into(),
                    "No request was made: please read it in the mailbox and take it in by hand if a person wrote it (pexper-admin privacy intake).".into(),
                ],
            ),
        )
        .await?;
        return Ok(Taken::NoSender);
    };
    let person = person::find_or_create(conn, keyring, &email).await?;
    if let Some(request) = replied_request(conn, &letter, person, our_domain).await? {
        let whole = add_reply(conn, keyring, request, person, &letter).await?;
        link(conn, &letter, request, None).await?;
        jobs::enqueue(
            conn,
            operator_notice(
                "A reply about a privacy request",
                vec![
                    if whole {
                        format!("Request {request} got a reply by email from its person's address (DMARC passed); its words are added to the request's details.")
                    } else {
                        format!("Request {request} got a reply by email from its person's address (DMARC passed), too long to add to the request's details whole: read it in the privacy@ mailbox.")
                    },
                    format!("Read it: pexper-admin privacy show {request}"),
                ],
            ),
        )
        .await?;
        return Ok(Taken::Reply(request));
    }
    let kind = letter.kind.unwrap_or(Kind::Unclassified);
    let now = OffsetDateTime::now_utc();
    let new = NewRequest {
        kind,
        jurisdiction: Jurisdiction::Other,
        source: "email",
        details: Some(if whole {
            letter.text.clone()
        } else {
            format!(
                "{}\n\n(Only the headers were read: the message is too large. Read it in the privacy@ mailbox.)",
                letter.subject
            )
        }),
        // Our server's own time of receipt; never later than now (a clock ahead, or a header
        // that is not our server's).
        received_at: letter.received_at.map_or(now, |at| at.min(now)),
    };
    let id = intake::take_in(conn, keyring, person, &new, Acknowledge::WithinBudget).await?;
    let key = person::data_key(conn, keyring, person)
        .await?
        .context("the person vanished")?;
    // The subject is quoted back only when our server found the sender's domain authentic:
    // otherwise anyone could make us send their words, signed by our domain, to anyone.
    let reply = ReplyTo {
        message_id: letter.message_id.clone(),
        subject: if letter.dmarc_passed {
            letter.subject.clone()
        } else {
            String::new()
        },
    };
    let sealed = key.seal(reply_field(id), &serde_json::to_vec(&reply)?);
    link(conn, &letter, id, Some(sealed)).await?;
    if kind == Kind::Unclassified {
        jobs::enqueue(
            conn,
            operator_notice(
                "A privacy request to classify",
                vec![
                    format!("Request {id} arrived by email, and the right it asks for was not clear. It is on the clock like any other."),
                    format!("Read it: pexper-admin privacy show {id}"),
                    format!("Then: pexper-admin privacy classify {id} --kind access|portability|deletion|correction|restriction|objection|opt_out_of_sale"),
                ],
            ),
        )
        .await?;
    }
    Ok(Taken::Request(id, kind))
}

async fn link(
    conn: &mut PgConnection,
    letter: &Letter,
    request: PrivacyRequestId,
    reply_sealed: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE privacy_letter SET request_id = $2, reply_sealed = $3 WHERE key = $1")
        .bind(letter.key.as_slice())
        .bind(request)
        .bind(reply_sealed)
        .execute(conn)
        .await
        .context("failed to link a letter to its request")?;
    Ok(())
}

/// The person's latest open request, when the letter answers privacy mail we sent them and
/// our server found its `From` authentic (DMARC passed: our Message-IDs are no secret, and
/// anyone can write any `From`): a reply to our acknowledgement is about that request, not a
/// new one. Otherwise, or when nothing of theirs is open, it is a new letter.
async fn replied_request(
    conn: &mut PgConnection,
    letter: &Letter,
    person: PersonId,
    our_domain: &str,
) -> anyhow::Result<Option<PrivacyRequestId>> {
    if !letter.dmarc_passed {
        return Ok(None);
    }
    let ours: Vec<String> = letter
        .replies_to
        .iter()
        .filter(|id| {
            id.rsplit_once('@')
                .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(our_domain))
        })
        .map(|id| format!("<{id}>"))
        .collect();
    if ours.is_empty() {
        return Ok(None);
    }
    sqlx::query_scalar(
        "SELECT r.id FROM privacy_request r
         WHERE r.person_id = $1 AND r.status IN ('received', 'verified', 'processing')
           AND EXISTS (SELECT 1 FROM email_event e
                       WHERE e.person_id = $1 AND e.message_id = ANY($2) AND e.template LIKE 'privacy-%')
         ORDER BY r.received_at DESC LIMIT 1",
    )
    .bind(person)
    .bind(&ours)
    .fetch_optional(conn)
    .await
    .context("failed to look for the request a reply is about")
}

/// Appends a reply's words to its request's details (sealed under the person's key, as the
/// letter was), up to twice a letter's length in all; false when they did not fit whole.
async fn add_reply(
    conn: &mut PgConnection,
    keyring: &Keyring,
    request: PrivacyRequestId,
    person: PersonId,
    letter: &Letter,
) -> anyhow::Result<bool> {
    let key = person::data_key(conn, keyring, person)
        .await?
        .context("the person vanished")?;
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT details_sealed FROM privacy_request WHERE id = $1 FOR UPDATE")
            .bind(request)
            .fetch_one(&mut *conn)
            .await?;
    let mut details = match sealed {
        Some(sealed) => key.open_string(details_field(request), &sealed)?,
        None => String::new(),
    };
    let at = letter
        .received_at
        .unwrap_or_else(OffsetDateTime::now_utc)
        .date();
    details.push_str(&format!("\n\n--- Their reply, received {at} ---\n"));
    details.push_str(&letter.text);
    let whole = details.chars().count() <= 2 * letter::MAX_TEXT;
    let details: String = details.chars().take(2 * letter::MAX_TEXT).collect();
    sqlx::query("UPDATE privacy_request SET details_sealed = $2, updated_at = now() WHERE id = $1")
        .bind(request)
        .bind(key.seal(details_field(request), details.as_bytes()))
        .execute(conn)
        .await
        .context("failed to add a reply to its request")?;
    Ok(whole)
}
