//! The job queue: leases, heartbeats and fencing between workers, backoff, dead jobs and
//! the CLI that retries them, and a shutdown that finishes the job in hand.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pexper_platform::jobs::{self, BackgroundJob, Job, JobError, JobRegistry, NewJob, Worker};
use pexper_platform::state::{Platform, Service};
use pexper_tests::*;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

/// The queue tests' job: what it does is its worker's `Behaviour`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TestJob {
    i: usize,
}

impl BackgroundJob for TestJob {
    const KIND: &'static str = "test.job";
    type Context = Behaviour;

    async fn run(self, behaviour: Behaviour, job: &Job) -> Result<(), JobError> {
        match behaviour {
            Behaviour::Count { runs, delay } => {
                tokio::time::sleep(delay).await;
                runs.0.lock().unwrap().push(job.id.to_string());
                Ok(())
            }
            Behaviour::Gated {
                started,
                release,
                outcome,
            } => {
                started.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                outcome()
            }
            Behaviour::Fail => Err(JobError::Retry(anyhow::anyhow!(
                "upstream said no to alice@example.com from 192.0.2.1"
            ))),
        }
    }
}

#[derive(Clone)]
enum Behaviour {
    /// Waits `delay`, then records the job's id in `runs`.
    Count { runs: Runs, delay: Duration },
    /// Counts its start in `started`, waits for `release`, then answers `outcome`.
    Gated {
        started: Arc<AtomicUsize>,
        release: Arc<tokio::sync::Notify>,
        outcome: fn() -> Result<(), JobError>,
    },
    /// Fails, worth a retry, quoting an address and an IP address.
    Fail,
}

/// The ids of the jobs a `Behaviour::Count` ran, in order.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<String>>>);

/// A worker over `pool` whose jobs wait `delay`, then record their ids in the `Runs` returned
/// with it; it polls every 20 ms unless the caller sets otherwise.
fn counting_worker(pool: sqlx::PgPool, delay: Duration) -> (Runs, Worker<Behaviour>) {
    let runs = Runs::default();
    let behaviour = Behaviour::Count {
        runs: runs.clone(),
        delay,
    };
    let worker = Worker::new(pool, behaviour)
        .poll_interval(Duration::from_millis(20))
        .register::<TestJob>();
    (runs, worker)
}

/// Runs `worker` until the returned sender says stop.
fn spawn_worker(worker: Worker<Behaviour>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    (stop, tokio::spawn(worker.run(shutdown)))
}

async fn enqueue_n(pool: &sqlx::PgPool, n: usize) {
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        jobs::enqueue(&mut tx, NewJob::new(&TestJob { i }))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn job_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Two workers (each `lease` long, four tasks) run the jobs queued in `db`, each job taking
/// `job_time`, until the queue is empty; returns the ids of the jobs run, in order.
async fn two_workers_until_empty(
    db: &TestDatabase,
    lease: Duration,
    job_time: Duration,
) -> Vec<String> {
    let pool = db.pool().await;
    let runs = Runs::default();
    let (stop, shutdown) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let behaviour = Behaviour::Count {
            runs: runs.clone(),
            delay: job_time,
        };
        let w = Worker::new(db.pool().await, behaviour)
            .concurrency(4)
            .lease(lease)
            .poll_interval(Duration::from_millis(20))
            .register::<TestJob>();
        workers.push(tokio::spawn(w.run(shutdown.clone())));
    }
    eventually(Duration::from_secs(30), "the queue to be empty", || async {
        (job_count(&pool).await == 0).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }
    runs.0.lock().unwrap().clone()
}

#[tokio::test]
async fn two_workers_never_run_the_same_job() {
    init();
    let db = TestDatabase::new().await;
    enqueue_n(&db.pool().await, 200).await;
    let ran = two_workers_until_empty(&db, Duration::from_secs(60), Duration::from_millis(1)).await;
    let distinct: HashSet<_> = ran.iter().collect();
    assert_eq!(ran.len(), 200, "every job ran");
    assert_eq!(distinct.len(), 200, "no job ran twice");
}

#[tokio::test]
async fn a_job_survives_a_killed_worker() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 1).await;

    // Worker A claims the job and is killed mid-job (its task is aborted: no cleanup runs).
    let started = Arc::new(AtomicUsize::new(0));
    let a = GatedWorker::start(
        db.pool().await,
        Duration::from_secs(1),
        started.clone(),
        || Ok(()),
    );
    a.started(1, "worker A to start the job").await;
    a.kill().await;
    let status: String = sqlx::query_scalar("SELECT status FROM job")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        status, "running",
        "the killed worker's job is still claimed"
    );

    // Worker B takes it over once the lease lapses, and finishes it.
    let runs = Runs::default();
    let (stop_b, shutdown_b) = watch::channel(false);
    let behaviour = Behaviour::Count {
        runs: runs.clone(),
        delay: Duration::ZERO,
    };
    let b = Worker::new(db.pool().await, behaviour)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(100))
        .register::<TestJob>();
    let b = tokio::spawn(b.run(shutdown_b));
    eventually(
        Duration::from_secs(15),
        "worker B to finish the job",
        || async { (job_count(&pool).await == 0).then_some(()) },
    )
    .await;
    stop_b.send(true).unwrap();
    b.await.unwrap();
    assert_eq!(runs.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn idle_slots_claim_together_in_one_statement() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 8).await;
    // The first claim waits for this lock, so the other seven idle slots ask while it does.
    let lock = TableLock::take(&pool, "job").await;
    let started = Arc::new(AtomicUsize::new(0));
    let worker = GatedWorker::with_slots(
        db.pool().await,
        Duration::from_secs(60),
        8,
        started.clone(),
        || Ok(()),
    );
    lock.until_someone_waits(&pool).await;
    lock.release().await;
    worker.started(8, "all eight jobs to start").await;
    // A row's `xmin` is the transaction that last wrote it: here, the claim.
    let claims: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM job WHERE status = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        claims <= 2,
        "eight idle slots claimed in {claims} statements: the one that waited, then the rest together"
    );
    worker.kill().await;
}

