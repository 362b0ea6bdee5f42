//! Privacy-policy changes (§8: "notify you by email and post a notice on pexper.com at least
//! 30 days before the changes take effect").
//!
//! `announce` records a version with its effective date and summary, refusing a date less
//! than 30 days away, and queues one notice per person any service has a relationship with
//! (`Registry::notice_audience`: buyers, confirmed waitlist members, unsubscribed or not — a
//! legal notice is not marketing). `policy_notice` remembers who was queued, so a re-run
//! queues nobody twice; the notice job sends it unless the address is suppressed, and records
//! which. `GET /v1/policy` gives the website the current and the upcoming version.

use anyhow::Context;
use axum::extract::State;
use pexper_platform::Platform;
use pexper_platform::http::ApiError;
use pexper_platform::jobs::{self, BackgroundJob, Job, JobError, NewJob};
use pexper_platform::mail::{self, EmailTemplate, MailClass};
use pexper_platform::person::{self, PersonId};
use pexper_platform::personal_data::{Registry, rfc3339};
use pexper_platform::suppression;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use time::{Date, OffsetDateTime};

/// How far ahead a change must be announced.
pub const NOTICE_DAYS: i64 = 30;
/// The longest summary: a few paragraphs, for an email and a banner.
pub const MAX_SUMMARY: usize = 2000;

/// A version as announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PolicyVersion {
    /// The operator's name for it, e.g. `2027-01`.
    pub version: String,
    /// The day it takes effect (UTC).
    #[schema(value_type = String, format = Date)]
    #[serde(with = "iso_date")]
    pub effective_at: Date,
    /// What changes, in a few sentences.
    pub summary: String,
}

// `YYYY-MM-DD`, as `/openapi.json` states: the `time` crate's own serde form of a `Date` is
// `[year, day of the year]`.
time::serde::format_description!(iso_date, Date, "[year]-[month]-[day]");

/// Why an announcement is refused: the operator must change it (the CLI exits 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What an announcement did.
#[derive(Debug, Default, Serialize)]
pub struct Announced {
    /// People with a relationship with us, who get the notice once.
    pub audience: u64,
    /// Notices queued by this run.
    pub queued: u64,
    /// People queued by an earlier run of the same announcement.
    pub already: u64,
    pub dry_run: bool,
}

/// Checks an announcement against the rules, as of `today`.
pub fn check(new: &PolicyVersion, today: Date) -> Result<(), Refused> {
    let valid_name = new.version.len() <= 32
        && new.version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && new
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !valid_name {
        return Err(Refused(format!(
            "--version `{}` must be 1 to 32 letters, digits, dots, dashes or underscores",
            new.version
        )));
    }
    let earliest = today + time::Duration::days(NOTICE_DAYS);
    if new.effective_at < earliest {
        return Err(Refused(format!(
            "--effective {} is less than {NOTICE_DAYS} days away: the policy promises notice at least {NOTICE_DAYS} days before a change takes effect (the earliest is {earliest})",
            new.effective_at
        )));
    }
    let summary = new.summary.trim();
    if summary.is_empty() || summary.chars().count() > MAX_SUMMARY {
        return Err(Refused(format!(
            "the summary must say what changes, in at most {MAX_SUMMARY} characters"
        )));
    }
    Ok(())
}

