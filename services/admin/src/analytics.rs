//! `pexper-admin analytics`: the report over the rollups, cohorts under K masked.

use clap::Subcommand;
use pexper_analytics::report::{self, Report};
use sqlx::PgPool;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Top features, sessions, median session duration, crash-free rate per release, top
    /// crash signatures; cohorts under 5 sessions show as "<5".
    Report {
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
}

pub async fn run(json: bool, pool: &PgPool, command: Command) -> anyhow::Result<()> {
    let Command::Report { days } = command;
    anyhow::ensure!(days >= 1, "--days must be at least 1");
    let report = report::report(pool, days).await?;
    if json {
        output::object(true, &serde_json::to_value(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

/// The report in sections, for people.
fn print(report: &Report) {
    let k = report.k_threshold;
    let median = report
        .median_session_duration_s
        .as_ref()
        .map_or("-".to_owned(), ToString::to_string);
    println!(
        "last {} day(s); sessions: {}; median session: {median} s (cohorts under {k} sessions show as <{k})",
        report.days, report.sessions,
    );
    println!("\nTop features");
    output::rows(
        false,
        &["feature", "uses", "sessions"],
        &report.top_features,
        |f| {
            vec![
                f.feature.clone(),
                f.uses.to_string(),
                f.sessions.to_string(),
            ]
        },
    );
    println!("\nCrash-free sessions by release");
    output::rows(
        false,
        &["release", "sessions", "crashed", "crash_free_rate"],
        &report.crash_free_by_release,
        |r| {
            vec![
                r.release.clone(),
                r.sessions.to_string(),
                r.crashed.to_string(),
                r.crash_free_rate.to_string(),
            ]
        },
    );
    println!("\nTop crash signatures");
    output::rows(
        false,
        &["signature", "exception_type", "reports"],
        &report.top_crash_signatures,
        |s| {
            vec![
                s.signature.clone(),
                s.exception_type.clone(),
                s.reports.to_string(),
            ]
        },
    );
}
