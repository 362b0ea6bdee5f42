//! Collection floods cannot starve the rest of the backend (issue 12): signups and Stripe
//! webhook acknowledgements are measured on a quiet server, then again while many clients
//! flood `/v1/analytics/events` and the crash envelope endpoint with the most those accept,
//! in the same run, against the real `pexper-server` binary with its production limits.
//!
//!     cargo bench -p pexper-tests --bench flood [-- SECONDS FLOODERS RATE]
//!
//! SECONDS/2 (default 30) of quiet baseline, then SECONDS of each flood: FLOODERS (default 64)
//! clients, each with its own address, alternating a 100-event batch and a gzip envelope of
//! a crash report and 99 sessions. The *polite* flood sends the most the endpoints accept:
//! each client waits as long as a 429's `Retry-After` says, as the SDKs do. The *hostile*
//! flood ignores it and sends the next request as soon as it has an answer. The probes run
//! open loop at RATE signups/s plus RATE webhooks/s (default 20 each), latency measured from
//! when each was due (no coordinated omission).
//! Goals: under the polite flood, signup and webhook p99 within 2× of the quiet baseline; no
//! 5xx and no failed request in either flood (the hostile one's ratios are reported).
//!
//! A real flood comes from other machines; here it shares the 2 cores with the server and
//! Postgres. So the flooders run in a child process of this benchmark at `nice 10`, with every
//! body built before the clock starts: the server still gets every request they can send,
//! but the generator's own work does not sit in the probes' latency.
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
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, base, flooders, manner, seconds] = args.as_slice()
        && flag == "--flood-child"
    {
        init(); // the rustls provider
        let (flooders, seconds) = (flooders.parse().unwrap(), seconds.parse().unwrap());
        let polite = manner == "polite";
        let tallies = block_on(flood_for(base.as_str().into(), flooders, polite, seconds));
        println!("{}", serde_json::to_string(&tallies).unwrap());
        return;
    }
    let [seconds, flooders, rate] = bench_args([30, 64, 20], [2, 4, 5]);
    let ok = block_on(run(seconds, flooders as usize, rate));
    bench_exit(ok);
}

/// Latencies and statuses of one kind of request.
#[derive(Default, serde::Serialize, serde::Deserialize)]
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

/// Request bodies built before the clock starts: event batches, and gzip envelopes.
struct Bodies {
    batches: Vec<Vec<u8>>,
    envelopes: Vec<Vec<u8>>,
}

/// How long a 429 asks a client to wait.
fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    if res.status() != 429 {
        return None;
    }
    let seconds = res
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// One flooding client, with its own address, until `stop`: a batch, then an envelope, and
/// again. A polite one skips an endpoint for as long as its last 429 asked.
async fn flood(
    base: Arc<str>,
    client: reqwest::Client,
    n: usize,
    bodies: Arc<Bodies>,
    polite: bool,
    stop: Arc<AtomicBool>,
) -> (Tally, Tally) {
    let address = format!("2001:db8:{n:x}::1");
    let mut tallies = (Tally::default(), Tally::default());
    let mut not_before = [Instant::now(); 2];
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        for (endpoint, wait_until) in not_before.iter_mut().enumerate() {
            let started = Instant::now();
            if started < *wait_until {
                continue;
            }
            let request = if endpoint == 0 {
                client
                    .post(format!("{base}/v1/analytics/events"))
                    .header("content-type", "application/json")
                    .body(bodies.batches[i % bodies.batches.len()].clone())
            } else {
                client
                    .post(format!("{base}/api/1/envelope/"))
                    .header(
                        "x-sentry-auth",
                        "Sentry sentry_key=pexper-dev, sentry_version=7",
                    )
                    .header("content-encoding", "gzip")
                    .body(bodies.envelopes[i % bodies.envelopes.len()].clone())
            };
            let res = request.header("x-forwarded-for", &address).send().await;
            if polite && let Some(wait) = res.as_ref().ok().and_then(retry_after) {
                *wait_until = Instant::now() + wait;
            }
            let tally = if endpoint == 0 {
                &mut tallies.0
            } else {
                &mut tallies.1
            };
            tally.add(res.map_or(0, |r| r.status().as_u16()), started.elapsed());
        }
        let next = not_before[0].min(not_before[1]);
        if next > Instant::now() {
            tokio::time::sleep_until(next.into()).await;
        }
    }
    tallies
}

