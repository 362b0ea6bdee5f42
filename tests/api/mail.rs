//! Mail over a real SMTP server: stable Message-IDs, and rejections classified as permanent
//! or worth a retry.

use std::time::Duration;

use pexper_platform::core;
use pexper_platform::jobs;
use pexper_tests::*;

#[tokio::test]
async fn an_operator_notice_arrives_over_smtp_with_a_stable_message_id() {
    let app = spawn_app().await;
    let mut tx = app.platform.pool.begin().await.unwrap();
    let id = jobs::enqueue(
        &mut tx,
        core::operator_notice(
            "Request due in 3 days",
            vec!["Request 7 is due on 2026-12-01.".into()],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();

    let mail = app.smtp.wait_for(1, Duration::from_secs(10)).await;
    let m = &mail[0];
    assert_eq!(m.to, vec!["<privacy@pexper.com>"]);
    assert_eq!(
        m.header("Subject").unwrap(),
        "[Pexper] Request due in 3 days"
    );
    assert_eq!(
        m.header("Message-ID").unwrap(),
        format!("<{id}@pexper.com>")
    );
    assert!(m.data.contains("multipart/alternative"));
    assert!(m.data.contains("Request 7 is due on 2026-12-01."));
    app.queue_drained().await;
}

#[tokio::test]
async fn smtp_rejections_are_classified_permanent_or_transient() {
    let app = spawn_app_with(AppOptions {
        vars: vec![("PEXPER_PRIVACY_EMAIL", "ops@example.net".into())],
        ..AppOptions::default()
    })
    .await;
    app.smtp.reject_transiently(Some("ops@"));
    let mut tx = app.platform.pool.begin().await.unwrap();
    let id = jobs::enqueue(&mut tx, core::operator_notice("t", vec![]))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let pool = app.platform.pool.clone();
    let (status, error): (String, String) =
        eventually(Duration::from_secs(10), "a transient failure", || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, Option<String>)>(
                    "SELECT status, last_error FROM job WHERE id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()
                .and_then(|(s, e)| e.map(|e| (s, e)))
            }
        })
        .await;
    assert_eq!(status, "queued", "451 is retried: {error}");
    assert!(!error.contains("ops@example.net"), "{error}");

    app.smtp.reject_transiently(None);
    app.smtp.reject_permanently("ops@");
    sqlx::query("UPDATE job SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let status: String = eventually(Duration::from_secs(10), "a permanent failure", || {
        let pool = pool.clone();
        async move {
            let s: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()?;
            (s == "dead").then_some(s)
        }
    })
    .await;
    assert_eq!(status, "dead", "550 is not retried");
    assert!(app.smtp.received().is_empty());
}
