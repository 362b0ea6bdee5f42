//! Three `pexper-server` replicas on one Postgres, as pexper.com runs them behind a load
//! balancer: they migrate one empty database at once, share the load, and behave as one
//! server — one email per signup, each job run once, each recurring job once per period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pexper_tests::*;
use serde_json::json;

/// How many times `needle` appears in every replica's log together.
fn logged(replicas: &Replicas, needle: &str) -> usize {
    replicas
        .logs()
        .iter()
        .map(|log| log.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

#[tokio::test]
async fn three_replicas_on_one_database_behave_as_one() {
    init();
    let started = Instant::now();
    let replicas = Replicas::start(
        3,
        TestDatabase::empty().await,
        "info",
        &[
            ("PEXPER_RECURRING_SECONDS", "1"),
            // Each request below names its own client, as a load balancer would.
            ("PEXPER_TRUSTED_PROXY", "127.0.0.1"),
        ],
    )
    .await;
    let pool = replicas.db.pool().await;

    // All three ran the migrator on the empty database at once: each migration applied once.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count();
    let applied: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT version, count(*), bool_and(success) FROM _sqlx_migrations GROUP BY version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(applied.len(), migrations, "{applied:?}");
    assert!(
        applied.iter().all(|(_, n, ok)| *n == 1 && *ok),
        "{applied:?}"
    );

    // Thirty people sign up, spread over the replicas; one more asks on all three at once,
    // three times each.
    let client = reqwest::Client::new();
    let signup = |base: &str, email: String, client_ip: String| {
        client
            .post(format!("{base}/v1/waitlist"))
            .header("X-Forwarded-For", client_ip)
            .json(&json!({ "email": email }))
            .send()
    };
    let mut sent = Vec::new();
    for i in 0..30 {
        let base = &replicas.bases[i % 3];
        sent.push(signup(
            base,
            format!("person{i}@example.com"),
            format!("192.0.2.{i}"),
        ));
    }
    for round in 0..3 {
        for (r, base) in replicas.bases.iter().enumerate() {
            let ip = format!("198.51.100.{}", round * 3 + r);
            sent.push(signup(base, "everywhere@example.com".into(), ip));
        }
    }
    for answer in join_all(sent.into_iter().map(tokio::spawn)).await {
        assert_eq!(answer.unwrap().status(), 202);
    }

    // One confirmation each: no replica sends what another sent, and every job ran once.
    replicas.smtp.wait_for(31, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(30),
        "the signup jobs to finish",
        || async {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job WHERE kind LIKE 'waitlist.%'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (waiting == 0).then_some(())
        },
    )
    .await;
    let mut per_address: BTreeMap<String, usize> = BTreeMap::new();
    for m in replicas.smtp.received() {
        *per_address.entry(m.to.join(",")).or_default() += 1;
    }
    assert_eq!(per_address.len(), 31, "{per_address:?}");
    assert!(per_address.values().all(|n| *n == 1), "{per_address:?}");
    let attempts = replicas
        .logs()
        .iter()
        .flat_map(|log| log.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            l.contains("waitlist.signup_mail")
                && (l.contains("job done") || l.contains("job failed"))
        })
        .count();
    // Every signup request queues one job (the job decides whether to mail): 39 requests, 39
    // jobs, each run once, by one replica.
    assert_eq!(attempts, 39, "each signup's job ran once, on one replica");

    // The rollup is due every second. Each replica looks once a second; together they must
    // run it once a second, not three times.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let periods = started.elapsed().as_secs() + 1;
    let rollups = logged(&replicas, "analytics rolled up");
    assert!(
        (2..=periods as usize + 1).contains(&rollups),
        "{rollups} rollups in {periods} periods of a second (with each replica enqueuing on its own tick, about three times as many)"
    );
}
