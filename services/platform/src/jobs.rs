//! The job queue: background work as rows in Postgres.
//!
//! * `enqueue` writes inside the caller's transaction, so a job exists if and only if the change
//!   that caused it committed; a `NOTIFY` (delivered on commit) wakes an idle worker at once.
//! * Workers claim with `FOR UPDATE SKIP LOCKED`, so any number of processes can share a queue
//!   and no two ever hold the same job. A worker's idle slots claim together, in one statement.
//! * A claim is a **lease** (`locked_until`), renewed by a heartbeat while the handler runs. A
//!   worker that dies stops renewing; when the lease lapses another worker takes the job.
//! * Every write after the claim is fenced by the claim's token and attempt number, so a worker
//!   whose lease was taken over, or whose claim a crash of Postgres lost, cannot complete or
//!   fail a job it no longer owns. So the claim itself need not wait for the disk.
//! * Failures retry with exponential backoff and full jitter; permanent errors, and transient
//!   ones after `max_attempts`, leave the job `dead` for an operator (`pexper-admin jobs`).
//! * Finished jobs are deleted.
//! * A job is a type implementing [`BackgroundJob`]: its kind, its payload (the type's fields)
//!   and its `run` in one place. A use case enqueues one with `NewJob::new(&job)`; a service
//!   registers the types it runs (`JobRegistry::register::<J>()`); nothing matches on strings.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use rand::RngExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::batch::Batcher;
use crate::metrics::JobOutcome;
use crate::person::PersonId;
use crate::telemetry::redact;

/// The channel `enqueue` notifies on.
const CHANNEL: &str = "pexper_jobs";
/// Attempts before a failing job is left `dead`. With the backoff below, the fifteen waits
/// between sixteen attempts add up to 2.5 to 5 hours: mail waits out a relay outage of hours
/// (ten attempts gave up after 8.5 to 17 minutes), and a job that cannot work still stops.
const DEFAULT_MAX_ATTEMPTS: i32 = 16;
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(3600);

crate::id!(JobId);

crate::text_enum!(
    /// Where a job is: waiting for its `run_at`, held by a worker's lease, or given up on.
    pub enum JobStatus {
        Queued = "queued",
        Running = "running",
        Dead = "dead",
    }
);

/// A kind of background work (crates.io's `BackgroundJob`): the type's fields are the payload,
/// stored as JSON in `job.payload`, and `run` is what a worker does with it.
///
/// The payload holds ids (at most an address's keyed blind index), never an address or
/// anything else in clear. `KIND` and the payload's shape are stored in
/// rows that outlive a release: renaming either strands the jobs already queued, unless a
/// migration rewrites them. A job without fields is written `struct Sweep {}` (a braced struct
/// is the JSON `{}`; a unit struct would be `null`).
pub trait BackgroundJob: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name in `job.kind`.
    const KIND: &'static str;
    /// What `run` works with besides its payload (the server's `Platform`).
    type Context: Clone + Send + Sync + 'static;

    /// Does the work. `job` is the claimed row: its id (a stable key for an email's
    /// Message-ID), its attempt and the person it is about.
    fn run(
        self,
        ctx: Self::Context,
        job: &Job,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    kind: &'static str,
    payload: serde_json::Value,
    person: Option<PersonId>,
    run_at: Option<OffsetDateTime>,
    max_attempts: i32,
    dedupe_key: Option<String>,
}

impl NewJob {
    pub fn new<J: BackgroundJob>(job: &J) -> Self {
        Self {
            kind: J::KIND,
            payload: serde_json::to_value(job).expect("job payloads serialise to JSON"),
            person: None,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dedupe_key: None,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The payload and the attempt budget, for a use case that inserts its job in the same
    /// statement as the change that causes it (one round trip; `enqueue` otherwise).
    pub fn payload(&self) -> &serde_json::Value {
        &self.payload
    }

    pub fn attempts_allowed(&self) -> i32 {
        self.max_attempts
    }

    /// The person this job is about, so erasure can cancel it.
    pub fn for_person(mut self, person: PersonId) -> Self {
        self.person = Some(person);
        self
    }

    pub fn run_at(mut self, at: OffsetDateTime) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Makes the enqueue idempotent: a second job with the same key is not created.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }
}

/// Enqueues inside the caller's transaction. Returns `None` when the dedupe key already exists.
/// One statement: the insert, and the `NOTIFY` (delivered on commit) only if a row went in.
pub async fn enqueue(conn: &mut PgConnection, job: NewJob) -> anyhow::Result<Option<JobId>> {
    let id: Option<JobId> = sqlx::query_scalar(
        "WITH queued AS (
             INSERT INTO job (id, kind, payload, person_id, run_at, max_attempts, dedupe_key)
             VALUES ($1, $2, $3, $4, coalesce($5, now()), $6, $7)
             ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
             RETURNING id, kind
         )
         SELECT id FROM queued, pg_notify($8, queued.kind)",
    )
    .bind(JobId(Uuid::now_v7()))
    .bind(job.kind)
    .bind(&job.payload)
    .bind(job.person)
    .bind(job.run_at)
    .bind(job.max_attempts)
    .bind(&job.dedupe_key)
    .bind(CHANNEL)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to enqueue a job")?;
    Ok(id)
}

