//! The privacy service's background work: acknowledgements with verification links, the
//! automatic access export and deletion, outcome emails, and the sweep that expires unverified
//! requests, deletes old exports and reminds the operator of due dates.

use anyhow::Context;
use pexper_platform::Platform;
use pexper_platform::core::operator_notice;
use pexper_platform::jobs::{self, BackgroundJob, Job, JobError, NewJob};
use pexper_platform::mail;
use pexper_platform::person::{self, PersonId};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::emails::{DeletionDone, ExportReady, LetterReceived, Outcome, Received, ReceivedHeld};
use crate::letter::Language;
use crate::reply::{self, ReplyTo, Words, reply_field};
use crate::request::{Kind, PrivacyRequestId, Status};
use crate::{audit, export, store};

/// Declares a job that names one privacy request (every privacy job names its request and
/// nothing else) and runs `$run(platform, job, request_id)`.
macro_rules! request_job {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $run:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            pub request_id: PrivacyRequestId,
        }

        impl BackgroundJob for $name {
            const KIND: &'static str = $kind;
            type Context = Platform;

            async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
                $run(platform, job, self.request_id).await
            }
        }
    };
}

request_job!(
    /// The acknowledgement of receipt, with the link that verifies the request is theirs.
    ReceivedMail,
    "privacy.received_mail",
    received_mail
);
request_job!(
    /// Runs a verified access, portability or deletion request by itself.
    Process,
    "privacy.process",
    process
);
request_job!(
    /// The download link of a finished export.
    ExportMail,
    "privacy.export_mail",
    export_mail
);
request_job!(
    /// The confirmation of a deletion, then the end of the person's key and address.
    DeletionMail,
    "privacy.deletion_mail",
    deletion_mail
);
request_job!(
    /// What became of a request an operator completed or rejected.
    OutcomeMail,
    "privacy.outcome_mail",
    outcome_mail
);

/// The one acknowledgement of the requests the address's mail budget held back (`send_held`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedHeldMail {
    pub requests: Vec<PrivacyRequestId>,
}

impl BackgroundJob for ReceivedHeldMail {
    const KIND: &'static str = "privacy.received_held_mail";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        received_held_mail(platform, job, self.requests).await
    }
}

impl Process {
    /// The processing of a verified request, once however often it is asked for.
    pub fn job(request_id: PrivacyRequestId, person: PersonId) -> NewJob {
        NewJob::new(&Process { request_id })
            .for_person(person)
            .dedupe_key(format!("{}:{request_id}", Process::KIND))
    }
}

/// The recurring sweep: expires unverified requests, deletes expired exports and links, and
/// reminds the operator of due dates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sweep {}

impl BackgroundJob for Sweep {
    const KIND: &'static str = "privacy.sweep";
    type Context = Platform;

    async fn run(self, platform: Platform, _job: &Job) -> Result<(), JobError> {
        sweep(platform).await
    }
}

fn permanent(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Permanent(e.into())
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    kind: Kind,
    status: Status,
    received_at: OffsetDateTime,
    due_at: OffsetDateTime,
    verify_by: OffsetDateTime,
}

async fn load(
    conn: &mut PgConnection,
    request: PrivacyRequestId,
) -> Result<Option<RequestRow>, JobError> {
    Ok(sqlx::query_as(
        "SELECT kind, status, received_at, due_at, verify_by FROM privacy_request WHERE id = $1",
    )
    .bind(request)
    .fetch_optional(conn)
    .await?)
}

/// What the acknowledgement says of a request still waiting to be verified, with a new link
/// for it; `None` if it no longer waits.
async fn acknowledgement(
    platform: &Platform,
    conn: &mut PgConnection,
    request_id: PrivacyRequestId,
) -> Result<Option<Received>, JobError> {
    let Some(request) = load(conn, request_id).await? else {
        return Ok(None);
    };
    if request.status != Status::Received {
        return Ok(None);
    }
    let Some(token) = store::new_token(conn, request_id, "verify", request.verify_by).await? else {
        return Ok(None); // Its person was erased meanwhile.
    };
    Ok(Some(Received {
        kind: request.kind.describe().to_owned(),
        received: request.received_at.date().to_string(),
        due: request.due_at.date().to_string(),
        verify_url: format!(
            "{}/v1/privacy/verify?token={token}",
            platform.config.public_url
        ),
        verify_by: request.verify_by.date().to_string(),
    }))
}

