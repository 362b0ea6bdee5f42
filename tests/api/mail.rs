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

/// A relay that hangs up after each message (`421`, as relays with a limit of messages per
/// connection do): the next email is not written to the closed connection and failed, but
/// goes on a new one at its first attempt. A connection parked a moment ago is reused without
/// NOOP's round trip (vendor/lettre), after checking that the relay has said nothing since.
/// And each message's MAIL, RCPT and DATA go in one write (RFC 2920 PIPELINING, which the
/// relay offers): one round trip, not three.
#[tokio::test]
async fn a_connection_the_relay_hung_up_is_not_reused_for_the_next_email() {
    let app = spawn_app().await;
    app.smtp.hang_up_after_each_message(true);
    for n in 1..=3 {
        let mut tx = app.platform.pool.begin().await.unwrap();
        jobs::enqueue(
            &mut tx,
            core::operator_notice(format!("Notice {n}"), vec![]),
        )
        .await
        .unwrap()
        .unwrap();
        tx.commit().await.unwrap();
        app.smtp.wait_for(n, Duration::from_secs(10)).await;
        app.queue_drained().await;
    }
    let failed = r#"pexper_mail_failed_total{template="operator-notice",class="transient"}"#;
    assert_eq!(app.metric(failed).await.unwrap_or(0.0), 0.0);
    assert_eq!(app.smtp.pipelined(), 3);
}

/// A relay that does not offer PIPELINING gets one command at a time, each after the reply
/// to the last, and the message all the same.
#[tokio::test]
async fn a_relay_without_pipelining_gets_one_command_at_a_time() {
    let app = spawn_app().await;
    app.smtp.offer_pipelining(false);
    let mut tx = app.platform.pool.begin().await.unwrap();
    jobs::enqueue(&mut tx, core::operator_notice("One at a time", vec![]))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let mail = app.smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mail[0].header("Subject").unwrap(), "[Pexper] One at a time");
    app.queue_drained().await;
    assert_eq!(app.smtp.pipelined(), 0);
}

/// A relay that takes DATA after refusing the only recipient (RFC 2920 §3.1 warns pipelining
/// clients of such relays): the send sees the refusal, and ends the connection rather than
/// send QUIT to a relay now reading message text (whose reply would never come): the job is
/// dead at once, and nothing is delivered.
#[tokio::test]
async fn a_relay_that_takes_data_after_refusing_the_recipient_gets_no_message_and_no_wait() {
    let app = spawn_app_with(AppOptions {
        vars: vec![("PEXPER_PRIVACY_EMAIL", "ops@example.net".into())],
        ..AppOptions::default()
    })
    .await;
    app.smtp.reject_permanently("ops@");
    app.smtp.accept_data_without_recipients(true);
    let mut tx = app.platform.pool.begin().await.unwrap();
    let id = jobs::enqueue(&mut tx, core::operator_notice("t", vec![]))
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let pool = app.platform.pool.clone();
    eventually(Duration::from_secs(10), "the job dead", || {
        let pool = pool.clone();
        async move {
            let status: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()?;
            (status == "dead").then_some(())
        }
    })
    .await;
    assert!(app.smtp.received().is_empty());
}