/// A claim commits without waiting for the disk (its token fences what a crash could confuse:
/// `after_a_takeover_…`), and nothing else on its connection does: the setting ends with the
/// claim's transaction, so the signups and finishes that share the pool stay durable.
#[tokio::test]
async fn only_the_claim_commits_without_waiting_for_the_disk() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 2).await;
    let mut conn = pool.acquire().await.unwrap();
    // The throwaway cluster runs without synchronous commits; a deployment's waits for them.
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut *conn)
        .await
        .unwrap();
    let claim = "SELECT count(*) FROM claim_jobs_async(ARRAY['test.job'], interval '1 minute', 1)";
    let setting = "SELECT current_setting('synchronous_commit')";
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let claimed: i64 = sqlx::query_scalar(claim).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(claimed, 1);
    let within: String = sqlx::query_scalar(setting)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(within, "off", "the claim's own commit does not wait");
    tx.commit().await.unwrap();
    let claimed: i64 = sqlx::query_scalar(claim)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        claimed, 1,
        "a claim as the worker makes it: a transaction of its own"
    );
    let after: String = sqlx::query_scalar(setting)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        after, "on",
        "what the connection commits next waits for the disk"
    );
    // A transaction that has written refuses it: its write would not wait for the disk either.
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    sqlx::query("UPDATE job SET updated_at = now()")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query_scalar::<_, i64>(claim)
        .fetch_one(&mut *tx)
        .await;
    assert!(refused.is_err(), "a claim after a write: {refused:?}");
}

