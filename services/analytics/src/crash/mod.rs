//! The crash intake: Sentry's envelope protocol (see INGEST.md), so the official SDKs report to
//! us unchanged. Envelopes are authenticated by a configured project key, decompressed within
//! caps, split by our own framing parser, and only `event`, `session` and `sessions` items are
//! read; events are rebuilt from an allow-list and scrubbed before anything is stored.

mod envelope;
mod event;
pub mod scrub;
mod sessions;

use std::io::Read;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pexper_platform::Platform;
use pexper_platform::http::ApiError;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::limit::{Limiter, db_error, retry_later};

/// Decoded size caps: an envelope, and one event in it.
const MAX_ENVELOPE: usize = 4 * 1024 * 1024;
const MAX_EVENT: usize = 1024 * 1024;
/// What one envelope may ask of the database. Sentry's Relay caps session items per envelope at
/// 100 (`limits.max_session_count`); we take the same number for items of any kind and for the
/// aggregate buckets of an envelope. An SDK sends one event, a session update or a minute's
/// buckets, far below it; one envelope of 15,000 session items held the intake for 3.5 s.
const MAX_ITEMS: usize = 100;
const MAX_AGGREGATES: usize = 100;

/// Envelopes per project: generous for a desktop app's user base, a wall for a runaway loop.
static LIMIT: LazyLock<Limiter<u64>> = LazyLock::new(|| Limiter::new(50.0, 500.0));

/// Decompressing, parsing and scrubbing run on the blocking pool, at most one envelope per
/// core at a time: a flood queues here, not on the async workers that serve everyone else.
static CPU: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Arc::new(Semaphore::new(cores))
});
/// How long an envelope may wait for a core before it is asked to come back.
const CPU_WAIT: Duration = Duration::from_secs(2);

/// What the intake reads from a request, and nothing more: the project, the key, how the body
/// is encoded, and the body. No connection info, no other header.
pub struct EnvelopeRequest {
    project_id: u64,
    key: Option<String>,
    encoding: Option<String>,
    body: Bytes,
}

impl std::fmt::Debug for EnvelopeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the body.
        f.debug_struct("EnvelopeRequest")
            .field("project_id", &self.project_id)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequest<S> for EnvelopeRequest {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let project_id = req
            .uri()
            .path()
            .trim_start_matches("/api/")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ApiError::not_found("no such project").into_response())?;
        let key = sentry_key(req.headers(), req.uri().query());
        let encoding = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            project_id,
            key,
            encoding,
            body,
        })
    }
}

/// `X-Sentry-Auth: Sentry sentry_key=…, sentry_version=7, …`, or `?sentry_key=…`.
fn sentry_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get("x-sentry-auth")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, rest)| rest))
        .and_then(|pairs| {
            pairs.split(',').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k.trim() == "sentry_key").then(|| v.trim().to_owned())
            })
        });
    from_header.or_else(|| {
        query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "sentry_key").then(|| v.to_owned())
        })
    })
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the decoded envelope is over 4 MiB",
        )
    };
    let mut out = Vec::new();
    let limit = MAX_ENVELOPE as u64 + 1;
    let read = match encoding.unwrap_or("identity") {
        "identity" | "" => {
            if body.len() > MAX_ENVELOPE {
                return Err(too_large());
            }
            return Ok(body.to_vec());
        }
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => {
            // Browsers and SDKs disagree on whether deflate means zlib or raw: try zlib first.
            let zlib = flate2::read::ZlibDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out);
            if zlib.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(limit)
                    .read_to_end(&mut out)
            } else {
                zlib
            }
        }
        "br" => brotli_decompressor::Decompressor::new(body, 4096)
            .take(limit)
            .read_to_end(&mut out),
        other => {
            return Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!(
                    "content encoding `{}` is not supported",
                    other.chars().take(20).collect::<String>()
                ),
            ));
        }
    };
    read.map_err(|_| ApiError::bad_request("invalid_encoding", "the body does not decode"))?;
    if out.len() > MAX_ENVELOPE {
        return Err(too_large());
    }
    Ok(out)
}

/// An envelope read, rebuilt and scrubbed: owned values, ready to store (at most
/// `MAX_ITEMS` rows of each kind, written in one statement per kind).
#[derive(Debug, Default)]
struct Prepared {
    events: Vec<event::Rebuilt>,
    sessions: Vec<sessions::Session>,
    aggregates: Vec<sessions::Aggregate>,
}

