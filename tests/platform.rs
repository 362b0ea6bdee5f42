//! The platform, black-box: HTTP stack, managed and external Postgres over TLS, encryption at
//! rest, the job queue, mail over a real SMTP server, the admin CLI.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use pexper_platform::crypto::{Keyring, MasterKeys};
use pexper_platform::email::EmailAddress;
use pexper_platform::http::{ApiJson, HttpOptions};
use pexper_platform::jobs::{self, Handler, Job, JobError, NewJob, Worker};
use pexper_platform::state::{Platform, Service};
use pexper_platform::{core, person};
use pexper_tests::*;
use serde_json::{Value, json};
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;

/// A service that exists only in tests: a JSON endpoint to exercise the HTTP stack.
struct Probe;

async fn echo(ApiJson(body): ApiJson<Value>) -> axum::Json<Value> {
    axum::Json(body)
}

impl Service for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new().route("/v1/probe/echo", axum::routing::post(echo))
    }
}

fn with_probe(http: Option<HttpOptions>) -> AppOptions {
    let mut services = pexper_server::all_services();
    services.push(Arc::new(Probe));
    let defaults = AppOptions::default();
    AppOptions {
        services,
        http: http.unwrap_or(defaults.http),
        ..defaults
    }
}

async fn error_code(res: reqwest::Response) -> (StatusCode, String) {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{status}: {ct}");
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn health_and_readiness_answer_ok_and_readiness_fails_fast_without_a_database() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    }
    // The database goes away: readiness says so within the acquire timeout, health does not care.
    let mut admin = sqlx::PgConnection::connect_with(&cluster().connect_options("postgres"))
        .await
        .unwrap();
    use sqlx::Connection;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {} WITH (FORCE)",
        app.db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_json_errors_never_a_500() {
    let app = spawn_app_with(with_probe(None)).await;
    let echo = app.url("/v1/probe/echo");

    let res = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let res = app
        .client
        .post(&echo)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::BAD_REQUEST, "malformed_json".into())
    );

    let res = app.client.post(&echo).body("{}").send().await.unwrap();
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".into()
        )
    );

    let res = app.client.delete(&echo).send().await.unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );

    let three_mb = format!("{{\"pad\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let res = app
        .client
        .post(&echo)
        .header("content-type", "application/json")
        .body(three_mb)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
    );

    // And a good request still works.
    let res = app
        .client
        .post(&echo)
        .json(&json!({"ok": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"ok": true}));
}