#[tokio::test]
async fn while_jobs_keep_finishing_their_deletes_go_together_at_most_every_ten_milliseconds() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    // Each delete statement on the queue leaves here the time Postgres received it (this
    // test's instrument).
    sqlx::raw_sql(
        "CREATE TABLE finish_log (at timestamptz NOT NULL);
         CREATE FUNCTION log_finish() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO finish_log VALUES (statement_timestamp()); RETURN NULL; END $$;
         CREATE TRIGGER log_finish AFTER DELETE ON job
             FOR EACH STATEMENT EXECUTE FUNCTION log_finish();",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Sixteen slots, jobs of 2 ms: several jobs finish every millisecond, and a delete on this
    // cluster (no fsync) takes about one, so back to back they would go a few at a time.
    let (runs, worker) = counting_worker(db.pool().await, Duration::from_millis(2));
    let (stop, handle) = spawn_worker(worker.concurrency(16));
    let empty = || async {
        eventually(Duration::from_secs(30), "the queue to be empty", || async {
            (job_count(&pool).await == 0).then_some(())
        })
        .await
    };
    // A first round opens the worker's connections: a delete that opened one (TLS and SCRAM,
    // tens of milliseconds on a loaded machine) would reach Postgres late, and the next one
    // closer to it than 10 ms.
    enqueue_n(&pool, 16).await;
    empty().await;
    sqlx::query("TRUNCATE finish_log")
        .execute(&pool)
        .await
        .unwrap();
    enqueue_n(&pool, 400).await;
    empty().await;
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_eq!(runs.0.lock().unwrap().len(), 416);
    let (deletes, span_ms): (i64, f64) = sqlx::query_as(
        "SELECT count(*), (extract(epoch FROM max(at) - min(at)) * 1000)::float8 FROM finish_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // Each delete is sent at least 10 ms after the one before. The margin is for how long the
    // first waits to be read, on a loaded machine: up to 40 ms. (Back to back, the 400 went in
    // over 60 statements.)
    let most = (span_ms / 10.0) as i64 + 5;
    assert!(
        deletes <= most,
        "400 jobs deleted in {deletes} statements over {span_ms:.0} ms: more than one per 10 ms ({most})"
    );
}

#[tokio::test]
async fn a_claim_and_a_delete_read_a_few_pages_however_long_the_queue_and_however_stale_its_statistics()
 {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    // A burst of 100,000 jobs into a queue that was never analyzed: the planner's statistics
    // say nothing of them. (Unpinned, it sorted them all to claim eight, 50 ms a claim.)
    sqlx::query(
        "INSERT INTO job (id, kind, run_at)
         SELECT gen_random_uuid(), 'test.job', now() - interval '1 minute' + g * interval '1 ms'
         FROM generate_series(1, 100000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut pages = Vec::new();
    // Twice on one connection: the first call also reads the catalog to plan.
    for _ in 0..2 {
        let plan: Value = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT * FROM claim_jobs(ARRAY['test.job'], interval '1 minute', 8)",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let top = &plan[0]["Plan"];
        assert_eq!(top["Actual Rows"], 8, "eight jobs claimed: {plan}");
        assert_eq!(
            top["Temp Written Blocks"], 0,
            "nothing spilled to disk: {plan}"
        );
        // The claimed eight, finished as the worker's finisher deletes them.
        let claimed: Vec<(Uuid, i32, Uuid)> =
            sqlx::query_as("SELECT id, attempts, claim FROM job WHERE status = 'running'")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.0).collect();
        let attempts: Vec<i32> = claimed.iter().map(|c| c.1).collect();
        let claims: Vec<Uuid> = claimed.iter().map(|c| c.2).collect();
        let finish: Value = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT finish_jobs($1, $2, $3, '{}', '{}', '{}', '{}')",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&claims)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let read = |plan: &Value| {
            let top = &plan[0]["Plan"];
            top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
        };
        pages.push((read(&plan), read(&finish)));
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM job")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 100_000 - 16, "each claimed job deleted once finished");
    // The queue fills about 1,600 pages, which the unpinned plan read (and sorted, on disk);
    // the claim walks the index from its start and stops after eight, and the delete looks
    // up each of the eight by its key.
    let (claim, finish) = pages[1];
    assert!(claim < 400, "a claim read {pages:?} pages");
    assert!(finish < 100, "a delete of eight read {pages:?} pages");
}

/// A worker (one slot unless said) whose jobs count their starts in `started`, then wait for
/// `release` and answer `outcome`.
struct GatedWorker {
    started: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedWorker {
    fn start(
        pool: sqlx::PgPool,
        lease: Duration,
        started: Arc<AtomicUsize>,
        outcome: fn() -> Result<(), JobError>,
    ) -> Self {
        Self::with_slots(pool, lease, 1, started, outcome)
    }

    fn with_slots(
        pool: sqlx::PgPool,
        lease: Duration,
        slots: usize,
        started: Arc<AtomicUsize>,
        outcome: fn() -> Result<(), JobError>,
    ) -> Self {
        Self::with_grace(
            pool,
            lease,
            slots,
            started,
            outcome,
            Duration::from_secs(20),
        )
    }

    /// After a stop, the worker waits `grace` for its jobs, then hands back those in hand.
    fn with_grace(
        pool: sqlx::PgPool,
        lease: Duration,
        slots: usize,
        started: Arc<AtomicUsize>,
        outcome: fn() -> Result<(), JobError>,
        grace: Duration,
    ) -> Self {
        let release = Arc::new(tokio::sync::Notify::new());
        let behaviour = Behaviour::Gated {
            started: started.clone(),
            release: release.clone(),
            outcome,
        };
        let (stop, shutdown) = watch::channel(false);
        let worker = Worker::new(pool, behaviour)
            .concurrency(slots)
            .lease(lease)
            .poll_interval(Duration::from_millis(20))
            .shutdown_grace(grace)
            .register::<TestJob>();
        Self {
            started,
            release,
            stop,
            task: tokio::spawn(worker.run(shutdown)),
        }
    }

    /// Waits until the handler has started `n` times in all.
    async fn started(&self, n: usize, what: &str) {
        eventually(Duration::from_secs(10), what, || async {
            (self.started.load(Ordering::SeqCst) == n).then_some(())
        })
        .await;
    }

    /// Lets the job in hand answer, and the worker stop.
    async fn release_and_stop(self) {
        self.stop.send(true).unwrap();
        self.release.notify_one();
        self.task.await.unwrap();
    }

    /// Stops the worker with the job still in hand: after its grace, it hands the job back.
    async fn stop_holding(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }

    /// Kills the worker mid-job: the task is aborted, nothing after it runs.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A claim takes jobs ahead for the slots that go idle next (`jobs::CLAIM_AHEAD`, at most one
/// per slot): those no slot took when the worker stops go back to the queue as they were,
/// with the attempt their claim counted given back, for the next worker to take at once.
#[tokio::test]
async fn jobs_claimed_ahead_go_back_to_the_queue_when_the_worker_stops() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 5).await;
    let a = GatedWorker::with_slots(
        db.pool().await,
        Duration::from_secs(60),
        2,
        Arc::default(),
        || Ok(()),
    );
    a.started(2, "A to start a job in each of its two slots")
        .await;
    let states = || async {
        sqlx::query_as::<_, (String, i32, i32, bool)>(
            "SELECT status, attempts, max_attempts, coalesce(locked_until > now(), false)
             FROM job ORDER BY status, run_at",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let state = |status: &str, attempts, max_attempts, leased| {
        (status.to_owned(), attempts, max_attempts, leased)
    };
    let mut expected = vec![state("queued", 0, 16, false)];
    expected.extend(vec![state("running", 1, 16, true); 4]);
    assert_eq!(
        states().await,
        expected,
        "two in hand, two claimed ahead, one left in the queue"
    );
    // Stopped while both slots are busy: they finish, and take nothing more.
    a.stop.send(true).unwrap();
    a.release.notify_waiters();
    a.task.await.unwrap();
    assert_eq!(
        states().await,
        vec![
            state("queued", 0, 16, false),
            state("queued", 1, 17, false),
            state("queued", 1, 17, false),
        ],
        "the two in hand done, the two ahead queued again, their attempt given back"
    );

    // Another worker runs the three at once, each once.
    let (runs, b) = counting_worker(db.pool().await, Duration::ZERO);
    let (stop, b) = spawn_worker(b);
    eventually(Duration::from_secs(10), "B to run the three", || async {
        (job_count(&pool).await == 0).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    b.await.unwrap();
    let ran = runs.0.lock().unwrap().clone();
    assert_eq!(ran.iter().collect::<HashSet<_>>().len(), 3, "{ran:?}");
    assert_eq!(ran.len(), 3, "each once: {ran:?}");
}

/// A job claimed ahead has no heartbeat while it waits: if the slots are held longer than its
/// lease, another worker takes it, and the worker that claimed it must then leave it alone.
#[tokio::test]
async fn a_job_that_waited_ahead_past_its_lease_is_left_to_the_worker_that_took_it() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 2).await;
    // A's one slot holds the first job (its heartbeat, every 2 s, keeps it); the second waits
    // ahead, without one.
    let lease = Duration::from_secs(6);
    let a = GatedWorker::start(db.pool().await, lease, Arc::default(), || Ok(()));
    a.started(1, "A to start the first job").await;
    // Once the second's lease lapses, B takes it and runs it.
    let (runs, b) = counting_worker(db.pool().await, Duration::ZERO);
    let (stop, b) = spawn_worker(b.lease(Duration::from_secs(60)));
    eventually(
        Duration::from_secs(15),
        "B to run the second job",
        || async { (runs.0.lock().unwrap().len() == 1).then_some(()) },
    )
    .await;
    stop.send(true).unwrap();
    b.await.unwrap();
    // A's slot is freed: it must pass over the job B ran and take the next one queued.
    enqueue_n(&pool, 1).await;
    a.release.notify_one();
    a.started(2, "A to start another job").await;
    eventually(
        Duration::from_secs(10),
        "the first job's delete",
        || async { (job_count(&pool).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        sqlx::query_as::<_, (String, i32)>("SELECT status, attempts FROM job")
            .fetch_all(&pool)
            .await
            .unwrap(),
        vec![("running".to_owned(), 1)],
        "A runs the job queued last, not again the one B ran"
    );
    a.release_and_stop().await;
    assert_eq!(job_count(&pool).await, 0);
}

/// Giving back the jobs still ahead at shutdown is fenced by their attempt: one another worker
/// has taken meanwhile stays that worker's.
#[tokio::test]
async fn a_stopping_worker_gives_back_only_the_jobs_ahead_that_are_still_its_own() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 2).await;
    let a = GatedWorker::start(
        db.pool().await,
        Duration::from_secs(6),
        Arc::default(),
        || Ok(()),
    );
    a.started(1, "A to start the first job, the second ahead")
        .await;
    // The second's lease lapses while it waits; B takes it and holds it.
    let b = GatedWorker::start(
        db.pool().await,
        Duration::from_secs(60),
        Arc::default(),
        || Ok(()),
    );
    b.started(1, "B to take the second job").await;
    a.release_and_stop().await;
    assert_eq!(
        sqlx::query_as::<_, (String, i32, i32)>("SELECT status, attempts, max_attempts FROM job")
            .fetch_all(&pool)
            .await
            .unwrap(),
        vec![("running".to_owned(), 2, 16)],
        "B's claim stands: A gave nothing back"
    );
    b.release_and_stop().await;
    assert_eq!(job_count(&pool).await, 0);
}

/// The same after a crash of Postgres lost A's claims (the job in hand and the one ahead) and
/// B claimed both again, at the same attempt numbers: A, stopping, neither finishes the one
/// nor gives back the other. Only the claims' tokens tell A's claims from B's.
#[tokio::test]
async fn a_worker_whose_claims_a_crash_lost_neither_finishes_nor_gives_back_the_next_ones() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, 2).await;
    let lease = Duration::from_secs(60);
    let a = GatedWorker::start(db.pool().await, lease, Arc::default(), || Ok(()));
    a.started(1, "A to start the first job, the second ahead")
        .await;
    Takeover::ClaimLost.happen(&pool).await;
    // B's one slot claims one job and one ahead: both.
    let b = GatedWorker::start(db.pool().await, lease, Arc::default(), || Ok(()));
    b.started(1, "B to take the first job, the second ahead")
        .await;
    a.release_and_stop().await;
    assert_eq!(
        sqlx::query_as::<_, (String, i32, i32)>("SELECT status, attempts, max_attempts FROM job")
            .fetch_all(&pool)
            .await
            .unwrap(),
        vec![("running".to_owned(), 1, 16); 2],
        "B's claims stand: A finished nothing and gave nothing back"
    );
    b.kill().await;
}

/// Idle slots are woken for jobs claimed ahead: they do not wait for the next poll while one
/// slot works through them.
#[tokio::test]
async fn idle_slots_take_the_jobs_claimed_ahead_at_once() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    let (runs, worker) = counting_worker(db.pool().await, Duration::from_secs(1));
    let (stop, worker) = spawn_worker(worker.concurrency(8).poll_interval(Duration::from_secs(60)));
    eventually(Duration::from_secs(10), "the worker to listen", || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (listening > 0).then_some(())
    })
    .await;
    // One job: one slot takes it, the seven others find the queue empty and wait.
    let started = std::time::Instant::now();
    enqueue_n(&pool, 1).await;
    eventually(
        Duration::from_secs(10),
        "the first job to start",
        || async {
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job WHERE status = 'running'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (running == 1).then_some(())
        },
    )
    .await;
    // Eight more, queued without a NOTIFY: only the busy slot's next claim finds them, one
    // for itself and seven ahead, which the seven idle slots must be woken to take.
    sqlx::query(
        "INSERT INTO job (id, kind, payload, max_attempts)
         SELECT gen_random_uuid(), 'test.job', '{\"i\": 0}', 16 FROM generate_series(1, 8)",
    )
    .execute(&pool)
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "the nine to run", || async {
        (runs.0.lock().unwrap().len() == 9).then_some(())
    })
    .await;
    // A second each: two seconds or so with eight slots; the busy slot alone would take nine.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    stop.send(true).unwrap();
    worker.await.unwrap();
}

