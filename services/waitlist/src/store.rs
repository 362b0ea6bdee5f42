//! The waitlist's SQL: signups, confirmation, places in line, subscription, and the person's
//! data (export and erase).

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pexper_platform::crypto::{BlindIndex, Keyring, random_token, sha256};
use pexper_platform::jobs::{JobId, NewJob};
use pexper_platform::mail;
use pexper_platform::person::{self, PersonId};
use pexper_platform::personal_data::RetentionRule;
use pexper_platform::personal_data::{ErasureSummary, PersonalData};
use pexper_platform::suppression;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

pexper_platform::text_enum!(
    /// Where a signup is: waiting for its confirmation, in line, or invited to download.
    pub enum EntryStatus {
        Pending = "pending",
        Confirmed = "confirmed",
        Invited = "invited",
    }
);

/// Confirmation links work for seven days.
pub const TOKEN_LIFETIME: time::Duration = time::Duration::days(7);

/// One signup to record: the person it names (stored unless the address is known), where the
/// form sits, and the referral code it came with.
#[derive(Debug)]
pub struct Signup {
    pub person: person::NewPerson,
    pub source: Option<String>,
    pub referral: Option<String>,
    /// The payload of the signup's job (`emails::SignupMail`).
    pub job_payload: serde_json::Value,
}

