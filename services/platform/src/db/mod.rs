//! Connecting to Postgres (managed or external, always able to do TLS) and migrating it.

pub mod backup;
pub mod managed;
pub mod sealed_file;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::Config;
use managed::{Durability, ManagedPostgres};

/// The database the managed cluster keeps the application's tables in.
pub const MANAGED_DATABASE: &str = "pexper";

/// Ten connections serve a 2-core box: Postgres itself is CPU-bound well before that.
const POOL_SIZE: u32 = 10;
/// A dead database must fail requests fast (503 with `Retry-After`, and `/readyz` 503), not
/// hang for 30 s: a healthy pool hands out a connection in milliseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a starting process tries for its first connection, in tries of `ACQUIRE_TIMEOUT`.
/// Within a try sqlx retries a refused connection and a database that says it is starting or
/// full; a try whose handshake ran past it on a busy machine starts again. A wrong password, a
/// certificate that does not verify or a database that does not exist fail at once; a wrong
/// port fails after this long.
const FIRST_CONNECTION_WITHIN: Duration = Duration::from_secs(10);

/// Connection options from the configuration: `DATABASE_URL` as given (its `sslmode` and
/// `sslrootcert` are honoured), or the managed cluster, started if needed.
pub async fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let options = match &config.database_url {
        Some(url) => PgConnectOptions::from_str(url.expose_secret())
            .context("DATABASE_URL is not a valid postgres:// URL")?,
        None => {
            let managed = start_managed(config).await?;
            ensure_database(&managed, MANAGED_DATABASE).await?;
            managed.connect_options(MANAGED_DATABASE)
        }
    };
    // Statements are logged at debug level only, and never with their bound values.
    Ok(options
        .application_name("pexper")
        .log_statements(tracing::log::LevelFilter::Debug))
}

/// Starts (or reuses) the managed cluster of this configuration.
pub async fn start_managed(config: &Config) -> anyhow::Result<ManagedPostgres> {
    let root = config.data_dir.join("postgres");
    let pg_bin = config.pg_bin.clone();
    tokio::task::spawn_blocking(move || {
        ManagedPostgres::start_or_reuse(&root, pg_bin.as_deref(), Durability::Durable)
    })
    .await
    .context("the managed Postgres start task failed")?
}

/// Creates `database` in a managed cluster if it does not exist yet.
pub async fn ensure_database(managed: &ManagedPostgres, database: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect_with(&managed.connect_options("postgres"))
        .await
        .context("failed to connect to the managed Postgres")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE: that is fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("failed to create the database"),
        }
    }
    Ok(())
}

/// Analytics and crash ingestion have connections of their own, at most this many: a flood
/// of collection requests queues for these and never takes the ones that signups, webhooks
/// and privacy requests need.
const INGEST_POOL_SIZE: u32 = 3;
/// A collection request waits this long for one of them, then is asked to come back (429).
const INGEST_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection back from use within this long is handed out as it is; an older one is
/// pinged first. sqlx pings at every acquire by default: a round trip more for every request,
/// where the connection was working a moment ago. After a Postgres restart, a request on a
/// connection in use that very moment gets a 503 (an I/O error), and the pool drops it.
const TRUST_RECENT_USE: Duration = Duration::from_secs(1);

/// Pool options every pool shares: ping only connections idle for a while.
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > TRUST_RECENT_USE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The ingestion pool beside `main`, to the same database; `fill` opens its connections.
pub fn ingest_pool(main: &PgPool) -> PgPool {
    pool_options()
        .max_connections(INGEST_POOL_SIZE)
        .min_connections(INGEST_POOL_SIZE)
        .acquire_timeout(INGEST_ACQUIRE_TIMEOUT)
        .connect_lazy_with((*main.connect_options()).clone())
}

/// Every connection one server process may hold at once: its request pool, its collection
/// pool, its job pool (`job_concurrency` jobs at once) and the job worker's `LISTEN`
/// connection. What a deployment sizes the database's `max_connections` by; an admin command
/// holds at most `ADMIN_CONNECTIONS`.
pub fn connections_per_process(job_concurrency: usize) -> u32 {
    POOL_SIZE + INGEST_POOL_SIZE + job_pool_size(job_concurrency) + 1
}

/// Connections an admin command may hold at once (its one request-sized pool).
pub const ADMIN_CONNECTIONS: u32 = POOL_SIZE;

fn job_pool_size(concurrency: usize) -> u32 {
    concurrency as u32 + 2
}

/// The job worker's pool beside `main`, to the same database: a connection for each job in
/// hand and two for the worker's own claims, heartbeats and finishes. A job waits for one
/// as long as it takes; a request never waits for a job.
pub fn job_pool(main: &PgPool, concurrency: usize) -> PgPool {
    pool_options()
        .max_connections(job_pool_size(concurrency))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(60))
        .connect_lazy_with((*main.connect_options()).clone())
}