async fn job_state(pool: &sqlx::PgPool) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT status, attempts, last_error FROM job")
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_that_outlives_its_lease_on_a_live_worker_is_not_taken_over() {
    init();
    let db = TestDatabase::new().await;
    enqueue_n(&db.pool().await, 1).await;
    // Leases of 300 ms; the job takes 2 s, more than six leases: only the heartbeat (every
    // 100 ms) keeps it from the seven other tasks polling for work.
    let ran =
        two_workers_until_empty(&db, Duration::from_millis(300), Duration::from_secs(2)).await;
    assert_eq!(ran.len(), 1, "one run, never a second");
}

/// How a worker loses the job it holds without knowing it.
#[derive(Debug, Clone, Copy)]
enum Takeover {
    /// Its lease lapsed (its heartbeats stopped reaching the database) and another worker
    /// claimed the job: the next attempt.
    LeaseLapsed,
    /// A crash of Postgres lost its claim, which commits without waiting for the disk: the
    /// row is as it was before the claim, and the next claim gets the same attempt number
    /// again (only its token differs).
    ClaimLost,
}

impl Takeover {
    /// Puts the job's row where the takeover leaves it, for another worker to claim.
    async fn happen(self, pool: &sqlx::PgPool) {
        let sql = match self {
            Takeover::LeaseLapsed => "UPDATE job SET locked_until = now() - interval '1 second'",
            Takeover::ClaimLost => {
                "UPDATE job SET status = 'queued', attempts = attempts - 1, claim = NULL,
                                locked_until = NULL, run_at = now()"
            }
        };
        sqlx::query(sql).execute(pool).await.unwrap();
    }

