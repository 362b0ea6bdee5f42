//! Collection floods cannot starve the rest of the backend (issue 12): signups and Stripe
//! webhook acknowledgements are measured on a quiet server, then again while many clients
//! flood `/v1/analytics/events` and the crash envelope endpoint with the most those accept,
//! in the same run, against the real `pexper-server` binary with its production limits.
//!
//!     cargo bench -p pexper-tests --bench flood [-- SECONDS FLOODERS RATE]
//!
//! SECONDS (default 30) of flood, after SECONDS/2 of quiet baseline; FLOODERS (default 64)
//! clients, each with its own address, alternating a 100-event batch and a gzip envelope of
//! 100 sessions and a crash report as fast as they get answers, ignoring `Retry-After` as a
//! hostile client would; the probes run open loop at RATE signups/s plus RATE webhooks/s
//! (default 20 each), latency measured from when each was due (no coordinated omission).
//! Goals: signup and webhook p99 under flood within 2× of the quiet baseline; no 5xx at all.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn main() {
    let [seconds, flooders, rate] = bench_args([30, 64, 20]);
    let ok = block_on(run(seconds, flooders as usize, rate));
    std::process::exit(if ok { 0 } else { 1 });
}

/// Latencies and statuses of one kind of request.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, usize>,
}

impl Tally {
    fn add(&mut self, status: u16, latency: Duration) {
        self.latencies.push(latency);
        *self.statuses.entry(status).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
    }

    fn pct(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    fn server_errors(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<34} n={:<6} p50 {:>7.1} ms  p99 {:>7.1} ms  statuses {:?}",
            self.latencies.len(),
            self.pct(0.50),
            self.pct(0.99),
            self.statuses
        )
    }
}

/// Open-loop signups and webhooks at `rate` each per second for `seconds`.
async fn probe(base: Arc<str>, client: reqwest::Client, rate: u64, seconds: u64) -> (Tally, Tally) {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..(rate * seconds) as u32 {
        let due = started + period * i;
        tokio::time::sleep_until(due.into()).await;
        let (base, client) = (base.clone(), client.clone());
        tasks.spawn(async move {
            let id = stripe::unique();
            // A person signing up from their own address, as on the website; and a purchase.
            let signup = client
                .post(format!("{base}/v1/waitlist"))
                .header(
                    "x-forwarded-for",
                    format!("203.0.{}.{}", i / 256 % 256, i % 256),
                )
                .json(&json!({"email": format!("probe.{id}@example.com"), "source": "bench"}))
                .send();
            let payload = Checkout::new(&format!("buyer.{id}@example.com"))
                .session_event("checkout.session.completed", "paid")
                .to_string();
            let webhook = client
                .post(format!("{base}/v1/webhooks/stripe"))
                .header(
                    "Stripe-Signature",
                    stripe::sign(&payload, stripe::SECRET, stripe::now()),
                )
                .body(payload)
                .send();
            tokio::join!(timed(signup, due), timed(webhook, due))
        });
    }
    let (mut signups, mut webhooks) = (Tally::default(), Tally::default());
    for ((s, sl), (w, wl)) in tasks.join_all().await {
        signups.add(s, sl);
        webhooks.add(w, wl);
    }
    (signups, webhooks)
}

/// Awaits a request; its status (0 if it failed) and the time since it was due.
async fn timed(
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    due: Instant,
) -> (u16, Duration) {
    let status = request.await.map_or(0, |r| r.status().as_u16());
    (status, due.elapsed())
}

fn events_batch() -> Vec<u8> {
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    let events: Vec<_> = (0..100)
        .map(|_| json!({"name": "feature.used", "timestamp": now, "props": {"feature": "providers"}}))
        .collect();
    serde_json::to_vec(
        &json!({"app_version": "1.4.0", "os": "linux", "arch": "x86_64",
        "session_id": uuid::Uuid::new_v4(), "events": events}),
    )
    .unwrap()
}

