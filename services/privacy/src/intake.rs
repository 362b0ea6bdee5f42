//! A request's first steps, each inside the caller's transaction: taking it in (stored, and
//! acknowledged by email with a verification link) and verifying it (access and deletion then
//! run by themselves; the others go to the operator).

use pexper_platform::core::operator_notice;
use pexper_platform::crypto::Keyring;
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person::{self, PersonId};
use sqlx::PgConnection;

use crate::jobs::{Process, ReceivedMail};
use crate::request::{Kind, PrivacyRequestId};
use crate::store::{self, NewRequest};

/// Whether a request's acknowledgement may be held back by its address's daily mail budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledge {
    /// Anyone can cause it (the web form, a letter with any `From`): it comes out of the
    /// address's daily budget, so neither is a way to flood someone's inbox. Held back, it
    /// is sent by the sweep once the budget allows (`jobs::send_held`).
    WithinBudget,
    /// An operator took it in by hand.
    Always,
}

/// Stores a request and queues its acknowledgement; an identical web request within 10
/// minutes is the same request and sends nothing new.
pub async fn take_in(
    conn: &mut PgConnection,
    keyring: &Keyring,
    person: PersonId,
    new: &NewRequest,
    acknowledge: Acknowledge,
) -> anyhow::Result<PrivacyRequestId> {
    let created = store::create(conn, keyring, person, new).await?;
    if !created.new {
        return Ok(created.id);
    }
    let id = created.id;
    // The request is kept whatever happens; only its acknowledgement may wait.
    if acknowledge == Acknowledge::Always
        || person::take_mail(conn, person, person::MailBudget::Access).await?
    {
        jobs::enqueue(
            conn,
            NewJob::new(&ReceivedMail { request_id: id }).for_person(person),
        )
        .await?;
    } else {
        store::hold_acknowledgement(conn, id).await?;
        tracing::info!(request = %id, "daily mail budget spent; acknowledgement held");
    }
    Ok(id)
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

/// Uses a verification token: the request is the person's. Access and deletion start by
/// themselves; the operator is told of the others.
pub async fn verify(
    conn: &mut PgConnection,
    keyring: &Keyring,
    token: &str,
) -> anyhow::Result<Verification> {
    let Some(verified) = store::verify(conn, keyring, token).await? else {
        return Ok(Verification::Invalid);
    };
    let (request, kind) = (verified.request, verified.kind);
    let job = if kind.is_automatic() {
        Process::job(request, verified.person)
    } else {
        operator_notice(
            format!("Verified {} request to handle", kind.as_str()),
            vec![
                format!(
                    "Request {request} ({}) is verified and waits for you.",
                    kind.as_str()
                ),
                format!("It is due {}.", verified.due.date()),
                format!("Read it: pexper-admin privacy show {request}"),
                if kind == Kind::Unclassified {
                    format!(
                        "Name the right it asks for: pexper-admin privacy classify {request} --kind K"
                    )
                } else {
                    format!("It asks for {}.", kind.describe())
                },
                format!(
                    "Then: pexper-admin privacy complete {request} --note \"…\" (or reject … --reason \"…\")"
                ),
            ],
        )
    };
    jobs::enqueue(conn, job).await?;
    Ok(Verification::Verified { kind })
}
