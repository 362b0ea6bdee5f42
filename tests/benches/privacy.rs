//! Export and erasure of one person, against a database with many other people in it, on this
//! machine: the work an access or deletion request does once verified (every service's export
//! sealed into one document; every service's erase and the key's destruction).
//!
//!     cargo bench -p pexper-tests --bench privacy [-- PEOPLE SAMPLES]
//!
//! PEOPLE (default 5000) join the waitlist; SAMPLES (default 20) of them also buy and have an
//! email history. Goal: each export and each erasure under 1 s.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use pexper_platform::address::EmailAddress;
use pexper_platform::http::HttpOptions;
use pexper_platform::person;
use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;

fn main() {
    let [people, samples] = bench_args([5000, 20], [30, 2]);
    bench_exit(block_on(run(people as usize, samples as usize)));
}

async fn post_all(app: &TestApp, bodies: Vec<(String, Option<String>, String)>) {
    let mut tasks = tokio::task::JoinSet::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    for (path, signature, body) in bodies {
        let (client, url, gate) = (app.client.clone(), app.url(&path), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(s) = signature {
                req = req.header("Stripe-Signature", s);
            }
            assert!(req.send().await.unwrap().status().is_success());
        });
    }
    tasks.join_all().await;
}

/// Prints the figures and checks the goal: each one under a second.
fn report(label: &str, mut times: Vec<Duration>) -> bool {
    times.sort();
    let max = *times.last().unwrap();
    println!(
        "{label}: {} people, p50 {:.1} ms, max {:.1} ms",
        times.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    goal(
        &format!("each {label} under 1 s"),
        format!("max {:.1} ms", max.as_secs_f64() * 1e3),
        max < Duration::from_secs(1),
    )
}

async fn run(people: usize, samples: usize) -> bool {
    let app = spawn_app_with(AppOptions {
        http: HttpOptions {
            burst: u32::MAX,
            replenish: Duration::from_nanos(1),
            ..HttpOptions::default()
        },
        ..AppOptions::default()
    })
    .await;
    let started = Instant::now();
    post_all(
        &app,
        (0..people)
            .map(|i| {
                let body =
                    serde_json::json!({"email": format!("person{i}@example.com")}).to_string();
                ("/v1/waitlist".to_owned(), None, body)
            })
            .collect(),
    )
    .await;
    post_all(
        &app,
        (0..samples)
            .map(|i| {
                let body = Checkout::new(&format!("person{i}@example.com"))
                    .session_event("checkout.session.completed", "paid")
                    .to_string();
                let signature = stripe::sign(&body, stripe::SECRET, stripe::now());
                ("/v1/webhooks/stripe".to_owned(), Some(signature), body)
            })
            .collect(),
    )
    .await;
    app.smtp
        .wait_for(people + samples, Duration::from_secs(900))
        .await;
    println!(
        "set-up: {people} people, {samples} buyers, {} emails in {:.1}s",
        people + samples,
        started.elapsed().as_secs_f64()
    );

    let platform = &app.platform;
    let mut ids = Vec::new();
    for i in 0..samples {
        let email = EmailAddress::parse(&format!("person{i}@example.com")).unwrap();
        let mut conn = platform.pool.acquire().await.unwrap();
        ids.push(
            person::find(&mut conn, &platform.keyring, &email)
                .await
                .unwrap()
                .unwrap(),
        );
    }

    let mut exports = Vec::new();
    for &id in &ids {
        let t = Instant::now();
        let mut conn = platform.pool.acquire().await.unwrap();
        let doc = platform
            .personal_data
            .export(&mut conn, &platform.keyring, id)
            .await
            .unwrap();
        let bytes = serde_json::to_vec(&doc).unwrap();
        let key = person::data_key(&mut conn, &platform.keyring, id)
            .await
            .unwrap()
            .unwrap();
        let field = pexper_platform::crypto::Field {
            table: "privacy_export",
            column: "document_sealed",
            row: id.0,
        };
        std::hint::black_box(key.seal(field, &bytes));
        exports.push(t.elapsed());
        assert_eq!(doc["payments"]["purchases"].as_array().unwrap().len(), 1);
    }
    let exports_met = report("export (every section, sealed)", exports);

    let mut erasures = Vec::new();
    for &id in &ids {
        let t = Instant::now();
        let mut tx = platform.pool.begin().await.unwrap();
        platform
            .personal_data
            .erase(&mut tx, &platform.keyring, id)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        erasures.push(t.elapsed());
    }
    let erasures_met = report(
        "erasure (every section, key destroyed, committed)",
        erasures,
    );
    exports_met && erasures_met
}
