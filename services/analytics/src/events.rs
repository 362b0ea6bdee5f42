//! `POST /v1/analytics/events`: batches of usage events from the desktop app.
//!
//! The handler's extractors are the state, the group commit (`Ingest`) and the JSON body,
//! nothing else: no connection info, no headers, so there is no IP address or user agent to
//! keep even by mistake. The platform's per-client limit for collection sits in front of it
//! (the address lives only in the limiter's memory), and a global one in `limit`. Everything stored is checked against the
//! allow-list in `schema`; the rest is dropped and counted by reason.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, OnceLock};

use anyhow::Context;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pexper_platform::Platform;
use pexper_platform::batch::Batcher;
use pexper_platform::http::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::limit::{Limiter, busy, db_error, retry_later};
use crate::schema::{self, Drop};

/// One budget for everyone: we do not know (or want to know) who sends.
static LIMIT: LazyLock<Limiter<()>> = LazyLock::new(|| Limiter::new(2000.0, 4000.0));

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Batch {
    /// `MAJOR.MINOR.PATCH[-prerelease]`.
    #[schema(pattern = r"^[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(-[a-z0-9.]{1,20})?$")]
    app_version: String,
    #[schema(value_type = Os)]
    os: String,
    #[schema(value_type = Arch)]
    arch: String,
    /// A random UUID for this app session.
    #[schema(format = Uuid)]
    session_id: String,
    /// Up to 100 events, each `{"name", "timestamp" (RFC 3339), "props"?: {…}}`. An entry
    /// outside the published allow-list (see `GET /v1/analytics/schema`: not of that shape, an
    /// unknown name or property, a value not allowed, a timestamp out of range) is dropped
    /// and counted, never a reason to refuse the batch: an older server keeps the rest of a
    /// newer app's events. So any JSON value is accepted here.
    #[schema(value_type = Vec<Value>, max_items = 100)]
    events: Vec<Value>,
}

/// The operating systems the desktop app runs on (`schema::OS`).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum Os {
    Linux,
    Macos,
    Windows,
}

/// The architectures the desktop app is built for (`schema::ARCH`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)]
enum Arch {
    x86_64,
    aarch64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    accepted: usize,
    /// Events refused (unknown name, bad property, out-of-range timestamp): counted, never stored.
    dropped: usize,
}

/// A validated event, ready to store.
struct Accepted {
    occurred_at: OffsetDateTime,
    name: &'static str,
    props: Value,
}

/// How many groups of batches are stored at once, each on its own connection of the ingestion
/// pool (whose third is the crash intake's).
const WRITERS: usize = 2;
/// The most batches one statement stores: 1,600 events at most.
const BATCHES_PER_WRITE: usize = 16;
/// How long a batch waits to be stored before it is asked to come back (429 `busy`): its
/// group's wait for a connection (the pool gives up after a second) and a group before it.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One batch's rows, as checked: the session's fields once, the events, and what was dropped.
struct Rows {
    session: Uuid,
    app_version: String,
    os: &'static str,
    arch: &'static str,
    events: Vec<Accepted>,
    /// How many were dropped, by reason (a handful of reasons, however many drops).
    drops: BTreeMap<&'static str, i64>,
}

/// Group commit for usage events (`pexper_platform::batch`): batches that arrive while others
/// are being stored go together in the next `COPY`, so Postgres's cost of a statement and a
/// commit is paid once for all of them, not per HTTP batch. Each batch is answered once its
/// rows have committed, as before.
#[derive(Debug, Clone, Default)]
pub struct Ingest(Arc<OnceLock<Batcher<Rows, ()>>>);

impl Ingest {
    fn batcher(&self, platform: &Platform) -> &Batcher<Rows, ()> {
        self.0.get_or_init(|| {
            let pool = platform.ingest_pool.clone();
            Batcher::new(WRITERS, BATCHES_PER_WRITE, move |batches| {
                let pool = pool.clone();
                async move { store(&pool, batches).await }
            })
        })
    }
}