#[tokio::test]
async fn a_burst_from_one_client_meets_429_with_retry_after() {
    let app = spawn_app_with(with_probe(Some(HttpOptions {
        burst: 5,
        replenish: Duration::from_secs(2),
        ..HttpOptions::default()
    })))
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let res = app
            .client
            .post(app.url("/v1/probe/echo"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status(), 200);
    }
    let res = limited.expect("the burst is limited");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        error_code(res).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    // Health checks are not rate limited (load balancers poll them).
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cors_preflight_allows_exactly_the_configured_origins() {
    let app = spawn_app_with(with_probe(None)).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/probe/echo"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://pexper.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://pexper.com"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn openapi_documents_exactly_the_routed_operations() {
    let app = spawn_app().await;
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let documented: Vec<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    // Every route the services register through utoipa-axum's `routes!` is documented by the
    // same annotation; these are all of them, so a route that loses its document (or a
    // document that loses its route) fails here.
    let mut expected = vec![
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/v1/waitlist"),
        ("GET", "/v1/waitlist/confirm"),
        ("POST", "/v1/waitlist/confirm"),
        ("GET", "/v1/unsubscribe"),
        ("POST", "/v1/unsubscribe"),
        ("POST", "/v1/webhooks/stripe"),
        ("GET", "/v1/licenses/public-key"),
        ("POST", "/v1/licenses/validate"),
        ("POST", "/v1/privacy/requests"),
        ("GET", "/v1/privacy/verify"),
        ("POST", "/v1/privacy/verify"),
        ("GET", "/v1/privacy/exports/{token}"),
        ("POST", "/v1/analytics/events"),
        ("GET", "/v1/analytics/schema"),
        ("POST", "/api/{project_id}/envelope/"),
    ];
    expected.sort();
    let mut found: Vec<(&str, &str)> = documented
        .iter()
        .map(|(m, p)| (m.as_str(), p.as_str()))
        .collect();
    found.sort();
    assert_eq!(found, expected, "the documented operations");
    // And each documented operation is routed: it never meets the router's own 404 or 405.
    for (method, path) in &documented {
        let concrete = path.replace("{token}", "x").replace("{project_id}", "1");
        let res = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn every_database_connection_uses_tls_and_plain_connections_are_refused() {
    let app = spawn_app().await;
    // Make the pool open a few connections.
    let mut handles = Vec::new();
    for _ in 0..4 {
        let pool = app.platform.pool.clone();
        handles.push(tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(0.2)")
                .execute(&pool)
                .await
                .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let (tls, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.application_name = 'pexper'",
    )
    .fetch_one(&app.platform.pool)
    .await
    .unwrap();
    assert!(tls >= 2, "the app's connections: {tls} over TLS");
    assert_eq!(plain, 0);

    let plain_url = app
        .db
        .url()
        .replace("sslmode=verify-full", "sslmode=disable");
    // Refused by the server for being plain (the only pg_hba line is `hostssl`), not for a
    // wrong password or database: the same credentials work over TLS above.
    let refused = sqlx::PgPool::connect(&plain_url).await.err();
    let Some(sqlx::Error::Database(e)) = &refused else {
        panic!("a connection without TLS is refused by the server: {refused:?}");
    };
    assert_eq!(e.code().as_deref(), Some("28000"), "{e}");
    assert!(e.message().contains("no encryption"), "{e}");
}

#[tokio::test]
async fn a_database_dump_holds_no_address_in_clear() {
    let app = spawn_app().await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let addresses = ["canary.alice@example.com", "bob.canary@example.org"];
    for a in addresses {
        let email = EmailAddress::parse(a).unwrap();
        let id = person::find_or_create(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap();
        // Same address, same person; and it opens again.
        let again = person::find_or_create(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap();
        assert_eq!(id, again);
        let opened = person::email(&mut conn, &app.platform.keyring, id)
            .await
            .unwrap();
        assert_eq!(opened.unwrap().as_str(), a);
    }
    let dump = app.db.dump();
    assert!(
        dump.contains("COPY public.person"),
        "the dump covers the table"
    );
    // Each person: an index, a sealed address and a wrapped key, all bytea, all searched.
    assert!(
        dump.bytea_values() >= 3 * addresses.len(),
        "bytea values decoded"
    );
    for a in addresses {
        for needle in [a, a.split('@').next().unwrap()] {
            assert!(!dump.contains(needle), "{needle} appears in the dump");
        }
    }
}

#[test]
fn a_dump_search_sees_into_bytea_values() {
    // What pg_dump writes for a bytea holding "ada@example.com" in clear.
    let hex: String = b"ada@example.com"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dump = Dump::new(format!(
        "COPY public.person (email_sealed) FROM stdin;\n\\\\x{hex}\n\\.\n"
    ));
    assert!(!(*dump).contains("ada@example.com"), "not in the text");
    assert!(
        dump.contains("ada@example.com"),
        "found in the decoded bytea"
    );
    assert!(!dump.contains("bob@example.com"));
}

#[tokio::test]
async fn a_copied_ciphertext_does_not_open_in_another_row() {
    let app = spawn_app().await;
    let ring = &app.platform.keyring;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let alice = person::find_or_create(
        &mut conn,
        ring,
        &EmailAddress::parse("a@example.com").unwrap(),
    )
    .await
    .unwrap();
    let bob = person::find_or_create(
        &mut conn,
        ring,
        &EmailAddress::parse("b@example.com").unwrap(),
    )
    .await
    .unwrap();
    // An attacker with write access copies Alice's sealed address into Bob's row.
    sqlx::query("UPDATE person SET email_sealed = (SELECT email_sealed FROM person WHERE id = $1) WHERE id = $2")
        .bind(alice)
        .bind(bob)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(person::email(&mut conn, ring, bob).await.is_err());
    assert!(
        person::email(&mut conn, ring, alice)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_under_the_same_key_fails_on_the_row_binding() {
    use pexper_platform::crypto::{CryptoError, Field, sealed_key_id};
    let app = spawn_app().await;
    // One person, two requests with details: two ciphertexts under one data key.
    for (kind, details) in [
        ("correction", "my name is spelt wrong"),
        ("restriction", "stop using my data"),
    ] {
        let res = app
            .client
            .post(app.url("/v1/privacy/requests"))
            .json(&json!({"email": "moved@example.com", "kind": kind, "details": details}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let rows: Vec<(uuid::Uuid, Vec<u8>, person::PersonId)> = sqlx::query_as(
        "SELECT id, details_sealed, person_id FROM privacy_request ORDER BY created_at",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let key = person::data_key(&mut conn, &app.platform.keyring, rows[0].2)
        .await
        .unwrap()
        .unwrap();
    let field = |row| Field {
        table: "privacy_request",
        column: "details_sealed",
        row,
    };
    let (first, moved) = (&rows[0], &rows[1]);
    assert_eq!(
        key.open(field(first.0), &first.1).unwrap(),
        b"my name is spelt wrong",
        "it opens where it was sealed"
    );
    // Copied into the other request's row: the key id matches, so only the binding of the
    // ciphertext to its row can refuse it.
    assert_eq!(sealed_key_id(&first.1), Some(key.id()));
    assert_eq!(sealed_key_id(&moved.1), Some(key.id()));
    assert_eq!(
        key.open(field(moved.0), &first.1),
        Err(CryptoError::Authentication)
    );
}

/// A job state for queue tests: counts runs per job id.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<String>>>);

fn counting_handler(runs: Runs, delay: Duration) -> Handler<Runs> {
    let _ = runs;
    jobs::handler(move |runs: Runs, job: Job| async move {
        tokio::time::sleep(delay).await;
        runs.0.lock().unwrap().push(job.id.to_string());
        Ok(())
    })
}

async fn enqueue_n(pool: &sqlx::PgPool, kind: &'static str, n: usize) {
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        jobs::enqueue(&mut tx, NewJob::new(kind, json!({ "i": i })))
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

/// Two workers (each `lease` long, four tasks) run the `kind` jobs queued in `db`, each job
/// taking `job_time`, until the queue is empty; returns the ids of the jobs run, in order.
async fn two_workers_until_empty(
    db: &TestDatabase,
    kind: &'static str,
    lease: Duration,
    job_time: Duration,
) -> Vec<String> {
    let pool = db.pool().await;
    let runs = Runs::default();
    let (stop, shutdown) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let w = Worker::new(db.pool().await, runs.clone())
            .concurrency(4)
            .lease(lease)
            .poll_interval(Duration::from_millis(20))
            .handle(kind, counting_handler(runs.clone(), job_time));
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
    enqueue_n(&db.pool().await, "test.count", 200).await;
    let ran = two_workers_until_empty(
        &db,
        "test.count",
        Duration::from_secs(60),
        Duration::from_millis(1),
    )
    .await;
    let distinct: HashSet<_> = ran.iter().collect();
    assert_eq!(ran.len(), 200, "every job ran");
    assert_eq!(distinct.len(), 200, "no job ran twice");
}

#[tokio::test]
async fn a_job_survives_a_killed_worker() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    enqueue_n(&pool, "test.slow", 1).await;

    // Worker A claims the job and is killed mid-job (its task is aborted: no cleanup runs).
    let started = Arc::new(AtomicUsize::new(0));
    let a_started = started.clone();
    let (_stop_a, shutdown_a) = watch::channel(false);
    let a = Worker::new(db.pool().await, ())
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50))
        .handle(
            "test.slow",
            jobs::handler(move |_: (), _job: Job| {
                let started = a_started.clone();
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
            }),
        );
    let a = tokio::spawn(a.run(shutdown_a));
    eventually(
        Duration::from_secs(10),
        "worker A to start the job",
        || async { (started.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    a.abort();
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
    let b = Worker::new(db.pool().await, runs.clone())
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(100))
        .handle("test.slow", counting_handler(runs.clone(), Duration::ZERO));
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

/// A one-task worker for `kind` whose handler counts its starts in `started`, then waits for
/// `release` and answers `outcome`.
struct GatedWorker {
    started: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedWorker {
    fn start(
        pool: sqlx::PgPool,
        kind: &'static str,
        lease: Duration,
        started: Arc<AtomicUsize>,
        outcome: fn() -> Result<(), JobError>,
    ) -> Self {
        let release = Arc::new(tokio::sync::Notify::new());
        let handler = {
            let (started, release) = (started.clone(), release.clone());
            jobs::handler(move |_: (), _job: Job| {
                let (started, release) = (started.clone(), release.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    outcome()
                }
            })
        };
        let (stop, shutdown) = watch::channel(false);
        let worker = Worker::new(pool, ())
            .concurrency(1)
            .lease(lease)
            .poll_interval(Duration::from_millis(20))
            .handle(kind, handler);
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

    /// Kills the worker mid-job: the task is aborted, nothing after it runs.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
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
    enqueue_n(&db.pool().await, "test.long", 1).await;
    // Leases of 300 ms; the job takes 2 s, more than six leases: only the heartbeat (every
    // 100 ms) keeps it from the seven other tasks polling for work.
    let ran = two_workers_until_empty(
        &db,
        "test.long",
        Duration::from_millis(300),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(ran.len(), 1, "one run, never a second");
}

#[tokio::test]
async fn after_a_takeover_the_first_worker_can_neither_finish_nor_fail_the_job() {
    init();
    let db = TestDatabase::new().await;
    let pool = db.pool().await;
    for outcome in [(|| Ok(())) as fn() -> Result<(), JobError>, || {
        Err(JobError::Permanent(anyhow::anyhow!(
            "the first worker gives up"
        )))
    }] {
        enqueue_n(&pool, "test.fenced", 1).await;
        // Worker A holds a long lease (no heartbeat during the test) and waits to be released.
        // One task each, so that the takeover can only be B's.
        let lease = Duration::from_secs(60);
        let a = GatedWorker::start(
            db.pool().await,
            "test.fenced",
            lease,
            Arc::default(),
            outcome,
        );
        a.started(1, "A to start").await;
        // A's lease lapses (as if its heartbeats stopped reaching the database); B takes over.
        sqlx::query("UPDATE job SET locked_until = now() - interval '1 second'")
            .execute(&pool)
            .await
            .unwrap();
        let b = GatedWorker::start(
            db.pool().await,
            "test.fenced",
            lease,
            Arc::default(),
            || Ok(()),
        );
        b.started(1, "B to take over").await;

        // A now finishes (or fails): fenced by its attempt number, it changes nothing.
        a.release_and_stop().await;
        assert_eq!(
            job_state(&pool).await,
            Some(("running".to_owned(), 2, None)),
            "B's claim stands"
        );
        b.release_and_stop().await;
        assert_eq!(job_state(&pool).await, None, "B finished it");
    }
}

#[tokio::test]
async fn a_job_that_kills_its_worker_every_time_ends_dead_after_its_attempts() {
    let app = spawn_app().await;
    let pool = &app.platform.pool;
    let mut tx = pool.begin().await.unwrap();
    let id = jobs::enqueue(
        &mut tx,
        NewJob::new("test.fatal", json!({})).max_attempts(2),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let lease = Duration::from_millis(200);
    // Each attempt takes its worker down mid-job.
    for attempt in 1..=2 {
        let w = GatedWorker::start(
            pool.clone(),
            "test.fatal",
            lease,
            started.clone(),
            || Ok(()),
        );
        w.started(attempt, "the attempt to start").await;
        w.kill().await;
    }
    // A third worker finds the lapsed lease of a job with no attempts left: dead, not run.
    let w = GatedWorker::start(
        pool.clone(),
        "test.fatal",
        lease,
        started.clone(),
        || Ok(()),
    );
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
    let id = jobs::enqueue(
        &mut tx,
        NewJob::new("test.fails", json!({})).max_attempts(2),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();

    let fail_once = |pool: sqlx::PgPool| async move {
        let (stop, shutdown) = watch::channel(false);
        let w = Worker::new(pool.clone(), ())
            .poll_interval(Duration::from_millis(50))
            .handle(
                "test.fails",
                jobs::handler(|_: (), _: Job| async {
                    Err(JobError::Retry(anyhow::anyhow!(
                        "upstream said no to alice@example.com from 192.0.2.1"
                    )))
                }),
            );
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
    assert!(stdout(&table).contains("test.fails"), "{}", stdout(&table));

    let out = admin(&vars, &["jobs", "retry", &id.to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["requeued"],
        1
    );
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM job WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("queued", 0));

    let usage = admin(&vars, &["jobs", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn an_operator_notice_arrives_over_smtp_with_a_stable_message_id() {
    let app = spawn_app().await;
    let mut tx = app.platform.pool.begin().await.unwrap();
    let id = jobs::enqueue(
        &mut tx,
        core::operator_notice(
            "Request due in 3 days",
            vec!["Request 7 is due on 2026-12-01.".into()],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();

    let mail = app.smtp.wait_for(1, Duration::from_secs(10)).await;
    let m = &mail[0];
    assert_eq!(m.to, vec!["<privacy@pexper.com>"]);
    assert_eq!(
        m.header("Subject").unwrap(),
        "[Pexper] Request due in 3 days"
    );
    assert_eq!(
        m.header("Message-ID").unwrap(),
        format!("<{id}@pexper.com>")
    );
    assert!(m.data.contains("multipart/alternative"));
    assert!(m.data.contains("Request 7 is due on 2026-12-01."));
    eventually(Duration::from_secs(5), "the job to be deleted", || async {
        (job_count(&app.platform.pool).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn smtp_rejections_are_classified_permanent_or_transient() {
    let app = spawn_app_with(AppOptions {
        vars: vec![("PEXPER_PRIVACY_EMAIL", "ops@example.net".into())],
        ..AppOptions::default()
    })
    .await;
    app.smtp.reject_transiently(Some("ops@"));
    let mut tx = app.platform.pool.begin().await.unwrap();
    let id = jobs::enqueue(&mut tx, core::operator_notice("t", vec![]))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let pool = app.platform.pool.clone();
    let (status, error): (String, String) =
        eventually(Duration::from_secs(10), "a transient failure", || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, Option<String>)>(
                    "SELECT status, last_error FROM job WHERE id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()
                .and_then(|(s, e)| e.map(|e| (s, e)))
            }
        })
        .await;
    assert_eq!(status, "queued", "451 is retried: {error}");
    assert!(!error.contains("ops@example.net"), "{error}");

    app.smtp.reject_transiently(None);
    app.smtp.reject_permanently("ops@");
    sqlx::query("UPDATE job SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let status: String = eventually(Duration::from_secs(10), "a permanent failure", || {
        let pool = pool.clone();
        async move {
            let s: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()?;
            (s == "dead").then_some(s)
        }
    })
    .await;
    assert_eq!(status, "dead", "550 is not retried");
    assert!(app.smtp.received().is_empty());
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_job_in_hand() {
    struct Slow;
    impl Service for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn jobs(&self) -> Vec<(&'static str, Handler<Platform>)> {
            vec![(
                "test.slow_finish",
                jobs::handler(|p: Platform, _: Job| async move {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    sqlx::query("CREATE TABLE slow_job_finished (x int)")
                        .execute(&p.pool)
                        .await?;
                    Ok(())
                }),
            )]
        }
    }
    let mut options = AppOptions::default();
    options.services.push(Arc::new(Slow));
    let mut app = spawn_app_with(options).await;
    let pool = app.platform.pool.clone();
    enqueue_n(&pool, "test.slow_finish", 1).await;
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
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    init();
    let db = TestDatabase::empty().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = db.pool().await;
        tasks.push(tokio::spawn(async move {
            pexper_platform::db::migrate(&pool).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    pexper_platform::db::migrate(&db.pool().await)
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files);
}

#[tokio::test]
async fn key_rotation_rewraps_every_data_key_and_lookups_keep_working() {
    let app = spawn_app().await;
    let old = app.platform.config.master_key.clone().unwrap();
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let mut people = Vec::new();
    for i in 0..25 {
        let email = EmailAddress::parse(&format!("person{i}@example.com")).unwrap();
        let id = person::find_or_create(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap();
        people.push((id, email));
    }
    let new = MasterKeys::generate_encoded();
    let both = format!("2:{new},1:{}", secrecy::ExposeSecret::expose_secret(&old));
    let mut vars = app.cli_vars();
    vars.retain(|(k, _)| k != "PEXPER_MASTER_KEY");
    vars.push(("PEXPER_MASTER_KEY".into(), both));

    let status = admin(&vars, &["keys", "status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["current_version"], 2);
    assert_eq!(status["data_keys_to_rotate"], 25);

    let out = admin(&vars, &["keys", "rotate", "--batch", "10", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["rewrapped"],
        25
    );
    assert!(
        stderr(&out).contains("re-wrapped 25/25"),
        "progress: {}",
        stderr(&out)
    );

    // With only the new master key, every address still opens and is still found.
    let only_new = Keyring::new(&MasterKeys::parse(&format!("2:{new}").into()).unwrap());
    for (id, email) in &people {
        assert_eq!(
            person::email(&mut conn, &only_new, *id)
                .await
                .unwrap()
                .as_ref(),
            Some(email)
        );
        assert_eq!(
            person::find(&mut conn, &only_new, email).await.unwrap(),
            Some(*id)
        );
    }
    let status = admin(&vars, &["keys", "status", "--json"]);
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["data_keys_to_rotate"], 0);
}

#[tokio::test]
async fn the_managed_postgres_is_the_embedded_default_and_missing_binaries_say_what_to_do() {
    let dir = tempdir::TempDir::new();
    let vars = vec![
        (
            "PEXPER_DATA_DIR".to_owned(),
            dir.path().display().to_string(),
        ),
        ("PEXPER_BIND".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let out = admin(&vars, &["migrate", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("postgres/ca.crt").exists());
    let hba = std::fs::read_to_string(dir.path().join("postgres/data/pg_hba.conf")).unwrap();
    assert!(
        hba.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("hostssl")),
        "{hba}"
    );
    // A second process reuses the running cluster.
    let again = admin(&vars, &["keys", "status", "--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let stop = admin(&vars, &["db", "stop", "--json"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&stop)).unwrap()["stopped"],
        true
    );

    let mut missing = vars.clone();
    missing.push(("PG_BIN".to_owned(), "/nonexistent".to_owned()));
    let out = admin(&missing, &["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("initdb, pg_ctl") && err.contains("PG_BIN") && err.contains("DATABASE_URL"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

#[tokio::test]
async fn production_refuses_to_start_without_a_master_key() {
    let out = std::process::Command::new(binary("pexper-server"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PEXPER_ENV", "production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("PEXPER_MASTER_KEY"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Everything a production deployment sets (values for tests only).
const PRODUCTION: &[(&str, &str)] = &[
    ("PEXPER_ENV", "production"),
    (
        "PEXPER_MASTER_KEY",
        "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGU=",
    ),
    (
        "PEXPER_LICENSE_KEY",
        "bGljZW5zZS1rZXktZm9yLXRlc3RzLW9ubHktMzJieXQ=",
    ),
    ("STRIPE_WEBHOOK_SECRET", "whsec_real"),
    ("PEXPER_SMTP_URL", "smtps://u:p@smtp.example.com"),
    ("PEXPER_PUBLIC_URL", "https://api.pexper.com"),
    ("PEXPER_CRASH_KEYS", "1:0f3c9a7e5b2d4c6a"),
    (
        "DATABASE_URL",
        "postgres://u:p@db.invalid/pexper?sslmode=verify-full",
    ),
];

/// Runs `pexper-server` with exactly these variables (and PATH), later ones winning.
fn server_with<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> std::process::Output {
    std::process::Command::new(binary("pexper-server"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars)
        .output()
        .unwrap()
}

#[tokio::test]
async fn production_refuses_to_start_on_each_unsafe_setting_with_one_line_and_exit_code_2() {
    for (name, unsafe_value, hint) in [
        (
            "PEXPER_SMTP_URL",
            "smtp://u:p@smtp.example.com",
            "SMTP without TLS",
        ),
        (
            "PEXPER_SMTP_URL",
            "smtp://u:p@smtp.example.com?tls=opportunistic",
            "SMTP without TLS",
        ),
        ("PEXPER_PUBLIC_URL", "http://api.pexper.com", "https://"),
        ("PEXPER_CRASH_KEYS", "1:pexper-dev", "pexper-dev"),
        (
            "DATABASE_URL",
            "postgres://u:p@db.invalid/pexper?sslmode=verify-full&sslmode=disable",
            "sslmode=verify-full",
        ),
        ("STRIPE_WEBHOOK_SECRET", "", "STRIPE_WEBHOOK_SECRET"),
    ] {
        let out = server_with(PRODUCTION.iter().copied().chain([(name, unsafe_value)]));
        assert_eq!(out.status.code(), Some(2), "{name}={unsafe_value}");
        let err = stderr(&out);
        assert!(err.contains(hint), "{name}={unsafe_value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    }
}

/// The `ENV name=value` pairs of deploy/Dockerfile's final stage.
fn dockerfile_env() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_container_runs_as_production_and_refuses_to_start_without_its_secrets() {
    let env = dockerfile_env();
    assert!(
        env.contains(&("PEXPER_ENV".into(), "production".into())),
        "{env:?}"
    );
    // Everything a deployment sets, but the Stripe secret: the public development secret
    // must not verify webhooks in a container.
    let out = server_with(
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(
            PRODUCTION
                .iter()
                .copied()
                .filter(|(k, _)| !matches!(*k, "PEXPER_ENV" | "STRIPE_WEBHOOK_SECRET")),
        ),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("STRIPE_WEBHOOK_SECRET"),
        "{}",
        stderr(&out)
    );

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let healthcheck = dockerfile
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .unwrap();
    assert!(
        healthcheck.contains(r#"CMD ["/usr/local/bin/pexper-server", "healthcheck"]"#),
        "the health check is the binary's own (no /dev/tcp in Debian's sh): {healthcheck}"
    );
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for dir in ["target/", ".pexper/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == dir),
            "{dir} stays out of the build context"
        );
    }
}

#[tokio::test]
async fn the_healthcheck_command_follows_readyz() {
    let server = ServerProcess::start("info").await;
    let check = |vars: &std::collections::HashMap<String, String>| {
        std::process::Command::new(binary("pexper-server"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars)
            .arg("healthcheck")
            .output()
            .unwrap()
    };
    let vars = server.vars.clone();
    let up = check(&vars);
    assert!(up.status.success(), "{}", stderr(&up));
    server.stop().await;
    let down = check(&vars);
    assert_eq!(down.status.code(), Some(1));
    assert_eq!(stderr(&down).trim().lines().count(), 1, "{}", stderr(&down));
}

#[tokio::test]
async fn the_server_binary_serves_and_never_logs_its_secrets() {
    let server = ServerProcess::start("trace").await;
    let vars = server.vars.clone();
    let key = vars["PEXPER_MASTER_KEY"].clone();
    let res = reqwest::get(format!("{}/readyz?token=secret-token-value", server.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let log = server.stop().await;
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("/readyz"), "the route template is logged");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file has no colour codes: {log:?}"
    );
    for secret in [
        key.as_str(),
        "secret-token-value",
        secrecy::ExposeSecret::expose_secret(
            &pexper_platform::Config::from_vars(vars.clone())
                .unwrap()
                .database_url
                .unwrap(),
        )
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn services_picks_which_routes_a_process_serves() {
    assert!(pexper_server::select_services(Some("waitlist,nope")).is_err());
    let only_platform = pexper_server::select_services(Some("platform")).unwrap();
    assert_eq!(
        only_platform.iter().map(|s| s.name()).collect::<Vec<_>>(),
        vec!["platform"]
    );
    let app = spawn_app_with(AppOptions {
        services: only_platform,
        ..AppOptions::default()
    })
    .await;
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // The privacy registry still reaches every service's data, whatever this process serves.
    assert_eq!(
        app.platform.personal_data.sections(),
        vec![
            "email",
            "waitlist",
            "payments",
            "privacy_requests",
            "analytics"
        ]
    );
    let waitlist = spawn_app().await;
    let res = waitlist
        .client
        .post(waitlist.url("/v1/waitlist"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_is_created_once_however_many_ask_at_the_same_moment() {
    let app = spawn_app().await;
    let email = EmailAddress::parse("race@example.com").unwrap();
    // Eight connections (of the pool's ten) look the address up at the same moment, find
    // nothing, and insert.
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (platform, email, barrier) = (app.platform.clone(), email.clone(), barrier.clone());
        tasks.spawn(async move {
            let mut conn = platform.pool.acquire().await.unwrap();
            barrier.wait().await;
            person::find_or_create(&mut conn, &platform.keyring, &email).await
        });
    }
    let ids: HashSet<_> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("no insert fails on a unique violation"))
        .collect();
    assert_eq!(ids.len(), 1, "one person");
    assert_eq!(app.count("person").await, 1);
}

#[tokio::test]
async fn while_the_database_is_down_requests_answer_503_at_once_and_the_server_recovers_by_itself()
{
    use pexper_platform::db::managed::{Durability, ManagedPostgres};
    init();
    // A cluster of this test's own: the shared one serves every other test.
    let dir = tempdir::TempDir::new();
    let root = dir.path().join("postgres");
    let start = {
        let root = root.clone();
        move || ManagedPostgres::start_or_reuse(&root, None, Durability::Throwaway).unwrap()
    };
    let cluster = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    pexper_platform::db::ensure_database(&cluster, "pexper")
        .await
        .unwrap();
    let url = secrecy::ExposeSecret::expose_secret(&cluster.url("pexper")).to_owned();
    let app = spawn_app_with(AppOptions {
        vars: vec![("DATABASE_URL", url)],
        ..AppOptions::default()
    })
    .await;
    let signup = |email: &'static str| {
        app.client
            .post(app.url("/v1/waitlist"))
            .json(&json!({ "email": email }))
            .send()
    };
    assert_eq!(signup("before@example.com").await.unwrap().status(), 202);

    let stop_root = root.clone();
    tokio::task::spawn_blocking(move || ManagedPostgres::stop(&stop_root, None).unwrap())
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    let res = signup("during@example.com").await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "answered in {waited:?}"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    // Back, on the port it had: the server reconnects by itself.
    let again = tokio::task::spawn_blocking(start).await.unwrap();
    assert_eq!(again.port(), cluster.port(), "the cluster keeps its port");
    eventually(Duration::from_secs(15), "signups to work again", || async {
        let res = signup("after@example.com").await.ok()?;
        (res.status() == 202).then_some(())
    })
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        app.count("person").await,
        2,
        "before and after; the refused one is not kept"
    );
    tokio::task::spawn_blocking(move || ManagedPostgres::stop(&root, None).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn mail_waits_out_a_ten_minute_relay_outage_and_goes_out_once() {
    let app = spawn_app().await;
    // The relay answers 451 to every recipient: down, as far as we can tell.
    app.smtp.reject_transiently(Some("@"));
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "patient@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // Live through the outage at speed: after each failed attempt, add up the backoff the job
    // asked for, then make it due at once, until ten minutes' worth of waiting has passed.
    let (mut waited, mut seen) = (0.0, 0);
    while waited < 600.0 {
        let (attempts, status, backoff_s): (i32, String, f64) = eventually(
            Duration::from_secs(10),
            "the next failed attempt",
            || async {
                let row: (i32, String, f64) = sqlx::query_as(
                    "SELECT attempts, status, extract(epoch FROM run_at - updated_at)::float8
                     FROM job WHERE kind = 'waitlist.signup_mail'",
                )
                .fetch_one(&app.platform.pool)
                .await
                .unwrap();
                (row.0 > seen && row.1 != "running").then_some(row)
            },
        )
        .await;
        assert_eq!(
            status, "queued",
            "after attempt {attempts} and {waited:.0} s: waiting, not dead"
        );
        waited += backoff_s;
        seen = attempts;
        sqlx::query("UPDATE job SET run_at = now() WHERE kind = 'waitlist.signup_mail'")
            .execute(&app.platform.pool)
            .await
            .unwrap();
    }
    // What waits, and why, is visible to the operator.
    let out = admin(&app.cli_vars(), &["jobs", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let waiting = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "waitlist.signup_mail")
        .unwrap();
    assert!(
        waiting["last_error"].as_str().unwrap().contains("451"),
        "{waiting}"
    );
    assert!(
        !waiting["last_error"].as_str().unwrap().contains("patient"),
        "{waiting}"
    );

    // The relay is back: the email goes out, once.
    app.smtp.reject_transiently(None);
    sqlx::query("UPDATE job SET run_at = now() WHERE kind = 'waitlist.signup_mail'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    app.smtp.wait_for(1, Duration::from_secs(10)).await;
    app.queue_drained().await;
    let to_them = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.to == vec!["<patient@example.com>"])
        .count();
    assert_eq!(to_them, 1);
}