/// Wakes idle workers in every process (one `NOTIFY`): for jobs written in bulk without
/// `enqueue`, by a process whose own workers do not run them (the admin CLI).
pub async fn wake_workers(pool: &PgPool, kind: &str) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(kind)
        .execute(pool)
        .await
        .context("failed to wake the workers")?;
    Ok(())
}

/// A claimed job, as a handler sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: JobId,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub person_id: Option<PersonId>,
    /// This claim's token, which fences every later write (migration `…_claim_tokens.sql`).
    claim: Uuid,
    /// The email this attempt sent, for the statement that finishes the job to record.
    #[sqlx(skip)]
    sent: Arc<OnceLock<SentEmail>>,
}

/// An email a job sent (`mail::deliver`), to record in the person's email history. It is
/// recorded by the statement that deletes the finished job (`finish_jobs`), many jobs at
/// once, not by a statement and a commit of its own per email (issue 31). A send that the
/// process dies before recording is sent again by the job's next attempt, under the same
/// Message-ID, as before.
#[derive(Debug, Clone)]
pub struct SentEmail {
    pub person: PersonId,
    pub template: &'static str,
    pub message_id: String,
}

impl Job {
    /// The person the job is about; a job enqueued without one is a bug, not worth a retry.
    pub fn person(&self) -> Result<PersonId, JobError> {
        self.person_id.ok_or_else(|| {
            JobError::Permanent(anyhow::anyhow!("a {} job without a person", self.kind))
        })
    }

    /// Notes the email this attempt sent, for its finish to record. A job sends at most one
    /// (its Message-ID is the job's; `mail::deliver` asks `has_sent` first): the first noted
    /// stays.
    pub(crate) fn note_sent(&self, sent: SentEmail) {
        self.sent.get_or_init(|| sent);
    }

    /// Whether this attempt has sent its email already.
    pub(crate) fn has_sent(&self) -> bool {
        self.sent.get().is_some()
    }
}

/// How a handler failed: worth retrying, or not.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Retry(anyhow::Error),
    #[error(transparent)]
    Permanent(anyhow::Error),
}

impl From<anyhow::Error> for JobError {
    fn from(e: anyhow::Error) -> Self {
        JobError::Retry(e)
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Retry(e.into())
    }
}

impl JobError {
    /// A failure that a retry would repeat (bad data, a gone row, a refused address).
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        JobError::Permanent(e.into())
    }
}

type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
type Handler<S> = Arc<dyn Fn(S, Job) -> JobFuture + Send + Sync>;

/// The job types a worker runs, by kind. `S` is the context they share (the `Platform`).
pub struct JobRegistry<S> {
    handlers: HashMap<&'static str, Handler<S>>,
}

impl<S> Default for JobRegistry<S> {
    fn default() -> Self {
        Self {
            handlers: HashMap::new(),
        }
    }
}

impl<S> std::fmt::Debug for JobRegistry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl<S: Clone + Send + Sync + 'static> JobRegistry<S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<J: BackgroundJob<Context = S>>(mut self) -> Self {
        let handler: Handler<S> = Arc::new(|ctx, job: Job| {
            Box::pin(async move {
                let payload: J = serde_json::from_value(job.payload.clone()).map_err(|e| {
                    JobError::permanent(anyhow::anyhow!("malformed {} payload: {e}", J::KIND))
                })?;
                payload.run(ctx, &job).await
            })
        });
        let previous = self.handlers.insert(J::KIND, handler);
        assert!(previous.is_none(), "job kind {} registered twice", J::KIND);
        self
    }

    /// Adds another registry's job types (each service brings its own).
    pub fn merge(mut self, other: JobRegistry<S>) -> Self {
        for (kind, handler) in other.handlers {
            let previous = self.handlers.insert(kind, handler);
            assert!(previous.is_none(), "job kind {kind} registered twice");
        }
        self
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }
}

