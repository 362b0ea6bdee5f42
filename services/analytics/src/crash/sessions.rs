//! Release health from `session` and `sessions` items: each session counted once, with its
//! latest status until a terminal one; aggregates added up. The `did` (a user or install id)
//! and `attrs.ip_address`/`user_agent` are never read. `release` and `environment` go through
//! the same label check and scrubbing as an event's; a `started` outside what retention keeps
//! (too old, or in the future) is skipped, so nothing outlives retention by its date.
//!
//! Parsing (`read_*`) is plain CPU work on owned values, done off the async runtime with the
//! rest of an envelope; `store_*` are the writes.

use anyhow::Context;
use serde::Deserialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::scrub::label;

#[derive(Deserialize)]
struct Attrs {
    release: String,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize)]
struct RawSession {
    sid: uuid::Uuid,
    started: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Option<i64>,
    attrs: Attrs,
}

/// The dates release health accepts: from the start of retention to a little clock skew ahead.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub oldest: OffsetDateTime,
    pub newest: OffsetDateTime,
}

impl Window {
    pub fn new(now: OffsetDateTime, retention_days: u32) -> Self {
        Self {
            oldest: now - time::Duration::days(i64::from(retention_days)),
            newest: now + crate::schema::MAX_AHEAD,
        }
    }

    fn when(&self, s: &str) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .filter(|t| (self.oldest..=self.newest).contains(t))
    }
}

/// One session update, ready to store.
#[derive(Debug)]
pub struct Session {
    sid: uuid::Uuid,
    release: String,
    environment: Option<String>,
    started: OffsetDateTime,
    status: &'static str,
    errors: i32,
}

/// A session we cannot read, or one outside the window, is `None`: skipped like an unknown
/// item, never a reason to refuse the envelope.
pub fn read_session(payload: &[u8], window: &Window) -> Option<Session> {
    let s = serde_json::from_slice::<RawSession>(payload).ok()?;
    let started = window.when(&s.started)?;
    let release = label(Some(&s.attrs.release))?;
    let status = match s.status.as_deref().unwrap_or("ok") {
        "ok" => "ok",
        "exited" => "exited",
        "crashed" => "crashed",
        "abnormal" => "abnormal",
        "errored" => "errored",
        _ => return None,
    };
    Some(Session {
        sid: s.sid,
        release,
        environment: label(s.attrs.environment.as_deref()),
        started,
        status,
        errors: s.errors.unwrap_or(0).clamp(0, i64::from(i32::MAX)) as i32,
    })
}

impl Session {
    fn is_terminal(&self) -> bool {
        matches!(self.status, "exited" | "crashed" | "abnormal")
    }
}

/// Stores an envelope's session updates in one statement. Updates to one session within the
/// envelope are merged first as the table would (the latest, until a terminal one), because
/// one INSERT may not touch a row twice.
pub async fn store_sessions(conn: &mut PgConnection, sessions: Vec<Session>) -> anyhow::Result<()> {
    let mut merged: Vec<Session> = Vec::with_capacity(sessions.len());
    for s in sessions {
        match merged.iter_mut().find(|m| m.sid == s.sid) {
            Some(m) if m.is_terminal() => {}
            Some(m) => {
                let errors = m.errors.max(s.errors);
                *m = Session { errors, ..s };
            }
            None => merged.push(s),
        }
    }
    if merged.is_empty() {
        return Ok(());
    }
    let sids: Vec<uuid::Uuid> = merged.iter().map(|s| s.sid).collect();
    let releases: Vec<&str> = merged.iter().map(|s| s.release.as_str()).collect();
    let environments: Vec<Option<&str>> = merged.iter().map(|s| s.environment.as_deref()).collect();
    let started: Vec<OffsetDateTime> = merged.iter().map(|s| s.started).collect();
    let statuses: Vec<&str> = merged.iter().map(|s| s.status).collect();
    let errors: Vec<i32> = merged.iter().map(|s| s.errors).collect();
    sqlx::query(
        "INSERT INTO app_session (sid, release, environment, started_at, status, errors)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::int[])
         ON CONFLICT (sid) DO UPDATE
         SET status = EXCLUDED.status, errors = GREATEST(app_session.errors, EXCLUDED.errors),
             updated_at = now()
         WHERE app_session.status NOT IN ('exited', 'crashed', 'abnormal')",
    )
    .bind(sids)
    .bind(releases)
    .bind(environments)
    .bind(started)
    .bind(statuses)
    .bind(errors)
    .execute(conn)
    .await
    .context("failed to store sessions")?;
    Ok(())
}

