//! Backups that respect erasure.
//!
//! `backup` is `pg_dump` (custom format) of the application's database, managed or external;
//! `restore` is `pg_restore` of one. A backup holds everyone who existed when it was taken —
//! their wrapped data keys included — so restoring it would bring back people erased since:
//! crypto-shredding destroys the key in the live database, not in the copies. So every erasure
//! is journalled (`person::journal_erasure`: a hash of the person's id and the time, nothing
//! else) in the erasure's own transaction, and a restore replays the journal: the live database's, read
//! before it is replaced, and any copies the operator exported with `pexper-admin db journal`
//! (for when the live database is lost with its journal). Everyone in it is erased again.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;

use crate::config::Config;
use crate::crypto::{Keyring, MasterKeys};
use crate::db::{self, managed, sealed_file};
use crate::personal_data::Registry;

/// One erasure, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct JournalEntry {
    /// `sha256('pexper/erased-person/' || person id)`, in hex.
    pub person_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub erased_at: OffsetDateTime,
}

pub async fn journal_entries(conn: &mut PgConnection) -> anyhow::Result<Vec<JournalEntry>> {
    sqlx::query_as(
        "SELECT encode(person_hash, 'hex') AS person_hash, erased_at FROM erasure_journal
         ORDER BY erased_at, person_hash",
    )
    .fetch_all(conn)
    .await
    .context("failed to read the erasure journal")
}

/// Writes a backup of the database to `file` (mode 0600; refused if it exists), sealed as it is
/// written under a key wrapped by the master key (`sealed_file`). Returns its size in bytes.
pub async fn backup(config: &Config, file: &Path, master: &MasterKeys) -> anyhow::Result<u64> {
    anyhow::ensure!(
        !file.exists(),
        "{} exists: choose a new name",
        file.display()
    );
    let target = Tool::connect(config).await?;
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    // Made new, never followed: a symbolic link (or any file) already at either name is
    // refused, not written through. pg_dump writes to this very file (its standard output),
    // never reopening it by name: nothing swapped in at that name meanwhile gets the dump.
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&partial)
        .with_context(|| {
            format!(
                "failed to create {} (is it left from an earlier backup?)",
                partial.display()
            )
        })?;
    let keyring = Arc::new(Keyring::new(master));
    let written = target
        .dump_sealed(&["--format=custom", "--no-owner"], keyring, out)
        .await
        .and_then(|()| {
            // A hard link, not a rename: it fails if the name was taken meanwhile.
            std::fs::hard_link(&partial, file)
                .with_context(|| format!("failed to write {}", file.display()))
        });
    std::fs::remove_file(&partial).ok();
    written?;
    Ok(std::fs::metadata(file)?.len())
}

/// What a backup file to restore is said to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Written by `backup`: checked whole, then opened.
    Sealed,
    /// A plain `pg_dump` (custom format), as backups were before they were sealed.
    Plain,
}

