//! The test harness: one throwaway TLS Postgres cluster per test run (started through the same
//! code as the embedded default), a fresh database per test cloned from a migrated template,
//! a real SMTP server on loopback, and `spawn_app` serving the whole backend on port 0.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_debug_implementations)]
// Stripe's objects are big JSON literals (support/stripe.rs).
#![recursion_limit = "256"]

pub mod browser;
pub mod canary;
pub mod smtp;
pub mod stripe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pexper_platform::crypto::MasterKeys;
use pexper_platform::db::managed::{Durability, ManagedPostgres};
use pexper_platform::http::HttpOptions;
use pexper_platform::{Config, Platform, Service};
use pexper_server::WorkerOptions;
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

pub use smtp::SmtpServer;

/// Installs ring as the rustls provider once per test process.
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Logs go to the test's captured output, shown when it fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Where this checkout's test cluster lives: under the system temp dir, which the `postgres`
/// user can reach even when the checkout sits under a 0700 home directory.
fn cluster_root() -> PathBuf {
    let digest = pexper_platform::crypto::sha256(env!("CARGO_MANIFEST_DIR").as_bytes());
    std::env::temp_dir().join(format!(
        "pexper-test-cluster-{}",
        pexper_platform::crypto::hex(&digest[..6])
    ))
}

/// The run's cluster: started on first use by whichever test binary comes first, reused by
/// the others (a file lock inside `start_or_reuse` serialises them).
pub fn cluster() -> &'static ManagedPostgres {
    static CLUSTER: OnceLock<ManagedPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        init();
        ManagedPostgres::start_or_reuse(&cluster_root(), None, Durability::Throwaway)
            .expect("the test cluster starts (are initdb and pg_ctl on PATH?)")
    })
}

/// The migrations' fingerprint: a template is rebuilt whenever a migration changes.
fn migrations_digest() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend(f.file_name().unwrap().as_encoded_bytes());
        all.extend(std::fs::read(&f).unwrap());
    }
    pexper_platform::crypto::hex(&pexper_platform::crypto::sha256(&all)[..6])
}

async fn admin_connection() -> PgConnection {
    PgConnection::connect_with(&cluster().connect_options("postgres"))
        .await
        .expect("connect to the test cluster")
}

/// The migrated template every test database is cloned from, built once per migration set.
async fn template() -> String {
    let name = format!("pexper_template_{}", migrations_digest());
    let mut conn = admin_connection().await;
    // Serialise builders across test processes with an advisory lock.
    sqlx::query("SELECT pg_advisory_lock(7131)")
        .execute(&mut conn)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    sweep_orphans(&mut conn).await;
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {building}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let pool = PgPool::connect_with(cluster().connect_options(&building))
            .await
            .unwrap();
        pexper_platform::db::migrate(&pool).await.unwrap();
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {name}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(7131)")
        .execute(&mut conn)
        .await
        .unwrap();
    name
}

/// A fresh database for one test, cloned from the migrated template, dropped on drop.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub async fn new() -> Self {
        Self::create(Some(&template().await)).await
    }

    /// An empty database, for testing migrations themselves.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let name = format!("test_{}_{}", std::process::id(), Uuid::new_v4().simple());
        let mut conn = admin_connection().await;
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        Self { name }
    }

    /// The database as an external `DATABASE_URL` (verify-full against the cluster's CA).
    pub fn url(&self) -> String {
        cluster().url(&self.name).expose_secret().to_owned()
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect_with(cluster().connect_options(&self.name))
            .await
            .unwrap()
    }

    /// `pg_dump` of the whole database.
    pub fn dump(&self) -> Dump {
        let out = std::process::Command::new("pg_dump")
            .arg("--dbname")
            .arg(self.url())
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Dump::new(String::from_utf8(out.stdout).unwrap())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which must not block: the app's tasks (and their
        // connections) live on it. A detached thread drops the database; if the process exits
        // first, `sweep_orphans` drops it in a later run.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = admin_connection().await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            });
        });
    }
}

/// A `pg_dump`, to search for what must not be there. `pg_dump` writes `bytea` as `\x…` hex,
/// so a search of the text alone would pass if a sealed column held an address in clear:
/// `contains` also searches the decoded bytes of every `bytea` value. The text is at hand
/// through `Deref` for searches of everything else.
pub struct Dump {
    text: String,
    bytea: Vec<Vec<u8>>,
}