/// Records signups (for each a person and a pending entry, unless they exist) and queues a
/// job of `job`'s kind for each, with the signup's own payload, in one statement: one round
/// trip, and one transaction, for a whole batch (`signup::Signups` gathers them), so every job
/// exists if and only if its signup was stored. The same statement runs for every address,
/// known or not. Returns each signup's person, in order.
///
/// For a new address the statement also decides the confirmation email, which is what the
/// signup email job would otherwise decide in a statement and a commit of its own (issue 31):
/// the person's daily contact budget starts with this email taken, the entry records that
/// its first job sends it, and the link's token is stored (`confirmation_token`, which the
/// job derives again). That job then only reads (`decide_signup_mail`). A known address's
/// jobs decide as before.
///
/// A known address's `person` row takes a no-op update (`DO UPDATE`, not `DO NOTHING`) so
/// that the statement sees it even when another transaction inserted it after this one's
/// snapshot: the update waits for that row and returns it, with its own id, not the one this
/// statement offered (which is how a new person is told apart). The update sets a column
/// that is no key, so its lock (`FOR NO KEY UPDATE`) does not conflict with the key-share
/// locks that finishing jobs takes on many people at once (`finish_jobs`): setting the key
/// `email_index` to itself would lock as if the key changed, and the two could deadlock.
/// Rows are written in the order of their keys, so two batches that share addresses wait for
/// each other instead of deadlocking, and an address twice in one batch is written once (a
/// row cannot be updated twice in one statement).
pub async fn sign_up(
    pool: &PgPool,
    keyring: &Keyring,
    signups: Vec<Signup>,
    job: &NewJob,
) -> anyhow::Result<Vec<PersonId>> {
    // One person per address, in key order, with the first of its jobs; one job per signup.
    let mut people: BTreeMap<Vec<u8>, (Signup, Uuid)> = BTreeMap::new();
    let job_ids: Vec<Uuid> = signups.iter().map(|_| Uuid::now_v7()).collect();
    let mut job_keys = Vec::with_capacity(signups.len());
    let mut job_payloads = Vec::with_capacity(signups.len());
    for (signup, job) in signups.into_iter().zip(&job_ids) {
        job_keys.push(signup.person.email_index.clone());
        job_payloads.push(signup.job_payload.clone());
        people
            .entry(signup.person.email_index.clone())
            .or_insert((signup, *job));
    }
    let mut columns = PeopleColumns::default();
    for (signup, first_job) in people.into_values() {
        columns.push(signup, first_job, keyring);
    }
    let stored: Vec<(Vec<u8>, PersonId)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::int4[],
                                  $6::text[], $7::text[], $13::uuid[], $14::bytea[])
                 AS i (id, email_index, email_sealed, data_key, key_version, source, referral,
                       first_job, token_hash)
         ), signed_up AS (
             INSERT INTO person (id, email_index, email_sealed, data_key, key_version,
                                 request_mail_day, request_mail_count)
             SELECT id, email_index, email_sealed, data_key, key_version,
                    (now() AT TIME ZONE 'UTC')::date, 1
             FROM input
             ORDER BY email_index
             ON CONFLICT ON CONSTRAINT person_email_index_key
             DO UPDATE SET updated_at = person.updated_at
             RETURNING id, email_index
         ), entry AS (
             INSERT INTO waitlist_entry (person_id, source, referred_by,
                                         last_signup_mail_at, last_signup_mail_job)
             SELECT s.id, i.source, (SELECT e.person_id FROM waitlist_entry e
                                     WHERE e.referral_code = i.referral AND e.person_id <> s.id),
                    CASE WHEN s.id = i.id THEN now() END,
                    CASE WHEN s.id = i.id THEN i.first_job END
             FROM signed_up s JOIN input i USING (email_index)
             ORDER BY s.id
             ON CONFLICT (person_id) DO NOTHING
         ), token AS (
             INSERT INTO waitlist_token (token_hash, person_id, expires_at)
             SELECT i.token_hash, s.id, $15
             FROM signed_up s JOIN input i USING (email_index)
             WHERE s.id = i.id
         ), queued AS (
             INSERT INTO job (id, kind, payload, person_id, max_attempts)
             SELECT q.id, $10, q.payload, s.id, $12
             FROM unnest($8::uuid[], $9::bytea[], $11::jsonb[]) AS q (id, email_index, payload)
             JOIN signed_up s USING (email_index)
         )
         SELECT email_index, id FROM signed_up",
    )
    .bind(columns.id)
    .bind(columns.email_index)
    .bind(columns.email_sealed)
    .bind(columns.data_key)
    .bind(columns.key_version)
    .bind(columns.source)
    .bind(columns.referral)
    .bind(job_ids)
    .bind(&job_keys)
    .bind(job.kind())
    .bind(job_payloads)
    .bind(job.attempts_allowed())
    .bind(columns.first_job)
    .bind(columns.token_hash)
    .bind(OffsetDateTime::now_utc() + TOKEN_LIFETIME)
    .fetch_all(pool)
    .await
    .context("failed to record signups")?;
    let stored: BTreeMap<Vec<u8>, PersonId> = stored.into_iter().collect();
    job_keys
        .iter()
        .map(|key| {
            stored
                .get(key)
                .copied()
                .context("a signup's person was not returned")
        })
        .collect()
}

/// The domain of confirmation tokens' MACs.
const CONFIRMATION_TOKEN: &str = "waitlist-confirmation";

/// The token of the confirmation link that the signup email job `job` sends: a MAC of the
/// job's id under the deployment's token key, as unguessable as a random token, but known
/// to the signup statement (which stores its hash) before the job runs, and the same on every
/// attempt of the job. Only its hash is stored. The job's id is no secret (it is in the
/// email's Message-ID and the database); the key is, as it is for the unsubscribe links that
/// the same key makes: whoever holds it can make any confirmation link, as whoever can write
/// to the database could always confirm anyone.
pub fn confirmation_token(keyring: &Keyring, job: JobId) -> String {
    URL_SAFE_NO_PAD.encode(keyring.sign_token(CONFIRMATION_TOKEN, job.0.as_bytes()))
}

/// The people of a batch of signups as one array per column (`unnest` in `sign_up`).
#[derive(Default)]
struct PeopleColumns {
    id: Vec<Uuid>,
    email_index: Vec<Vec<u8>>,
    email_sealed: Vec<Vec<u8>>,
    data_key: Vec<Vec<u8>>,
    key_version: Vec<i32>,
    source: Vec<Option<String>>,
    referral: Vec<Option<String>>,
    /// The first of the person's jobs in the batch: the one that sends their confirmation,
    /// if the person is new.
    first_job: Vec<Uuid>,
    /// The hash of that job's confirmation token.
    token_hash: Vec<Vec<u8>>,
}