/// What a restore (or a replay of the journal) did.
#[derive(Debug, Serialize)]
pub struct Restored {
    /// Erasures known after it: the backup's own, the live journal and any exported copies.
    pub journal_entries: usize,
    /// People in the backup who had been erased since it was taken, erased again.
    pub erased_again: usize,
    /// Rows the services' `after_restore` statements changed (sessions ended, reset links
    /// voided); none for a replay alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_and_links_ended: Option<u64>,
    /// What the operator must know about the restored state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// Said by every restore.
const RESTORE_NOTE: &str = "every session was ended and every unused password-reset link \
    voided: the backup may predate a sign-out or a password change. Password changes made \
    since the backup are lost: those people sign in with the password they had then, or reset it.";

/// Replaces the database with the backup in `file`, migrates it, and erases again everyone in
/// the erasure journal (the live one, read first, and `exported` copies). Refused while any
/// other `pexper` process is connected: stop every server first. If `pg_restore` fails, the
/// database is left as it was.
pub async fn restore(
    config: &Config,
    file: &Path,
    form: Form,
    exported: Vec<JournalEntry>,
    master: &MasterKeys,
    registry: &Registry,
) -> anyhow::Result<Restored> {
    anyhow::ensure!(file.is_file(), "{} is not a backup file", file.display());
    // A sealed backup is checked whole before anything is touched: a changed or cut file is
    // refused here, not halfway through the restore. A plain one only when the operator said
    // so.
    let keyring = Arc::new(Keyring::new(master));
    let sealed = {
        let mut head = [0u8; sealed_file::MAGIC.len()];
        let n = std::fs::File::open(file)?.read(&mut head)?;
        sealed_file::is_sealed(&head[..n])
    };
    match (form, sealed) {
        (Form::Sealed, false) => bail!(
            "{} is not a sealed backup: if it is a plain pg_dump from before backups were \
             sealed, and you trust where it comes from, restore it with --unsealed",
            file.display()
        ),
        (Form::Plain, true) => bail!(
            "{} is a sealed backup: restore it without --unsealed",
            file.display()
        ),
        _ => {}
    }
    if sealed {
        let input = std::io::BufReader::new(std::fs::File::open(file)?);
        sealed_file::open(&keyring, input, std::io::sink())
            .with_context(|| format!("{} cannot be restored", file.display()))?;
    }
    let target = Tool::connect(config).await?;
    let mut conn = PgConnection::connect_with(&db::connect_options(config).await?).await?;
    // Held until this connection closes, at the end: no server starts meanwhile.
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(db::RESTORE_LOCK)
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(
        locked,
        "a pexper-server is starting on this database, or another restore is running: stop every pexper-server before restoring"
    );
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'pexper'
           AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await?;
    anyhow::ensure!(
        others == 0,
        "{others} connection(s) of pexper processes are open on this database: stop every pexper-server (and other pexper-admin commands) before restoring"
    );
    // A restore that did not finish (killed, or its machine lost) left the database as it was
    // before in the set-aside schema: that is put back first, as if it had never begun.
    if set_aside_exists(&mut conn).await? {
        put_back_set_aside(&mut conn)
            .await
            .context("failed to put back the database an unfinished restore set aside")?;
    }
    let mut known = live_journal(&mut conn).await?;
    known.extend(exported);

    // The live schema steps aside (as pexper_replaced_by_restore) rather than being dropped,
    // so a failed restore loses nothing; it stays until the restore has finished (migrated,
    // sessions ended, erasures replayed), and while it is there no server starts
    // (`db::migrate_unless_restoring`).
    let mut tx = conn.begin().await?;
    sqlx::query("ALTER SCHEMA public RENAME TO pexper_replaced_by_restore")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE SCHEMA public")
        .execute(&mut *tx)
        .await?;
    tx.commit()
        .await
        .context("failed to set the live schema aside")?;
    let args = [
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
    ];
    let restored = if sealed {
        target
            .restore_sealed(&args, keyring, std::fs::File::open(file)?)
            .await
    } else {
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        args.push(file.as_os_str());
        target.run("pg_restore", &args).await
    };
    if let Err(e) = restored {
        put_back_set_aside(&mut conn).await?;
        return Err(e.context("the restore failed; the database is as it was"));
    }

    // A backup from before the newest migrations is brought up to date first.
    let pool = db::pool(db::connect_options(config).await?).await?;
    db::migrate(&pool).await?;
    let mut ended = 0;
    for statement in registry.after_restore() {
        ended += sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .with_context(|| format!("failed to run {statement:?} after the restore"))?
            .rows_affected();
    }
    let mut restored = replay(&pool, known, master, registry).await?;
    restored.sessions_and_links_ended = Some(ended);
    restored.note = Some(RESTORE_NOTE);
    pool.close().await;
    sqlx::query("DROP SCHEMA pexper_replaced_by_restore CASCADE")
        .execute(&mut conn)
        .await
        .context("failed to drop the database the restore replaced")?;
    // Ends the session, and with it the restore's lock: servers may start.
    conn.close().await.ok();
    Ok(restored)
}

/// Erases again everyone in the erasure journal — the database's own and `exported` copies,
/// which join it first, so that a later restore of this state knows them too. What
/// `restore` ends with, and what follows a point-in-time recovery made by other means
/// (CloudNativePG's): the recovered database's journal ends where the recovery point does.
pub async fn replay(
    pool: &sqlx::PgPool,
    exported: Vec<JournalEntry>,
    master: &MasterKeys,
    registry: &Registry,
) -> anyhow::Result<Restored> {
    let mut conn = pool.acquire().await?;
    for entry in &exported {
        sqlx::query(
            "INSERT INTO erasure_journal (person_hash, erased_at) VALUES (decode($1, 'hex'), $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(&entry.person_hash)
        .bind(entry.erased_at)
        .execute(&mut *conn)
        .await
        .context("failed to add to the erasure journal")?;
    }
    let journal = journal_entries(&mut conn).await?;
    let back = crate::person::journalled(&mut conn).await?;
    drop(conn);
    let keyring = crate::keys::keyring(pool, master).await?;
    // What a migration set aside for the keys (a backup from before sealed purchase records)
    // is brought up to date first, so the erasures below find it and reach it.
    registry.prepare(pool, &keyring).await?;
    for person in &back {
        let mut tx = pool.begin().await?;
        registry.erase(&mut tx, &keyring, *person).await?;
        tx.commit().await?;
    }
    Ok(Restored {
        journal_entries: journal.len(),
        erased_again: back.len(),
        sessions_and_links_ended: None,
        note: None,
    })
}

/// Drops what is in `public` and puts the set-aside schema back in its place, in one
/// transaction.
async fn put_back_set_aside(conn: &mut PgConnection) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("DROP SCHEMA public CASCADE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("ALTER SCHEMA pexper_replaced_by_restore RENAME TO public")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Where a restore keeps the database it replaces until it has finished.
pub const SET_ASIDE_SCHEMA: &str = "pexper_replaced_by_restore";

/// Whether a restore has set the live schema aside and not finished.
pub async fn set_aside_exists(conn: &mut PgConnection) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(SET_ASIDE_SCHEMA)
        .fetch_one(conn)
        .await
        .context("failed to look for an unfinished restore")
}

/// The live database's journal; empty if it has none yet (a new database).
async fn live_journal(conn: &mut PgConnection) -> anyhow::Result<Vec<JournalEntry>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('erasure_journal') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    journal_entries(conn).await
}

/// How the PostgreSQL programs reach the database: the URL without its password, which goes
/// in their environment (`PGPASSWORD`), never in an argument list that `ps` shows.
struct Tool {
    pg_bin: Option<PathBuf>,
    url: String,
    password: Option<SecretString>,
}

impl Tool {
    async fn connect(config: &Config) -> anyhow::Result<Self> {
        let url = match &config.database_url {
            Some(url) => url.clone(),
            None => {
                let managed = db::start_managed(config).await?;
                db::ensure_database(&managed, db::MANAGED_DATABASE).await?;
                managed.url(db::MANAGED_DATABASE)
            }
        };
        let mut url = url::Url::parse(url.expose_secret())
            .context("DATABASE_URL is not a valid postgres:// URL")?;
        let password = url.password().map(|p| {
            SecretString::from(
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        });
        url.set_password(None).ok();
        Ok(Self {
            pg_bin: config.pg_bin.clone(),
            url: url.to_string(),
            password,
        })
    }

    /// `program` against the database, the password in its environment.
    fn command(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Command> {
        let path = managed::find_program(self.pg_bin.as_deref(), program)
            .ok_or_else(|| managed::missing_programs(self.pg_bin.as_deref(), &[program]))?;
        let mut command = Command::new(path);
        command.args(args).arg(format!("--dbname={}", self.url));
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password.expose_secret());
        }
        Ok(command)
    }