/// The request pool: one connection opened now (a wrong configuration fails here, within
/// `FIRST_CONNECTION_WITHIN`); `fill` opens the rest where a server needs them, and sqlx keeps
/// them open (`min_connections`): it reopens one in the background when it retires it.
pub async fn pool(options: PgConnectOptions) -> anyhow::Result<PgPool> {
    let pool = pool_options()
        .max_connections(POOL_SIZE)
        .min_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options);
    let started = std::time::Instant::now();
    loop {
        match pool.acquire().await {
            Ok(connection) => {
                drop(connection);
                return Ok(pool);
            }
            // Another try only if it ends within the bound.
            Err(sqlx::Error::PoolTimedOut)
                if started.elapsed() + ACQUIRE_TIMEOUT <= FIRST_CONNECTION_WITHIN =>
            {
                tracing::warn!("no connection to Postgres yet; trying again");
            }
            Err(e @ sqlx::Error::PoolTimedOut) => {
                return Err(e).context(format!(
                    "no connection to Postgres within {} s: is it running, at this address \
                     and port, with connections to spare?",
                    FIRST_CONNECTION_WITHIN.as_secs()
                ));
            }
            Err(e) => return Err(e).context("failed to connect to Postgres"),
        }
    }
}

/// Opens every connection `pool` may have, all at once, before the server takes requests.
///
/// sqlx opens a connection when an acquire finds none idle, and the acquire then waits for
/// that connection, within its timeout, even if another is returned meanwhile. Under load the
/// TLS and SCRAM handshake takes longer than our 0.8 s (sqlx yields to the runtime every five
/// of SCRAM's 4096 rounds, and every yield waits behind the requests), so a request that had
/// to open one failed with 503 although the pool was not exhausted. Opened here, a request
/// only opens one to replace one that broke. Best effort: what cannot be opened now is
/// opened on first use, as before.
pub async fn fill(pool: &PgPool) {
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..pool.options().get_max_connections() {
        let pool = pool.clone();
        opening.spawn(async move { pool.acquire().await });
    }
    // Every connection stays checked out until all are open: a returned one would be handed
    // to the next acquire instead of a new one being opened.
    let opened = opening.join_all().await;
    let failed = opened.iter().filter(|c| c.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            failed,
            "some pooled connections could not be opened at start; they open on first use"
        );
    }
}

/// Applies the migrations in `migrations/`. sqlx holds a Postgres advisory lock while it
/// migrates, so two servers starting at once apply each migration exactly once.
///
/// A database that a newer version has migrated further is no error: in a rolling upgrade the
/// new replicas migrate first, and a replica of the previous version that restarts meanwhile
/// must still start (each migration keeps the previous version working; its comments say
/// how). A migration this binary knows whose text was changed still refuses.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("failed to apply database migrations")?;
    let newest_known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let newer: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE version > $1 ORDER BY version",
    )
    .bind(newest_known)
    .fetch_all(pool)
    .await
    .context("failed to read the applied migrations")?;
    if !newer.is_empty() {
        tracing::warn!(
            ?newer,
            "the database has migrations newer than this version's; running as the previous version of a rolling upgrade"
        );
    }
    Ok(())
}

/// The advisory lock a restore holds for its whole length (`backup::restore`) and a starting
/// server takes, shared, while it migrates: a server never starts on a database half
/// restored, and a restore never begins under a server that is starting.
pub const RESTORE_LOCK: i64 = 0x7065_7870_6572_0001; // "pexper" and 1

/// Connects as configured and migrates: what the server does at start
/// (`migrate_unless_restoring`).
pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<PgPool> {
    let pool = pool(connect_options(config).await?).await?;
    if let Err(e) = migrate_unless_restoring(&pool).await {
        pool.close().await;
        return Err(e);
    }
    Ok(pool)
}

/// Migrates, after any restore running has finished (`RESTORE_LOCK`), and refuses if one did
/// not finish (`backup::SET_ASIDE_SCHEMA` is still there): what a starting server and
/// `pexper-admin migrate` do.
pub async fn migrate_unless_restoring(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(RESTORE_LOCK)
        .execute(&mut *conn)
        .await
        .context("failed to wait for a restore to finish")?;
    let migrated = match backup::set_aside_exists(&mut conn).await {
        Ok(true) => Err(anyhow::anyhow!(
            "a restore of this database did not finish (the database before it is kept in the schema {}): run `pexper-admin db restore FILE` again, which puts it back first",
            backup::SET_ASIDE_SCHEMA
        )),
        Ok(false) => migrate(pool).await,
        Err(e) => Err(e),
    };
    sqlx::query("SELECT pg_advisory_unlock_shared($1)")
        .bind(RESTORE_LOCK)
        .execute(&mut *conn)
        .await
        .context("failed to let a restore begin")?;
    migrated
}