impl PeopleColumns {
    fn push(&mut self, signup: Signup, first_job: Uuid, keyring: &Keyring) {
        let token = confirmation_token(keyring, JobId(first_job));
        self.first_job.push(first_job);
        self.token_hash.push(sha256(token.as_bytes()).to_vec());
        let person = signup.person;
        self.id.push(person.id.0);
        self.email_index.push(person.email_index);
        self.email_sealed.push(person.email_sealed);
        self.data_key.push(person.data_key);
        self.key_version.push(person.key_version);
        self.source.push(signup.source);
        self.referral.push(signup.referral);
    }
}

/// What the signup email job is to do.
#[derive(Debug)]
pub enum SignupMailDecision {
    /// Send: a confirmation link (`confirm`, whose token is now stored) or a reminder of the
    /// place in line; the address as stored.
    Send {
        status: EntryStatus,
        confirm: bool,
        sealed: person::SealedEmail,
        /// What `mail::deliver` would ask before sending, when the read asked it.
        checked: Option<mail::Checked>,
    },
    /// Nothing to send: the person is erased, or was mailed within the last 10 minutes.
    NotDue,
    /// Due, but the person's daily budget of request-caused mail is spent.
    BudgetSpent,
}

/// The email a signup asks for, and the address: read, if this job's email was decided today
/// (by the signup that created the person, or by an earlier attempt of the job); otherwise
/// decided, recorded and read in one statement, its own transaction, committed before the
/// email is sent so that the link works the moment it arrives. At most one per person per 10
/// minutes, counted from when the last one was sent (or is still to be: while the job that
/// was to send it is waiting, nothing else is due), and within the daily budget, which the
/// job's own retries do not spend twice on one day (the entry's row lock serialises signup
/// jobs for one person). The hash of `token` (the job's `confirmation_token`) is stored, or
/// its expiry renewed, when the email is to confirm. `templates` names the emails a signup
/// email job sends (`email_event.template`). `check` (the email's Message-ID and the
/// suppression key of the address it was queued for) has the read also ask what sending asks
/// first (`mail::Checked`).
pub async fn decide_signup_mail(
    conn: &mut PgConnection,
    person: PersonId,
    job: JobId,
    token: &str,
    templates: &[&str],
    check: Option<(String, BlindIndex)>,
) -> anyhow::Result<SignupMailDecision> {
    let token_hash = sha256(token.as_bytes());
    if let Some(decided) = decided_signup_mail(&mut *conn, person, job, &token_hash, check).await? {
        return Ok(decided);
    }
    #[derive(sqlx::FromRow)]
    struct Decided {
        due: bool,
        status: Option<EntryStatus>,
        confirm: Option<bool>,
        email_sealed: Option<Vec<u8>>,
        data_key: Option<Vec<u8>>,
        key_version: Option<i32>,
    }
    // `sending` is evaluated once (MATERIALIZED), so the budget is taken at most once, and
    // not again by an attempt of the job that paid for its email today (CASE fixes the order:
    // `paid` is read first). Such a retry is normally read above; two workers can hold one
    // job when a lease lapses.
    let decided: Decided = sqlx::query_as(
        "WITH entry AS (
             SELECT status, subscribed,
                    last_signup_mail_job IS NOT DISTINCT FROM $2
                    AND (last_signup_mail_at AT TIME ZONE 'UTC')::date
                        = (now() AT TIME ZONE 'UTC')::date AS paid
             FROM waitlist_entry
             WHERE person_id = $1
               AND (last_signup_mail_job = $2
                    OR ((last_signup_mail_at IS NULL
                         OR last_signup_mail_at < now() - interval '10 minutes')
                        AND NOT EXISTS (SELECT 1 FROM job j
                                        WHERE j.id = waitlist_entry.last_signup_mail_job
                                          AND j.status <> 'dead')
                        AND NOT EXISTS (SELECT 1 FROM email_event m
                                        WHERE m.person_id = $1 AND m.template = ANY ($6)
                                          AND m.sent_at > now() - interval '10 minutes')))
             FOR UPDATE
         ),
         sending AS MATERIALIZED (
             SELECT status, status = 'pending' OR NOT subscribed AS confirm
             FROM entry
             WHERE CASE WHEN paid THEN true ELSE take_request_mail($1, $3) IS TRUE END
         ),
         marked AS (
             UPDATE waitlist_entry SET last_signup_mail_at = now(), last_signup_mail_job = $2
             WHERE person_id = $1 AND EXISTS (SELECT 1 FROM sending)
         ),
         token AS (
             INSERT INTO waitlist_token (token_hash, person_id, expires_at)
             SELECT $4, $1, $5 FROM sending WHERE confirm
             ON CONFLICT (token_hash) DO UPDATE SET expires_at = EXCLUDED.expires_at
             WHERE waitlist_token.used_at IS NULL
         )
         SELECT EXISTS (SELECT 1 FROM entry) AS due, s.status, s.confirm,
                p.email_sealed, p.data_key, p.key_version
         FROM (VALUES (1)) AS one (row)
         LEFT JOIN sending s ON true
         LEFT JOIN person p ON p.id = $1 AND s.status IS NOT NULL",
    )
    .bind(person)
    .bind(job)
    .bind(person::REQUEST_MAIL_PER_DAY)
    .bind(token_hash.as_slice())
    .bind(OffsetDateTime::now_utc() + TOKEN_LIFETIME)
    .bind(templates)
    .fetch_one(conn)
    .await
    .context("failed to decide a signup email")?;
    Ok(match decided {
        Decided {
            status: Some(status),
            confirm: Some(confirm),
            email_sealed: Some(email_sealed),
            data_key: Some(data_key),
            key_version: Some(key_version),
            ..
        } => SignupMailDecision::Send {
            status,
            confirm,
            sealed: person::SealedEmail {
                email_sealed,
                data_key,
                key_version,
            },
            checked: None,
        },
        Decided { due: true, .. } => SignupMailDecision::BudgetSpent,
        Decided { .. } => SignupMailDecision::NotDue,
    })
}

