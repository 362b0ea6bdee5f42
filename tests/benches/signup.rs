//! Waitlist signup throughput and latency through HTTP, against the real stack (TLS Postgres,
//! the job queue, a real SMTP server), on this machine.
//!
//!     cargo bench -p pexper-tests --bench signup [-- REQUESTS CONCURRENCY]
//!
//! Prints accepted signups/s with p50/p99/max latency, and how fast the queue then delivered
//! the confirmation emails. Rate limiting is off (it would measure the limiter).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pexper_platform::http::HttpOptions;
use pexper_tests::*;

fn main() {
    let [requests, concurrency] = bench_args([2000, 32], [30, 4]);
    block_on(run(requests as usize, concurrency as usize));
}

async fn run(requests: usize, concurrency: usize) {
    let app = spawn_app_with(AppOptions {
        http: HttpOptions {
            burst: u32::MAX,
            replenish: Duration::from_nanos(1),
            ..HttpOptions::default()
        },
        ..AppOptions::default()
    })
    .await;
    let url = Arc::new(app.url("/v1/waitlist"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();

    // Warm up the pool and the connections.
    for i in 0..50 {
        client
            .post(url.as_str())
            .json(&serde_json::json!({"email": format!("warm{i}@example.com")}))
            .send()
            .await
            .unwrap();
    }
    app.smtp.wait_for(50, Duration::from_secs(60)).await;

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return latencies;
                }
                let t = Instant::now();
                let res = client
                    .post(url.as_str())
                    .json(&serde_json::json!({"email": format!("bench{i}@example.com"), "source": "bench"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 202);
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "signups: {requests} in {:.2}s = {:.0}/s with {concurrency} clients; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    app.smtp
        .wait_for(50 + requests, Duration::from_secs(600))
        .await;
    let drained = started.elapsed();
    println!(
        "confirmation emails: {requests} delivered over SMTP {:.2}s after the first signup = {:.0}/s (2 workers)",
        drained.as_secs_f64(),
        requests as f64 / drained.as_secs_f64()
    );
}