    /// Runs `program` against the database; its stderr becomes the error if it fails.
    async fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let mut command = self.command(program, args)?;
        let out = tokio::task::spawn_blocking(move || command.output())
            .await?
            .with_context(|| format!("failed to run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `pg_dump`, its standard output sealed into `out` as it comes.
    async fn dump_sealed(
        &self,
        args: &[&str],
        keyring: Arc<Keyring>,
        out: std::fs::File,
    ) -> anyhow::Result<()> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let mut command = self.command("pg_dump", &args)?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().context("failed to run pg_dump")?;
            let errors = drain(child.stderr.take());
            let stdout = child.stdout.take().context("pg_dump's output")?;
            let mut out = std::io::BufWriter::new(out);
            let sealed = sealed_file::seal(&keyring, stdout, &mut out);
            let status = child.wait()?;
            let errors = errors.join().unwrap_or_default();
            // Our side first: a full disk stops the sealing, and pg_dump then fails only
            // because its output was closed.
            sealed.context("failed to write the backup")?;
            if !status.success() {
                bail!("pg_dump failed: {}", errors.trim());
            }
            out.into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()
                .context("failed to write the backup")
        })
        .await?
    }

    /// `pg_restore` reading the opened backup from its standard input. A part that does not
    /// open stops it before it can commit (`--single-transaction`).
    async fn restore_sealed(
        &self,
        args: &[&str],
        keyring: Arc<Keyring>,
        file: std::fs::File,
    ) -> anyhow::Result<()> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let mut command = self.command("pg_restore", &args)?;
        command.stdin(Stdio::piped()).stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().context("failed to run pg_restore")?;
            let errors = drain(child.stderr.take());
            let mut stdin = child.stdin.take().context("pg_restore's input")?;
            let fed = sealed_file::open(&keyring, std::io::BufReader::new(file), &mut stdin);
            // Killed before its input ends, so it never sees a clean end of what we fed it.
            if fed.is_err() {
                child.kill().ok();
            }
            drop(stdin);
            let status = child.wait()?;
            let errors = errors.join().unwrap_or_default();
            // pg_restore's own failure first: ours is then only the pipe it closed.
            if !status.success() && !errors.trim().is_empty() {
                bail!("pg_restore failed: {}", errors.trim());
            }
            fed?;
            anyhow::ensure!(status.success(), "pg_restore failed");
            Ok(())
        })
        .await?
    }
}

/// Reads a child's stderr to its end on a thread of its own, so a chatty child never blocks
/// on a full pipe while we read its stdout.
fn drain(stderr: Option<std::process::ChildStderr>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            stderr.read_to_string(&mut text).ok();
        }
        text
    })
}