    /// The new owner's attempt number.
    fn new_attempt(self) -> i32 {
        match self {
            Takeover::LeaseLapsed => 2,
            Takeover::ClaimLost => 1,
        }
    }
}

#[tokio::test]
async fn after_a_takeover_the_first_worker_can_neither_finish_nor_fail_the_job() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    for takeover in [Takeover::LeaseLapsed, Takeover::ClaimLost] {
        for outcome in [(|| Ok(())) as fn() -> Result<(), JobError>, || {
            Err(JobError::Permanent(anyhow::anyhow!(
                "the first worker gives up"
            )))
        }] {
            enqueue_n(&pool, 1).await;
            // Worker A holds a long lease (no heartbeat during the test) and waits to be
            // released. One task each, so that the takeover can only be B's.
            let lease = Duration::from_secs(60);
            let a = GatedWorker::start(db.pool().await, lease, Arc::default(), outcome);
            a.started(1, "A to start").await;
            takeover.happen(&pool).await;
            let b = GatedWorker::start(db.pool().await, lease, Arc::default(), || Ok(()));
            b.started(1, "B to take over").await;

            // A now finishes (or fails): fenced by its claim, it changes nothing.
            a.release_and_stop().await;
            assert_eq!(
                job_state(&pool).await,
                Some(("running".to_owned(), takeover.new_attempt(), None)),
                "B's claim stands after {takeover:?}"
            );
            b.release_and_stop().await;
            assert_eq!(job_state(&pool).await, None, "B finished it");
        }
    }
}