async fn received_mail(
    platform: Platform,
    job: &Job,
    request_id: PrivacyRequestId,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let Some(email) = acknowledgement(&platform, &mut conn, request_id).await? else {
        return Ok(());
    };
    match letter_reply(&platform, &mut conn, request_id, person, &email).await? {
        Some((reply, headers)) => {
            mail::send_template(&platform, &mut conn, job, Some(person), to, &reply, headers).await
        }
        None => {
            mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
        }
    }
}

/// The acknowledgement of a request that came as a letter to privacy@: a reply to the letter,
/// in its language; `None` for any other request.
async fn letter_reply(
    platform: &Platform,
    conn: &mut PgConnection,
    request_id: PrivacyRequestId,
    person: PersonId,
    ack: &Received,
) -> Result<Option<(LetterReceived, Vec<(&'static str, String)>)>, JobError> {
    let row: Option<(Kind, String, Vec<u8>)> = sqlx::query_as(
        "SELECT r.kind, l.language, l.reply_sealed
         FROM privacy_letter l JOIN privacy_request r ON r.id = l.request_id
         WHERE l.request_id = $1 AND l.reply_sealed IS NOT NULL",
    )
    .bind(request_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((kind, language, sealed)) = row else {
        return Ok(None);
    };
    let Some(key) = person::data_key(conn, &platform.keyring, person).await? else {
        return Ok(None);
    };
    let letter: ReplyTo = serde_json::from_slice(
        &key.open(reply_field(request_id), &sealed)
            .map_err(|e| permanent(anyhow::anyhow!("{e}")))?,
    )
    .map_err(permanent)?;
    let language = Language::parse(&language).unwrap_or(Language::En);
    let words = Words::of(language);
    let reply = LetterReceived {
        subject: reply::subject(words, &letter.subject),
        language: language.code(),
        words,
        received_line: words.received_line(&ack.received, kind, &ack.due),
        verify_url: ack.verify_url.clone(),
        verify_by: ack.verify_by.clone(),
    };
    // An automatic answer (RFC 3834): other responders must not answer it, so no loop.
    let mut headers = reply::threading(letter.message_id.as_deref());
    headers.push(("Auto-Submitted", "auto-replied".to_owned()));
    Ok(Some((reply, headers)))
}

async fn received_held_mail(
    platform: Platform,
    job: &Job,
    request_ids: Vec<PrivacyRequestId>,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let mut requests = Vec::new();
    for id in request_ids {
        requests.extend(acknowledgement(&platform, &mut conn, id).await?);
    }
    if requests.is_empty() {
        return Ok(());
    }
    let email = ReceivedHeld { requests };
    mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
}

async fn process(
    platform: Platform,
    job: &Job,
    request_id: PrivacyRequestId,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut tx = platform.pool.begin().await?;
    let Some((kind, _)) = store::transition(
        &mut tx,
        &platform.keyring,
        request_id,
        &[Status::Verified, Status::Processing],
        Status::Processing,
        "processing",
        "automatic",
    )
    .await?
    else {
        return Ok(()); // Done already, or closed by an operator.
    };
    match kind {
        Kind::Access | Kind::Portability => {
            let (sections, _) = export::build(&platform, &mut tx, request_id, person).await?;
            store::transition(
                &mut tx,
                &platform.keyring,
                request_id,
                &[Status::Processing],
                Status::Completed,
                "export_ready",
                &format!("sections: {sections}"),
            )
            .await?;
            jobs::enqueue(
                &mut tx,
                NewJob::new(&ExportMail { request_id }).for_person(person),
            )
            .await?;
        }
        Kind::Deletion => {
            let summaries = platform
                .personal_data
                .erase_sections(&mut tx, &platform.keyring, person)
                .await?;
            let counts: Vec<String> = summaries
                .iter()
                .flat_map(|s| {
                    s.removed
                        .iter()
                        .map(move |(k, n)| format!("{}.{k}={n}", s.section))
                })
                .collect();
            store::transition(
                &mut tx,
                &platform.keyring,
                request_id,
                &[Status::Processing],
                Status::Completed,
                "erased",
                &counts.join(" "),
            )
            .await?;
            // After the erase, which cancels the person's queued jobs: this one must run.
            jobs::enqueue(
                &mut tx,
                NewJob::new(&DeletionMail { request_id }).for_person(person),
            )
            .await?;
        }
        _ => {
            return Err(permanent(anyhow::anyhow!(
                "{} is not automatic",
                kind.as_str()
            )));
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn export_mail(
    platform: Platform,
    job: &Job,
    request_id: PrivacyRequestId,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    let expires: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT expires_at FROM privacy_export WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (Some(expires), Some(to)) = (
        expires,
        person::email(&mut conn, &platform.keyring, person).await?,
    ) else {
        return Ok(()); // Expired, or the person was erased meanwhile.
    };
    let Some(token) = store::new_token(&mut conn, request_id, "export", expires).await? else {
        return Ok(()); // The person was erased meanwhile.
    };
    let email = ExportReady {
        url: format!("{}/v1/privacy/exports/{token}", platform.config.public_url),
        expires: expires.date().to_string(),
    };
    mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
}

/// The last thing we ever do with the person: if the email cannot be delivered, the key is
/// destroyed all the same.
async fn deletion_mail(
    platform: Platform,
    job: &Job,
    request_id: PrivacyRequestId,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    let sent = match person::email(&mut conn, &platform.keyring, person).await? {
        None => Ok(()),
        Some(to) => {
            let received: Option<OffsetDateTime> =
                sqlx::query_scalar("SELECT received_at FROM privacy_request WHERE id = $1")
                    .bind(request_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let email = DeletionDone {
                received: received.map(|r| r.date().to_string()).unwrap_or_default(),
            };
            mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
        }
    };
    let last_attempt = job.attempts >= job.max_attempts;
    match sent {
        Err(JobError::Retry(e)) if !last_attempt => return Err(JobError::Retry(e)),
        Err(e) => tracing::warn!(
            error = %pexper_platform::telemetry::redact(&format!("{e:#}")),
            %request_id,
            "deletion confirmation not delivered; erasing anyway"
        ),
        Ok(()) => {}
    }
    let mut tx = platform.pool.begin().await?;
    // The confirmation's own history row goes with the person (ON DELETE CASCADE).
    person::destroy(&mut tx, person).await?;
    audit::record(
        &mut tx,
        &platform.keyring,
        request_id,
        "key_destroyed",
        Status::Completed,
        "",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn outcome_mail(
    platform: Platform,
    job: &Job,
    request_id: PrivacyRequestId,
) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    let row: Option<(Kind, Status, OffsetDateTime, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT kind, status, received_at, outcome_sealed FROM privacy_request
         WHERE id = $1 AND person_id = $2",
    )
    .bind(request_id)
    .bind(person)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((kind, status, received, sealed)) = row else {
        return Ok(());
    };
    let Some(key) = person::data_key(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let note = sealed
        .map(|s| key.open_string(store::outcome_field(request_id), &s))
        .transpose()
        .map_err(permanent)?
        .unwrap_or_default();
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let email = Outcome {
        kind: kind.describe().to_owned(),
        received: received.date().to_string(),
        completed: status == Status::Completed,
        note,
    };
    mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
}

/// Reminder stages, most urgent last: (name, due within).
const STAGES: [(&str, time::Duration); 4] = [
    ("7d", time::Duration::days(7)),
    ("3d", time::Duration::days(3)),
    ("1d", time::Duration::days(1)),
    ("overdue", time::Duration::ZERO),
];

/// Periodic and idempotent: each due-date reminder is sent once.
/// Acknowledgements the address's mail budget held back (`intake::take_in`): at the next
/// sweep, one email per person for all their waiting requests, each with its link, out of a
/// budget of one a day that no other mail spends (a stranger who spends the access budget every day
/// cannot keep it from going); each request gets its week to be verified from then.
async fn send_held(conn: &mut PgConnection) -> Result<(), JobError> {
    let held: Vec<(PrivacyRequestId, PersonId)> = sqlx::query_as(
        "SELECT id, person_id FROM privacy_request
         WHERE acknowledgement_held_at IS NOT NULL AND status = 'received'
           AND person_id IS NOT NULL
         ORDER BY person_id, received_at, id FOR UPDATE",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_person: Vec<(PersonId, Vec<PrivacyRequestId>)> = Vec::new();
    for (id, person) in held {
        match by_person.last_mut() {
            Some((last, ids)) if *last == person => ids.push(id),
            _ => by_person.push((person, vec![id])),
        }
    }
    for (person, ids) in by_person {
        if !person::take_mail(conn, person, person::MailBudget::Held).await? {
            continue;
        }
        sqlx::query(
            "UPDATE privacy_request
             SET acknowledgement_held_at = NULL,
                 verify_by = greatest(verify_by, now() + interval '7 days')
             WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        jobs::enqueue(
            conn,
            NewJob::new(&ReceivedHeldMail { requests: ids }).for_person(person),
        )
        .await?;
    }
    Ok(())
}

async fn sweep(platform: Platform) -> Result<(), JobError> {
    // Each step in a transaction of its own, holding what it locks no longer than it needs.
    let mut tx = platform.pool.begin().await?;
    send_held(&mut tx).await?;
    tx.commit()
        .await
        .context("failed to commit held acknowledgements")?;

    // A request whose acknowledgement is still held cannot expire unverified: nobody could
    // have verified it. Expiring writes audit events, so the trail's lock comes first
    // (`audit::lock`), and only when there is something to expire.
    let expired: Vec<PrivacyRequestId> = sqlx::query_scalar(
        "SELECT id FROM privacy_request
         WHERE status = 'received' AND verify_by < now() AND acknowledgement_held_at IS NULL",
    )
    .fetch_all(&platform.pool)
    .await?;
    if !expired.is_empty() {
        let mut tx = platform.pool.begin().await?;
        audit::lock(&mut tx).await?;
        for id in expired {
            // Only if it still waits: the transition checks its status again.
            store::transition(
                &mut tx,
                &platform.keyring,
                id,
                &[Status::Received],
                Status::Expired,
                "expired",
                "not verified within 7 days",
            )
            .await?;
        }
        tx.commit().await.context("failed to commit expiries")?;
    }
    // The trail's head, in the log: an anchor outside the database (`audit`); and its oldest
    // events past their retention, pruned.
    audit::log_head(&platform.pool, &platform.keyring).await?;
    let pruned = audit::prune(&platform.pool, &platform.keyring).await?;
    if pruned > 0 {
        tracing::info!(events = pruned, "audit trail pruned");
    }

    let mut tx = platform.pool.begin().await?;
    sqlx::query("DELETE FROM privacy_export WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM privacy_token WHERE expires_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;

    let open: Vec<(PrivacyRequestId, Kind, OffsetDateTime, Vec<String>)> = sqlx::query_as(
        "SELECT id, kind, due_at, reminders FROM privacy_request
         WHERE status IN ('received', 'verified', 'processing') AND due_at < now() + interval '7 days'
         FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let now = OffsetDateTime::now_utc();
    for (id, kind, due, sent) in open {
        let reached: Vec<&str> = STAGES
            .iter()
            .filter(|(_, within)| due - now <= *within)
            .map(|(name, _)| *name)
            .collect();
        let Some(stage) = reached.last() else {
            continue;
        };
        if sent.iter().any(|s| s == stage) {
            continue;
        }
        let title = match *stage {
            "overdue" => format!("Overdue privacy request {id}"),
            days => format!("Privacy request {id} is due within {} day(s)", &days[..1]),
        };
        jobs::enqueue(
            &mut tx,
            operator_notice(
                title,
                vec![
                    format!("Request {id} ({kind}) is due {}.", due.date()),
                    format!("pexper-admin privacy show {id}"),
                ],
            ),
        )
        .await?;
        // Earlier stages are moot once a later one is sent: no flood for a late intake.
        sqlx::query(
            "UPDATE privacy_request
             SET reminders = ARRAY(SELECT DISTINCT unnest(reminders || $2::text[]))
             WHERE id = $1",
        )
        .bind(id)
        .bind(&reached)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await.context("failed to commit the sweep")?;
    Ok(())
}
