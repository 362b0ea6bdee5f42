//! A product update to the whole waitlist (issue 17): `pexper-admin mail broadcast` to PEOPLE
//! confirmed subscribers, delivered DKIM-signed by the real `pexper-server` to a local SMTP
//! server, against a durable Postgres cluster of the bench's own.
//!
//!     cargo bench -p pexper-tests --bench broadcast [-- PEOPLE]
//!
//! The first run of the command is killed (SIGKILL) a moment after it starts queueing; the
//! second run resumes it. Goals: every subscriber gets exactly one copy, all within 3 minutes
//! of the first run's start, and the server's memory stays under 64 MB.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pexper_platform::address::EmailAddress;
use pexper_platform::person::NewPerson;
use pexper_tests::*;

fn main() {
    // The smoke run is larger than one of the broadcast's batches (1,000), so the first run
    // is killed with some of them queued and the second resumes it.
    let [people] = bench_args([100_000], [2_100]);
    bench_exit(block_on(run(people as usize)));
}

/// `people` confirmed, subscribed waitlist members, written straight into the database (the
/// signup path has a bench of its own), sealed under the server's keys.
async fn subscribers(
    pool: &sqlx::PgPool,
    keyring: &pexper_platform::crypto::Keyring,
    people: usize,
) {
    for chunk in (0..people).collect::<Vec<_>>().chunks(5_000) {
        let rows: Vec<NewPerson> = chunk
            .iter()
            .map(|i| {
                let email = EmailAddress::parse(&format!("member.{i}@example.com")).unwrap();
                NewPerson::new(keyring, &email)
            })
            .collect();
        sqlx::query(
            "WITH p AS (
                 INSERT INTO person (id, email_index, email_sealed, data_key, key_version)
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::int[])
                 RETURNING id
             )
             INSERT INTO waitlist_entry (person_id, status, subscribed, confirm_seq, confirmed_at)
             SELECT id, 'confirmed', true, nextval('waitlist_confirm_seq'), now() FROM p",
        )
        .bind(rows.iter().map(|r| r.id.0).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.email_index.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.email_sealed.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.data_key.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key_version).collect::<Vec<_>>())
        .execute(pool)
        .await
        .unwrap();
    }
}

/// `pexper-admin mail broadcast` of one product update, as a child process.
fn broadcast_command(
    vars: &HashMap<String, String>,
    body: &std::path::Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary("pexper-admin"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars)
        .args(["mail", "broadcast", "--template", "product-update"])
        .args(["--subject", "Pexper 1.0 is out"])
        .arg("--body-file")
        .arg(body)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

async fn run(people: usize) -> bool {
    let cluster = DurableCluster::start().await;
    let url = cluster.database("broadcast").await;
    let dkim = dkim_vars();
    let production = production_vars();
    let mut vars = vec![("DATABASE_URL", url.as_str())];
    vars.extend(dkim.iter().map(|(k, v)| (*k, v.as_str())));
    vars.extend(production.iter().map(|(k, v)| (*k, v.as_str())));
    let server = ServerProcess::start_with("warn", &vars).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let config = pexper_platform::Config::from_vars(server.vars.clone()).unwrap();
    let master = pexper_platform::keys::load_master_keys(&config).unwrap();
    let keyring = pexper_platform::keys::keyring(&pool, &master)
        .await
        .unwrap();
    let seeded = Instant::now();
    subscribers(&pool, &keyring, people).await;
    println!(
        "{people} subscribers written in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let dir = tempdir::TempDir::new();
    let body = dir.path().join("update.md");
    std::fs::write(
        &body,
        "Pexper 1.0 is out.\n\nThank you for waiting with us.",
    )
    .unwrap();
    let vars: HashMap<String, String> = server.vars.clone();
    let started = Instant::now();
    // The first run dies while it queues: kill -9 once some of its batches are in.
    let mut first = broadcast_command(&vars, &body).spawn().unwrap();
    eventually(
        Duration::from_secs(60),
        "the first batches queued",
        || async {
            let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcast_delivery")
                .fetch_one(&pool)
                .await
                .unwrap();
            (queued > 0).then_some(())
        },
    )
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_after: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcast_delivery")
        .fetch_one(&pool)
        .await
        .unwrap();
    let second = tokio::task::spawn_blocking({
        let cmd = broadcast_command(&vars, &body);
        // Bounded, like every wait here: a broadcast that never ends fails the run.
        move || output_within(cmd, Duration::from_secs(600), "the resumed broadcast")
    })
    .await
    .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let queued_in = started.elapsed();
    let progress = String::from_utf8_lossy(&second.stderr).into_owned();
    let last_progress = progress
        .split(['\r', '\n'])
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned();

    // Delivery, with progress every 10 s.
    let mut last_report = Instant::now();
    while server.smtp.count() < people && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            println!(
                "  {:>6.1} s: {} of {people} delivered",
                started.elapsed().as_secs_f64(),
                server.smtp.count()
            );
            last_report = Instant::now();
        }
    }
    let took = started.elapsed();
    let arrivals = server.smtp.arrivals();
    let copies = server.smtp.count();
    let rss = peak_rss_mb(server.pid());

    println!(
        "\n| people | first run killed after | queued in | delivered | copies | in | rate | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {people} | {killed_after} queued | {:.1} s | {} | {copies} | {:.1} s | {:.0}/s | {rss:.0} MB |",
        queued_in.as_secs_f64(),
        arrivals.len(),
        took.as_secs_f64(),
        copies as f64 / took.as_secs_f64(),
    );
    println!("second run's last progress line: {last_progress}");
    check(
        "every subscriber has exactly one copy",
        format!("{} people, {copies} copies", arrivals.len()),
        arrivals.len() == people && copies == people,
    );
    let mut met = goal(
        &format!("{people} delivered within 3 minutes of the first run's start"),
        format!("{:.1} s", took.as_secs_f64()),
        took < Duration::from_secs(180),
    );
    met &= goal("server peak RSS", format!("{rss:.0} MB"), rss < 64.0);
    server.stop().await;
    pool.close().await;
    cluster.stop().await;
    met
}
