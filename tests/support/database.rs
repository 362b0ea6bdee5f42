//! The run's throwaway TLS Postgres cluster (started through the same code as the embedded
//! default), a migrated template, a fresh database per test cloned from it, and `Dump`, a
//! `pg_dump` to search for what must not be there.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use pexper_platform::db::managed::{Durability, ManagedPostgres};
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{eventually, init};

/// This process's data directory: its cluster lives in `postgres/` under it, so that
/// `PEXPER_DATA_DIR=<it> pexper-admin db stop` stops the cluster. In memory (`/dev/shm`)
/// where the machine has it, else under the system temp dir; either the `postgres` user can
/// reach even when the checkout sits under a 0700 home directory.
///
/// Why memory: the cluster keeps nothing past the run (fsync is off), and every test creates
/// and drops a database of several hundred files. On this disk's ext4 that churn took a sixth
/// of the API tests' time, most of it the kernel looking for free inodes. The benchmarks'
/// durable clusters stay on disk (`TempDir`): their commits must reach it. Memory is used
/// only with room to spare (`ROOM`): the WAL alone may grow to `max_wal_size`, 1 GB, and a
/// container's `/dev/shm` is 64 MB.
///
/// The name has a random part as well as the process id: `/dev/shm` may be shared with
/// processes of another pid namespace.
fn data_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let name = format!(
            "pexper-test-{}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        );
        let shm = Path::new("/dev/shm");
        let in_memory = shm.join(&name);
        let room = free_bytes(shm).is_some_and(|free| free >= ROOM)
            && available_memory().is_some_and(|free| free >= ROOM);
        if room && std::fs::create_dir_all(&in_memory).is_ok() {
            in_memory
        } else {
            std::env::temp_dir().join(name)
        }
    })
}

/// What the cluster in memory needs free, both in `/dev/shm` and in the machine's memory.
const ROOM: u64 = 2 << 30;

/// Room left on `dir`'s file system, as `df` tells it.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().nth(1)?.trim().parse().ok()
}

/// The machine's available memory (`MemAvailable` in `/proc/meminfo`): a tmpfs holds its files
/// in memory, whatever its size limit says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's cluster: started on first use, stopped and removed when the process exits,
/// however it exits (`stop_and_remove_after_exit`), so a test run leaves no Postgres behind.
/// Each test process has its own: none can stop one another's.
pub fn cluster() -> &'static ManagedPostgres {
    static CLUSTER: OnceLock<ManagedPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        init();
        // The watchdog first: a start that fails halfway, or a process killed during it, still
        // leaves nothing behind.
        stop_and_remove_after_exit();
        ManagedPostgres::start_or_reuse(&data_dir().join("postgres"), None, Durability::Throwaway)
            .expect("the test cluster starts (are initdb and pg_ctl on PATH?)")
    })
}

/// A test binary cannot run code after its last test, so a watchdog process does: it waits
/// for this process to end (even by SIGKILL), stops the cluster with `pexper-admin db stop`
/// and removes its directory. `setsid`: a Ctrl-C to the test run must not take the watchdog
/// down before its work is done.
#[expect(
    clippy::zombie_processes,
    reason = "the watchdog outlives this process by design; it is never waited for"
)]
fn stop_and_remove_after_exit() {
    let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
"$2" db stop >/dev/null 2>&1
rm -rf "$3""#;
    let dir = data_dir();
    std::process::Command::new("setsid")
        .args(["sh", "-c", script, "pexper-test-watchdog"])
        .arg(std::process::id().to_string())
        .arg(crate::binary("pexper-admin"))
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PEXPER_DATA_DIR", dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the cluster's watchdog starts (setsid and sh on PATH)");
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

/// The migrated template every test database is cloned from, built once per cluster.
async fn template() -> String {
    let name = format!("pexper_template_{}", migrations_digest());
    let mut conn = admin_connection().await;
    // Tests start in parallel: one builds the template, the others wait on this lock.
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
        // FILE_COPY: Postgres 15's default (WAL_LOG) writes every page of the template
        // through the WAL, about 9 MB for each test's database; copying the files, on a
        // cluster without fsync, takes a third of the time.
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t} STRATEGY = FILE_COPY"),
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
        // first, the cluster goes with it.
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
    /// The first line of the dump that holds `needle`, to say where it was found.
    pub fn line_with(&self, needle: &str) -> Option<&str> {
        self.text.lines().find(|l| l.contains(needle))
    }

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

/// Holds `LOCK TABLE … IN SHARE MODE` on `table` until dropped (rolled back): writers to it
/// wait, so a request or a job that writes there stops at that statement, mid-transaction.
pub struct TableLock(Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl TableLock {
    pub async fn take(pool: &sqlx::PgPool, table: &str) -> Self {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {table} IN SHARE MODE"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        Self(Some(tx))
    }

    /// Waits until some other session is waiting for this lock.
    pub async fn until_someone_waits(&self, pool: &sqlx::PgPool) {
        eventually(
            Duration::from_secs(20),
            "a writer waiting for the lock",
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                )
                .fetch_one(pool)
                .await
                .unwrap();
                (waiting > 0).then_some(())
            },
        )
        .await;
    }

    pub async fn release(mut self) {
        self.0.take().unwrap().rollback().await.unwrap();
    }

    /// Ends the sessions waiting for this lock, then releases it: what a killed client's
    /// statement that is not in a transaction needs. Postgres notices a dead client only at
    /// its next read, and a statement sent in one pipeline with its `Sync` (a prepared one)
    /// would still run and commit once the lock is free.
    pub async fn release_ending_the_waiters(self, pool: &sqlx::PgPool) {
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(
            !ended.is_empty() && ended.iter().all(|&e| e),
            "the waiters ended"
        );
        self.release().await;
    }
}
