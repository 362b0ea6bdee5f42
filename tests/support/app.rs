//! `spawn_app`: the whole backend in the test process, on port 0, over its own test database
//! and SMTP server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pexper_platform::crypto::MasterKeys;
use pexper_platform::http::HttpOptions;
use pexper_platform::{Config, Platform, Service};
use pexper_server::WorkerOptions;
use secrecy::ExposeSecret;
use tokio::sync::watch;

use crate::{SmtpServer, TestDatabase, eventually, init, tempdir};

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
        // Four job slots, not sixteen: in a parallel run of debug builds, sixteen slots per
        // server polling and connecting at once were most of the background load, and a
        // server's first requests waited past the pool's timeout (503). The benchmarks'
        // real runs use the production default (`bench::production_vars`).
        ("PEXPER_JOB_CONCURRENCY".to_owned(), "4".to_owned()),
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
        self.queue_drained_within(Duration::from_secs(10)).await
    }

    /// The same, for at most `bound`.
    pub async fn queue_drained_within(&self, bound: Duration) {
        eventually(bound, "the job queue to drain", || async {
            (self.count("job").await == 0).then_some(())
        })
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
