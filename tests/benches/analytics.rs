//! Usage-event ingestion through HTTP, against the raw Postgres `COPY` rate of the same rows,
//! on this machine, with the server (the release binary, as a separate process) measured for
//! memory. Goal (issue 31): HTTP ingestion at ≥ 70% of the `COPY` rate, batches of 100 events.
//!
//!     cargo bench -p pexper-tests --bench analytics [-- BATCHES CONCURRENCY]
//!     PEXPER_BENCH_BASELINE=/path/to/old/pexper-server cargo bench … (before and after)
//!
//! BATCHES (default 3000: within the global limit's burst of 4,000, so it never answers 429) of
//! 100 events each; CONCURRENCY (default 16) clients.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use pexper_tests::*;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn main() {
    let [batches, concurrency] = bench_args([3000, 16], [20, 4]);
    bench_exit(block_on(run(batches as usize, concurrency as usize)));
}

const FEATURES: [&str; 4] = ["workflow_editor", "providers", "local_models", "license"];

fn batch(i: usize) -> String {
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    let events: Vec<_> = (0..100)
        .map(|j| json!({"name": "feature.used", "timestamp": now, "props": {"feature": FEATURES[(i + j) % 4]}}))
        .collect();
    json!({"app_version": "1.4.0", "os": "linux", "arch": "x86_64", "session_id": uuid::Uuid::new_v4(), "events": events})
        .to_string()
}

fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

async fn run(batches: usize, concurrency: usize) -> bool {
    let mut met = true;
    for (build, server) in builds() {
        let (http, copy) = measure(&build, &server, batches, concurrency).await;
        let share = 100.0 * http / copy;
        let what = format!("{build}: HTTP ingestion at ≥ 70% of the COPY rate");
        if build == "this build" {
            met &= goal(&what, format!("{share:.0}%"), share >= 70.0);
        } else {
            println!("{what}: {share:.0}%");
        }
    }
    met
}

/// One build's ingestion over HTTP, then the same rows by `COPY` into the same table of the
/// same database: (events/s, rows/s).
async fn measure(
    build: &str,
    server: &std::path::Path,
    batches: usize,
    concurrency: usize,
) -> (f64, f64) {
    // Each client its own address behind a trusted proxy: this measures ingestion, not the
    // per-client limit (benches/flood.rs measures what the limits protect).
    let server =
        ServerProcess::start_binary(server, "warn", &[("PEXPER_TRUSTED_PROXY", "127.0.0.1")]).await;
    let (idle, _) = memory(server.pid());
    let url: Arc<str> = format!("{}/v1/analytics/events", server.base).into();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let bodies = Arc::new(std::sync::Mutex::new(
        (0..batches).map(batch).collect::<Vec<_>>(),
    ));

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        tasks.spawn(async move {
            let mut sent = 0usize;
            loop {
                let Some(body) = bodies.lock().unwrap().pop() else {
                    return;
                };
                sent += 1;
                let res = client
                    .post(&*url)
                    .header("content-type", "application/json")
                    .header(
                        "x-forwarded-for",
                        format!("10.{c}.{}.{}", sent / 256 % 256, sent % 256),
                    )
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 202);
            }
        });
    }
    tasks.join_all().await;
    let http = started.elapsed();
    let events = batches * 100;
    let (rss, peak) = memory(server.pid());
    let http_rate = events as f64 / http.as_secs_f64();
    println!(
        "{build}: HTTP: {events} events in {batches} batches in {:.2}s = {http_rate:.0} events/s ({concurrency} clients)",
        http.as_secs_f64()
    );
    println!(
        "{build}: server RSS: idle {:.1} MiB, after {:.1} MiB, peak {:.1} MiB",
        idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );

    // The same rows straight into Postgres with COPY, over the same TLS connection type.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            server.vars["DATABASE_URL"]
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap(),
        )
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, events);
    sqlx::query("TRUNCATE analytics_event")
        .execute(&pool)
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    let mut rows = String::with_capacity(events * 120);
    for i in 0..batches {
        let session = uuid::Uuid::new_v4();
        for j in 0..100 {
            rows.push_str(&format!(
                "{now}\t{session}\t1.4.0\tlinux\tx86_64\tfeature.used\t{{\"feature\": \"{}\"}}\n",
                FEATURES[(i + j) % 4]
            ));
        }
    }
    let mut conn = pool.acquire().await.unwrap();
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY analytics_event (occurred_at, session_id, app_version, os, arch, name, props) FROM STDIN")
        .await
        .unwrap();
    copy.send(rows.as_bytes()).await.unwrap();
    let copied = copy.finish().await.unwrap();
    let copy_time = started.elapsed();
    assert_eq!(copied as usize, events);
    let copy_rate = events as f64 / copy_time.as_secs_f64();
    println!(
        "{build}: COPY: {events} rows in {:.2}s = {copy_rate:.0} rows/s",
        copy_time.as_secs_f64()
    );
    server.stop().await;
    (http_rate, copy_rate)
}
