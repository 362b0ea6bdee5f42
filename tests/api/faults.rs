//! Faults done for real: Postgres stopped under a running server, an SMTP relay away for
//! ten minutes.

use std::time::Duration;

use pexper_tests::*;
use serde_json::{Value, json};

#[tokio::test]
async fn while_the_database_is_down_requests_answer_503_at_once_and_the_server_recovers_by_itself()
{
    use pexper_platform::db::managed::{Durability, ManagedPostgres};
    init();
    // A cluster of this test's own: the shared one serves every other test.
    let dir = tempdir::TempDir::new();
    let root = dir.path().join("postgres");
    let start = {
        let root = root.clone();
        move || ManagedPostgres::start_or_reuse(&root, None, Durability::Throwaway).unwrap()
    };
    let cluster = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    pexper_platform::db::ensure_database(&cluster, "pexper")
        .await
        .unwrap();
    let url = secrecy::ExposeSecret::expose_secret(&cluster.url("pexper")).to_owned();
    let app = spawn_app_with(AppOptions {
        vars: vec![("DATABASE_URL", url)],
        ..AppOptions::default()
    })
    .await;
    let signup = |email: &'static str| {
        app.client
            .post(app.url("/v1/waitlist"))
            .json(&json!({ "email": email }))
            .send()
    };
    assert_eq!(signup("before@example.com").await.unwrap().status(), 202);

    let stop_root = root.clone();
    tokio::task::spawn_blocking(move || ManagedPostgres::stop(&stop_root, None).unwrap())
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    let res = signup("during@example.com").await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "answered in {waited:?}"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    // Back, on the port it had: the server reconnects by itself.
    let again = tokio::task::spawn_blocking(start).await.unwrap();
    assert_eq!(again.port(), cluster.port(), "the cluster keeps its port");
    eventually(Duration::from_secs(15), "signups to work again", || async {
        let res = signup("after@example.com").await.ok()?;
        (res.status() == 202).then_some(())
    })
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        app.count("person").await,
        2,
        "before and after; the refused one is not kept"
    );
    tokio::task::spawn_blocking(move || ManagedPostgres::stop(&root, None).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn mail_waits_out_a_ten_minute_relay_outage_and_goes_out_once() {
    let app = spawn_app().await;
    // The relay answers 451 to every recipient: down, as far as we can tell.
    app.smtp.reject_transiently(Some("@"));
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "patient@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // Live through the outage at speed: after each failed attempt, add up the backoff the job
    // asked for, then make it due at once, until ten minutes' worth of waiting has passed.
    let (mut waited, mut seen) = (0.0, 0);
    while waited < 600.0 {
        let (attempts, status, backoff_s): (i32, String, f64) = eventually(
            Duration::from_secs(10),
            "the next failed attempt",
            || async {
                let row: (i32, String, f64) = sqlx::query_as(
                    "SELECT attempts, status, extract(epoch FROM run_at - updated_at)::float8
                     FROM job WHERE kind = 'waitlist.signup_mail'",
                )
                .fetch_one(&app.platform.pool)
                .await
                .unwrap();
                (row.0 > seen && row.1 != "running").then_some(row)
            },
        )
        .await;
        assert_eq!(
            status, "queued",
            "after attempt {attempts} and {waited:.0} s: waiting, not dead"
        );
        waited += backoff_s;
        seen = attempts;
        sqlx::query("UPDATE job SET run_at = now() WHERE kind = 'waitlist.signup_mail'")
            .execute(&app.platform.pool)
            .await
            .unwrap();
    }
    // What waits, and why, is visible to the operator.
    let out = admin(&app.cli_vars(), &["jobs", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let waiting = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "waitlist.signup_mail")
        .unwrap();
    assert!(
        waiting["last_error"].as_str().unwrap().contains("451"),
        "{waiting}"
    );
    assert!(
        !waiting["last_error"].as_str().unwrap().contains("patient"),
        "{waiting}"
    );

    // The relay is back: the email goes out, once.
    app.smtp.reject_transiently(None);
    sqlx::query("UPDATE job SET run_at = now() WHERE kind = 'waitlist.signup_mail'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    app.smtp.wait_for(1, Duration::from_secs(10)).await;
    app.queue_drained().await;
    let to_them = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.to == vec!["<patient@example.com>"])
        .count();
    assert_eq!(to_them, 1);
}

#[tokio::test]
async fn sigterm_hands_back_a_job_it_cannot_finish_and_exits_within_its_grace() {
    init();
    let grace = Duration::from_secs(2);
    let mut replicas = Replicas::start(
        1,
        TestDatabase::new().await,
        "info",
        &[("PEXPER_SHUTDOWN_GRACE_SECONDS", "2")],
    )
    .await;
    let pool = replicas.db.pool().await;
    // The relay answers no connection: the confirmation's job hangs in hand.
    replicas.smtp.stall(true);
    let res = reqwest::Client::new()
        .post(format!("{}/v1/waitlist", replicas.bases[0]))
        .json(&json!({"email": "patient@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job_state = || async {
        sqlx::query_as::<_, (String, i32, bool)>(
            "SELECT status, attempts, locked_until <= now() FROM job
             WHERE kind = 'waitlist.signup_mail'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    eventually(Duration::from_secs(10), "the job to be in hand", || async {
        job_state()
            .await
            .filter(|(status, _, _)| status == "running")
    })
    .await;

    // SIGTERM: the job is given its grace, then handed back, and the process exits.
    let took = replicas.terminate(0).await;
    eprintln!("exited {took:?} after SIGTERM, with a grace of {grace:?}");
    assert!(
        took >= grace && took < grace + Duration::from_secs(3),
        "exited {took:?} after SIGTERM, with a grace of {grace:?}"
    );
    assert_eq!(
        job_state().await,
        Some(("running".to_owned(), 1, true)),
        "its lease is over: the next worker need not wait for it to lapse"
    );

    // Another replica takes it at once (the lease was 60 s) and the email goes out, once.
    replicas.smtp.stall(false);
    let restarted = std::time::Instant::now();
    replicas.add().await;
    replicas.smtp.wait_for(1, Duration::from_secs(20)).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(30),
        "{:?}",
        restarted.elapsed()
    );
    eventually(Duration::from_secs(10), "the job to be done", || async {
        job_state().await.is_none().then_some(())
    })
    .await;
    assert_eq!(replicas.smtp.received().len(), 1);
}
