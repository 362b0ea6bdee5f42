//! The privacy service's background work: acknowledgements with verification links, the
//! automatic access export and deletion, outcome emails, and the sweep that expires unverified
//! requests, deletes old exports and reminds the operator of due dates.

use anyhow::Context;
use pexper_platform::Platform;
use pexper_platform::core::operator_notice;
use pexper_platform::jobs::{self, Job, JobError, NewJob};
use pexper_platform::mail;
use pexper_platform::person::{self, PersonId};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::emails::{DeletionDone, ExportReady, Outcome, Received};
use crate::request::{Kind, status};
use crate::{audit, export, store};

pub const RECEIVED_MAIL_JOB: &str = "privacy.received_mail";
pub const PROCESS_JOB: &str = "privacy.process";
pub const EXPORT_MAIL_JOB: &str = "privacy.export_mail";
pub const DELETION_MAIL_JOB: &str = "privacy.deletion_mail";
pub const OUTCOME_MAIL_JOB: &str = "privacy.outcome_mail";
pub const SWEEP_JOB: &str = "privacy.sweep";

/// Every privacy job names its request; nothing else.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestPayload {
    pub request_id: Uuid,
}

fn permanent(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Permanent(e.into())
}

fn person_of(job: &Job) -> Result<PersonId, JobError> {
    job.person_id
        .ok_or_else(|| permanent(anyhow::anyhow!("{} without a person", job.kind)))
}

struct RequestRow {
    kind: Kind,
    status: String,
    received_at: OffsetDateTime,
    due_at: OffsetDateTime,
    verify_by: OffsetDateTime,
}

async fn load(conn: &mut PgConnection, request: Uuid) -> Result<Option<RequestRow>, JobError> {
    let row: Option<(
        String,
        String,
        OffsetDateTime,
        OffsetDateTime,
        OffsetDateTime,
    )> = sqlx::query_as(
        "SELECT kind, status, received_at, due_at, verify_by FROM privacy_request WHERE id = $1",
    )
    .bind(request)
    .fetch_optional(conn)
    .await?;
    row.map(|(kind, status, received_at, due_at, verify_by)| {
        Ok(RequestRow {
            kind: Kind::parse(&kind).ok_or_else(|| permanent(anyhow::anyhow!("unknown kind")))?,
            status,
            received_at,
            due_at,
            verify_by,
        })
    })
    .transpose()
}

/// The acknowledgement of receipt, with the link that verifies the request is theirs.
pub async fn received_mail(platform: Platform, job: Job) -> Result<(), JobError> {
    let RequestPayload { request_id } = job.payload()?;
    let person = person_of(&job)?;
    let mut conn = platform.pool.acquire().await?;
    let Some(request) = load(&mut conn, request_id).await? else {
        return Ok(());
    };
    if request.status != status::RECEIVED {
        return Ok(());
    }
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let token = store::new_token(&mut conn, request_id, "verify", request.verify_by).await?;
    let email = Received {
        kind: request.kind.describe().to_owned(),
        received: request.received_at.date().to_string(),
        due: request.due_at.date().to_string(),
        verify_url: format!(
            "{}/v1/privacy/verify?token={token}",
            platform.config.public_url
        ),
        verify_by: request.verify_by.date().to_string(),
    };
    mail::send_template(&platform, &mut conn, &job, Some(person), to, &email, vec![]).await
}

/// Runs a verified access, portability or deletion request by itself.
pub async fn process(platform: Platform, job: Job) -> Result<(), JobError> {
    let RequestPayload { request_id } = job.payload()?;
    let person = person_of(&job)?;
    let mut tx = platform.pool.begin().await?;
    let Some((kind, _)) = store::transition(
        &mut tx,
        request_id,
        &[status::VERIFIED, status::PROCESSING],
        status::PROCESSING,
        "processing",
        "automatic",
    )
    .await?
    else {
        return Ok(()); // Done already, or closed by an operator.
    };
    match kind {
        Kind::Access | Kind::Portability => {
            let sections = export::build(&platform, &mut tx, request_id, person).await?;
            store::transition(
                &mut tx,
                request_id,
                &[status::PROCESSING],
                status::COMPLETED,
                "export_ready",
                &format!("sections: {sections}"),
            )
            .await?;
            jobs::enqueue(
                &mut tx,
                NewJob::new(EXPORT_MAIL_JOB, RequestPayload { request_id }).for_person(person),
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
                request_id,
                &[status::PROCESSING],
                status::COMPLETED,
                "erased",
                &counts.join(" "),
            )
            .await?;
            // After the erase, which cancels the person's queued jobs: this one must run.
            jobs::enqueue(
                &mut tx,
                NewJob::new(DELETION_MAIL_JOB, RequestPayload { request_id }).for_person(person),
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

/// The download link of a finished export.
pub async fn export_mail(platform: Platform, job: Job) -> Result<(), JobError> {
    let RequestPayload { request_id } = job.payload()?;
    let person = person_of(&job)?;
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
    let token = store::new_token(&mut conn, request_id, "export", expires).await?;
    let email = ExportReady {
        url: format!("{}/v1/privacy/exports/{token}", platform.config.public_url),
        expires: expires.date().to_string(),
    };
    mail::send_template(&platform, &mut conn, &job, Some(person), to, &email, vec![]).await
}

/// Confirms a deletion, then destroys the person's data key and address: the last thing we
/// ever do with them. If the email cannot be delivered, the key is destroyed all the same.
pub async fn deletion_mail(platform: Platform, job: Job) -> Result<(), JobError> {
    let RequestPayload { request_id } = job.payload()?;
    let person = person_of(&job)?;
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
            mail::send_template(&platform, &mut conn, &job, Some(person), to, &email, vec![]).await
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
    audit::record(&mut tx, request_id, "key_destroyed", status::COMPLETED, "").await?;
    tx.commit().await?;
    Ok(())
}

/// Tells the person what became of a request an operator completed or rejected.
pub async fn outcome_mail(platform: Platform, job: Job) -> Result<(), JobError> {
    let RequestPayload { request_id } = job.payload()?;
    let person = person_of(&job)?;
    let mut conn = platform.pool.acquire().await?;
    let row: Option<(String, String, OffsetDateTime, Option<Vec<u8>>)> = sqlx::query_as(
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
        kind: Kind::parse(&kind)
            .map(Kind::describe)
            .unwrap_or("your request")
            .to_owned(),
        received: received.date().to_string(),
        completed: status == status::COMPLETED,
        note,
    };
    mail::send_template(&platform, &mut conn, &job, Some(person), to, &email, vec![]).await
}

/// Reminder stages, most urgent last: (name, due within).
const STAGES: [(&str, time::Duration); 4] = [
    ("7d", time::Duration::days(7)),
    ("3d", time::Duration::days(3)),
    ("1d", time::Duration::days(1)),
    ("overdue", time::Duration::ZERO),
];

/// Periodic and idempotent: expires unverified requests, deletes expired exports and links,
/// and sends each due-date reminder once.
pub async fn sweep(platform: Platform, _job: Job) -> Result<(), JobError> {
    let mut tx = platform.pool.begin().await?;
    let expired: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM privacy_request WHERE status = 'received' AND verify_by < now() FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    for id in expired {
        store::transition(
            &mut tx,
            id,
            &[status::RECEIVED],
            status::EXPIRED,
            "expired",
            "not verified within 7 days",
        )
        .await?;
    }
    sqlx::query("DELETE FROM privacy_export WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM privacy_token WHERE expires_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;

    let open: Vec<(Uuid, String, OffsetDateTime, Vec<String>)> = sqlx::query_as(
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