#[tokio::test]
async fn a_stale_worker_neither_renews_nor_hands_back_the_new_owner_s_lease() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    // Another worker owns the job now, leased for ten minutes: the next attempt (as after A's
    // heartbeats failed to reach the database for a lease), or the same attempt number under
    // another claim (as after a crash lost A's claim and the job was claimed again).
    for (takeover, attempt) in [
        (
            "UPDATE job SET attempts = attempts + 1, locked_until = now() + interval '10 minutes'",
            2,
        ),
        (
            "UPDATE job SET claim = gen_random_uuid(), locked_until = now() + interval '10 minutes'",
            1,
        ),
    ] {
        enqueue_n(&pool, 1).await;
        // A leases for 300 ms, so its heartbeat renews every 100 ms; it holds the job until
        // stopped.
        let a = GatedWorker::with_grace(
            db.pool().await,
            Duration::from_millis(300),
            1,
            Arc::default(),
            || Ok(()),
            Duration::from_millis(50),
        );
        a.started(1, "A to start").await;
        sqlx::query(takeover).execute(&pool).await.unwrap();
        let lease_left = || async {
            sqlx::query_scalar::<_, f64>(
                "SELECT extract(epoch FROM locked_until - now())::float8 FROM job",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        // A's heartbeats (several by now) are fenced by its claim…
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            lease_left().await > 500.0,
            "A's heartbeat shortened the lease ({takeover})"
        );
        // …and so is its hand-back when it stops with the job still in hand.
        a.stop_holding().await;
        assert!(
            lease_left().await > 500.0,
            "A's hand-back ended the lease ({takeover})"
        );
        assert_eq!(
            job_state(&pool).await,
            Some(("running".to_owned(), attempt, None)),
            "the new owner's claim stands ({takeover})"
        );
        sqlx::query("DELETE FROM job").execute(&pool).await.unwrap();
    }
}

