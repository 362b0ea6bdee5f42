//! Stripe webhook acknowledgements through HTTP against the real `pexper-server` binary in a
//! process of its own (signature check, TLS Postgres, licence signing, the receipt job and its
//! email over a real SMTP server), on this machine. Every event is a new paid Checkout Session: the most expensive kind.
//!
//!     cargo bench -p pexper-tests --bench webhook [-- RATE SECONDS CONCURRENCY DELIVERIES]
//!
//! 1. Open loop at RATE events/s (default 200) for SECONDS (default 15): latency is measured
//!    from when each request was due, so a stall cannot hide (no coordinated omission).
//!    The goal is p99 < 50 ms at 200/s.
//! 2. Closed loop with CONCURRENCY clients (default 32) sending DELIVERIES events (default
//!    3,000): the most acknowledgements per second.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;

fn main() {
    let [rate, seconds, concurrency, deliveries] = bench_args([200, 15, 32, 3000], [20, 2, 4, 300]);
    assert!(
        rate * seconds > 0 && concurrency > 0 && deliveries > 0,
        "RATE × SECONDS, CONCURRENCY and DELIVERIES must be positive"
    );
    bench_exit(block_on(run(
        rate,
        seconds,
        concurrency as usize,
        deliveries as usize,
    )));
}

/// A signed request body and header for a new paid purchase.
fn signed_purchase() -> (String, String) {
    let payload = Checkout::new(&format!("bench.{}@example.com", stripe::unique()))
        .session_event("checkout.session.completed", "paid")
        .to_string();
    let signature = stripe::sign(&payload, stripe::SECRET, stripe::now());
    (payload, signature)
}

async fn send(client: &reqwest::Client, url: &str, (payload, signature): (String, String)) {
    let res = client
        .post(url)
        .header("Stripe-Signature", signature)
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Prints the figures; returns the p99.
fn report(label: &str, mut latencies: Vec<Duration>, elapsed: Duration) -> Duration {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{label}: {} acks in {:.2}s = {:.0}/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    pct(0.99)
}

async fn run(rate: u64, seconds: u64, concurrency: usize, deliveries: usize) -> bool {
    // The real binary in a process of its own: the load below never shares its runtime.
    let server = ServerProcess::start("warn").await;
    let url: Arc<str> = format!("{}/v1/webhooks/stripe", server.base).into();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    for _ in 0..50 {
        send(&client, &url, signed_purchase()).await;
    }

    // 1. Open loop. Bodies are signed ahead so the load generator's own work stays off the
    // clock.
    let total = (rate * seconds) as usize;
    let bodies: Vec<_> = (0..total).map(|_| signed_purchase()).collect();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            send(&client, &url, body).await;
            due.elapsed()
        });
    }
    let latencies = tasks.join_all().await;
    let p99 = report(
        &format!("open loop at {rate}/s"),
        latencies,
        started.elapsed(),
    );
    let met = goal(
        &format!("open-loop p99 under 50 ms at {rate}/s"),
        format!("p99 {:.1} ms", p99.as_secs_f64() * 1e3),
        p99 < Duration::from_millis(50),
    );

    // 2. Closed loop.
    let bodies = Arc::new(std::sync::Mutex::new(
        (0..deliveries)
            .map(|_| signed_purchase())
            .collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(body) = bodies.lock().unwrap().pop() else {
                    return latencies;
                };
                let t = Instant::now();
                send(&client, &url, body).await;
                latencies.push(t.elapsed());
            }
        });
    }
    let latencies: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    report(
        &format!("closed loop, {concurrency} clients"),
        latencies,
        started.elapsed(),
    );
    let pool = sqlx::PgPool::connect(&server.vars["DATABASE_URL"])
        .await
        .unwrap();
    let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM license")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Each acknowledged purchase issued its licence in the same transaction: one each, for the
    // warm-up's, the open loop's and the closed loop's.
    let acknowledged = 50 + rate * seconds + deliveries as u64;
    check(
        "one licence per acknowledged purchase",
        format!("{purchases} licences for {acknowledged} purchases"),
        purchases as u64 == acknowledged,
    );
    pool.close().await;
    server.stop().await;
    met
}
