//! `pexper-admin analytics report`: what the rollups say over the last N days. Any figure that
//! stands for some but fewer than `K` sessions is shown as "<K", so no tiny cohort stands out.

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::rollup;

/// The smallest cohort a report shows a number for.
pub const K: i64 = 5;

fn masked(value: f64, sessions: i64) -> Value {
    if sessions > 0 && sessions < K {
        json!(format!("<{K}"))
    } else if value.fract() == 0.0 {
        json!(value as i64)
    } else {
        json!((value * 1000.0).round() / 1000.0)
    }
}

pub async fn report(pool: &PgPool, days: i64) -> anyhow::Result<Value> {
    rollup::refresh(pool).await?;
    let since = days.max(1) - 1;
    let rows = |metric: &'static str, group: &'static str, order: &'static str| {
        let sql = format!(
            "SELECT {group} AS label, sum(value)::float8, sum(sessions)::bigint FROM analytics_rollup
             WHERE metric = '{metric}' AND day >= current_date - $1::int
             GROUP BY {group} ORDER BY {order} LIMIT 50"
        );
        async move {
            sqlx::query_as::<_, (String, f64, i64)>(sqlx::AssertSqlSafe(sql))
                .bind(since as i32)
                .fetch_all(pool)
                .await
                .with_context(|| format!("failed to read {metric}"))
        }
    };

    let features: Vec<Value> = rows("feature_use", "key", "2 DESC, 1")
        .await?
        .into_iter()
        .map(|(feature, uses, sessions)| {
            json!({"feature": feature, "uses": masked(uses, sessions), "sessions": masked(sessions as f64, sessions)})
        })
        .collect();
    let by_version_os: Vec<Value> = rows("sessions", "app_version || ' ' || os", "1")
        .await?
        .into_iter()
        .map(|(label, _, sessions)| {
            let (version, os) = label.split_once(' ').unwrap_or((&label, ""));
            json!({"app_version": version, "os": os, "sessions": masked(sessions as f64, sessions)})
        })
        .collect();
    let total: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(sessions), 0)::bigint FROM analytics_rollup
         WHERE metric = 'sessions' AND day >= current_date - $1::int",
    )
    .bind(since as i32)
    .fetch_one(pool)
    .await?;
    // The median of daily medians, weighted by sessions: close enough for a trend.
    let duration: (Option<f64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(value * sessions) / nullif(sum(sessions), 0), sum(sessions)::bigint
         FROM analytics_rollup WHERE metric = 'session_duration_median' AND day >= current_date - $1::int",
    )
    .bind(since as i32)
    .fetch_one(pool)
    .await?;
    let releases: Vec<Value> = rows("crashed_sessions", "app_version", "1 DESC")
        .await?
        .into_iter()
        .map(|(release, crashed, sessions)| {
            let rate = if sessions > 0 {
                1.0 - crashed / sessions as f64
            } else {
                1.0
            };
            json!({
                "release": release,
                "sessions": masked(sessions as f64, sessions),
                "crashed": masked(crashed, sessions),
                "crash_free_rate": masked(rate, sessions),
            })
        })
        .collect();
    let signatures: Vec<Value> = rows("crash_signature", "key", "2 DESC, 1")
        .await?
        .into_iter()
        .map(|(key, count, _)| {
            let (signature, exception) = key.split_once(' ').unwrap_or((&key, ""));
            json!({"signature": signature, "exception_type": exception, "reports": count as i64})
        })
        .collect();
    let dropped: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, sum(count)::bigint FROM analytics_drop
         WHERE day >= current_date - $1::int GROUP BY reason ORDER BY reason",
    )
    .bind(since as i32)
    .fetch_all(pool)
    .await?;
    Ok(json!({
        "days": days.max(1),
        "k_threshold": K,
        "sessions": masked(total as f64, total),
        "sessions_by_version_os": by_version_os,
        "median_session_duration_s": match duration {
            (Some(d), Some(n)) => masked(d, n),
            _ => Value::Null,
        },
        "top_features": features,
        "crash_free_by_release": releases,
        "top_crash_signatures": signatures,
        "dropped": dropped.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
}
