//! `POST /v1/analytics/events`: batches of usage events from the desktop app.
//!
//! The handler's extractors are the state and the JSON body, nothing else: no connection info,
//! no headers, so there is no IP address or user agent to keep even by mistake. The platform's
//! per-client limit for collection sits in front of it (the address lives only in the
//! limiter's memory), and a global one in `limit`. Everything stored is checked against the
//! allow-list in `schema`; the rest is dropped and counted by reason.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pexper_platform::Platform;
use pexper_platform::http::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::limit::{Limiter, db_error, retry_later};
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

    let mut tx = match platform.ingest_pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return Ok(db_error(e, false)),
    };
    if !accepted.is_empty() {
        let times: Vec<OffsetDateTime> = accepted.iter().map(|a| a.occurred_at).collect();
        let names: Vec<&str> = accepted.iter().map(|a| a.name).collect();
        let props: Vec<Value> = accepted.into_iter().map(|a| a.props).collect();
        sqlx::query(
            "INSERT INTO analytics_event (occurred_at, session_id, app_version, os, arch, name, props)
             SELECT t, $2, $3, $4, $5, n, p
             FROM UNNEST($1::timestamptz[], $6::text[], $7::jsonb[]) AS u(t, n, p)",
        )
        .bind(times)
        .bind(session)
        .bind(&batch.app_version)
        .bind(*os)
        .bind(*arch)
        .bind(names)
        .bind(props)
        .execute(&mut *tx)
        .await?;
    }
    let mut dropped_by_reason: BTreeMap<&'static str, i64> = BTreeMap::new();
    for d in &drops {
        *dropped_by_reason.entry(d.as_str()).or_default() += 1;
    }
    if !dropped_by_reason.is_empty() {
        let (reasons, counts): (Vec<&'static str>, Vec<i64>) = dropped_by_reason.iter().unzip();
        sqlx::query(
            "INSERT INTO analytics_drop (day, reason, count)
             SELECT current_date, r, c FROM UNNEST($1::text[], $2::bigint[]) AS u(r, c)
             ON CONFLICT (day, reason) DO UPDATE SET count = analytics_drop.count + EXCLUDED.count",
        )
        .bind(reasons)
        .bind(counts)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await.map_err(anyhow::Error::from)?;
    platform.metrics.analytics_accepted(accepted_count as u64);
    for (reason, n) in dropped_by_reason {
        platform.metrics.analytics_dropped(reason, n as u64);
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BatchAccepted {
            accepted: batch.events.len() - dropped,
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
