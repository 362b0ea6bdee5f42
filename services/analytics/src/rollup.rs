//! Daily rollups and retention. Rollups are recomputed for today and yesterday on every run,
//! and for any older day that has raw data but no rollup yet (after downtime), so that when
//! retention deletes raw rows their day is already summarised. The rollups stay.

use anyhow::Context;
use pexper_platform::Platform;
use pexper_platform::jobs::{BackgroundJob, Job, JobError};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::Date;

/// The recurring job: refresh the rollups, then apply retention to the raw rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollUp {}

impl BackgroundJob for RollUp {
    const KIND: &'static str = "analytics.rollup";
    type Context = Platform;

    async fn run(self, platform: Platform, _job: &Job) -> Result<(), JobError> {
        let days = refresh(&platform.pool).await?;
        let deleted = retain(&platform.pool, platform.config.analytics_retention_days).await?;
        tracing::info!(days, deleted, "analytics rolled up");
        Ok(())
    }
}

/// Recomputes the rollups of every day that needs it; returns how many days.
pub async fn refresh(pool: &PgPool) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    // One refresh at a time (the job and `analytics report` may overlap).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('analytics_rollup', 0))")
        .execute(&mut *tx)
        .await?;
    let days: Vec<Date> = sqlx::query_scalar(
        "SELECT d FROM (
             SELECT DISTINCT occurred_at::date AS d FROM analytics_event
             UNION SELECT DISTINCT started_at::date FROM app_session
             UNION SELECT DISTINCT started::date FROM session_aggregate
             UNION SELECT DISTINCT occurred_at::date FROM crash_report) raw
         WHERE d >= current_date - 1
            OR NOT EXISTS (SELECT 1 FROM analytics_rollup r WHERE r.day = raw.d)",
    )
    .fetch_all(&mut *tx)
    .await
    .context("failed to find days to roll up")?;
    if days.is_empty() {
        return Ok(0);
    }
    let statements = [
        "DELETE FROM analytics_rollup WHERE day = ANY($1)",
        // Feature use per version and OS, with how many sessions used each.
        "INSERT INTO analytics_rollup (day, metric, app_version, os, key, value, sessions)
         SELECT occurred_at::date, 'feature_use', app_version, os, props->>'feature',
                count(*), count(DISTINCT session_id)
         FROM analytics_event
         WHERE name = 'feature.used' AND occurred_at::date = ANY($1)
         GROUP BY 1, 3, 4, 5",
        "INSERT INTO analytics_rollup (day, metric, app_version, os, key, value, sessions)
         SELECT occurred_at::date, 'sessions', app_version, os, '',
                count(DISTINCT session_id), count(DISTINCT session_id)
         FROM analytics_event WHERE occurred_at::date = ANY($1)
         GROUP BY 1, 3, 4",
        "INSERT INTO analytics_rollup (day, metric, app_version, os, key, value, sessions)
         SELECT occurred_at::date, 'session_duration_median', app_version, os, '',
                percentile_cont(0.5) WITHIN GROUP (ORDER BY (props->>'duration_s')::float8),
                count(DISTINCT session_id)
         FROM analytics_event WHERE name = 'app.exited' AND occurred_at::date = ANY($1)
         GROUP BY 1, 3, 4",
        // Release health: value = crashed sessions, sessions = all sessions.
        "INSERT INTO analytics_rollup (day, metric, app_version, os, key, value, sessions)
         SELECT day, 'crashed_sessions', release, '', '', sum(crashed), sum(total)
         FROM (SELECT started_at::date AS day, release,
                      count(*) FILTER (WHERE status = 'crashed') AS crashed, count(*) AS total
               FROM app_session WHERE started_at::date = ANY($1) GROUP BY 1, 2
               UNION ALL
               SELECT started::date, release, sum(crashed),
                      sum(exited + errored + abnormal + crashed)
               FROM session_aggregate WHERE started::date = ANY($1) GROUP BY 1, 2) s
         GROUP BY day, release",
        "INSERT INTO analytics_rollup (day, metric, app_version, os, key, value, sessions)
         SELECT occurred_at::date, 'crash_signature', coalesce(release, ''), '',
                signature || ' ' || coalesce(max(exception_type), ''), count(*), count(*)
         FROM crash_report WHERE occurred_at::date = ANY($1)
         GROUP BY occurred_at::date, coalesce(release, ''), signature",
    ];
    for statement in statements {
        sqlx::query(statement)
            .bind(&days)
            .execute(&mut *tx)
            .await
            .context("failed to roll up")?;
    }
    tx.commit().await?;
    Ok(days.len())
}

/// Deletes raw events, crash reports and sessions older than the retention; rollups stay.
pub async fn retain(pool: &PgPool, days: u32) -> anyhow::Result<u64> {
    let mut deleted = 0;
    for statement in [
        "DELETE FROM analytics_event WHERE occurred_at < now() - make_interval(days => $1)",
        "DELETE FROM crash_report WHERE received_at < now() - make_interval(days => $1)",
        "DELETE FROM app_session WHERE started_at < now() - make_interval(days => $1)",
        "DELETE FROM session_aggregate WHERE started < now() - make_interval(days => $1)",
        "DELETE FROM analytics_drop WHERE day < current_date - $1",
    ] {
        deleted += sqlx::query(statement)
            .bind(days as i32)
            .execute(pool)
            .await
            .context("failed to apply retention")?
            .rows_affected();
    }
    Ok(deleted)
}
