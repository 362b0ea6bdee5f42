//! What `pexper-admin privacy …` does: take in requests that arrive at privacy@, list the
//! queue against its due dates, show one (with what the person wrote), move operator-handled
//! requests along, and report the SLA.

use anyhow::Context;
use pexper_platform::address::EmailAddress;
use pexper_platform::crypto::Keyring;
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person::{self, PersonId};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::intake;
use crate::jobs::{OutcomeMail, Process};
use crate::request::{Jurisdiction, Kind, PrivacyRequestId, Status};
use crate::store::{self, NewRequest, details_field, outcome_field};

pub use crate::audit::{
    Verification as AuditVerification, record_action, record_read, verify as verify_audit,
};

/// A request that arrived by email, taken in by an operator. It is acknowledged by email with
/// a verification link like any other.
pub async fn intake(
    pool: &PgPool,
    keyring: &Keyring,
    email: &EmailAddress,
    kind: Kind,
    jurisdiction: Jurisdiction,
    received_at: OffsetDateTime,
    note: Option<String>,
) -> anyhow::Result<PrivacyRequestId> {
    let mut tx = pool.begin().await?;
    let person = person::find_or_create(&mut tx, keyring, email).await?;
    let id = intake::take_in(
        &mut tx,
        keyring,
        person,
        &NewRequest {
            kind,
            jurisdiction,
            source: "email",
            details: note,
            received_at,
        },
        intake::Acknowledge::Always,
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// `privacy erase --email --reason`: an operator erases someone without their clicking a link
/// (data of a child, found out; abuse). It is the same deletion as a verified request — a
/// request of source `operator`, verified at once, processed by the same job, confirmed to the
/// address — and the audit trail says who started it and why. `None` if nobody has the
/// address.
pub async fn erase(
    pool: &PgPool,
    keyring: &Keyring,
    email: &EmailAddress,
    reason: &str,
) -> anyhow::Result<Option<PrivacyRequestId>> {
    let mut tx = pool.begin().await?;
    let Some(person) = person::find(&mut tx, keyring, email).await? else {
        return Ok(None);
    };
    let created = store::create(
        &mut tx,
        keyring,
        person,
        &NewRequest {
            kind: Kind::Deletion,
            jurisdiction: Jurisdiction::Other,
            source: "operator",
            details: None,
            received_at: OffsetDateTime::now_utc(),
        },
    )
    .await?;
    let reason = pexper_platform::telemetry::redact(reason.trim());
    store::transition(
        &mut tx,
        keyring,
        created.id,
        &[Status::Received],
        Status::Verified,
        "verified",
        &format!("erasure by the operator; reason: {reason}"),
    )
    .await?
    .context("a request just made is not waiting")?;
    jobs::enqueue(&mut tx, Process::job(created.id, person)).await?;
    tx.commit().await?;
    Ok(Some(created.id))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: PrivacyRequestId,
    pub kind: Kind,
    pub jurisdiction: Jurisdiction,
    pub status: Status,
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
    /// Whole days until due (negative: overdue); `None` once closed.
    pub days_left: Option<i64>,
    pub overdue: bool,
    /// A letter to privacy@ whose sender's domain failed DMARC at our receiving server: the
    /// `From` may be forged (the emailed link proves the address either way). Absent for
    /// requests that came otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dmarc_failed: Option<bool>,
    #[serde(skip)]
    pub person_id: Option<PersonId>,
}

const SELECT: &str = "
    SELECT id, kind, jurisdiction, status, source, received_at, due_at, closed_at,
           CASE WHEN status IN ('received', 'verified', 'processing')
                THEN floor(extract(epoch FROM due_at - now()) / 86400)::bigint END AS days_left,
           status IN ('received', 'verified', 'processing') AND due_at < now() AS overdue,
           (SELECT bool_or(l.dmarc_failed) FROM privacy_letter l
            WHERE l.request_id = privacy_request.id) AS dmarc_failed,
           person_id
    FROM privacy_request";

/// The queue, soonest due first. `overdue` and `due_within` look at open requests only.
pub async fn list(
    pool: &PgPool,
    status: Option<Status>,
    overdue: bool,
    due_within_days: Option<i64>,
) -> anyhow::Result<Vec<Row>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT}
         WHERE ($1::text IS NULL OR status = $1)
           AND (NOT $2 OR (status IN ('received', 'verified', 'processing') AND due_at < now()))
           AND ($3::bigint IS NULL OR (status IN ('received', 'verified', 'processing')
                                        AND due_at < now() + make_interval(days => $3::int)))
         ORDER BY due_at, id"
    )))
    .bind(status)
    .bind(overdue)
    .bind(due_within_days)
    .fetch_all(pool)
    .await
    .context("failed to list privacy requests")
}