/// Enqueues a recurring job for the current period (periods of `every`, counted from the Unix
/// epoch), unless some replica already did: one run per period, however many
/// replicas tick. Returns whether this call enqueued it. The job's kind is also its dedupe
/// key, so a run still waiting from an earlier period is not doubled.
pub async fn enqueue_recurring(
    pool: &PgPool,
    job: NewJob,
    every: Duration,
) -> anyhow::Result<bool> {
    let period = OffsetDateTime::now_utc().unix_timestamp() / every.as_secs().max(1) as i64;
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO recurring_job (kind, period) VALUES ($1, $2)
         ON CONFLICT (kind) DO UPDATE SET period = EXCLUDED.period, updated_at = now()
         WHERE recurring_job.period < EXCLUDED.period",
    )
    .bind(job.kind)
    .bind(period)
    .execute(&mut *tx)
    .await
    .context("failed to claim a recurring period")?
    .rows_affected()
        == 1;
    if claimed {
        let kind = job.kind;
        enqueue(&mut tx, job.dedupe_key(kind)).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Claims up to `n` jobs of `kinds`: ready ones in the order they are due, and running ones
/// whose lease has lapsed first.
///
/// A lapsed lease means the worker died mid-job (killed, crashed, lost its host). A job whose
/// every attempt ended that way has used its attempts like any failing job: it goes `dead`,
/// in the same call, instead of being taken over forever and taking its workers down with
/// it.
///
/// The worker claims for all its idle slots at once (`Worker::run`): the claim's planning,
/// scan and commit were most of Postgres's work per email (issue 17), and are paid once per
/// batch.
pub async fn claim(
    pool: &PgPool,
    kinds: &[String],
    lease: Duration,
    n: usize,
) -> anyhow::Result<Vec<Job>> {
    // The statement is a function (migration `…_claim_function.sql`) so that its plan can be
    // pinned: the right one is the same at every size of queue, and the planner picked a
    // worse one whenever its statistics were stale. It is made once per connection
    // (migration `…_generic_queue_plans.sql`). It commits without waiting for the disk: a
    // claim lost in a crash is a job still to do, and the token keeps the worker that held it
    // from writing over the next claim (migration `…_claim_tokens.sql`).
    sqlx::query_as(
        "SELECT id, kind, payload, attempts, max_attempts, person_id, claim
         FROM claim_jobs_async($1, $2, $3)",
    )
    .bind(kinds)
    .bind(lease)
    .bind(i32::try_from(n).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await
    .context("failed to claim jobs")
}

async fn renew(pool: &PgPool, job: &Job, lease: Duration) -> anyhow::Result<bool> {
    let r = sqlx::query(
        "UPDATE job SET locked_until = now() + $3
         WHERE id = $1 AND attempts = $2 AND claim = $4 AND status = 'running'",
    )
    .bind(job.id)
    .bind(job.attempts)
    .bind(lease)
    .bind(job.claim)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// What fences a write to a claimed job: its id, and the attempt and token of the claim.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    id: JobId,
    attempts: i32,
    claim: Uuid,
}

impl From<&Job> for Claimed {
    fn from(job: &Job) -> Self {
        Self {
            id: job.id,
            attempts: job.attempts,
            claim: job.claim,
        }
    }
}

/// Deletes finished jobs, each only if still at the claim that finished it, and records the
/// emails `sent` (whatever became of their jobs: the emails left), in one statement.
async fn finish(pool: &PgPool, jobs: &[Claimed], sent: &[&SentEmail]) -> anyhow::Result<()> {
    // In id order, the order an erasure deletes a person's jobs in (`cancel_for_person`), so
    // the two cannot deadlock.
    let mut jobs = jobs.to_vec();
    jobs.sort_unstable_by_key(|job| job.id.0);
    // A function, as the claim is, to plan once with its plan pinned (migrations 17 and 30).
    sqlx::query("SELECT finish_jobs($1, $2, $3, $4, $5, $6, $7)")
        .bind(jobs.iter().map(|job| job.id.0).collect::<Vec<Uuid>>())
        .bind(jobs.iter().map(|job| job.attempts).collect::<Vec<i32>>())
        .bind(jobs.iter().map(|job| job.claim).collect::<Vec<Uuid>>())
        .bind(sent.iter().map(|_| Uuid::now_v7()).collect::<Vec<Uuid>>())
        .bind(sent.iter().map(|s| s.person.0).collect::<Vec<Uuid>>())
        .bind(sent.iter().map(|s| s.template).collect::<Vec<&str>>())
        .bind(
            sent.iter()
                .map(|s| s.message_id.as_str())
                .collect::<Vec<&str>>(),
        )
        .execute(pool)
        .await
        .context("failed to finish jobs")?;
    Ok(())
}

/// A job a slot is running: what `Worker::hand_back` needs if the shutdown grace ends first.
struct InHand {
    claimed: Claimed,
    kind: &'static str,
    sent: Arc<OnceLock<SentEmail>>,
}

/// A job its handler finished, and the email it sent, if any.
struct Finished {
    claimed: Claimed,
    sent: Option<SentEmail>,
}

/// While jobs keep finishing, their deletes are committed at most this often: a busy queue's
/// finishes then go `FINISHES_EVERY` worth at a time (18 jobs at 1,800 emails a second,
/// where back-to-back deletes took 3 or 4 each and a commit, with its WAL flush, for every
/// few emails). A job that finishes after a quiet spell is deleted at once. Nothing waits for
/// the delete but the job's row: its email is out, its slot is free.
const FINISHES_EVERY: Duration = Duration::from_millis(10);
/// The most finished jobs one delete takes.
const FINISH_BATCH: usize = 512;

/// Deletes the jobs the worker's slots finish, together: whatever finished while one delete
/// ran, or in the `FINISHES_EVERY` since it started, goes into the next, so a busy queue pays
/// one statement and one commit for many jobs and their emails. Returns once every sender is
/// gone and all is deleted. A batch that fails is tried again, for as long as the jobs'
/// `lease` keeps them ours: the emails it records are what keeps the jobs' next attempts from
/// sending them again. A finished job whose delete is lost all the same (the process dies
/// first, or the database is away longer than the lease) runs again after its lease:
/// handlers are idempotent (an email recorded as sent is not sent twice; one sent but not
/// recorded goes again, under the same Message-ID).
async fn finish_in_batches(
    pool: PgPool,
    lease: Duration,
    shutdown: watch::Receiver<bool>,
    mut finished: mpsc::UnboundedReceiver<Finished>,
) {
    let mut batch = Vec::new();
    let mut last: Option<tokio::time::Instant> = None;
    while finished.recv_many(&mut batch, FINISH_BATCH).await > 0 {
        if let Some(last) = last {
            tokio::time::sleep_until(last + FINISHES_EVERY).await;
            while batch.len() < FINISH_BATCH
                && let Ok(f) = finished.try_recv()
            {
                batch.push(f);
            }
        }
        let started = tokio::time::Instant::now();
        last = Some(started);
        let mut pause = Duration::from_secs(1);
        loop {
            let jobs: Vec<Claimed> = batch.iter().map(|f| f.claimed).collect();
            let sent: Vec<&SentEmail> = batch.iter().filter_map(|f| f.sent.as_ref()).collect();
            let Err(e) = finish(&pool, &jobs, &sent).await else {
                break;
            };
            if started.elapsed() + pause >= lease || *shutdown.borrow() {
                tracing::error!(
                    error = %redact(&format!("{e:#}")),
                    jobs = batch.len(),
                    "failed to delete finished jobs; they run again after their lease"
                );
                break;
            }
            tracing::warn!(error = %redact(&format!("{e:#}")), "failed to delete finished jobs; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(8));
            // What finished meanwhile goes with this batch, rather than wait behind it.
            while batch.len() < FINISH_BATCH
                && let Ok(f) = finished.try_recv()
            {
                batch.push(f);
            }
        }
        batch.clear();
    }
}

/// Records a failure: back to `queued` after a backoff, or `dead`; and first the email the
/// attempt sent before it failed, if it sent one, so that the next attempt does not send it
/// again.
async fn fail(pool: &PgPool, job: &Job, error: &JobError) -> anyhow::Result<bool> {
    if let Some(sent) = job.sent.get() {
        finish(pool, &[], &[sent]).await?;
    }
    let permanent = matches!(error, JobError::Permanent(_));
    let dead = permanent || job.attempts >= job.max_attempts;
    // The message may quote a remote server (an SMTP reply names the recipient): redact it.
    let message = redact(&format!("{:#}", anyhow::anyhow!("{error}")));
    sqlx::query(
        "UPDATE job SET status = CASE WHEN $3 THEN 'dead' ELSE 'queued' END,
                run_at = now() + $4, locked_until = NULL, last_error = $5, updated_at = now()
         WHERE id = $1 AND attempts = $2 AND claim = $6",
    )
    .bind(job.id)
    .bind(job.attempts)
    .bind(dead)
    .bind(backoff(job.attempts))
    .bind(message)
    .bind(job.claim)
    .execute(pool)
    .await
    .context("failed to record a job failure")?;
    Ok(dead)
}

/// Exponential backoff with full jitter: uniformly random in [d/2, d], d = base·2^(n-1) ≤ cap.
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP);
    let half = ceiling / 2;
    let delay = half + half.mul_f64(rand::rng().random::<f64>());
    // Postgres intervals have microsecond precision; sqlx refuses to round for us.
    Duration::from_micros(delay.as_micros() as u64)
}

/// Cancels every queued or running job about `person` (part of erasing them). The rows are
/// locked in id order, as finishing jobs deletes them (`finish`), so the two cannot deadlock.
pub async fn cancel_for_person(conn: &mut PgConnection, person: PersonId) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM job
         WHERE id IN (SELECT id FROM job WHERE person_id = $1 ORDER BY id FOR UPDATE)",
    )
    .bind(person)
    .execute(conn)
    .await
    .context("failed to cancel a person's jobs")?
    .rows_affected())
}