#[tokio::test]
async fn a_job_that_kills_its_worker_every_time_ends_dead_after_its_attempts() {
    let app = spawn_app().await;
    let pool = &app.platform.pool;
    let mut tx = pool.begin().await.unwrap();
    let id = jobs::enqueue(&mut tx, NewJob::new(&TestJob { i: 0 }).max_attempts(2))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let lease = Duration::from_millis(200);
    // Each attempt takes its worker down mid-job.
    for attempt in 1..=2 {
        let w = GatedWorker::start(pool.clone(), lease, started.clone(), || Ok(()));
        w.started(attempt, "the attempt to start").await;
        w.kill().await;
    }
    // A third worker finds the lapsed lease of a job with no attempts left: dead, not run.
    let w = GatedWorker::start(pool.clone(), lease, started.clone(), || Ok(()));
    let (status, attempts, error) =
        eventually(Duration::from_secs(10), "the job to go dead", || async {
            job_state(pool)
                .await
                .filter(|(status, _, _)| status == "dead")
        })
        .await;
    w.release_and_stop().await;
    assert_eq!((status.as_str(), attempts), ("dead", 2));
    assert!(error.unwrap().contains("stopped during every attempt"));
    assert_eq!(started.load(Ordering::SeqCst), 2, "no third run");
    let out = admin(
        &app.cli_vars(),
        &["jobs", "list", "--status", "dead", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed[0]["id"], id.to_string());
    assert_eq!(listed[0]["attempts"], 2);
}

#[tokio::test]
async fn failing_jobs_back_off_then_go_dead_and_the_cli_retries_them() {
    let app = spawn_app().await;
    let pool = &app.platform.pool;
    let mut tx = pool.begin().await.unwrap();
    // No worker handles this kind in the app, so the test drives attempts by hand.
    let id = jobs::enqueue(&mut tx, NewJob::new(&TestJob { i: 0 }).max_attempts(2))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();

    let fail_once = |pool: sqlx::PgPool| async move {
        let (stop, shutdown) = watch::channel(false);
        let w = Worker::new(pool.clone(), Behaviour::Fail)
            .poll_interval(Duration::from_millis(50))
            .register::<TestJob>();
        let handle = tokio::spawn(w.run(shutdown));
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.send(true).unwrap();
        handle.await.unwrap();
    };

    fail_once(pool.clone()).await;
    let (status, attempts, delay_s, error): (String, i32, f64, String) = sqlx::query_as(
        "SELECT status, attempts, extract(epoch FROM run_at - now())::float8, last_error FROM job WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("queued", 1));
    assert!(
        delay_s > 0.0 && delay_s <= 2.0,
        "backoff after the first attempt: {delay_s}"
    );
    assert!(
        !error.contains("alice") && !error.contains("192.0.2.1"),
        "{error}"
    );

    sqlx::query("UPDATE job SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    fail_once(pool.clone()).await;
    let status: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(status, "dead");

    let vars = app.cli_vars();
    let out = admin(&vars, &["jobs", "list", "--status", "dead", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed[0]["id"], id.to_string());
    assert_eq!(listed[0]["status"], "dead");
    let table = admin(&vars, &["jobs", "list"]);
    assert!(stdout(&table).contains("test.job"), "{}", stdout(&table));

    let out = admin(&vars, &["jobs", "retry", &id.to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["requeued"],
        1
    );
    let (status, attempts, max_attempts): (String, i32, i32) =
        sqlx::query_as("SELECT status, attempts, max_attempts FROM job WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    // The attempt number goes on from where it was (it fences each attempt's worker), with as
    // many tries again as the job had.
    assert_eq!((status.as_str(), attempts, max_attempts), ("queued", 2, 4));
    fail_once(pool.clone()).await;
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM job WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("queued", 3),
        "the third attempt, not a first"
    );

    let usage = admin(&vars, &["jobs", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_job_in_hand() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct SlowFinish {}
    impl BackgroundJob for SlowFinish {
        const KIND: &'static str = "test.slow_finish";
        type Context = Platform;
        async fn run(self, p: Platform, _: &Job) -> Result<(), JobError> {
            tokio::time::sleep(Duration::from_millis(800)).await;
            sqlx::query("CREATE TABLE slow_job_finished (x int)")
                .execute(&p.pool)
                .await?;
            Ok(())
        }
    }
    struct Slow;
    impl Service for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn jobs(&self) -> JobRegistry<Platform> {
            JobRegistry::new().register::<SlowFinish>()
        }
    }
    let mut options = AppOptions::default();
    options.services.push(Arc::new(Slow));
    let mut app = spawn_app_with(options).await;
    let pool = app.platform.pool.clone();
    let mut tx = pool.begin().await.unwrap();
    jobs::enqueue(&mut tx, NewJob::new(&SlowFinish {}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    eventually(Duration::from_secs(5), "the job to be claimed", || async {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM job")
            .fetch_optional(&pool)
            .await
            .unwrap();
        (s.as_deref() == Some("running")).then_some(())
    })
    .await;
    app.shutdown().await;
    assert_eq!(
        job_count(&pool).await,
        0,
        "the job finished before shutdown returned"
    );
    let finished: bool = sqlx::query_scalar("SELECT to_regclass('slow_job_finished') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(finished);
}

#[tokio::test]
async fn an_enqueue_wakes_the_workers_on_commit_and_a_deduplicated_one_does_not() {
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("pexper_jobs").await.unwrap();
    let enqueue = |key: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let id = jobs::enqueue(&mut tx, NewJob::new(&TestJob { i: 1 }).dedupe_key(key))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            id
        }
    };
    assert!(enqueue("once").await.is_some());
    let woke = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification on commit")
        .unwrap();
    assert_eq!(woke.payload(), "test.job");
    assert!(enqueue("once").await.is_none(), "the same key again");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), listener.recv())
            .await
            .is_err(),
        "nothing new, no wake-up"
    );
}

#[tokio::test]
async fn while_requests_are_in_flight_one_job_runs_and_the_rest_follow_when_they_end() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    let started = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let foreground = jobs::Foreground::default();
    let requests: Vec<_> = (0..4).map(|_| foreground.enter()).collect();
    let (stop, shutdown) = watch::channel(false);
    let worker = Worker::new(
        pool.clone(),
        Behaviour::Gated {
            started: started.clone(),
            release: release.clone(),
            outcome: || Ok(()),
        },
    )
    .concurrency(8)
    .poll_interval(Duration::from_millis(20))
    .foreground(foreground.clone())
    .register::<TestJob>();
    let task = tokio::spawn(worker.run(shutdown));
    enqueue_n(&pool, 8).await;

    // One slot takes a job; the other seven have looked at least three times each and waited.
    eventually(
        Duration::from_secs(10),
        "one job started, the rest giving way",
        || async {
            (started.load(Ordering::SeqCst) == 1 && foreground.gave_way() >= 21).then_some(())
        },
    )
    .await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "no second job while people wait"
    );

    // The requests end: the other seven slots take the rest at once.
    drop(requests);
    eventually(
        Duration::from_secs(10),
        "all eight jobs started",
        || async { (started.load(Ordering::SeqCst) == 8).then_some(()) },
    )
    .await;
    stop.send(true).unwrap();
    for _ in 0..8 {
        release.notify_one();
    }
    task.await.unwrap();
    assert_eq!(job_count(&pool).await, 0, "every job finished and deleted");
}