/// A link that lasts at least this long from now is sent as it is; one that would not has
/// its expiry renewed (a job sent more than an hour after its signup, or retried days later).
const LINK_LASTS: time::Duration = TOKEN_LIFETIME.saturating_sub(time::Duration::HOUR);

/// The email this job sends, if it was decided today (the entry names the job): read, with
/// no row lock and nothing written, so no commit of its own. A link that would not last its
/// lifetime from now, or whose token is not stored (the email was decided as a reminder, and
/// the person unsubscribed before this attempt: now it confirms), has its token stored anew.
/// With `check`, the read also asks what sending asks first, in the same round trip.
async fn decided_signup_mail(
    conn: &mut PgConnection,
    person: PersonId,
    job: JobId,
    token_hash: &[u8; 32],
    check: Option<(String, BlindIndex)>,
) -> anyhow::Result<Option<SignupMailDecision>> {
    #[derive(sqlx::FromRow)]
    struct Decided {
        status: EntryStatus,
        confirm: bool,
        link_lasts: bool,
        email_sealed: Vec<u8>,
        data_key: Vec<u8>,
        key_version: i32,
        already: bool,
        suppressed: Option<suppression::Reason>,
    }
    let decided: Option<Decided> = sqlx::query_as(
        "SELECT e.status, e.status = 'pending' OR NOT e.subscribed AS confirm,
                EXISTS (SELECT 1 FROM waitlist_token
                        WHERE token_hash = $3 AND used_at IS NULL AND expires_at > $4)
                    AS link_lasts,
                p.email_sealed, p.data_key, p.key_version,
                -- What mail::deliver asks before a send, as it asks it (mail::Checked).
                EXISTS (SELECT 1 FROM email_event WHERE message_id = $5) AS already,
                (SELECT reason FROM email_suppression WHERE address_hash = $6) AS suppressed
         FROM waitlist_entry e JOIN person p ON p.id = e.person_id
         WHERE e.person_id = $1 AND e.last_signup_mail_job = $2
           AND (e.last_signup_mail_at AT TIME ZONE 'UTC')::date
               = (now() AT TIME ZONE 'UTC')::date",
    )
    .bind(person)
    .bind(job)
    .bind(token_hash.as_slice())
    .bind(OffsetDateTime::now_utc() + LINK_LASTS)
    .bind(check.as_ref().map(|(message_id, _)| message_id.as_str()))
    .bind(check.as_ref().map(|(_, hash)| hash.as_slice()))
    .fetch_optional(&mut *conn)
    .await
    .context("failed to read a signup email's decision")?;
    let Some(decided) = decided else {
        return Ok(None);
    };
    if decided.confirm && !decided.link_lasts {
        sqlx::query(
            "INSERT INTO waitlist_token (token_hash, person_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (token_hash) DO UPDATE SET expires_at = EXCLUDED.expires_at
             WHERE waitlist_token.used_at IS NULL",
        )
        .bind(token_hash.as_slice())
        .bind(person)
        .bind(OffsetDateTime::now_utc() + TOKEN_LIFETIME)
        .execute(&mut *conn)
        .await
        .context("failed to store a confirmation token")?;
    }
    Ok(Some(SignupMailDecision::Send {
        status: decided.status,
        confirm: decided.confirm,
        sealed: person::SealedEmail {
            email_sealed: decided.email_sealed,
            data_key: decided.data_key,
            key_version: decided.key_version,
        },
        checked: check.map(|(message_id, address_hash)| mail::Checked {
            message_id,
            address_hash,
            already: decided.already,
            suppressed: decided.suppressed,
        }),
    }))
}