impl Dump {
    pub fn new(text: String) -> Self {
        static HEX: std::sync::LazyLock<regex::Regex> =
            std::sync::LazyLock::new(|| regex::Regex::new(r"\\x((?:[0-9a-f]{2})+)").unwrap());
        let bytea = HEX
            .captures_iter(&text)
            .map(|c| {
                let hex = c[1].as_bytes();
                hex.chunks(2)
                    .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
                    .collect()
            })
            .collect();
        Self { text, bytea }
    }

    /// Whether `needle` is in the text or in any decoded `bytea` value.
    pub fn contains(&self, needle: &str) -> bool {
        self.text.contains(needle) || self.bytea_contains(needle)
    }

    /// Whether `needle` is in any decoded `bytea` value.
    pub fn bytea_contains(&self, needle: &str) -> bool {
        let needle = needle.as_bytes();
        self.bytea
            .iter()
            .any(|b| !needle.is_empty() && b.windows(needle.len()).any(|w| w == needle))
    }

    /// How many `bytea` values the dump holds (a dump of sealed data holds many).
    pub fn bytea_values(&self) -> usize {
        self.bytea.len()
    }
}

impl std::ops::Deref for Dump {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

/// Drops test databases left behind by test processes that no longer run.
async fn sweep_orphans(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name.split('_').nth(1).unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

/// Environment for a test app: the test database as an external TLS Postgres, a fresh master
/// key, the test SMTP server, a private data dir.
pub fn test_vars(db: &TestDatabase, smtp: &SmtpServer, data_dir: &Path) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        (
            "PEXPER_MASTER_KEY".to_owned(),
            MasterKeys::generate_encoded(),
        ),
        ("PEXPER_SMTP_URL".to_owned(), smtp.url()),
        ("PEXPER_DATA_DIR".to_owned(), data_dir.display().to_string()),
        (
            "PEXPER_ALLOWED_ORIGINS".to_owned(),
            "https://pexper.com".to_owned(),
        ),
    ])
}

/// A running backend on a random port.
pub struct TestApp {
    pub address: String,
    pub platform: Platform,
    pub db: TestDatabase,
    pub smtp: SmtpServer,
    pub client: reqwest::Client,
    pub data_dir: tempdir::TempDir,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Knobs for `spawn_app_with`.
pub struct AppOptions {
    pub services: Vec<Arc<dyn Service>>,
    pub http: HttpOptions,
    pub worker: WorkerOptions,
    pub vars: Vec<(&'static str, String)>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            services: pexper_server::all_services(),
            // Tests that are not about the rate limit must not trip it.
            http: HttpOptions {
                burst: 10_000,
                replenish: Duration::from_millis(1),
                ingest_burst: 10_000,
                ingest_replenish: Duration::from_millis(1),
                ..HttpOptions::default()
            },
            worker: WorkerOptions {
                poll_interval: Duration::from_millis(200),
                ..WorkerOptions::default()
            },
            vars: Vec::new(),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init();
    let db = TestDatabase::new().await;
    let smtp = SmtpServer::start().await;
    let data_dir = tempdir::TempDir::new();
    let mut vars = test_vars(&db, &smtp, data_dir.path());
    for (k, v) in options.vars {
        vars.insert(k.to_owned(), v);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    vars.insert("PEXPER_PUBLIC_URL".to_owned(), address.clone());
    let config = Config::from_vars(vars).unwrap();
    let platform = pexper_server::platform(config, None).await.unwrap();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(pexper_server::launch(
        listener,
        platform.clone(),
        options.services,
        options.http,
        options.worker,
        shutdown,
    ));
    TestApp {
        address,
        platform,
        db,
        smtp,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        data_dir,
        stop,
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Graceful shutdown: returns once in-flight requests and jobs are done.
    pub async fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// One number from the database, e.g. `SELECT count(*) FROM job`.
    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.platform.pool)
            .await
            .unwrap()
    }

    /// How many rows `table` has.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {table}")).await
    }

    /// Waits until every queued job has run (a finished job's row is deleted).
    pub async fn queue_drained(&self) {
        eventually(
            Duration::from_secs(10),
            "the job queue to drain",
            || async { (self.count("job").await == 0).then_some(()) },
        )
        .await;
    }