/// The child process: `flooders` clients for `seconds`, then their tallies.
async fn flood_for(base: Arc<str>, flooders: usize, polite: bool, seconds: u64) -> (Tally, Tally) {
    let bodies = Arc::new(Bodies {
        batches: (0..512).map(|_| events_batch()).collect(),
        envelopes: (0..512).map(|_| envelope()).collect(),
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(flooders)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = tokio::task::JoinSet::new();
    for n in 0..flooders {
        let (base, client, bodies, stop) =
            (base.clone(), client.clone(), bodies.clone(), stop.clone());
        floods.spawn(flood(base, client, n, bodies, polite, stop));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut events, mut envelopes) = (Tally::default(), Tally::default());
    for (e, v) in floods.join_all().await {
        events.merge(e);
        envelopes.merge(v);
    }
    (events, envelopes)
}

/// Probes for `seconds` while a child process floods in `manner`, starting `margin(seconds)`
/// before the probes and ending as long after.
async fn flooded(
    base: &str,
    client: &reqwest::Client,
    manner: &str,
    flooders: usize,
    rate: u64,
    seconds: u64,
) -> (Tally, Tally, Tally, Tally) {
    let child = tokio::process::Command::new("nice")
        .args(["-n", "10"])
        .arg(std::env::current_exe().unwrap())
        .args(["--flood-child", base, &flooders.to_string(), manner])
        .arg((seconds + 2 * margin(seconds)).to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(margin(seconds))).await; // bodies built, the flood is on
    let (signups, webhooks) = probe(base.into(), client.clone(), rate, seconds).await;
    let out = child.wait_with_output().await.unwrap();
    let (events, envelopes): (Tally, Tally) = serde_json::from_slice(&out.stdout).unwrap();
    (signups, webhooks, events, envelopes)
}

/// Seconds of warm-up, and of flood before and after the probes: two, one in a smoke run.
fn margin(seconds: u64) -> u64 {
    (seconds / 2).clamp(1, 2)
}

async fn run(seconds: u64, flooders: usize, rate: u64) -> bool {
    let server = ServerProcess::start_with("warn", &[("PEXPER_TRUSTED_PROXY", "127.0.0.1")]).await;
    let base: Arc<str> = server.base.clone().into();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    probe(base.clone(), client.clone(), rate, margin(seconds)).await; // warm-up: pools, caches
    let warm_rss = memory(server.pid(), "VmRSS");
    let (quiet_signups, quiet_webhooks) =
        probe(base.clone(), client.clone(), rate, seconds / 2).await;
    println!(
        "quiet: probes at {rate}/s signups + {rate}/s webhooks for {}s",
        seconds / 2
    );
    println!("{}", quiet_signups.line("signups"));
    println!("{}\n", quiet_webhooks.line("webhooks"));

    let mut ok = true;
    for manner in ["polite", "hostile"] {
        let (signups, webhooks, events, envelopes) =
            flooded(&server.base, &client, manner, flooders, rate, seconds).await;
        let flood_seconds = (seconds + 2 * margin(seconds)) as f64;
        let count = |t: &Tally, s: u16| t.statuses.get(&s).copied().unwrap_or(0) as f64;
        println!("{manner} flood: {flooders} clients for {flood_seconds}s");
        println!("{}", signups.line("signups"));
        println!("{}", webhooks.line("webhooks"));
        println!("{}", events.line("flood: event batches"));
        println!("{}", envelopes.line("flood: envelopes"));
        println!(
            "flood accepted: {:.0} batches/s ({:.0} events/s), {:.0} envelopes/s, of {:.0} requests/s",
            count(&events, 202) / flood_seconds,
            count(&events, 202) * 100.0 / flood_seconds,
            count(&envelopes, 200) / flood_seconds,
            (events.latencies.len() + envelopes.latencies.len()) as f64 / flood_seconds,
        );
        let ratio = |flood: &Tally, quiet: &Tally| flood.pct(0.99) / quiet.pct(0.99);
        let (signup_ratio, webhook_ratio) = (
            ratio(&signups, &quiet_signups),
            ratio(&webhooks, &quiet_webhooks),
        );
        let errors: usize = [&signups, &webhooks, &events, &envelopes]
            .iter()
            .map(|t| t.server_errors() + t.statuses.get(&0).copied().unwrap_or(0))
            .sum();
        let probes_ok = signups.statuses.keys().all(|s| *s == 202)
            && webhooks.statuses.keys().all(|s| *s == 200);
        let within = signup_ratio <= 2.0 && webhook_ratio <= 2.0;
        println!(
            "p99 under flood / quiet: signups {signup_ratio:.2}x, webhooks {webhook_ratio:.2}x ({}); 5xx or failed: {errors} (goal 0); probes all 202/200: {probes_ok}\n",
            if manner == "polite" {
                "goal ≤ 2x"
            } else {
                "reported"
            }
        );
        check(
            &format!("{manner} flood: no 5xx or failed request, every probe 202/200"),
            format!("{errors} 5xx or failed; probes {probes_ok}"),
            errors == 0 && probes_ok,
        );
        ok &= manner != "polite" || within;
    }
    let errors = quiet_signups.server_errors() + quiet_webhooks.server_errors();
    // What deploy/k8s/deployment.yaml's memory request and limit are sized from.
    println!(
        "server memory: {warm_rss} MiB resident when warm, {} MiB at its peak (through both floods)\n",
        memory(server.pid(), "VmHWM")
    );
    server.stop().await;
    check(
        "quiet baseline: no 5xx",
        format!("{errors} 5xx"),
        errors == 0,
    );
    ok
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmRSS`: resident now; `VmHWM`: the
/// peak resident), in MiB.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib / 1024
}
