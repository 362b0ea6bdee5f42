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
async fn mail_goes_out_over_tls_implicit_or_starttls_only_to_a_relay_whose_certificate_checks() {
    for implicit in [true, false] {
        let relay = SmtpServer::start_tls(implicit).await;
        let notice = async |app: &TestApp| {
            let mut tx = app.platform.pool.begin().await.unwrap();
            jobs::enqueue(&mut tx, core::operator_notice("Over TLS", vec![]))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        };
        // Without the relay's CA its certificate does not check: nothing goes out, and the
        // job waits to try again.
        let mut untrusting = spawn_app_with(AppOptions {
            vars: vec![("PEXPER_SMTP_URL", relay.url())],
            ..AppOptions::default()
        })
        .await;
        notice(&untrusting).await;
        let error: String = eventually(Duration::from_secs(10), "the failed attempt", || async {
            sqlx::query_scalar("SELECT last_error FROM job WHERE kind = 'mail.operator_notice'")
                .fetch_optional(&untrusting.platform.pool)
                .await
                .unwrap()
                .flatten()
        })
        .await;
        assert!(error.to_lowercase().contains("certificate"), "{error}");
        assert_eq!(relay.count(), 0, "implicit: {implicit}");
        untrusting.shutdown().await;

        // Trusting the relay's CA: it arrives, over TLS.
        let ca = relay.ca_file().unwrap().display().to_string();
        let app = spawn_app_with(AppOptions {
            vars: vec![
                ("PEXPER_SMTP_URL", relay.url()),
                ("PEXPER_SMTP_CA_FILE", ca),
            ],
            ..AppOptions::default()
        })
        .await;
        notice(&app).await;
        let mail = relay.wait_for(1, Duration::from_secs(10)).await;
        assert!(mail[0].tls, "implicit: {implicit}");
        assert_eq!(
            mail[0].header("Subject").unwrap(),
            "[Pexper] Over TLS",
            "implicit: {implicit}"
        );
        app.queue_drained().await;
    }
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
