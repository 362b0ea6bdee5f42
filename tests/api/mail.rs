//! Mail over a real SMTP server: stable Message-IDs, and rejections classified as permanent
//! or worth a retry.

use std::time::Duration;

use pexper_platform::address::EmailAddress;
use pexper_platform::jobs::{self, BackgroundJob, Job, JobError, NewJob, Worker};
use pexper_platform::mail::{self, OperatorNotice};
use pexper_platform::{Platform, core, person};
use pexper_tests::*;
use tokio::sync::watch;

/// A job's status and last error, while the job is there.
async fn job_state(app: &TestApp, id: jobs::JobId) -> Option<(String, Option<String>)> {
    sqlx::query_as("SELECT status, last_error FROM job WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.platform.pool)
        .await
        .unwrap()
}

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
    let (status, error) = eventually(Duration::from_secs(10), "a transient failure", || async {
        let (status, error) = job_state(&app, id).await?;
        Some((status, error?))
    })
    .await;
    assert_eq!(status, "queued", "451 is retried: {error}");
    assert!(!error.contains("ops@example.net"), "{error}");

    app.smtp.reject_transiently(None);
    app.smtp.reject_permanently("ops@");
    sqlx::query("UPDATE job SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    let status = eventually(Duration::from_secs(10), "a permanent failure", || async {
        let (status, _) = job_state(&app, id).await?;
        (status == "dead").then_some(status)
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
    eventually(Duration::from_secs(10), "the job dead", || async {
        let (status, _) = job_state(&app, id).await?;
        (status == "dead").then_some(())
    })
    .await;
    assert!(app.smtp.received().is_empty());
}

/// A test job: sends its person a notice twice, and then, at its first attempt, fails or
/// never ends (its handler still has work to do when the worker stops).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SendsTwice {
    then: AfterSending,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum AfterSending {
    FailsOnce,
    StallsOnce,
}

impl BackgroundJob for SendsTwice {
    const KIND: &'static str = "test.sends_twice";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let person = job.person()?;
        let mut conn = platform.pool.acquire().await?;
        let to = person::email(&mut conn, &platform.keyring, person)
            .await?
            .expect("the person's address");
        let notice = OperatorNotice {
            title: format!("Attempt {}", job.attempts),
            lines: vec![],
        };
        for _ in 0..2 {
            mail::send_template(
                &platform,
                &mut conn,
                job,
                Some(person),
                to.clone(),
                &notice,
                vec![],
            )
            .await?;
        }
        match (self.then, job.attempts) {
            (AfterSending::FailsOnce, 1) => {
                Err(JobError::Retry(anyhow::anyhow!("failed after sending")))
            }
            (AfterSending::StallsOnce, 1) => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

/// A worker for `SendsTwice` over the app's platform, whose shutdown grace is short.
fn sending_worker(app: &TestApp) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    let worker = Worker::new(app.platform.pool.clone(), app.platform.clone())
        .poll_interval(Duration::from_millis(20))
        .shutdown_grace(Duration::from_millis(200))
        .register::<SendsTwice>();
    (stop, tokio::spawn(worker.run(shutdown)))
}

/// What the person's email history holds: (template, Message-ID).
async fn history(app: &TestApp, person: person::PersonId) -> Vec<(String, String)> {
    sqlx::query_as("SELECT template, message_id FROM email_event WHERE person_id = $1")
        .bind(person)
        .fetch_all(&app.platform.pool)
        .await
        .unwrap()
}

/// Someone for a test job to mail.
async fn person(app: &TestApp, address: &str) -> person::PersonId {
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let address = EmailAddress::parse(address).unwrap();
    person::find_or_create(&mut conn, &app.platform.keyring, &address)
        .await
        .unwrap()
}

/// A `SendsTwice` job queued for a new person at `address`: the person and the job.
async fn sends_twice(
    app: &TestApp,
    address: &str,
    then: AfterSending,
) -> (person::PersonId, jobs::JobId) {
    let person = person(app, address).await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let job = NewJob::new(&SendsTwice { then }).for_person(person);
    let id = jobs::enqueue(&mut conn, job).await.unwrap().unwrap();
    (person, id)
}

/// Waits (at most 10 s) until job `id` is done and deleted.
async fn job_done(app: &TestApp, id: jobs::JobId) {
    eventually(Duration::from_secs(10), "the job done", || async {
        job_state(app, id).await.is_none().then_some(())
    })
    .await;
}

/// The history entry of the operator notice job `id` sent.
fn sent_by(id: jobs::JobId) -> (String, String) {
    ("operator-notice".to_owned(), format!("<{id}@pexper.com>"))
}

/// A job sends one email, however often its handler asks (its Message-ID is the job's): a
/// second send in the same attempt is skipped, and an attempt that fails after sending has
/// its email recorded, so the next attempt does not send it again. The email is in the
/// person's history once the job is done.
#[tokio::test]
async fn a_job_sends_its_email_once_even_when_it_fails_after_sending() {
    let app = spawn_app().await;
    let (person, id) = sends_twice(&app, "once@example.net", AfterSending::FailsOnce).await;
    let (stop, worker) = sending_worker(&app);
    // The second attempt comes after the first's backoff, of 1 to 2 s.
    job_done(&app, id).await;
    stop.send(true).unwrap();
    worker.await.unwrap();
    let received = app.smtp.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("Subject").unwrap(), "[Pexper] Attempt 1");
    assert_eq!(history(&app, person).await, [sent_by(id)]);
}

/// A worker that stops while a job that has sent its email is still running (its handler had
/// more to do when the shutdown grace ran out) hands the job back with its email recorded:
/// the worker that takes the job next does not send it again.
#[tokio::test]
async fn a_job_handed_back_at_shutdown_after_sending_does_not_send_again() {
    let app = spawn_app().await;
    let (person, id) = sends_twice(&app, "handed.back@example.net", AfterSending::StallsOnce).await;
    let (stop, first) = sending_worker(&app);
    app.smtp.wait_for(1, Duration::from_secs(10)).await;
    stop.send(true).unwrap();
    first.await.unwrap();
    // Handed back, not left to its lease: the next worker takes it at once.
    let (stop, second) = sending_worker(&app);
    job_done(&app, id).await;
    stop.send(true).unwrap();
    second.await.unwrap();
    assert_eq!(app.smtp.received().len(), 1);
    assert_eq!(history(&app, person).await, [sent_by(id)]);
}

/// The statement that deletes finished jobs records the emails they sent, and skips the email
/// of someone erased since it was sent rather than fail the whole batch on the missing person:
/// the other jobs are deleted and their emails recorded.
#[tokio::test]
async fn finishing_jobs_skips_the_email_of_someone_erased_since_it_was_sent() {
    let app = spawn_app().await;
    let here = person(&app, "here@example.net").await;
    let erased = person(&app, "erased@example.net").await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let mut queued = Vec::new();
    for who in [here, erased] {
        let then = AfterSending::FailsOnce;
        let job = NewJob::new(&SendsTwice { then }).for_person(who);
        queued.push(jobs::enqueue(&mut conn, job).await.unwrap().unwrap());
    }
    sqlx::query("DELETE FROM person WHERE id = $1")
        .bind(erased)
        .execute(&mut *conn)
        .await
        .unwrap();
    // Both claimed, as a worker's finisher finds them.
    let claimed: Vec<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "UPDATE job SET status = 'running', attempts = 1, claim = gen_random_uuid()
         WHERE id = ANY ($1) RETURNING id, claim",
    )
    .bind(&queued)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let (ids, claims): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = claimed.into_iter().unzip();
    sqlx::query(
        "SELECT finish_jobs($1, ARRAY[1, 1], $2, $3, $4, ARRAY['a', 'b'], ARRAY['<here>', '<erased>'])",
    )
    .bind(&ids)
    .bind(&claims)
    .bind([uuid::Uuid::now_v7(), uuid::Uuid::now_v7()])
    .bind([here, erased])
    .execute(&mut *conn)
    .await
    .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM job WHERE id = ANY ($1)")
        .bind(&queued)
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "both finished jobs deleted");
    let history: Vec<(person::PersonId, String)> =
        sqlx::query_as("SELECT person_id, message_id FROM email_event")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(history, vec![(here, "<here>".to_owned())]);
}