/// Whether a confirmation token is known, unused and not expired. Reads only: the page that
/// asks for the click must change nothing.
pub async fn token_is_usable(pool: &PgPool, token: &str) -> anyhow::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM waitlist_token
                        WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now())",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_one(pool)
    .await
    .context("failed to look up a confirmation token")
}

/// What a confirmation link did.
#[derive(Debug, Clone, Copy)]
pub enum Confirmation {
    Confirmed { person: PersonId },
    Invalid,
}

/// Uses a token (once, before it expires) and confirms its person: a place in line, a referral
/// code, a subscription; the referrer moves up.
pub async fn confirm(
    tx: &mut PgConnection,
    keyring: &Keyring,
    token: &str,
) -> anyhow::Result<Confirmation> {
    let person: Option<PersonId> = sqlx::query_scalar(
        "UPDATE waitlist_token SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING person_id",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&mut *tx)
    .await
    .context("failed to use a confirmation token")?;
    let Some(person) = person else {
        return Ok(Confirmation::Invalid);
    };
    let newly: Option<Option<PersonId>> = sqlx::query_scalar(
        "UPDATE waitlist_entry
         SET status = 'confirmed', confirm_seq = nextval('waitlist_confirm_seq'),
             confirmed_at = now(), referral_code = $2, updated_at = now()
         WHERE person_id = $1 AND status = 'pending'
         RETURNING referred_by",
    )
    .bind(person)
    .bind(&random_token()[..12])
    .fetch_optional(&mut *tx)
    .await
    .context("failed to confirm an entry")?;
    if let Some(Some(referrer)) = newly {
        sqlx::query(
            "UPDATE waitlist_entry SET referrals = referrals + 1, updated_at = now()
             WHERE person_id = $1 AND status = 'confirmed'
               AND may_process(person_id, 'referral_credit')",
        )
        .bind(referrer)
        .execute(&mut *tx)
        .await
        .context("failed to credit a referrer")?;
    }
    // A confirmation is a fresh opt-in: it (re)subscribes and lifts a suppression.
    sqlx::query(
        "UPDATE waitlist_entry SET subscribed = true, unsubscribed_at = NULL, updated_at = now()
         WHERE person_id = $1",
    )
    .bind(person)
    .execute(&mut *tx)
    .await?;
    if let Some(email) = person::email(&mut *tx, keyring, person).await? {
        suppression::lift_unsubscribed(&mut *tx, keyring, &email).await?;
    }
    Ok(Confirmation::Confirmed { person })
}