pub async fn find(pool: &PgPool, id: PrivacyRequestId) -> anyhow::Result<Option<Row>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
        .context("failed to load a privacy request")
}

/// What the person wrote and the outcome we sent, decrypted, and their address if asked.
pub async fn private_parts(
    pool: &PgPool,
    keyring: &Keyring,
    row: &Row,
    with_email: bool,
) -> anyhow::Result<serde_json::Value> {
    let Some(person) = row.person_id else {
        return Ok(serde_json::json!({"erased": true}));
    };
    let mut conn = pool.acquire().await?;
    let (details, outcome): (Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT details_sealed, outcome_sealed FROM privacy_request WHERE id = $1")
            .bind(row.id)
            .fetch_one(&mut *conn)
            .await?;
    let key = person::data_key(&mut conn, keyring, person).await?;
    let open = |field, sealed: Option<Vec<u8>>| -> anyhow::Result<Option<String>> {
        match (&key, sealed) {
            (Some(key), Some(s)) => Ok(Some(key.open_string(field, &s)?)),
            _ => Ok(None),
        }
    };
    let mut value = serde_json::json!({
        "details": open(details_field(row.id), details)?,
        "outcome": open(outcome_field(row.id), outcome)?,
    });
    if with_email {
        let email = person::email(&mut conn, keyring, person).await?;
        value["email"] = serde_json::json!(email.as_ref().map(|e| e.as_str()));
    }
    Ok(value)
}

/// `privacy process ID`: an operator takes a verified request in hand; for access and
/// deletion (say, after their job went dead) it runs the automatic processing again.
pub async fn process(pool: &PgPool, keyring: &Keyring, id: PrivacyRequestId) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let row: Option<(Kind, Status, Option<PersonId>)> = sqlx::query_as(
        "SELECT kind, status, person_id FROM privacy_request WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (kind, current, person) = row.with_context(|| format!("no privacy request {id}"))?;
    anyhow::ensure!(
        current == Status::Verified || current == Status::Processing,
        "request {id} is {current}: only a verified request can be processed"
    );
    anyhow::ensure!(
        kind != Kind::Unclassified,
        "request {id} is unclassified: name its right first (pexper-admin privacy classify {id} --kind K)"
    );
    if kind.is_automatic() {
        let person = person.context("the request's person is erased")?;
        jobs::enqueue(&mut tx, Process::job(id, person)).await?;
    } else {
        store::transition(
            &mut tx,
            keyring,
            id,
            &[Status::Verified],
            Status::Processing,
            "processing",
            "operator",
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `privacy classify ID --kind K`: names the right an emailed request asks for, while it is
/// open. A verified access, portability or deletion request then runs by itself; the others
/// stay with the operator, as when verified.
pub async fn classify(
    pool: &PgPool,
    keyring: &Keyring,
    id: PrivacyRequestId,
    kind: Kind,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        kind != Kind::Unclassified,
        "--kind must name the right the request asks for"
    );
    let mut tx = pool.begin().await?;
    let row: Option<(Status, Option<PersonId>)> = sqlx::query_as(
        "UPDATE privacy_request SET kind = $2, updated_at = now()
         WHERE id = $1 AND kind = 'unclassified' AND status IN ('received', 'verified', 'processing')
         RETURNING status, person_id",
    )
    .bind(id)
    .bind(kind)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, person)) = row else {
        let current: Option<(Kind, Status)> =
            sqlx::query_as("SELECT kind, status FROM privacy_request WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        anyhow::bail!(match current {
            None => format!("no privacy request {id}"),
            Some((Kind::Unclassified, s)) => format!("request {id} is {s}: too late to classify"),
            Some((k, _)) => format!("request {id} is a {k} request already"),
        });
    };
    crate::audit::record(&mut tx, keyring, id, "classified", status, kind.as_str()).await?;
    if let (Status::Verified, Some(person), true) = (status, person, kind.is_automatic()) {
        jobs::enqueue(&mut tx, Process::job(id, person)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What closing a request carried out, besides telling the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Closed {
    /// An objection was completed: the caller unsubscribes this person from product email
    /// (the waitlist's, which this crate does not reach into).
    pub objected: Option<PersonId>,
}

/// `privacy complete ID --note [--new-email]` / `privacy reject ID --reason`: closes a request
/// and tells the person, with the note sealed under their key. Completing carries the request
/// out in the same transaction: a correction with a new address changes it (refused, with
/// nothing changed, if it is someone else's), a restriction stops processing but storage
/// until lifted, an objection unsubscribes (through the caller).
pub async fn close(
    pool: &PgPool,
    keyring: &Keyring,
    id: PrivacyRequestId,
    completed: bool,
    note: &str,
    new_email: Option<&EmailAddress>,
) -> anyhow::Result<Closed> {
    let mut tx = pool.begin().await?;
    let (to, from, event): (Status, &[Status], &str) = if completed {
        (
            Status::Completed,
            &[Status::Verified, Status::Processing],
            "completed",
        )
    } else {
        (Status::Rejected, &Status::OPEN, "rejected")
    };
    let Some((kind, person)) =
        store::transition(&mut tx, keyring, id, from, to, event, "operator").await?
    else {
        let current: Option<Status> =
            sqlx::query_scalar("SELECT status FROM privacy_request WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        anyhow::bail!(match current {
            None => format!("no privacy request {id}"),
            Some(s) => format!("request {id} is {s}: it cannot be {to} now"),
        });
    };
    anyhow::ensure!(
        new_email.is_none() || (completed && kind == Kind::Correction),
        "--new-email is for completing a correction request; request {id} is a {kind} request"
    );
    let mut closed = Closed::default();
    if let (true, Some(person)) = (completed, person) {
        match kind {
            Kind::Correction => {
                if let Some(new) = new_email
                    && let person::EmailChange::Taken(_) =
                        person::change_email(&mut tx, keyring, person, new).await?
                {
                    anyhow::bail!(
                        "the new address belongs to another person: nothing was changed or merged; tell the person, or erase one of the two first"
                    );
                }
            }
            Kind::Restriction => person::restrict(&mut tx, person, true).await?,
            Kind::Objection => closed.objected = Some(person),
            _ => {}
        }
    }
    if let Some(person) = person {
        let key = person::data_key(&mut tx, keyring, person)
            .await?
            .context("the person vanished")?;
        sqlx::query("UPDATE privacy_request SET outcome_sealed = $2 WHERE id = $1")
            .bind(id)
            .bind(key.seal(outcome_field(id), note.as_bytes()))
            .execute(&mut *tx)
            .await?;
        jobs::enqueue(
            &mut tx,
            NewJob::new(&OutcomeMail { request_id: id }).for_person(person),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(closed)
}

/// `privacy lift ID`: ends the restriction a completed restriction request set.
pub async fn lift_restriction(
    pool: &PgPool,
    keyring: &Keyring,
    id: PrivacyRequestId,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let row: Option<(Kind, Status, Option<PersonId>)> =
        sqlx::query_as("SELECT kind, status, person_id FROM privacy_request WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (kind, status, person) = row.with_context(|| format!("no privacy request {id}"))?;
    anyhow::ensure!(
        kind == Kind::Restriction && status == Status::Completed,
        "request {id} is a {status} {kind} request: only a completed restriction can be lifted"
    );
    let person = person.context("the request's person is erased")?;
    person::restrict(&mut tx, person, false).await?;
    crate::audit::record(
        &mut tx,
        keyring,
        id,
        "restriction lifted",
        status,
        "operator",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Sla {
    pub open: i64,
    pub due_within_7_days: i64,
    pub overdue: i64,
    /// Over requests closed in the last 90 days (completed or rejected).
    pub closed_last_90_days: i64,
    pub median_days_to_close: Option<f64>,
    /// Share of those closed by their due date, 0..1.
    pub closed_on_time_share: Option<f64>,
}

pub async fn sla(pool: &PgPool) -> anyhow::Result<Sla> {
    sqlx::query_as(
        "WITH open AS (SELECT * FROM privacy_request WHERE status IN ('received', 'verified', 'processing')),
              closed AS (SELECT * FROM privacy_request
                         WHERE status IN ('completed', 'rejected') AND closed_at > now() - interval '90 days')
         SELECT (SELECT count(*) FROM open) AS open,
                (SELECT count(*) FROM open WHERE due_at >= now() AND due_at < now() + interval '7 days')
                    AS due_within_7_days,
                (SELECT count(*) FROM open WHERE due_at < now()) AS overdue,
                (SELECT count(*) FROM closed) AS closed_last_90_days,
                (SELECT percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM closed_at - received_at) / 86400)
                 FROM closed)::float8 AS median_days_to_close,
                (SELECT avg(CASE WHEN closed_at <= due_at THEN 1.0 ELSE 0.0 END) FROM closed)::float8
                    AS closed_on_time_share",
    )
    .fetch_one(pool)
    .await
    .context("failed to compute the SLA")
}

pub use crate::audit::{Entry as AuditEntry, of_request as audit_of};