/// A row of `pexper-admin jobs list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: JobId,
    pub kind: String,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub run_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub async fn list(
    pool: &PgPool,
    status: Option<JobStatus>,
    limit: i64,
) -> anyhow::Result<Vec<JobRow>> {
    sqlx::query_as(
        "SELECT id, kind, status, attempts, max_attempts, run_at, last_error, created_at
         FROM job WHERE ($1::text IS NULL OR status = $1)
         ORDER BY created_at LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list jobs")
}

/// Puts dead jobs (one, or all) back in the queue with a fresh attempt budget.
pub async fn retry(pool: &PgPool, id: Option<JobId>) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        // The attempt number only grows (it fences a worker's writes beside the claim's
        // token, and keeps counting what the job used). The job gets as many tries again as
        // it had.
        "UPDATE job SET status = 'queued', max_attempts = attempts + max_attempts, run_at = now(),
                last_error = NULL, locked_until = NULL, updated_at = now()
         WHERE status = 'dead' AND ($1::uuid IS NULL OR id = $1)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .context("failed to retry jobs")?
    .rows_affected();
    sqlx::query("SELECT pg_notify($1, 'retry')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Wakes this process's idle workers: what a use case calls after committing a job it wrote
/// without `enqueue`'s `NOTIFY` (a hot path, where the notify lock that every notifying
/// commit takes in turn would serialise the commits). A busy worker claims again without
/// waiting; an idle one on another replica finds the job at its next poll.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// A job is committed: one idle worker claims now (or the next to look, if none is idle).
    pub fn committed(&self) {
        self.0.notify_one();
    }
}

/// Jobs a claim takes beyond its idle slots, for the slots that will be idle next: a busy
/// queue then pays the claim's statement, its commit and its scan past the index entries of
/// jobs already taken once for several jobs, not once for each.
const CLAIM_AHEAD: usize = 8;

/// Requests in flight at which the process counts as busy serving people.
const BUSY_WITH_REQUESTS: usize = 4;
/// Job slots that keep working while the process is busy with requests; the rest wait. One:
/// on 2 cores at 32 connections, a signup email costs the machine what ten or more signups
/// do. Measured with one build, four slots sent 260 emails a second beside 4,200 to 5,200
/// signups, two sent 230 beside 6,300 to 6,900; one slot alone sends about 300 a second.
const SLOTS_WHILE_BUSY: usize = 1;

/// The process's requests in flight, which the job worker gives way to: while people are
/// waiting for answers, only `SLOTS_WHILE_BUSY` jobs run at once, so a backlog of email
/// cannot take the database and the cores from signups. The backlog goes at full speed the
/// moment the requests thin out (issue 17).
#[derive(Debug, Clone, Default)]
pub struct Foreground(Arc<ForegroundCounts>);

#[derive(Debug, Default)]
struct ForegroundCounts {
    in_flight: AtomicUsize,
    /// How many times a job slot looked, saw the requests, and waited.
    gave_way: AtomicUsize,
}

/// One request in flight, until dropped.
#[derive(Debug)]
pub struct InFlight(Foreground);

impl Foreground {
    pub fn enter(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests in flight now (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// How many times a job slot has given way so far (for tests and diagnostics).
    pub fn gave_way(&self) -> usize {
        self.0.gave_way.load(Ordering::Relaxed)
    }

    /// Whether enough requests are in flight that most job slots wait.
    fn busy(&self) -> bool {
        self.0.in_flight.load(Ordering::Relaxed) >= BUSY_WITH_REQUESTS
    }

    /// Whether a job in `slot` should wait: it counts that it did.
    fn gives_way(&self, slot: usize) -> bool {
        if slot >= SLOTS_WHILE_BUSY && self.busy() {
            self.0.gave_way.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Jobs claimed ahead of the slots that will run them, with when each was claimed. Closed once
/// the worker stops: a claim that ends after that gives back what it took ahead itself.
#[derive(Debug, Default)]
struct Ahead {
    jobs: VecDeque<(Job, std::time::Instant)>,
    closed: bool,
}

/// Puts jobs claimed ahead and never started back in the queue, due now, with the attempt
/// their claim counted given back (as one more allowed: attempt numbers only grow, as
/// `retry` keeps them), and wakes the workers of every process. One that fails to go back
/// runs after its lease, as a job of a worker that died would.
async fn unclaim(pool: &PgPool, jobs: &[Job]) {
    if jobs.is_empty() {
        return;
    }
    let back = sqlx::query(
        "WITH back AS (
             UPDATE job SET status = 'queued', run_at = now(), locked_until = NULL,
                    max_attempts = max_attempts + 1, updated_at = now()
             FROM unnest($1::uuid[], $2::int4[], $4::uuid[]) AS claimed (id, attempts, claim)
             WHERE job.id = claimed.id AND job.attempts = claimed.attempts
               AND job.claim = claimed.claim AND job.status = 'running'
             RETURNING job.id
         )
         SELECT pg_notify($3, 'unclaimed') WHERE EXISTS (SELECT 1 FROM back)",
    )
    .bind(jobs.iter().map(|j| j.id.0).collect::<Vec<Uuid>>())
    .bind(jobs.iter().map(|j| j.attempts).collect::<Vec<i32>>())
    .bind(CHANNEL)
    .bind(jobs.iter().map(|j| j.claim).collect::<Vec<Uuid>>())
    .execute(pool)
    .await;
    if let Err(e) = back {
        tracing::warn!(error = %redact(&format!("{e:#}")), jobs = jobs.len(), "failed to put jobs claimed ahead back; they run after their lease");
    }
}

/// Runs jobs until told to stop, then finishes the jobs in hand.
pub struct Worker<S> {
    pool: PgPool,
    state: S,
    jobs: JobRegistry<S>,
    concurrency: usize,
    lease: Duration,
    poll_interval: Duration,
    shutdown_grace: Duration,
    wake: Wake,
    foreground: Foreground,
    /// The jobs being run now, by id and claim (after a crash of Postgres lost a claim, one
    /// process can hold a job twice, under its lost claim and the next), with their attempt
    /// and kind: what to hand back if shutdown cannot wait.
    in_hand: std::sync::Mutex<HashMap<(JobId, Uuid), InHand>>,
    /// Jobs claimed ahead (`CLAIM_AHEAD`): the next idle slot takes the oldest.
    ahead: Arc<std::sync::Mutex<Ahead>>,
    counters: crate::metrics::JobCounters,
}

impl<S> std::fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("kinds", &self.jobs)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Worker<S> {
    pub fn new(pool: PgPool, state: S) -> Self {
        Self {
            pool,
            state,
            jobs: JobRegistry::new(),
            concurrency: 2,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            wake: Wake::default(),
            foreground: Foreground::default(),
            in_hand: std::sync::Mutex::default(),
            ahead: Arc::default(),
            counters: crate::metrics::JobCounters::default(),
        }
    }

    /// Where runs and hand-backs are counted: the process's `Metrics::jobs`.
    pub fn counted(mut self, counters: crate::metrics::JobCounters) -> Self {
        self.counters = counters;
        self
    }

    pub fn register<J: BackgroundJob<Context = S>>(mut self) -> Self {
        self.jobs = self.jobs.register::<J>();
        self
    }

    pub fn jobs(mut self, jobs: JobRegistry<S>) -> Self {
        self.jobs = self.jobs.merge(jobs);
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a claim lasts without a heartbeat; a dead worker's job waits this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The fallback poll when no NOTIFY arrives (missed while reconnecting, or a delayed job).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// What wakes the workers besides a `NOTIFY`: the process's `Platform::job_wake`.
    pub fn wake(mut self, wake: Wake) -> Self {
        self.wake = wake;
        self
    }

    /// The requests this worker gives way to: the process's `Platform::foreground`.
    pub fn foreground(mut self, foreground: Foreground) -> Self {
        self.foreground = foreground;
        self
    }

    /// How long shutdown waits for the jobs in hand before it hands them back.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Runs until `shutdown` turns true, then lets the jobs in hand finish for up to
    /// `shutdown_grace`. What is still running then is stopped and its lease handed back, so
    /// another worker takes it at once instead of after the lease: shutdown is bounded, and
    /// nothing claimed is lost.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        if self.jobs.handlers.is_empty() {
            return;
        }
        let wake = self.wake.0.clone();
        let listener = tokio::spawn(listen(self.pool.clone(), wake.clone(), shutdown.clone()));
        let this = Arc::new(self);
        let (finished, to_delete) = mpsc::unbounded_channel();
        let finisher = tokio::spawn(finish_in_batches(
            this.pool.clone(),
            this.lease,
            shutdown.clone(),
            to_delete,
        ));
        let claims = Arc::new(this.claims(wake.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..this.concurrency {
            tasks.spawn(this.clone().work(
                slot,
                claims.clone(),
                wake.clone(),
                shutdown.clone(),
                finished.clone(),
            ));
        }
        drop((finished, claims));
        let deadline = {
            let (shutdown, grace) = (shutdown.clone(), this.shutdown_grace);
            async move {
                crate::shutdown::requested(shutdown).await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                _ = &mut deadline => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    this.hand_back().await;
                    break;
                }
            }
        }
        // Jobs claimed ahead that no slot took go back to the queue, for any worker to take
        // at once; a claim still in flight gives back its own (`Ahead::closed`).
        let ahead: Vec<Job> = {
            let mut ahead = this
                .ahead
                .lock()
                .expect("the jobs ahead are never poisoned");
            ahead.closed = true;
            ahead.jobs.drain(..).map(|(job, _)| job).collect()
        };
        unclaim(&this.pool, &ahead).await;
        // Every slot has stopped and dropped its sender: the last finished jobs are deleted.
        finisher.await.ok();
        listener.abort();
    }

    /// The slots' claims, batched: the slots that go idle while a claim runs claim together in
    /// the next statement, one job each (or none, if the queue has fewer), and more for the
    /// slots that go idle next (`CLAIM_AHEAD`, at most one per slot that may run now, less
    /// what is already ahead; the idle slots are woken to take them). A job claimed for a
    /// slot that is gone meanwhile (stopped at shutdown) waits for its lease to lapse.
    fn claims(&self, wake: Arc<Notify>) -> Batcher<(), Option<Job>> {
        let pool = self.pool.clone();
        let kinds: Arc<[String]> = self.jobs.kinds().into_iter().map(String::from).collect();
        let lease = self.lease;
        let (ahead, foreground, concurrency) = (
            self.ahead.clone(),
            self.foreground.clone(),
            self.concurrency,
        );
        Batcher::new(1, self.concurrency, move |slots: Vec<()>| {
            let (pool, kinds, ahead, wake) =
                (pool.clone(), kinds.clone(), ahead.clone(), wake.clone());
            let running = if foreground.busy() {
                SLOTS_WHILE_BUSY
            } else {
                concurrency
            };
            async move {
                let room = {
                    let ahead = ahead.lock().expect("the jobs ahead are never poisoned");
                    let wanted = CLAIM_AHEAD.min(running);
                    if ahead.closed {
                        0
                    } else {
                        wanted.saturating_sub(ahead.jobs.len())
                    }
                };
                let mut claimed = claim(&pool, &kinds, lease, slots.len() + room)
                    .await?
                    .into_iter();
                let jobs: Vec<Option<Job>> = slots.iter().map(|()| claimed.next()).collect();
                let back: Vec<Job> = {
                    let mut ahead = ahead.lock().expect("the jobs ahead are never poisoned");
                    if ahead.closed {
                        claimed.collect()
                    } else {
                        let now = std::time::Instant::now();
                        let before = ahead.jobs.len();
                        ahead.jobs.extend(claimed.map(|job| (job, now)));
                        if ahead.jobs.len() > before {
                            wake.notify_waiters();
                        }
                        Vec::new()
                    }
                };
                unclaim(&pool, &back).await;
                Ok(jobs)
            }
        })
    }

    /// The oldest job claimed ahead, if its lease is still ours: one that waited over a third
    /// of its lease (every slot held by slow jobs) has it renewed first, as a running job's
    /// heartbeat would, and is dropped if another worker has taken it meanwhile.
    async fn take_ahead(&self) -> Option<Job> {
        loop {
            let (job, claimed) = self
                .ahead
                .lock()
                .expect("the jobs ahead are never poisoned")
                .jobs
                .pop_front()?;
            if claimed.elapsed() < self.lease / 3
                || renew(&self.pool, &job, self.lease).await.unwrap_or(false)
            {
                return Some(job);
            }
        }
    }

    /// Ends the leases of the jobs still in hand, so that they are claimed again at once.
    async fn hand_back(&self) {
        let in_hand: Vec<InHand> = self
            .in_hand
            .lock()
            .expect("the in-hand set is never poisoned")
            .drain()
            .map(|(_, job)| job)
            .collect();
        // A job stopped after sending its email (its handler had more to do) has the email
        // recorded first, or the worker that takes it next would send it again.
        let sent: Vec<&SentEmail> = in_hand.iter().filter_map(|j| j.sent.get()).collect();
        if !sent.is_empty()
            && let Err(e) = finish(&self.pool, &[], &sent).await
        {
            tracing::warn!(error = %redact(&format!("{e:#}")), "failed to record the emails of jobs handed back");
        }
        for job in &in_hand {
            let id = job.claimed.id;
            let released = sqlx::query(
                "UPDATE job SET locked_until = now()
                 WHERE id = $1 AND attempts = $2 AND claim = $3 AND status = 'running'",
            )
            .bind(id)
            .bind(job.claimed.attempts)
            .bind(job.claimed.claim)
            .execute(&self.pool)
            .await;
            match released {
                Ok(r) if r.rows_affected() == 1 => self.counters.handed_back(job.kind),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %redact(&format!("{e:#}")), job.id = %id, "failed to hand a job back")
                }
            }
        }
        if !in_hand.is_empty() {
            tracing::warn!(
                jobs = in_hand.len(),
                "shutdown grace over: jobs in hand handed back"
            );
        }
    }

    async fn work(
        self: Arc<Self>,
        slot: usize,
        claims: Arc<Batcher<(), Option<Job>>>,
        wake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
        finished: mpsc::UnboundedSender<Finished>,
    ) {
        while !*shutdown.borrow() {
            if self.foreground.gives_way(slot) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // Register for wake-ups before claiming, so a NOTIFY that lands between an empty
            // claim and the wait is not lost.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(job) = self.take_ahead().await {
                self.execute(job, &finished).await;
                continue;
            }
            match claims.write(()).await {
                Ok(Some(job)) => {
                    self.execute(job, &finished).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %redact(&format!("{e:#}")), "job claim failed"),
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn execute(&self, job: Job, finished: &mpsc::UnboundedSender<Finished>) {
        let span = tracing::info_span!("job", job.id = %job.id, job.kind = %job.kind, attempt = job.attempts);
        async {
            let Some((&kind, handler)) = self.jobs.handlers.get_key_value(job.kind.as_str()) else {
                return;
            };
            let started = std::time::Instant::now();
            self.in_hand
                .lock()
                .expect("the in-hand set is never poisoned")
                .insert(
                    (job.id, job.claim),
                    InHand {
                        claimed: Claimed::from(&job),
                        kind,
                        sent: job.sent.clone(),
                    },
                );
            let work = handler(self.state.clone(), job.clone());
            tokio::pin!(work);
            let mut heartbeat = tokio::time::interval(self.lease / 3);
            heartbeat.tick().await;
            let result = loop {
                tokio::select! {
                    result = &mut work => break result,
                    _ = heartbeat.tick() => {
                        if !renew(&self.pool, &job, self.lease).await.unwrap_or(true) {
                            tracing::warn!("lost the lease; another worker owns the job now");
                        }
                    }
                }
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            // The job stays in hand until its outcome is with the finisher or recorded: a
            // shutdown that stops this slot in `fail` still records the email it sent.
            let out_of_hand = || {
                self.in_hand
                    .lock()
                    .expect("the in-hand set is never poisoned")
                    .remove(&(job.id, job.claim));
            };
            if let Err(JobError::Retry(cause) | JobError::Permanent(cause)) = &result
                && crate::outage::pool_timed_out(cause)
            {
                self.counters.pool_timed_out();
            }
            match result {
                Ok(()) => {
                    // The finisher outlives every slot, so the send cannot fail.
                    finished
                        .send(Finished {
                            claimed: Claimed::from(&job),
                            sent: job.sent.get().cloned(),
                        })
                        .ok();
                    out_of_hand();
                    self.counters.ran(kind, JobOutcome::Done);
                    tracing::info!(elapsed_ms, "job done");
                }
                Err(error) => {
                    let failed = fail(&self.pool, &job, &error).await;
                    out_of_hand();
                    match failed {
                        Ok(dead) => {
                            let outcome = if dead {
                                JobOutcome::Dead
                            } else {
                                JobOutcome::Failed
                            };
                            self.counters.ran(kind, outcome);
                            tracing::warn!(
                                elapsed_ms,
                                dead,
                                error = %redact(&format!("{error:#}")),
                                "job failed"
                            )
                        }
                        Err(e) => tracing::error!(
                            error = %redact(&format!("{e:#}")),
                            "failed to record a job failure"
                        ),
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Wakes workers on every NOTIFY; reconnects with a pause if the connection drops.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if listener.listen(CHANNEL).await.is_ok() {
                    while let Ok(_notification) = listener.recv().await {
                        wake.notify_waiters();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %redact(&format!("{e:#}")), "job listener failed to connect")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        // Written out, not computed with the formula under test.
        for (attempts, low, high) in [
            (1, 1, 2),
            (2, 2, 4),
            (3, 4, 8),
            (5, 16, 32),
            (10, 512, 1024),
            (11, 1024, 2048),
            (12, 1800, 3600),
            (20, 1800, 3600),
            (1000, 1800, 3600),
        ] {
            let d = backoff(attempts);
            assert!(
                d >= Duration::from_secs(low) && d <= Duration::from_secs(high),
                "{attempts}: {d:?}"
            );
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }
}