/// A person's place among those still waiting (1 = next), or `None` if they are not waiting.
/// Each confirmed referral moves them `bump` places up: their sort key is
/// `confirm_seq - bump * referrals`, and on a tie the one with more referrals goes first (so
/// moving up `bump` places passes exactly `bump` people when sequence numbers are dense).
pub async fn position(
    conn: &mut PgConnection,
    person: PersonId,
    bump: i64,
) -> anyhow::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) + 1 FROM waitlist_entry o
                 WHERE o.status = 'confirmed'
                   AND (o.confirm_seq - o.referrals * $2, -o.referrals, o.confirm_seq)
                     < (me.confirm_seq - me.referrals * $2, -me.referrals, me.confirm_seq))
         FROM waitlist_entry me WHERE me.person_id = $1 AND me.status = 'confirmed'",
    )
    .bind(person)
    .bind(bump)
    .fetch_optional(conn)
    .await
    .context("failed to compute a position")
}

#[derive(Debug, sqlx::FromRow)]
pub struct Entry {
    pub subscribed: bool,
    pub referral_code: Option<String>,
}

pub async fn entry(conn: &mut PgConnection, person: PersonId) -> anyhow::Result<Option<Entry>> {
    sqlx::query_as("SELECT subscribed, referral_code FROM waitlist_entry WHERE person_id = $1")
        .bind(person)
        .fetch_optional(conn)
        .await
        .context("failed to load a waitlist entry")
}

/// Takes a pool, or the caller's transaction (a complaint applied from the bounce mailbox).
pub async fn unsubscribe<'e>(
    db: impl sqlx::PgExecutor<'e>,
    person: PersonId,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE waitlist_entry
         SET subscribed = false, unsubscribed_at = coalesce(unsubscribed_at, now()), updated_at = now()
         WHERE person_id = $1",
    )
    .bind(person)
    .execute(db)
    .await
    .context("failed to unsubscribe")?;
    Ok(())
}

/// The waitlist's section of a person's data.
#[derive(Debug, Clone, Copy)]
pub struct WaitlistData {
    /// To state the person's place in line as the pages and emails do.
    pub referral_bump: i64,
}

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
struct ExportRow {
    status: EntryStatus,
    source: Option<String>,
    referral_code: Option<String>,
    referrals: i32,
    referred_by_someone: bool,
    subscribed: bool,
    #[serde(with = "time::serde::rfc3339")]
    signed_up_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    confirmed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    invited_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    unsubscribed_at: Option<OffsetDateTime>,
    /// When a signup email (confirmation or welcome) last went to them.
    #[serde(with = "time::serde::rfc3339::option")]
    last_signup_mail_at: Option<OffsetDateTime>,
}

