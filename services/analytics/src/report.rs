//! `pexper-admin analytics report`: what the rollups say over the last N days. Any figure that
//! stands for some but fewer than `K` sessions is shown as "<K", so no tiny cohort stands out.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;

use crate::rollup;

/// The smallest cohort a report shows a number for.
pub const K: i64 = 5;

/// A figure as the report shows it: whole, to three decimals, or `"<K"` when it stands for
/// some but fewer than `K` sessions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Figure {
    Whole(i64),
    Fraction(f64),
    Masked(String),
}

impl Figure {
    fn of(value: f64, sessions: i64) -> Figure {
        if sessions > 0 && sessions < K {
            Figure::Masked(format!("<{K}"))
        } else if value.fract() == 0.0 {
            Figure::Whole(value as i64)
        } else {
            Figure::Fraction((value * 1000.0).round() / 1000.0)
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Figure::Whole(n) => n.fmt(f),
            Figure::Fraction(x) => x.fmt(f),
            Figure::Masked(s) => s.fmt(f),
        }
    }
}

/// What `pexper-admin analytics report` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub days: i64,
    pub k_threshold: i64,
    pub sessions: Figure,
    pub sessions_by_version_os: Vec<VersionOs>,
    pub median_session_duration_s: Option<Figure>,
    pub top_features: Vec<FeatureUse>,
    pub crash_free_by_release: Vec<ReleaseHealth>,
    pub top_crash_signatures: Vec<CrashSignature>,
    /// Events refused, by reason.
    pub dropped: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionOs {
    pub app_version: String,
    pub os: String,
    pub sessions: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeatureUse {
    pub feature: String,
    pub uses: Figure,
    pub sessions: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseHealth {
    pub release: String,
    pub sessions: Figure,
    pub crashed: Figure,
    pub crash_free_rate: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct CrashSignature {
    pub signature: String,
    pub exception_type: String,
    pub reports: i64,
}

pub async fn report(pool: &PgPool, days: i64) -> anyhow::Result<Report> {
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

    let top_features = rows("feature_use", "key", "2 DESC, 1")
        .await?
        .into_iter()
        .map(|(feature, uses, sessions)| FeatureUse {
            feature,
            uses: Figure::of(uses, sessions),
            sessions: Figure::of(sessions as f64, sessions),
        })
        .collect();
    let sessions_by_version_os = rows("sessions", "app_version || ' ' || os", "1")
        .await?
        .into_iter()
        .map(|(label, _, sessions)| {
            let (version, os) = label.split_once(' ').unwrap_or((&label, ""));
            VersionOs {
                app_version: version.to_owned(),
                os: os.to_owned(),
                sessions: Figure::of(sessions as f64, sessions),
            }
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
    let crash_free_by_release = rows("crashed_sessions", "app_version", "1 DESC")
        .await?
        .into_iter()
        .map(|(release, crashed, sessions)| {
            let rate = if sessions > 0 {
                1.0 - crashed / sessions as f64
            } else {
                1.0
            };
            ReleaseHealth {
                release,
                sessions: Figure::of(sessions as f64, sessions),
                crashed: Figure::of(crashed, sessions),
                crash_free_rate: Figure::of(rate, sessions),
            }
        })
        .collect();
    let top_crash_signatures = rows("crash_signature", "key", "2 DESC, 1")
        .await?
        .into_iter()
        .map(|(key, count, _)| {
            let (signature, exception) = key.split_once(' ').unwrap_or((&key, ""));
            CrashSignature {
                signature: signature.to_owned(),
                exception_type: exception.to_owned(),
                reports: count as i64,
            }
        })
        .collect();
    let dropped: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, sum(count)::bigint FROM analytics_drop
         WHERE day >= current_date - $1::int GROUP BY reason ORDER BY reason",
    )
    .bind(since as i32)
    .fetch_all(pool)
    .await?;
    Ok(Report {
        days: days.max(1),
        k_threshold: K,
        sessions: Figure::of(total as f64, total),
        sessions_by_version_os,
        median_session_duration_s: match duration {
            (Some(d), Some(n)) => Some(Figure::of(d, n)),
            _ => None,
        },
        top_features,
        crash_free_by_release,
        top_crash_signatures,
        dropped: dropped.into_iter().collect(),
    })
}