    /// Environment for running the CLI against this app's database and keys.
    pub fn cli_vars(&self) -> Vec<(String, String)> {
        let c = &self.platform.config;
        vec![
            ("DATABASE_URL".into(), self.db.url()),
            (
                "PEXPER_MASTER_KEY".into(),
                c.master_key.as_ref().unwrap().expose_secret().to_owned(),
            ),
            ("PEXPER_DATA_DIR".into(), c.data_dir.display().to_string()),
            ("PEXPER_SMTP_URL".into(), self.smtp.url()),
        ]
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The path of `pexper-server` or `pexper-admin`, as built for this test run (see the
/// `[[bin]]` entries of tests/Cargo.toml).
///
/// Cargo builds a package's binaries before its integration tests and puts them one level
/// above the test executable (`target/debug/deps/platform-…` → `target/debug/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(format!("{name}-under-test"));
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// Runs `pexper-admin` with exactly these variables (plus PATH).
pub fn admin(vars: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(binary("pexper-admin"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(args);
    cmd.output().expect("pexper-admin runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The numeric arguments after `--` of a `cargo bench` run, each defaulting to `defaults`.
pub fn bench_args<const N: usize>(defaults: [u64; N]) -> [u64; N] {
    let given: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    std::array::from_fn(|i| given.get(i).copied().unwrap_or(defaults[i]))
}

/// Prints a benchmark's goal beside its figure and says whether it was met; the bench exits
/// non-zero (`bench_exit`) if any was missed.
pub fn goal(what: &str, figure: String, met: bool) -> bool {
    println!(
        "goal: {what}: {figure} — {}",
        if met { "met" } else { "MISSED" }
    );
    met
}

/// Ends a benchmark: exit code 1 when a goal was missed.
pub fn bench_exit(all_met: bool) -> ! {
    std::process::exit(if all_met { 0 } else { 1 })
}

/// Runs a benchmark on a multi-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod tempdir {
    //! A temporary directory removed on drop, under the system temp dir (reachable by the
    //! `postgres` user when a test starts a managed cluster in it).
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("pexper-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Default for TempDir {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The real `pexper-server` binary as a child process, with its own test database and SMTP
/// server, logging to a file (not a pipe: nobody reads a pipe until exit, and a full one would
/// block the server's logging, and so the server).
pub struct ServerProcess {
    pub base: String,
    pub vars: HashMap<String, String>,
    pub smtp: SmtpServer,
    child: tokio::process::Child,
    dir: tempdir::TempDir,
    db: TestDatabase,
}

impl ServerProcess {
    /// Starts the server with `RUST_LOG=log_level` and waits until `/readyz` answers 200.
    pub async fn start(log_level: &str) -> Self {
        Self::start_with(log_level, &[]).await
    }

    /// The same, with `extra` variables on top of the test defaults.
    pub async fn start_with(log_level: &str, extra: &[(&str, &str)]) -> Self {
        init();
        let db = TestDatabase::new().await;
        let smtp = SmtpServer::start().await;
        let dir = tempdir::TempDir::new();
        let mut vars = test_vars(&db, &smtp, dir.path());
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        // A free port is only free until someone takes it: a parallel test may bind the one
        // we picked before our server does. So the server must say it listens on that port
        // (its own log line, whatever the level asked) before we believe an answer there,
        // and if it could not bind, we pick another.
        let log = dir.path().join("server.log");
        let mut attempts = 0;
        let (base, child) = loop {
            attempts += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let base = format!("http://127.0.0.1:{port}");
            vars.insert("PEXPER_BIND".into(), format!("127.0.0.1:{port}"));
            vars.insert("PEXPER_PUBLIC_URL".into(), base.clone());
            let mut child = tokio::process::Command::new(binary("pexper-server"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(&vars)
                .env("RUST_LOG", format!("{log_level},pexper_server::cli=info"))
                .stderr(std::fs::File::create(&log).unwrap())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let listening = format!("listening address=127.0.0.1:{port}");
            let bound = eventually(
                Duration::from_secs(30),
                "the server to listen or exit",
                || {
                    let exited = child.try_wait().unwrap().is_some();
                    let said = std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&listening));
                    async move { (exited || said).then_some(said) }
                },
            )
            .await;
            if bound {
                break (base, child);
            }
            assert!(
                attempts < 5,
                "the server could not bind: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let client = reqwest::Client::new();
        let ready = format!("{base}/readyz");
        eventually(Duration::from_secs(30), "the server to be ready", || {
            let (client, url) = (client.clone(), ready.clone());
            async move {
                let res = client.get(&url).send().await.ok()?;
                (res.status() == 200).then_some(())
            }
        })
        .await;
        Self {
            base,
            vars,
            smtp,
            child,
            dir,
            db,
        }
    }

    /// The server's process id (to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// `pg_dump` of the server's database.
    pub fn dump(&self) -> Dump {
        self.db.dump()
    }

    /// Sends SIGTERM, asserts a graceful exit within 15 s, and returns everything it logged.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("SIGTERM stops the server")
            .unwrap();
        assert!(status.success(), "graceful exit");
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap()
    }
}