/// Stores batches of events with `COPY`, Postgres's bulk load: it writes a page's worth of rows
/// at a time where an `INSERT` writes them one by one (with the same group commit, an `INSERT`
/// of the unnested batches reached 68% of the bench's `COPY` rate, this 71–73%).
/// One `COPY` is one transaction; when some batch dropped events, the day's counts are added
/// in the same transaction. Drop counts are written in the order of their reasons, so two
/// writers that count the same reasons wait for each other instead of deadlocking.
async fn store(pool: &sqlx::PgPool, batches: Vec<Rows>) -> anyhow::Result<Vec<()>> {
    let count = batches.len();
    let mut rows = CopyRows::new(batches.iter().map(|b| b.events.len()).sum());
    let mut dropped: BTreeMap<&'static str, i64> = BTreeMap::new();
    for batch in batches {
        for event in &batch.events {
            rows.event(&batch, event);
        }
        for (reason, n) in &batch.drops {
            *dropped.entry(reason).or_default() += n;
        }
    }
    if rows.rows == 0 && dropped.is_empty() {
        return Ok(vec![(); count]);
    }
    let mut conn = pool.acquire().await?;
    if dropped.is_empty() {
        rows.copy(&mut conn).await?;
    } else {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        rows.copy(&mut tx).await?;
        let (reasons, counts): (Vec<&'static str>, Vec<i64>) = dropped.into_iter().unzip();
        sqlx::query(
            "INSERT INTO analytics_drop (day, reason, count)
             SELECT current_date, r, c FROM UNNEST($1::text[], $2::int8[]) AS d (r, c)
             ON CONFLICT (day, reason) DO UPDATE SET count = analytics_drop.count + EXCLUDED.count",
        )
        .bind(reasons)
        .bind(counts)
        .execute(&mut *tx)
        .await
        .context("failed to count dropped events")?;
        tx.commit().await?;
    }
    Ok(vec![(); count])
}

/// Events in `COPY`'s binary format (PostgreSQL's "COPY" page, "Binary Format"): a header,
/// each row as its fields' lengths and bytes, a trailer. Nothing is escaped, and Postgres
/// parses no timestamp or UUID.
struct CopyRows {
    buf: Vec<u8>,
    rows: u64,
}

impl CopyRows {
    const SIGNATURE: &'static [u8] = b"PGCOPY\n\xff\r\n\0";
    const FIELDS: i16 = 7;
    /// Postgres counts time in microseconds from 2000-01-01T00:00:00Z.
    const POSTGRES_EPOCH_UNIX_MICROS: i128 = 946_684_800_000_000;
    /// `jsonb`'s binary format: a version byte, then the JSON text.
    const JSONB_VERSION: u8 = 1;

    fn new(events: usize) -> Self {
        let mut buf = Vec::with_capacity(19 + events * 128);
        buf.extend_from_slice(Self::SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self { buf, rows: 0 }
    }

    fn event(&mut self, batch: &Rows, event: &Accepted) {
        self.rows += 1;
        self.buf.extend_from_slice(&Self::FIELDS.to_be_bytes());
        // Rounded to the microsecond, as Postgres rounds a timestamp it parses.
        let micros = (event.occurred_at.unix_timestamp_nanos() + 500).div_euclid(1000)
            - Self::POSTGRES_EPOCH_UNIX_MICROS;
        self.field(&(micros as i64).to_be_bytes());
        self.field(batch.session.as_bytes());
        self.field(batch.app_version.as_bytes());
        self.field(batch.os.as_bytes());
        self.field(batch.arch.as_bytes());
        self.field(event.name.as_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(Self::JSONB_VERSION);
        serde_json::to_writer(&mut self.buf, &event.props).expect("a JSON value serialises");
        self.set_length(at);
    }

    fn field(&mut self, bytes: &[u8]) {
        let length = i32::try_from(bytes.len()).expect("a field under 2 GiB");
        self.buf.extend_from_slice(&length.to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// Writes the length of the field whose 4-byte length prefix is at `at`.
    fn set_length(&mut self, at: usize) {
        let length = i32::try_from(self.buf.len() - at - 4).expect("a field under 2 GiB");
        self.buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// Sends the rows in one `COPY` (nothing if there are none) and checks they all went in.
    async fn copy(mut self, conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = conn
            .copy_in_raw(
                "COPY analytics_event (occurred_at, session_id, app_version, os, arch, name, props)
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .context("failed to start storing usage events")?;
        copy.send(self.buf).await?;
        let copied = copy
            .finish()
            .await
            .context("failed to store usage events")?;
        anyhow::ensure!(
            copied == self.rows,
            "stored {copied} usage events of {}",
            self.rows
        );
        Ok(())
    }
}

/// Send a batch of anonymous usage events.
#[utoipa::path(post, path = "/v1/analytics/events", tag = "analytics",
    request_body = Batch,
    responses(
        (status = 202, description = "Stored (what passed the allow-list) once committed", body = BatchAccepted),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = pexper_wire::ErrorBody),
        (status = 422, description = "The batch's app_version, os, arch or session_id is not valid, or it has more than 100 events", body = pexper_wire::ErrorBody),
        (status = 429, description = "Too many batches, from this client or from everyone, or too busy: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn receive(
    State(platform): State<Platform>,
    Extension(ingest): Extension<Ingest>,
    ApiJson(batch): ApiJson<Batch>,
) -> Result<Response, ApiError> {
    if let Err(wait) = LIMIT.check(()) {
        return Ok(retry_later(
            "rate_limited",
            "too many batches; retry later",
            wait,
            false,
        ));
    }
    let invalid = |code, message| Err(ApiError::unprocessable(code, message));
    if !schema::valid_app_version(&batch.app_version) {
        return invalid(
            "invalid_app_version",
            "app_version must be MAJOR.MINOR.PATCH[-prerelease]",
        );
    }
    let Some(os) = schema::OS.iter().find(|o| **o == batch.os) else {
        return invalid("invalid_os", "os must be linux, macos or windows");
    };
    let Some(arch) = schema::ARCH.iter().find(|a| **a == batch.arch) else {
        return invalid("invalid_arch", "arch must be x86_64 or aarch64");
    };
    let Ok(session) = Uuid::try_parse(&batch.session_id) else {
        return invalid("invalid_session_id", "session_id must be a UUID");
    };
    if batch.events.len() > schema::MAX_EVENTS {
        return invalid("too_many_events", "at most 100 events per batch");
    }

    let now = OffsetDateTime::now_utc();
    let mut drops = Vec::new();
    let mut accepted = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        match check(event, now, &mut drops) {
            Ok(a) => accepted.push(a),
            Err(reason) => drops.push(reason),
        }
    }
    let dropped = batch.events.len() - accepted.len();
    let accepted_count = accepted.len();
    let mut drops_by_reason: BTreeMap<&'static str, i64> = BTreeMap::new();
    for d in &drops {
        *drops_by_reason.entry(d.as_str()).or_default() += 1;
    }
    let rows = Rows {
        session,
        app_version: batch.app_version,
        os,
        arch,
        events: accepted,
        drops: drops_by_reason.clone(),
    };
    drop(batch.events); // The body as parsed: only what is stored waits with the batch.
    match tokio::time::timeout(STORE_WAIT, ingest.batcher(&platform).write(rows)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ok(db_error(e, false)),
        // Not stored: a batch no longer awaited is left out of its group (`Batcher`).
        Err(_) => return Ok(busy(false)),
    }
    platform.metrics.analytics_accepted(accepted_count as u64);
    for (reason, n) in drops_by_reason {
        platform.metrics.analytics_dropped(reason, n as u64);
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BatchAccepted {
            accepted: accepted_count,
            dropped,
        }),
    )
        .into_response())
}

fn check(event: &Value, now: OffsetDateTime, drops: &mut Vec<Drop>) -> Result<Accepted, Drop> {
    let event = event.as_object().ok_or(Drop::Malformed)?;
    let name = event
        .get("name")
        .and_then(Value::as_str)
        .ok_or(Drop::Malformed)?;
    let spec = schema::event(name).ok_or(Drop::UnknownEvent)?;
    let occurred_at = event
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .ok_or(Drop::Malformed)?;
    if occurred_at < now - schema::MAX_AGE {
        return Err(Drop::TooOld);
    }
    if occurred_at > now + schema::MAX_AHEAD {
        return Err(Drop::InFuture);
    }
    let props = match event.get("props") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => return Err(Drop::Malformed),
    };
    let props = schema::check_props(spec, props, drops)?;
    Ok(Accepted {
        occurred_at,
        name: spec.name,
        props: Value::Object(props),
    })
}

/// What we collect: the allow-list, its allowed values, and how long anything is kept.
#[utoipa::path(get, path = "/v1/analytics/schema", tag = "analytics",
    responses((status = 200, description = "Every event and property accepted, with allowed values and retention", body = Object)))]
pub async fn schema(State(platform): State<Platform>) -> axum::Json<Value> {
    axum::Json(schema::document(platform.config.analytics_retention_days))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Os` and `Arch` exist only to document `schema::OS` and `schema::ARCH`: they must list
    /// exactly what the handler accepts.
    #[test]
    fn the_documented_os_and_arch_are_the_accepted_ones() {
        let values = |schema| serde_json::to_value(schema).expect("serialises")["enum"].clone();
        assert_eq!(
            values(<Os as utoipa::PartialSchema>::schema()),
            serde_json::json!(schema::OS)
        );
        assert_eq!(
            values(<Arch as utoipa::PartialSchema>::schema()),
            serde_json::json!(schema::ARCH)
        );
    }
}
