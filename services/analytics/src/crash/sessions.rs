//! Release health from `session` and `sessions` items: each session counted once, with its
//! latest status until a terminal one; aggregates added up. The `did` (a user or install id)
//! and `attrs.ip_address`/`user_agent` are never read.

use anyhow::Context;
use serde::Deserialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Deserialize)]
struct Attrs {
    release: String,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize)]
struct Session {
    sid: uuid::Uuid,
    started: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Option<i64>,
    attrs: Attrs,
}

fn when(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

fn clean(label: &str) -> Option<String> {
    (!label.is_empty()
        && label.len() <= 100
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b)))
    .then(|| label.to_owned())
}

pub async fn session(conn: &mut PgConnection, payload: &[u8]) -> anyhow::Result<()> {
    // A session we cannot read is skipped, like an unknown item.
    let Ok(s) = serde_json::from_slice::<Session>(payload) else {
        return Ok(());
    };
    let (Some(started), Some(release)) = (when(&s.started), clean(&s.attrs.release)) else {
        return Ok(());
    };
    let status = match s.status.as_deref().unwrap_or("ok") {
        st @ ("ok" | "exited" | "crashed" | "abnormal" | "errored") => st,
        _ => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO app_session (sid, release, environment, started_at, status, errors)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (sid) DO UPDATE
         SET status = EXCLUDED.status, errors = GREATEST(app_session.errors, EXCLUDED.errors),
             updated_at = now()
         WHERE app_session.status NOT IN ('exited', 'crashed', 'abnormal')",
    )
    .bind(s.sid)
    .bind(release)
    .bind(s.attrs.environment.as_deref().and_then(clean))
    .bind(started)
    .bind(status)
    .bind(s.errors.unwrap_or(0).clamp(0, i32::MAX as i64) as i32)
    .execute(conn)
    .await
    .context("failed to store a session")?;
    Ok(())
}

#[derive(Deserialize)]
struct Aggregate {
    started: String,
    #[serde(default)]
    exited: i64,
    #[serde(default)]
    errored: i64,
    #[serde(default)]
    abnormal: i64,
    #[serde(default)]
    crashed: i64,
}

#[derive(Deserialize)]
struct Aggregates {
    aggregates: Vec<Aggregate>,
    attrs: Attrs,
}

pub async fn aggregates(conn: &mut PgConnection, payload: &[u8]) -> anyhow::Result<()> {
    let Ok(a) = serde_json::from_slice::<Aggregates>(payload) else {
        return Ok(());
    };
    let Some(release) = clean(&a.attrs.release) else {
        return Ok(());
    };
    let environment = a
        .attrs
        .environment
        .as_deref()
        .and_then(clean)
        .unwrap_or_default();
    for g in a.aggregates.iter().take(1000) {
        let Some(started) = when(&g.started) else {
            continue;
        };
        let n = |v: i64| v.clamp(0, 1_000_000);
        sqlx::query(
            "INSERT INTO session_aggregate (started, release, environment, exited, errored, abnormal, crashed)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (started, release, environment) DO UPDATE
             SET exited = session_aggregate.exited + EXCLUDED.exited,
                 errored = session_aggregate.errored + EXCLUDED.errored,
                 abnormal = session_aggregate.abnormal + EXCLUDED.abnormal,
                 crashed = session_aggregate.crashed + EXCLUDED.crashed",
        )
        .bind(started)
        .bind(&release)
        .bind(&environment)
        .bind(n(g.exited))
        .bind(n(g.errored))
        .bind(n(g.abnormal))
        .bind(n(g.crashed))
        .execute(&mut *conn)
        .await
        .context("failed to store session aggregates")?;
    }
    Ok(())
}