#[derive(Deserialize)]
struct RawAggregate {
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
struct RawAggregates {
    aggregates: Vec<RawAggregate>,
    attrs: Attrs,
}

/// One bucket of session counts, ready to store.
#[derive(Debug)]
pub struct Aggregate {
    started: OffsetDateTime,
    release: String,
    environment: String,
    counts: [i64; 4],
}

/// The buckets of a `sessions` item. `Err(n)` when it holds more than `max` buckets (`n`);
/// `Ok` of nothing for one we cannot read.
pub fn read_aggregates(
    payload: &[u8],
    window: &Window,
    max: usize,
) -> Result<Vec<Aggregate>, usize> {
    let Ok(item) = serde_json::from_slice::<RawAggregates>(payload) else {
        return Ok(Vec::new());
    };
    if item.aggregates.len() > max {
        return Err(item.aggregates.len());
    }
    let Some(release) = label(Some(&item.attrs.release)) else {
        return Ok(Vec::new());
    };
    let environment = label(item.attrs.environment.as_deref()).unwrap_or_default();
    let n = |v: i64| v.clamp(0, 1_000_000);
    Ok(item
        .aggregates
        .iter()
        .filter_map(|g| {
            Some(Aggregate {
                started: window.when(&g.started)?,
                release: release.clone(),
                environment: environment.clone(),
                counts: [n(g.exited), n(g.errored), n(g.abnormal), n(g.crashed)],
            })
        })
        .collect())
}

/// Stores an envelope's buckets in one statement, buckets with the same key added up first
/// (one INSERT may not touch a row twice).
pub async fn store_aggregates(
    conn: &mut PgConnection,
    aggregates: Vec<Aggregate>,
) -> anyhow::Result<()> {
    let mut merged: Vec<Aggregate> = Vec::with_capacity(aggregates.len());
    for g in aggregates {
        match merged.iter_mut().find(|m| {
            (m.started, &m.release, &m.environment) == (g.started, &g.release, &g.environment)
        }) {
            Some(m) => m.counts = std::array::from_fn(|i| m.counts[i] + g.counts[i]),
            None => merged.push(g),
        }
    }
    if merged.is_empty() {
        return Ok(());
    }
    let column = |i: usize| merged.iter().map(|g| g.counts[i]).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO session_aggregate (started, release, environment, exited, errored, abnormal, crashed)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[],
                              $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
         ON CONFLICT (started, release, environment) DO UPDATE
         SET exited = session_aggregate.exited + EXCLUDED.exited,
             errored = session_aggregate.errored + EXCLUDED.errored,
             abnormal = session_aggregate.abnormal + EXCLUDED.abnormal,
             crashed = session_aggregate.crashed + EXCLUDED.crashed",
    )
    .bind(merged.iter().map(|g| g.started).collect::<Vec<_>>())
    .bind(merged.iter().map(|g| g.release.as_str()).collect::<Vec<_>>())
    .bind(merged.iter().map(|g| g.environment.as_str()).collect::<Vec<_>>())
    .bind(column(0))
    .bind(column(1))
    .bind(column(2))
    .bind(column(3))
    .execute(conn)
    .await
    .context("failed to store session aggregates")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window::new(OffsetDateTime::now_utc(), 90)
    }

    fn session(started: &str, release: &str, environment: &str) -> Vec<u8> {
        serde_json::json!({
            "sid": uuid::Uuid::new_v4(), "started": started, "status": "ok",
            "attrs": {"release": release, "environment": environment}
        })
        .to_string()
        .into_bytes()
    }

    fn now_plus(d: time::Duration) -> String {
        (OffsetDateTime::now_utc() + d)
            .format(&Rfc3339)
            .expect("formats")
    }

    #[test]
    fn release_and_environment_are_scrubbed_like_an_event_s() {
        let s = read_session(
            &session(
                &now_plus(time::Duration::ZERO),
                "alice@example.com",
                "bob@example.org",
            ),
            &window(),
        )
        .expect("read");
        assert!(!s.release.contains("alice"), "{s:?}");
        assert!(
            !s.environment.as_deref().unwrap_or("").contains("bob"),
            "{s:?}"
        );
        let ok = read_session(
            &session(
                &now_plus(time::Duration::ZERO),
                "pexper@1.4.0",
                "production",
            ),
            &window(),
        )
        .expect("read");
        assert_eq!(ok.release, "pexper@1.4.0");
    }

    #[test]
    fn a_start_outside_retention_or_in_the_future_is_skipped() {
        for started in [
            now_plus(time::Duration::days(3650)),
            now_plus(time::Duration::hours(1)),
            now_plus(-time::Duration::days(91)),
        ] {
            assert!(
                read_session(&session(&started, "pexper@1.4.0", "production"), &window()).is_none(),
                "{started}"
            );
        }
        assert!(
            read_session(
                &session(&now_plus(-time::Duration::days(89)), "pexper@1.4.0", "p"),
                &window()
            )
            .is_some()
        );
    }

    #[test]
    fn a_sessions_item_over_the_cap_is_refused_by_its_length() {
        let bucket = serde_json::json!({"started": now_plus(time::Duration::ZERO), "exited": 1});
        let item = |n: usize| {
            serde_json::json!({"aggregates": vec![bucket.clone(); n], "attrs": {"release": "pexper@1.4.0"}})
                .to_string()
                .into_bytes()
        };
        assert_eq!(
            read_aggregates(&item(100), &window(), 100)
                .expect("fits")
                .len(),
            100
        );
        assert_eq!(
            read_aggregates(&item(101), &window(), 100).expect_err("over"),
            101
        );
    }
}