fn too_large(message: &'static str) -> ApiError {
    ApiError::client(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
}

/// The CPU part of the intake: decode, frame, rebuild and scrub, and refuse anything over a
/// cap before a single row is written.
fn prepare(
    encoding: Option<&str>,
    body: &[u8],
    window: &sessions::Window,
) -> Result<Prepared, ApiError> {
    let body = decode(encoding, body)?;
    let items = envelope::parse(&body)
        .map_err(|e| ApiError::bad_request("invalid_envelope", e.to_string()))?;
    if items.len() > MAX_ITEMS {
        return Err(too_large("an envelope holds at most 100 items"));
    }
    let mut prepared = Prepared::default();
    for item in items {
        match item.kind.as_str() {
            "event" => {
                if item.payload.len() > MAX_EVENT {
                    return Err(too_large("an event is over 1 MiB"));
                }
                // An event we cannot read is skipped like an unknown item, never a reason to
                // refuse the sessions beside it.
                prepared.events.extend(event::rebuild(item.payload));
            }
            "session" => prepared
                .sessions
                .extend(sessions::read_session(item.payload, window)),
            "sessions" => {
                let room = MAX_AGGREGATES - prepared.aggregates.len();
                let buckets = sessions::read_aggregates(item.payload, window, room)
                    .map_err(|_| too_large("an envelope holds at most 100 session aggregates"))?;
                prepared.aggregates.extend(buckets);
            }
            // client_report, transaction, attachment (could hold anything), log, span, …
            _ => {}
        }
    }
    Ok(prepared)
}

/// Receive a Sentry envelope (crash reports and release health).
#[utoipa::path(post, path = "/api/{project_id}/envelope/", tag = "analytics",
    params(("project_id" = u64, Path, description = "The project of the DSN")),
    request_body(content = String, description = "A Sentry envelope, optionally gzip, deflate or br encoded", content_type = "application/x-sentry-envelope"),
    responses(
        (status = 200, description = "Accepted: `{\"id\": event_id}` or `{}`", body = Object),
        (status = 400, description = "Not an envelope", body = pexper_wire::ErrorBody),
        (status = 401, description = "No sentry_key", body = pexper_wire::ErrorBody),
        (status = 403, description = "Unknown project or key", body = pexper_wire::ErrorBody),
        (status = 404, description = "The project id is not a number", body = pexper_wire::ErrorBody),
        (status = 413, description = "Over the caps: 4 MiB decoded, 1 MiB per event, 100 items, 100 session aggregates", body = pexper_wire::ErrorBody),
        (status = 429, description = "Rate limited or busy: `Retry-After` and `X-Sentry-Rate-Limits`", body = pexper_wire::ErrorBody)))]
pub async fn intake(
    State(platform): State<Platform>,
    request: EnvelopeRequest,
) -> Result<Response, ApiError> {
    let Some(key) = request.key else {
        return Err(ApiError::client(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing sentry_key",
        ));
    };
    let known = platform
        .config
        .crash_keys
        .iter()
        .any(|k| k.project_id == request.project_id && k.public_key == key);
    if !known {
        return Err(ApiError::client(
            StatusCode::FORBIDDEN,
            "forbidden",
            "unknown project or key",
        ));
    }
    if let Err(wait) = LIMIT.check(request.project_id) {
        return Ok(retry_later(
            "rate_limited",
            "too many envelopes; retry later",
            wait,
            true,
        ));
    }
    let Ok(Ok(core)) = tokio::time::timeout(CPU_WAIT, CPU.clone().acquire_owned()).await else {
        return Ok(retry_later(
            "busy",
            "too much is arriving at once; retry later",
            Duration::from_secs(1),
            true,
        ));
    };
    let window = sessions::Window::new(
        OffsetDateTime::now_utc(),
        platform.config.analytics_retention_days,
    );
    let (encoding, body) = (request.encoding, request.body);
    let prepared = tokio::task::spawn_blocking(move || {
        let _core = core;
        prepare(encoding.as_deref(), &body, &window)
    })
    .await
    .map_err(anyhow::Error::from)??;

    let mut tx = match platform.ingest_pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return Ok(db_error(e.into(), true)),
    };
    let mut stored: Option<Uuid> = None;
    let mut new_reports = 0;
    for event in &prepared.events {
        new_reports += u64::from(store_event(&mut tx, request.project_id, event).await?);
        tracing::info!(project = request.project_id, signature = %event.signature, "crash report stored");
        stored = Some(event.event_id);
    }
    sessions::store_sessions(&mut tx, prepared.sessions).await?;
    sessions::store_aggregates(&mut tx, prepared.aggregates).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    platform.metrics.crash_events_stored(new_reports);
    Ok(axum::Json(match stored {
        Some(id) => serde_json::json!({ "id": id.simple().to_string() }),
        None => serde_json::json!({}),
    })
    .into_response())
}

async fn store_event(
    conn: &mut sqlx::PgConnection,
    project: u64,
    event: &event::Rebuilt,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    let inserted = sqlx::query(
        "INSERT INTO crash_report (id, event_id, project_id, occurred_at, release, environment,
                                   level, signature, exception_type, event)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT ON CONSTRAINT crash_report_event_id_key DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event.event_id)
    .bind(i32::try_from(project).unwrap_or(i32::MAX))
    .bind(event.occurred_at)
    .bind(&event.release)
    .bind(&event.environment)
    .bind(&event.level)
    .bind(&event.signature)
    .bind(&event.exception_type)
    .bind(&event.event)
    .execute(conn)
    .await
    .context("failed to store a crash report")?;
    // An envelope sent again (the SDK retries) stores nothing new.
    Ok(inserted.rows_affected() == 1)
}