/// Announces `new` and queues its notices (see the module). Safe to re-run: the same
/// announcement continues; a different one under the same version is refused.
pub async fn announce(
    pool: &PgPool,
    registry: &Registry,
    new: &PolicyVersion,
    dry_run: bool,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Announced> {
    check(new, OffsetDateTime::now_utc().date())?;
    let mut conn = pool.acquire().await?;
    let existing: Option<PolicyVersion> = sqlx::query_as(
        "SELECT version, effective_at, summary FROM policy_version WHERE version = $1",
    )
    .bind(&new.version)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(existing) = &existing
        && (existing.effective_at != new.effective_at || existing.summary != new.summary.trim())
    {
        return Err(Refused(format!(
            "version {} was announced already, effective {}, with another summary or date: announce a new version",
            new.version, existing.effective_at
        ))
        .into());
    }
    let audience = registry.notice_audience(&mut conn).await?;
    let already: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_notice WHERE version = $1")
        .bind(&new.version)
        .fetch_one(&mut *conn)
        .await?;
    let mut done = Announced {
        audience: audience.len() as u64,
        already: already as u64,
        dry_run,
        ..Announced::default()
    };
    if dry_run {
        return Ok(done);
    }
    drop(conn);
    sqlx::query(
        "INSERT INTO policy_version (version, effective_at, summary) VALUES ($1, $2, $3)
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(&new.version)
    .bind(new.effective_at)
    .bind(new.summary.trim())
    .execute(pool)
    .await
    .context("failed to record the policy version")?;
    for batch in audience.chunks(500) {
        let mut tx = pool.begin().await?;
        for person in batch {
            if queue_notice(&mut tx, *person, &new.version).await? {
                done.queued += 1;
            }
        }
        tx.commit().await?;
        progress(done.queued + done.already, done.audience);
    }
    done.already = done.audience - done.queued;
    Ok(done)
}

/// Queues `person`'s notice of `version`, unless it was queued before.
async fn queue_notice(
    conn: &mut PgConnection,
    person: PersonId,
    version: &str,
) -> anyhow::Result<bool> {
    let new: Option<bool> = sqlx::query_scalar(
        "INSERT INTO policy_notice (person_id, version) VALUES ($1, $2)
         ON CONFLICT DO NOTHING RETURNING true",
    )
    .bind(person)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    if new.is_none() {
        return Ok(false);
    }
    jobs::enqueue(
        conn,
        NewJob::new(&PolicyNotice {
            version: version.to_owned(),
        })
        .for_person(person)
        .dedupe_key(format!("{}:{version}:{person}", PolicyNotice::KIND)),
    )
    .await?;
    Ok(true)
}

/// The notice of one version to one person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyNotice {
    pub version: String,
}

impl BackgroundJob for PolicyNotice {
    const KIND: &'static str = "privacy.policy_notice";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let person = job.person()?;
        let mut conn = platform.pool.acquire().await?;
        let version: Option<PolicyVersion> = sqlx::query_as(
            "SELECT version, effective_at, summary FROM policy_version WHERE version = $1",
        )
        .bind(&self.version)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(version) = version else {
            return Err(JobError::permanent(anyhow::anyhow!(
                "no policy version {}",
                self.version
            )));
        };
        let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
            return Ok(()); // Erased meanwhile.
        };
        let reason = suppression::reason(&mut conn, &platform.keyring, &to).await?;
        let status = if PolicyNoticeEmail::CLASS.allows(reason) {
            let email = PolicyNoticeEmail {
                effective: version.effective_at.to_string(),
                summary: version.summary,
                policy_url: format!("{}/privacy", platform.config.site_url()),
            };
            mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![])
                .await?;
            "sent"
        } else {
            "suppressed"
        };
        sqlx::query(
            "UPDATE policy_notice SET status = $3, notified_at = now()
             WHERE person_id = $1 AND version = $2",
        )
        .bind(person)
        .bind(&self.version)
        .bind(status)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The notice email: a legal notice, not marketing (no List-Unsubscribe, no promotion).
#[derive(Debug, Clone)]
pub struct PolicyNoticeEmail {
    pub effective: String,
    pub summary: String,
    pub policy_url: String,
}

impl PolicyNoticeEmail {
    /// Paragraphs for the HTML body (blank-line separated in the summary).
    pub fn paragraphs(&self) -> Vec<&str> {
        mail::paragraphs(&self.summary)
    }
}

pexper_platform::email_template!(
    PolicyNoticeEmail,
    "policy-notice",
    Notice,
    "emails/policy-notice/subject.txt",
    "emails/policy-notice/body.txt",
    "emails/policy-notice/body.html"
);

const _: () = assert!(matches!(PolicyNoticeEmail::CLASS, MailClass::Notice));

/// The policy in force and the one announced next, for the website's notice banner.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyStatus {
    /// The latest version in effect; `null` before any was announced through us.
    pub current: Option<PolicyVersion>,
    /// The next version announced, not yet in effect.
    pub upcoming: Option<PolicyVersion>,
}

/// The current privacy-policy version and any announced upcoming one.
#[utoipa::path(get, path = "/v1/policy", tag = "privacy",
    responses((status = 200, description = "The current and the upcoming policy version", body = PolicyStatus)))]
pub async fn status(
    State(platform): State<Platform>,
) -> Result<axum::Json<PolicyStatus>, ApiError> {
    let select = |in_effect: bool| {
        let pool = platform.pool.clone();
        async move {
            let sql = if in_effect {
                "SELECT version, effective_at, summary FROM policy_version
                 WHERE effective_at <= (now() AT TIME ZONE 'UTC')::date
                 ORDER BY effective_at DESC, announced_at DESC LIMIT 1"
            } else {
                "SELECT version, effective_at, summary FROM policy_version
                 WHERE effective_at > (now() AT TIME ZONE 'UTC')::date
                 ORDER BY effective_at, announced_at LIMIT 1"
            };
            sqlx::query_as::<_, PolicyVersion>(sql)
                .fetch_optional(&pool)
                .await
        }
    };
    Ok(axum::Json(PolicyStatus {
        current: select(true).await?,
        upcoming: select(false).await?,
    }))
}

/// The person's notices, for their export.
pub async fn notices_of(
    conn: &mut PgConnection,
    person: PersonId,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let rows: Vec<(String, String, OffsetDateTime, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT version, status, queued_at, notified_at FROM policy_notice WHERE person_id = $1
         ORDER BY queued_at",
    )
    .bind(person)
    .fetch_all(conn)
    .await
    .context("failed to read policy notices")?;
    Ok(rows
        .into_iter()
        .map(|(version, status, queued_at, at)| {
            serde_json::json!({
                "version": version,
                "status": status,
                "queued_at": rfc3339(queued_at),
                "notified_at": at.map(rfc3339),
            })
        })
        .collect())
}