impl PersonalData for WaitlistData {
    fn section(&self) -> &'static str {
        "waitlist"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        _keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let row: Option<ExportRow> = sqlx::query_as(
            "SELECT status, source, referral_code, referrals, referred_by IS NOT NULL AS referred_by_someone,
                    subscribed, created_at AS signed_up_at, confirmed_at, invited_at, unsubscribed_at,
                    last_signup_mail_at
             FROM waitlist_entry WHERE person_id = $1",
        )
        .bind(person)
        .fetch_optional(&mut *conn)
        .await
        .context("failed to export a waitlist entry")?;
        let Some(row) = row else {
            return Ok(serde_json::Value::Null);
        };
        let place = position(conn, person, self.referral_bump).await?;
        // Which product emails were queued for them, and when.
        let broadcasts: Vec<(String, OffsetDateTime)> = sqlx::query_as(
            "SELECT b.subject, d.queued_at FROM broadcast_delivery d
             JOIN broadcast b ON b.id = d.broadcast_id
             WHERE d.person_id = $1 ORDER BY d.queued_at",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to export broadcasts")?;
        let mut value = serde_json::to_value(row)?;
        value["position"] = serde_json::json!(place);
        value["broadcasts"] = broadcasts
            .into_iter()
            .map(|(subject, queued_at)| {
                serde_json::json!({
                    "subject": subject,
                    "queued_at": pexper_platform::personal_data::rfc3339(queued_at),
                })
            })
            .collect();
        Ok(value)
    }

    fn holds(&self) -> Option<&'static str> {
        Some("SELECT person_id FROM waitlist_entry")
    }

    fn retention(&self) -> Vec<RetentionRule> {
        vec![
            RetentionRule {
                name: "waitlist.unconfirmed",
                keeps: "a signup never confirmed: 30 days after its 7-day link expired",
                due: "SELECT count(*) FROM waitlist_entry
                      WHERE status = 'pending' AND updated_at < now() - interval '37 days'"
                    .into(),
                apply: "DELETE FROM waitlist_entry
                        WHERE status = 'pending' AND updated_at < now() - interval '37 days'"
                    .into(),
            },
            RetentionRule {
                name: "waitlist.broadcast_deliveries",
                keeps: "which broadcast was queued for whom: 2 years, as the history of emails \
                        (mail.history)",
                due: "SELECT count(*) FROM broadcast_delivery
                      WHERE queued_at < now() - interval '2 years'"
                    .into(),
                apply:
                    "DELETE FROM broadcast_delivery WHERE queued_at < now() - interval '2 years'"
                        .into(),
            },
            RetentionRule {
                name: "waitlist.links",
                keeps: "confirmation links (a hash): a day after they were used or expired",
                due: "SELECT count(*) FROM waitlist_token
                      WHERE coalesce(used_at, expires_at) < now() - interval '1 day'"
                    .into(),
                apply: "DELETE FROM waitlist_token
                        WHERE coalesce(used_at, expires_at) < now() - interval '1 day'"
                    .into(),
            },
        ]
    }

    fn notice_audience(&self) -> Option<&'static str> {
        // Confirmed members, subscribed to product email or not: a legal notice is not one.
        Some("SELECT person_id FROM waitlist_entry WHERE status IN ('confirmed', 'invited')")
    }

    async fn erase(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        let unsubscribed: Option<bool> = sqlx::query_scalar(
            "SELECT unsubscribed_at IS NOT NULL AND NOT subscribed FROM waitlist_entry WHERE person_id = $1",
        )
        .bind(person)
        .fetch_optional(&mut *conn)
        .await?;
        let mut kept = Vec::new();
        if unsubscribed == Some(true)
            && let Some(email) = person::email(conn, keyring, person).await?
        {
            suppression::suppress(conn, keyring, &email, suppression::Reason::Unsubscribed).await?;
            kept.push(
                "a keyed hash of the address, so the unsubscription outlives the erasure"
                    .to_owned(),
            );
        }
        let tokens = sqlx::query("DELETE FROM waitlist_token WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        let broadcasts = sqlx::query("DELETE FROM broadcast_delivery WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        let entries = sqlx::query("DELETE FROM waitlist_entry WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        Ok(ErasureSummary {
            section: self.section(),
            removed: BTreeMap::from([
                ("waitlist_entries", entries),
                ("confirmation_tokens", tokens),
                ("broadcast_deliveries", broadcasts),
            ]),
            kept,
        })
    }
}