/// The largest envelope the intake takes whole: a crash report and 99 session updates, gzip.
fn envelope() -> Vec<u8> {
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    let mut body = b"{}\n".to_vec();
    let event = json!({"event_id": uuid::Uuid::new_v4().simple().to_string(), "level": "fatal",
        "release": "pexper@1.4.0", "exception": {"values": [{"type": "panic",
        "value": "index out of bounds", "stacktrace": {"frames": [{"function": "main", "in_app": true}]}}]}})
    .to_string();
    body.extend(
        format!(
            "{{\"type\":\"event\",\"length\":{}}}\n{event}\n",
            event.len()
        )
        .as_bytes(),
    );
    for _ in 0..99 {
        let s = json!({"sid": uuid::Uuid::new_v4(), "started": now, "status": "exited",
            "attrs": {"release": "pexper@1.4.0", "environment": "production"}});
        body.extend(format!("{{\"type\":\"session\"}}\n{s}\n").as_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    gz.finish().unwrap()
}

/// One hostile client: its own address, alternating batches and envelopes until `stop`.
async fn flood(
    base: Arc<str>,
    client: reqwest::Client,
    n: usize,
    stop: Arc<AtomicBool>,
) -> (Tally, Tally) {
    let address = format!("2001:db8:{n:x}::1");
    let (mut events, mut envelopes) = (Tally::default(), Tally::default());
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let res = client
            .post(format!("{base}/v1/analytics/events"))
            .header("x-forwarded-for", &address)
            .header("content-type", "application/json")
            .body(events_batch())
            .send()
            .await;
        events.add(res.map_or(0, |r| r.status().as_u16()), t.elapsed());
        let t = Instant::now();
        let res = client
            .post(format!("{base}/api/1/envelope/"))
            .header("x-forwarded-for", &address)
            .header(
                "x-sentry-auth",
                "Sentry sentry_key=pexper-dev, sentry_version=7",
            )
            .header("content-encoding", "gzip")
            .body(envelope())
            .send()
            .await;
        envelopes.add(res.map_or(0, |r| r.status().as_u16()), t.elapsed());
    }
    (events, envelopes)
}

async fn run(seconds: u64, flooders: usize, rate: u64) -> bool {
    let server = ServerProcess::start_with("warn", &[("PEXPER_TRUSTED_PROXY", "127.0.0.1")]).await;
    let base: Arc<str> = server.base.clone().into();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    probe(base.clone(), client.clone(), rate, 2).await; // warm-up: pools, caches

    let (quiet_signups, quiet_webhooks) =
        probe(base.clone(), client.clone(), rate, seconds / 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = tokio::task::JoinSet::new();
    for n in 0..flooders {
        floods.spawn(flood(base.clone(), client.clone(), n, stop.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // the flood is on before probing
    let started = Instant::now();
    let (flood_signups, flood_webhooks) = probe(base.clone(), client.clone(), rate, seconds).await;
    let probed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut events, mut envelopes) = (Tally::default(), Tally::default());
    for (e, v) in floods.join_all().await {
        events.merge(e);
        envelopes.merge(v);
    }

    println!(
        "flood: {flooders} clients for {:.1}s; probes at {rate}/s signups + {rate}/s webhooks",
        probed.as_secs_f64()
    );
    println!("{}", quiet_signups.line("signups, quiet"));
    println!("{}", flood_signups.line("signups, under flood"));
    println!("{}", quiet_webhooks.line("webhooks, quiet"));
    println!("{}", flood_webhooks.line("webhooks, under flood"));
    println!("{}", events.line("flood: event batches"));
    println!("{}", envelopes.line("flood: envelopes"));
    let accepted = |t: &Tally, s: u16| t.statuses.get(&s).copied().unwrap_or(0);
    println!(
        "flood accepted: {:.0} batches/s ({:.0} events/s), {:.0} envelopes/s",
        accepted(&events, 202) as f64 / probed.as_secs_f64(),
        accepted(&events, 202) as f64 * 100.0 / probed.as_secs_f64(),
        accepted(&envelopes, 200) as f64 / probed.as_secs_f64(),
    );
    let ratio = |flood: &Tally, quiet: &Tally| flood.pct(0.99) / quiet.pct(0.99);
    let (signup_ratio, webhook_ratio) = (
        ratio(&flood_signups, &quiet_signups),
        ratio(&flood_webhooks, &quiet_webhooks),
    );
    let errors: usize = [
        &quiet_signups,
        &flood_signups,
        &quiet_webhooks,
        &flood_webhooks,
        &events,
        &envelopes,
    ]
    .iter()
    .map(|t| t.server_errors() + t.statuses.get(&0).copied().unwrap_or(0))
    .sum();
    let probes_ok = [&quiet_signups, &flood_signups]
        .iter()
        .all(|t| t.statuses.keys().all(|s| *s == 202))
        && [&quiet_webhooks, &flood_webhooks]
            .iter()
            .all(|t| t.statuses.keys().all(|s| *s == 200));
    println!(
        "p99 under flood / quiet: signups {signup_ratio:.2}x, webhooks {webhook_ratio:.2}x (goal ≤ 2x); 5xx or failed requests: {errors} (goal 0); every probe answered 202/200: {probes_ok}"
    );
    server.stop().await;
    signup_ratio <= 2.0 && webhook_ratio <= 2.0 && errors == 0 && probes_ok
}
