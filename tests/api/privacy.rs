//! Privacy requests, black-box: the form and privacy@ intake, verification links (a GET
//! changes nothing), automatic access exports and erasure across every service, operator
//! handling with emails, due dates, reminders, the SLA and the audit chain.

use std::time::Duration;

use pexper_server::WorkerOptions;
use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);
const OPERATOR: &str = "privacy-ops@example.net";

/// An app whose privacy@ is `OPERATOR` and whose periodic sweep runs every 300 ms.
///
/// The tests here run on two threads: `cli` waits for the admin process on the test's own
/// thread, and the in-process server (its sweep holding a lock the command waits for) must go
/// on meanwhile, as a server in a process of its own would.
pub(crate) async fn app() -> TestApp {
    spawn_app_with(AppOptions {
        vars: vec![("PEXPER_PRIVACY_EMAIL", OPERATOR.into())],
        worker: WorkerOptions {
            poll_interval: Duration::from_millis(100),
            recurring_every: Duration::from_millis(300),
            ..WorkerOptions::default()
        },
        ..AppOptions::default()
    })
    .await
}

/// Whether `mail` goes to `to` with a subject containing `subject` (ignoring case).
fn is(mail: &smtp::ReceivedMail, to: &str, subject: &str) -> bool {
    mail.to.contains(&format!("<{to}>"))
        && mail
            .header("Subject")
            .unwrap()
            .to_lowercase()
            .contains(&subject.to_lowercase())
}

pub(crate) async fn mail_to(app: &TestApp, to: &str, subject: &str) -> smtp::ReceivedMail {
    eventually(WAIT, subject, || async {
        app.smtp.received().into_iter().find(|m| is(m, to, subject))
    })
    .await
}

/// Runs one more sweep, queued after everything so far, and waits until it and every job it
/// queued have finished: a later "nothing more was sent" then speaks of a sweep that ran.
pub(crate) async fn sweep_once_more(app: &TestApp) {
    let mut tx = app.platform.pool.begin().await.unwrap();
    let id = pexper_platform::jobs::enqueue(
        &mut tx,
        pexper_platform::jobs::NewJob::new(&pexper_privacy::Sweep {})
            .dedupe_key(format!("test-sweep-{}", uuid::Uuid::new_v4())),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();
    eventually(WAIT, "the extra sweep and what it queued", || async {
        let left = app
            .scalar(&format!(
                "SELECT count(*) FROM job WHERE id = '{id}' OR (kind <> 'privacy.sweep' AND status <> 'dead')"
            ))
            .await;
        (left == 0).then_some(())
    })
    .await;
}

/// Holds off the privacy app's recurring sweep until the returned transaction ends: its row
/// in `recurring_job` is locked, so no new run is queued (the scheduler waits), and the run
/// under way, if any, has ended.
async fn no_sweep_until_commit(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.platform.pool.begin().await.unwrap();
    // The row exists once the first period has been scheduled; before that, this makes it.
    sqlx::raw_sql(
        "INSERT INTO recurring_job (kind, period) VALUES ('privacy.sweep', 0)
             ON CONFLICT (kind) DO NOTHING;
         SELECT 1 FROM recurring_job WHERE kind = 'privacy.sweep' FOR UPDATE;",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    eventually(WAIT, "the sweep under way to end", || async {
        let left = app
            .scalar("SELECT count(*) FROM job WHERE kind = 'privacy.sweep' AND status <> 'dead'")
            .await;
        (left == 0).then_some(())
    })
    .await;
    tx
}

fn mails_to(app: &TestApp, to: &str, subject: &str) -> usize {
    app.smtp
        .received()
        .iter()
        .filter(|m| is(m, to, subject))
        .count()
}

/// On the waitlist (confirmed) and a buyer: someone with data in every service.
async fn customer(app: &TestApp, email: &str) -> Checkout {
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let confirm = mail_to(app, email, "Confirm").await;
    let url = confirm.link(&app.url("/v1/waitlist/confirm?token="));
    assert_eq!(app.client.post(&url).send().await.unwrap().status(), 200);

    let checkout = Checkout::new(email);
    let event = checkout.session_event("checkout.session.completed", "paid");
    let res = stripe::deliver(&app.client, &app.address, &event).await;
    assert_eq!(res.status(), 200);
    mail_to(app, email, "licence key").await;
    checkout
}

pub(crate) async fn request(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/privacy/requests"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Requests `kind` for `email` and follows the verification link (GET, then POST).
async fn request_and_verify(app: &TestApp, email: &str, kind: &str) -> String {
    let res = request(
        app,
        json!({"email": email, "kind": kind, "jurisdiction": "gdpr"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let mail = mail_to(app, email, "please confirm").await;
    let url = mail.link(&app.url("/v1/privacy/verify?token="));
    let page = app.client.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"confirm\""));
    let done = app.client.post(&url).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("id=\"verified\""));
    url
}

pub(crate) fn cli(app: &TestApp, args: &[&str]) -> Value {
    let out = admin(&app.cli_vars(), args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn requests(app: &TestApp) -> Vec<Value> {
    cli(app, &["privacy", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_request_is_verified_by_post_only_and_exports_the_waitlist_entry_and_the_purchase()
 {
    let app = app().await;
    let email = "ada.access@example.net";
    let checkout = customer(&app, email).await;

    let res = request(&app, json!({"email": email, "kind": "access"})).await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "pending_verification"})
    );
    let mail = mail_to(&app, email, "please confirm").await;
    let text = mail.part("text/plain").unwrap();
    assert!(text.contains("access to your data"), "{text}");
    assert!(
        !text.contains(&checkout.session),
        "a verification email carries no data"
    );
    let url = mail.link(&app.url("/v1/privacy/verify?token="));

    // Mail scanners follow links: a GET shows a button and changes nothing.
    for _ in 0..2 {
        assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(requests(&app)[0]["status"], "received");
    let done = app.client.post(&url).send().await.unwrap();
    assert_eq!(done.status(), 200);
    let again = app.client.post(&url).send().await.unwrap();
    assert_eq!(again.status(), 400, "a verification link works once");
    assert!(
        again.text().await.unwrap().contains("confirmed already"),
        "and says it was used"
    );
    let opened = app.client.get(&url).send().await.unwrap();
    assert_eq!(opened.status(), 400);
    let page = opened.text().await.unwrap();
    assert!(
        page.contains("confirmed already") && !page.contains("id=\"confirm\""),
        "a used link's page has no Confirm button: {page}"
    );

    let ready = mail_to(&app, email, "export is ready").await;
    let export_url = ready.link(&app.url("/v1/privacy/exports/"));
    let res = app.client.get(&export_url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let doc: Value = res.json().await.unwrap();
    let sections = &doc["sections"];
    assert_eq!(sections["email"]["address"], email);
    assert_eq!(sections["waitlist"]["status"], "confirmed", "{sections}");
    let purchases = sections["payments"]["purchases"].as_array().unwrap();
    assert_eq!(purchases.len(), 1);
    assert_eq!(
        purchases[0]["checkout_session_id"],
        checkout.session.as_str()
    );
    assert_eq!(
        sections["privacy_requests"]["requests"][0]["kind"],
        "access"
    );
    assert_eq!(requests(&app)[0]["status"], "completed");

    let bogus = app
        .client
        .get(app.url("/v1/privacy/exports/not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 404);
    assert_eq!(
        bogus.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_request_completes_by_itself_and_leaves_only_unlinked_records() {
    let app = app().await;
    let email = "bob.delete@example.net";
    let checkout = customer(&app, email).await;
    // A password-reset request for the address, not yet decided (it carries the address's
    // keyed hash, not the person), and one for another address.
    sqlx::query(
        "INSERT INTO job (id, kind, payload, run_at)
         SELECT gen_random_uuid(), 'accounts.reset_request',
                jsonb_build_object('email_index', index, 'requested_at', now()),
                now() + interval '1 day'
         FROM (SELECT translate(rtrim(encode(email_index, 'base64'), '='), '+/', '-_') AS index
               FROM person
               UNION ALL SELECT 'someone-else') planted",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();
    request_and_verify(&app, email, "deletion").await;

    let done = mail_to(&app, email, "has been deleted").await;
    assert!(done.part("text/plain").unwrap().contains("last email"));
    let pool = app.platform.pool.clone();
    eventually(WAIT, "the person to be destroyed", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM person")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;

    let decisions: Vec<Value> = sqlx::query_scalar(
        "SELECT payload->'email_index' FROM job WHERE kind = 'accounts.reset_request'",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(
        decisions,
        [json!("someone-else")],
        "theirs is erased, not another's"
    );
    sqlx::query("DELETE FROM job WHERE kind = 'accounts.reset_request'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    let export = admin(
        &app.cli_vars(),
        &[
            "waitlist",
            "export",
            "--format",
            "json",
            "--reason",
            "checking the export",
        ],
    );
    assert!(out_ok(&export));
    assert!(
        !stdout(&export).contains(email),
        "the waitlist export no longer shows them"
    );
    let purchase = cli(&app, &["purchases", "show", &checkout.session, "--json"]);
    assert_eq!(purchase["has_buyer"], false);
    assert_eq!(purchase["amount"], 4900);
    let receipt = &requests(&app)[0];
    assert_eq!(receipt["kind"], "deletion");
    assert_eq!(receipt["status"], "completed");
    let shown = cli(
        &app,
        &["privacy", "show", receipt["id"].as_str().unwrap(), "--json"],
    );
    assert_eq!(shown["erased"], true);
    assert_eq!(
        app.metric("pexper_privacy_erasures_last_day").await,
        Some(1.0)
    );
    let events: Vec<&str> = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "received",
            "verified",
            "processing",
            "erased",
            "key_destroyed"
        ]
    );

    let dump = app.db.dump();
    assert!(!dump.contains("bob.delete"), "no address in the dump");
    for table in [
        "person",
        "waitlist_entry",
        "email_event",
        "privacy_export",
        "privacy_token",
    ] {
        assert_eq!(
            app.count(table).await,
            0,
            "{table} still holds something of them"
        );
    }
    // The recurring jobs (the sweeps, the privacy@ mailbox's reader) come and go; nothing else
    // may be left in the queue.
    let queued = app
        .scalar("SELECT count(*) FROM job WHERE kind NOT IN (SELECT kind FROM recurring_job)")
        .await;
    assert_eq!(queued, 0, "no job of theirs is left");
    assert_eq!(
        cli(&app, &["privacy", "audit", "--json"])["broken_at"],
        Value::Null
    );
}

fn out_ok(out: &std::process::Output) -> bool {
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_received_on_january_2_is_due_february_1_listed_overdue_and_in_the_sla() {
    let app = app().await;
    let row = cli(
        &app,
        &[
            "privacy",
            "intake",
            "--email",
            "Late.Letter@Example.net",
            "--kind",
            "correction",
            "--jurisdiction",
            "gdpr",
            "--received-at",
            "2026-01-02",
            "--note",
            "My name is misspelt",
            "--source",
            "email",
            "--json",
        ],
    );
    assert_eq!(row["received_at"], "2026-01-02T00:00:00Z");
    assert_eq!(row["due_at"], "2026-02-01T00:00:00Z");
    let id = row["id"].as_str().unwrap().to_owned();

    let overdue = cli(&app, &["privacy", "list", "--overdue", "--json"]);
    let overdue = overdue.as_array().unwrap();
    assert_eq!(overdue.len(), 1);
    for field in ["id", "kind", "status", "received_at", "due_at"] {
        assert!(overdue[0].get(field).is_some(), "{field}");
    }
    assert_eq!(overdue[0]["id"], id.as_str());
    assert_eq!(
        cli(&app, &["privacy", "list", "--due-within", "7", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cli(
            &app,
            &["privacy", "list", "--status", "completed", "--json"]
        )
        .as_array()
        .unwrap()
        .len(),
        0
    );
    let sla = cli(&app, &["privacy", "sla", "--json"]);
    assert_eq!(sla["open"], 1);
    assert_eq!(sla["overdue"], 1);

    // Acknowledged by email; the operator is told it is overdue, once.
    mail_to(&app, "late.letter@example.net", "please confirm").await;
    mail_to(&app, OPERATOR, "Overdue privacy request").await;
    sweep_once_more(&app).await;
    assert_eq!(
        mails_to(&app, OPERATOR, "privacy request"),
        1,
        "one reminder, not one per sweep or stage"
    );
    let shown = cli(
        &app,
        &[
            "privacy",
            "show",
            &id,
            "--email",
            "--reason",
            "replying by hand",
            "--json",
        ],
    );
    assert_eq!(shown["details"], "My name is misspelt");
    assert_eq!(shown["email"], "late.letter@example.net");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_come_at_seven_three_and_one_day_before_due_once_each() {
    let app = app().await;
    let received = (time::OffsetDateTime::now_utc() - time::Duration::days(24))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    cli(
        &app,
        &[
            "privacy",
            "intake",
            "--email",
            "soon@example.net",
            "--kind",
            "objection",
            "--received-at",
            &received,
            "--json",
        ],
    );
    mail_to(&app, OPERATOR, "due within 7 day(s)").await;
    // Six days later: due within a day.
    sqlx::query("UPDATE privacy_request SET due_at = now() + interval '20 hours'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    mail_to(&app, OPERATOR, "due within 1 day(s)").await;
    sweep_once_more(&app).await;
    assert_eq!(
        mails_to(&app, OPERATOR, "privacy request"),
        2,
        "the 3-day stage was passed, not sent late"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_requests_are_completed_or_rejected_and_the_person_is_told() {
    let app = app().await;
    let email = "carol.correct@example.net";
    let res = request(&app, json!({"email": email, "kind": "correction", "details": "Please spell my name Carol, not Karol"})).await;
    assert_eq!(res.status(), 202);
    let mail = mail_to(&app, email, "please confirm").await;
    let url = mail.link(&app.url("/v1/privacy/verify?token="));
    app.client.post(&url).send().await.unwrap();
    let notice = mail_to(&app, OPERATOR, "Verified correction request").await;
    assert!(
        !notice.part("text/plain").unwrap().contains(email),
        "no address in operator notices"
    );

    let id = requests(&app)[0]["id"].as_str().unwrap().to_owned();
    let shown = cli(&app, &["privacy", "show", &id, "--json"]);
    assert_eq!(shown["status"], "verified");
    assert_eq!(shown["details"], "Please spell my name Carol, not Karol");
    assert!(shown.get("email").is_none());
    cli(&app, &["privacy", "process", &id, "--json"]);
    cli(
        &app,
        &[
            "privacy",
            "complete",
            &id,
            "--note",
            "Your name is corrected everywhere.",
            "--json",
        ],
    );
    let outcome = mail_to(&app, email, "request is complete").await;
    assert!(
        outcome
            .part("text/plain")
            .unwrap()
            .contains("Your name is corrected everywhere.")
    );
    let again = admin(
        &app.cli_vars(),
        &["privacy", "complete", &id, "--note", "twice"],
    );
    assert_eq!(again.status.code(), Some(1));

    let res = request(
        &app,
        json!({"email": email, "kind": "opt_out_of_sale", "jurisdiction": "ccpa"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let id = eventually(WAIT, "the second request", || async {
        requests(&app)
            .into_iter()
            .find(|r| r["kind"] == "opt_out_of_sale")
            .map(|r| r["id"].as_str().unwrap().to_owned())
    })
    .await;
    cli(
        &app,
        &[
            "privacy",
            "reject",
            &id,
            "--reason",
            "We never sell data, so there is nothing to opt out of.",
            "--json",
        ],
    );
    let outcome = mail_to(&app, email, "About your privacy request").await;
    assert!(
        outcome
            .part("text/plain")
            .unwrap()
            .contains("nothing to opt out of")
    );
    let sla = cli(&app, &["privacy", "sla", "--json"]);
    assert_eq!(sla["closed_last_90_days"], 2);
    assert_eq!(sla["closed_on_time_share"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_gets_the_same_answer_and_bad_requests_get_422() {
    let app = app().await;
    customer(&app, "known@example.net").await;
    let known = request(
        &app,
        json!({"email": "known@example.net", "kind": "access"}),
    )
    .await;
    let unknown = request(
        &app,
        json!({"email": "unknown@example.net", "kind": "access"}),
    )
    .await;
    assert_eq!(known.status(), unknown.status());
    assert_eq!(known.text().await.unwrap(), unknown.text().await.unwrap());
    for (body, code) in [
        (
            json!({"email": "not an address", "kind": "access"}),
            "invalid_email",
        ),
        (
            json!({"email": "a@example.net", "kind": "everything"}),
            "invalid_kind",
        ),
        (
            json!({"email": "a@example.net", "kind": "access", "jurisdiction": "mars"}),
            "invalid_jurisdiction",
        ),
        (
            json!({"email": "a@example.net", "kind": "correction", "details": "x".repeat(5001)}),
            "details_too_long",
        ),
    ] {
        let res = request(&app, body).await;
        assert_eq!(res.status(), 422);
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code);
    }
    // A repeat within 10 minutes is the same request: no second email.
    request(
        &app,
        json!({"email": "unknown@example.net", "kind": "access"}),
    )
    .await;
    mail_to(&app, "unknown@example.net", "please confirm").await;
    sweep_once_more(&app).await; // and with it, every mail job queued so far
    assert_eq!(mails_to(&app, "unknown@example.net", "please confirm"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_requests_expire_and_their_link_stops_working() {
    let app = app().await;
    request(
        &app,
        json!({"email": "never.clicks@example.net", "kind": "deletion"}),
    )
    .await;
    let mail = mail_to(&app, "never.clicks@example.net", "please confirm").await;
    let url = mail.link(&app.url("/v1/privacy/verify?token="));
    sqlx::query("UPDATE privacy_request SET verify_by = now() - interval '1 minute'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    eventually(WAIT, "the request to expire", || async {
        (requests(&app)[0]["status"] == "expired").then_some(())
    })
    .await;
    let res = app.client.post(&url).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("id=\"invalid\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_audit_event_breaks_the_chain() {
    let app = app().await;
    for kind in ["access", "objection"] {
        cli(
            &app,
            &[
                "privacy",
                "intake",
                "--email",
                "audit@example.net",
                "--kind",
                kind,
                "--json",
            ],
        );
    }
    assert_eq!(
        cli(&app, &["privacy", "audit", "--json"])["broken_at"],
        Value::Null
    );
    sqlx::query("UPDATE privacy_audit SET status = 'completed' WHERE seq = (SELECT min(seq) FROM privacy_audit)")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    let out = admin(&app.cli_vars(), &["privacy", "audit", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("broken_at"));
}

/// Takes in a request of each kind given, by the operator: an audit event each.
fn audit_events(app: &TestApp, kinds: &[&str]) {
    for kind in kinds {
        cli(
            app,
            &[
                "privacy",
                "intake",
                "--email",
                "audit@example.net",
                "--kind",
                kind,
                "--json",
            ],
        );
    }
}

/// `privacy audit`: whether it passed, and its report.
fn audit(app: &TestApp, extra: &[&str]) -> (bool, Value) {
    let out = admin(
        &app.cli_vars(),
        &[&["privacy", "audit", "--json"], extra].concat(),
    );
    (
        out.status.success(),
        serde_json::from_str(&stdout(&out)).unwrap(),
    )
}

type AuditRow = (
    i64,
    Option<uuid::Uuid>,
    String,
    String,
    String,
    String,
    time::OffsetDateTime,
);

/// The bytes an event's link covers: the link before it and its fields, length-prefixed.
fn link_input(prev: &[u8], row: &AuditRow) -> Vec<u8> {
    let (_, request, event, status, detail, actor, at) = row;
    let mut bytes = prev.to_vec();
    let request = request.map(|r| r.as_bytes().to_vec()).unwrap_or_default();
    let at = at.unix_timestamp_nanos().to_be_bytes();
    for field in [
        &request[..],
        event.as_bytes(),
        status.as_bytes(),
        detail.as_bytes(),
        &at,
        actor.as_bytes(),
    ] {
        bytes.extend((field.len() as u64).to_be_bytes());
        bytes.extend(field);
    }
    bytes
}

/// How `rewrite_trail` makes each link.
#[derive(Clone, Copy)]
enum Links {
    /// As someone who can write to the database but holds no key would: the plain SHA-256
    /// chain the code once used, marked keyed or not.
    WithoutTheKey { marked_keyed: bool },
    /// As the server does, with the key: for moving events back in time, as if written then.
    WithTheKey,
}

/// Rewrites the whole trail's links (and, with the key, its head's MAC), in one transaction
/// under the trail's lock, and the head moved to the new last link.
async fn rewrite_trail(app: &TestApp, links: Links) {
    let mut tx = app.platform.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('privacy_audit', 0))")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, actor, at FROM privacy_audit
             ORDER BY seq",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let keyring = &app.platform.keyring;
    let mut prev = vec![0u8; 32];
    for row in rows {
        let bytes = link_input(&prev, &row);
        let (hash, keyed) = match links {
            Links::WithoutTheKey { marked_keyed } => (
                pexper_platform::crypto::sha256(&bytes).to_vec(),
                marked_keyed,
            ),
            Links::WithTheKey => (
                keyring.audit_mac(&[b"pexper/audit-event", &bytes]).to_vec(),
                true,
            ),
        };
        sqlx::query(
            "UPDATE privacy_audit SET prev_hash = $2, hash = $3, keyed = $4 WHERE seq = $1",
        )
        .bind(row.0)
        .bind(&prev)
        .bind(&hash)
        .bind(keyed)
        .execute(&mut *tx)
        .await
        .unwrap();
        prev = hash;
    }
    let (seq, at): (i64, time::OffsetDateTime) = sqlx::query_as(
        "UPDATE privacy_audit_head SET seq = (SELECT max(seq) FROM privacy_audit), hash = $1
         RETURNING seq, at",
    )
    .bind(&prev)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    if let Links::WithTheKey = links {
        let mac = keyring.audit_mac(&[
            b"pexper/audit-head",
            &seq.to_be_bytes(),
            &prev,
            &at.unix_timestamp_nanos().to_be_bytes(),
        ]);
        sqlx::query("UPDATE privacy_audit_head SET mac = $1")
            .bind(mac.as_slice())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn recompute_without_the_key(app: &TestApp, keyed: bool) {
    rewrite_trail(
        app,
        Links::WithoutTheKey {
            marked_keyed: keyed,
        },
    )
    .await;
}

/// The trail keeps its events 3 years, and a request's while its receipt is kept; pruning
/// leaves a trail that verifies from where it now starts, and a cut beyond that start shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_pruned_past_its_retention_and_still_verifies() {
    let app = app().await;
    // Four requests, the first two closed (rejected) at once; the first two's events moved
    // four years back (as the server would have written them then); the first's receipt and
    // the third's deleted.
    for kind in ["access", "objection"] {
        audit_events(&app, &[kind]);
        let id: uuid::Uuid =
            sqlx::query_scalar("SELECT id FROM privacy_request ORDER BY received_at DESC LIMIT 1")
                .fetch_one(&app.platform.pool)
                .await
                .unwrap();
        cli(
            &app,
            &[
                "privacy",
                "reject",
                &id.to_string(),
                "--reason",
                "Closed.",
                "--json",
            ],
        );
    }
    audit_events(&app, &["restriction", "correction"]);
    let requests: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT request_id, min(seq), max(seq) FROM privacy_audit GROUP BY request_id
         ORDER BY min(seq)",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(requests.len(), 4, "{requests:?}");
    let [
        (old_gone, _, _),
        (old_kept, old_kept_from, old_kept_to),
        (recent_gone, recent_from, _),
        _,
    ] = requests[..]
    else {
        unreachable!()
    };
    assert!(
        old_kept_to < recent_from,
        "the requests' events in order: {requests:?}"
    );
    sqlx::query("UPDATE privacy_audit SET at = at - interval '4 years' WHERE seq <= $1")
        .bind(old_kept_to)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    rewrite_trail(&app, Links::WithTheKey).await;
    let (passed, report) = audit(&app, &[]);
    assert!(passed, "the rewritten trail checks: {report}");
    for gone in [old_gone, recent_gone] {
        sqlx::query("DELETE FROM privacy_request WHERE id = $1")
            .bind(gone)
            .execute(&app.platform.pool)
            .await
            .unwrap();
    }
    let first_left = || async { app.scalar("SELECT min(seq) FROM privacy_audit").await };
    eventually(
        WAIT,
        "the sweep to prune the old request's events",
        || async { (first_left().await == old_kept_from).then_some(()) },
    )
    .await;
    let (passed, report) = audit(&app, &[]);
    assert!(
        passed,
        "the pruned trail checks from where it starts: {report}"
    );

    // Old events of a request whose receipt is kept stay; so do recent ones of a request gone.
    sweep_once_more(&app).await;
    assert_eq!(first_left().await, old_kept_from);
    sqlx::query("DELETE FROM privacy_request WHERE id = $1")
        .bind(old_kept)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    eventually(
        WAIT,
        "the sweep to prune the second request's events",
        || async { (first_left().await == recent_from).then_some(()) },
    )
    .await;
    sweep_once_more(&app).await;
    assert_eq!(first_left().await, recent_from, "recent events stay");
    let (passed, report) = audit(&app, &[]);
    assert!(passed, "{report}");

    // Cut beyond the start: it shows.
    sqlx::query("DELETE FROM privacy_audit WHERE seq = $1")
        .bind(recent_from)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("deleted from its beginning"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_trail_rewritten_and_recomputed_without_the_key_is_caught() {
    let app = app().await;
    audit_events(&app, &["access", "objection"]);
    let (passed, report) = audit(&app, &[]);
    assert!(passed, "{report}");
    let noted = noted_head(&report);
    let first: i64 = app.scalar("SELECT min(seq) FROM privacy_audit").await;
    sqlx::query("UPDATE privacy_audit SET status = 'completed' WHERE seq = $1")
        .bind(first)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    // Recomputed as keyed links: they do not check without the key.
    recompute_without_the_key(&app, true).await;
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");
    assert_eq!(report["broken_at"], first, "{report}");
    // Passed off as links from before keying: the head, under its MAC, names other links.
    recompute_without_the_key(&app, false).await;
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");
    // With the head deleted too, it looks like a trail from before keying, and the server
    // seals it (with a warning in its log)… but a head noted before no longer matches.
    sqlx::query("DELETE FROM privacy_audit_head")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    eventually(WAIT, "the sweep to seal the trail", || async {
        audit(&app, &[]).0.then_some(())
    })
    .await;
    let (passed, report) = audit(&app, &["--expect-head", &noted]);
    assert!(!passed, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_from_before_keying_is_sealed_as_it_stands_and_keyed_events_follow() {
    let app = app().await;
    audit_events(&app, &["access"]);
    // As an upgraded deployment has it: plain SHA-256 links and no head.
    recompute_without_the_key(&app, false).await;
    sqlx::query("DELETE FROM privacy_audit_head")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    // New events chain onto it; the sweeps seal it meanwhile.
    audit_events(&app, &["objection"]);
    let (passed, report) = audit(&app, &[]);
    assert!(passed, "{report}");
    assert_eq!(report["events"], 2, "{report}");
    let kinds: Vec<bool> = sqlx::query_scalar("SELECT keyed FROM privacy_audit ORDER BY seq")
        .fetch_all(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(kinds, [false, true], "the old link kept, the new one keyed");
    // Once sealed, the old links cannot be edited either: the keyed one after covers them.
    sqlx::query("UPDATE privacy_audit SET detail = 'x' WHERE NOT keyed")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    recompute_without_the_key(&app, false).await;
    assert!(!audit(&app, &[]).0);
}

/// A head as `privacy audit` reports it, as `--expect-head` takes it.
fn noted_head(report: &Value) -> String {
    format!(
        "{}:{}",
        report["head"]["seq"],
        report["head"]["hash"].as_str().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_audit_events_is_caught_even_after_new_events() {
    let app = app().await;
    let pool = &app.platform.pool;
    audit_events(&app, &["access"]);
    // What someone with the database could keep: the head as it is now.
    let (passed, early) = audit(&app, &[]);
    assert!(passed, "{early}");
    let kept: (i64, Vec<u8>, time::OffsetDateTime, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash, at, mac FROM privacy_audit_head")
            .fetch_one(pool)
            .await
            .unwrap();
    audit_events(&app, &["objection", "restriction"]);
    let (passed, later) = audit(&app, &[]);
    assert!(passed, "{later}");
    let noted = noted_head(&later);
    assert!(audit(&app, &["--expect-head", &noted]).0);

    // The newest two events deleted, and the requests they named: the trail ends before
    // its head.
    let last: i64 = app.scalar("SELECT max(seq) FROM privacy_audit").await;
    let unnamed = "DELETE FROM privacy_request r
                   WHERE NOT EXISTS (SELECT 1 FROM privacy_audit a WHERE a.request_id = r.id)";
    sqlx::query("DELETE FROM privacy_audit WHERE seq >= $1")
        .bind(last - 1)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(unnamed).execute(pool).await.unwrap();
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");
    assert_eq!(report["broken_at"], last - 1, "{report}");
    // An event added after the cut (the sweeps run meanwhile) does not paper over it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    audit_events(&app, &["opt_out_of_sale"]);
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");

    // Cut back to the kept head and put it back: nothing in the database can tell, but the
    // head noted outside it can.
    sqlx::query("DELETE FROM privacy_audit WHERE seq > $1")
        .bind(kept.0)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE privacy_audit_head SET seq = $1, hash = $2, at = $3, mac = $4")
        .bind(kept.0)
        .bind(&kept.1)
        .bind(kept.2)
        .bind(&kept.3)
        .execute(pool)
        .await
        .unwrap();
    // The requests those events named are still there, each without an event…
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");
    // …so they go too: now nothing in the database can tell.
    sqlx::query(unnamed).execute(pool).await.unwrap();
    assert!(
        audit(&app, &[]).0,
        "indistinguishable from the earlier trail"
    );
    let (passed, report) = audit(&app, &["--expect-head", &noted]);
    assert!(!passed, "{report}");
    assert_eq!(report["broken_at"], later["head"]["seq"], "{report}");

    // The whole trail deleted, head and all: the request it named is still there.
    sqlx::query("DELETE FROM privacy_audit")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM privacy_audit_head")
        .execute(pool)
        .await
        .unwrap();
    let (passed, report) = audit(&app, &[]);
    assert!(!passed, "{report}");
    assert!(
        report["problem"].as_str().unwrap().contains("no event"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_at_most_three_emails_of_each_budget_a_day_however_many_ask() {
    let app = spawn_app().await;
    let victim = "inbox.victim@example.net";
    let mut answers = Vec::new();
    // Every kind is a distinct request (no 10-minute merge), then a waitlist signup: eight
    // emails on a main without the budget.
    for kind in [
        "access",
        "portability",
        "deletion",
        "correction",
        "restriction",
        "objection",
        "opt_out_of_sale",
    ] {
        let res = request(&app, json!({"email": victim, "kind": kind})).await;
        answers.push((res.status(), res.bytes().await.unwrap()));
    }
    let signup = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": victim}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 202, "the same answer, whatever the budget");
    // Someone else's mail still goes out: the budget is per address.
    request(
        &app,
        json!({"email": "bystander@example.net", "kind": "access"}),
    )
    .await;
    mail_to(&app, "bystander@example.net", "please confirm").await;
    app.queue_drained().await;

    let first = answers[0].clone();
    assert!(
        answers.iter().all(|a| *a == first),
        "every request answers byte-identically"
    );
    assert_eq!(first.0, 202);
    let sent = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.to.contains(&format!("<{victim}>")))
        .count();
    assert_eq!(
        sent, 4,
        "three acknowledgements, then nothing until tomorrow; the waitlist's confirmation comes \
         from a budget of its own"
    );
    assert_eq!(
        app.count("privacy_request").await,
        8,
        "every request is kept, mailed or not"
    );

    // The budget is per UTC day: yesterday's count does not hold today.
    for sql in [
        "UPDATE person SET access_mail_day = access_mail_day - 1",
        "UPDATE privacy_request SET created_at = created_at - interval '1 day'",
    ] {
        sqlx::query(sql).execute(&app.platform.pool).await.unwrap();
    }
    request(&app, json!({"email": victim, "kind": "access"})).await;
    app.queue_drained().await;
    let sent_now = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.to.contains(&format!("<{victim}>")))
        .count();
    assert_eq!(sent_now, 5, "a new day, a new budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_held_back_by_a_spent_budget_go_out_together_and_no_stranger_can_stop_them()
 {
    let app = app().await;
    let victim = "held.back@example.net";
    let links = |mail: &smtp::ReceivedMail| -> Vec<String> {
        let prefix = app.url("/v1/privacy/verify?token=");
        let text = mail.part("text/plain").unwrap();
        text.split(&prefix)
            .skip(1)
            .map(|rest| {
                let token: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                format!("{prefix}{token}")
            })
            .collect()
    };
    // A stranger spends the day's budget of such mail with three requests.
    for kind in ["access", "correction", "objection"] {
        let res = request(&app, json!({"email": victim, "kind": kind})).await;
        assert_eq!(res.status(), 202);
    }
    app.smtp.wait_for(3, WAIT).await;
    // The person's own requests are kept, on the clock, and acknowledged together, each with
    // its own link, in one email out of a budget that no other mail spends. (The sweep that
    // runs every second here is held off meanwhile: between the two, it would acknowledge
    // the first alone.)
    let held_off = no_sweep_until_commit(&app).await;
    for kind in ["deletion", "restriction"] {
        let res = request(&app, json!({"email": victim, "kind": kind})).await;
        assert_eq!(res.status(), 202);
    }
    held_off.commit().await.unwrap();
    let due = || async {
        sqlx::query_as::<_, (time::OffsetDateTime, time::OffsetDateTime)>(
            "SELECT received_at, due_at FROM privacy_request WHERE kind = 'restriction'",
        )
        .fetch_one(&app.platform.pool)
        .await
        .unwrap()
    };
    let (received, due_at) = due().await;
    let days = (due_at - received).whole_days();
    assert!(
        (28..=30).contains(&days),
        "due {days} days after it arrived"
    );
    sweep_once_more(&app).await;
    assert_eq!(
        mails_to(&app, victim, "please confirm"),
        4,
        "one more, for both"
    );
    let together = app
        .smtp
        .received()
        .into_iter()
        .rev()
        .find(|m| is(m, victim, "please confirm"))
        .unwrap();
    let text = together.part("text/plain").unwrap();
    assert!(
        text.contains("deletion of your data") && text.contains("restriction of processing"),
        "{text}"
    );
    assert_eq!(links(&together).len(), 2, "{text}");

    // Later that day, one more: held until tomorrow, and it does not lapse meanwhile.
    let res = request(&app, json!({"email": victim, "kind": "portability"})).await;
    assert_eq!(res.status(), 202);
    sqlx::query(
        "UPDATE privacy_request SET verify_by = now() - interval '1 minute'
         WHERE acknowledgement_held_at IS NOT NULL",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();
    sweep_once_more(&app).await;
    assert_eq!(mails_to(&app, victim, "please confirm"), 4);
    assert_eq!(
        app.metric("pexper_privacy_acknowledgements_held").await,
        Some(1.0)
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM privacy_request WHERE status = 'received'")
            .await,
        6
    );
    // The next day, even if the stranger has spent the access budget again at midnight.
    sqlx::query("UPDATE person SET held_mail_day = held_mail_day - 1")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    sweep_once_more(&app).await;
    sweep_once_more(&app).await;
    assert_eq!(mails_to(&app, victim, "please confirm"), 5);
    let next_day = app
        .smtp
        .received()
        .into_iter()
        .rev()
        .find(|m| is(m, victim, "please confirm"))
        .unwrap();
    assert!(
        next_day
            .part("text/plain")
            .unwrap()
            .contains("portable copy of your data")
    );
    // (The deletion's link is left alone: once verified it would erase the rest.)
    for url in links(&together).into_iter().skip(1).chain(links(&next_day)) {
        assert_eq!(
            app.client.post(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM privacy_request WHERE acknowledgement_held_at IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        app.metric("pexper_privacy_acknowledgements_held").await,
        Some(0.0)
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM privacy_request WHERE status = 'received'")
            .await,
        4,
        "the stranger's three and the deletion wait; the other two are verified"
    );
    assert_eq!(
        due().await,
        (received, due_at),
        "the clock ran from its arrival"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_beside_a_running_erasure_of_the_same_person_never_answers_500() {
    // No periodic sweep or retention run here (the default period, 5 minutes): they take the
    // same locks, and a wait of theirs must not pass for the erasure's or the verification's
    // (a CI run had the verification go first that way).
    let app = spawn_app().await;
    let email = "both.at.once@example.net";
    crate::waitlist::join(&app, email, json!({})).await;
    let link_of = |kind: &str| {
        let kind = kind.to_owned();
        let app = &app;
        async move {
            let res = request(app, json!({"email": email, "kind": kind})).await;
            assert_eq!(res.status(), 202);
            eventually(WAIT, "the acknowledgement", || async {
                app.smtp.received().into_iter().rev().find_map(|m| {
                    let text = m.part("text/plain")?;
                    (is(&m, email, "please confirm") && text.contains(kind.as_str()))
                        .then(|| m.link(&app.url("/v1/privacy/verify?token=")))
                })
            })
            .await
        }
    };
    let restriction = link_of("restriction").await;
    let deletion = link_of("deletion").await;
    // The welcome email's job locks the entry too: done before the lock is taken.
    app.queue_drained().await;
    // The erasure is held mid-transaction (it has taken the audit trail and waits to delete the
    // waitlist entry); meanwhile the other request's link is followed.
    let held = TableLock::take(&app.platform.pool, "waitlist_entry").await;
    assert_eq!(
        app.client.post(&deletion).send().await.unwrap().status(),
        200
    );
    held.until_someone_waits(&app.platform.pool).await;
    let verify = tokio::spawn({
        let (client, url) = (app.client.clone(), restriction.clone());
        async move { client.post(url).send().await.unwrap().status().as_u16() }
    });
    eventually(WAIT, "the verification to wait too", || async {
        let waiting = app
            .scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .await;
        (waiting >= 2).then_some(())
    })
    .await;
    held.release().await;
    // The erasure took the request with everything else: the link no longer works, and says
    // so (no deadlock, no 500).
    assert_eq!(verify.await.unwrap(), 400);
    mail_to(&app, email, "has been deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verification_link_posted_many_times_at_once_verifies_once() {
    let app = spawn_app().await;
    let email = "double.click@example.net";
    let res = request(&app, json!({"email": email, "kind": "access"})).await;
    assert_eq!(res.status(), 202);
    let mail = mail_to(&app, email, "please confirm").await;
    let url = mail.link(&app.url("/v1/privacy/verify?token="));
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (app.client.clone(), url.clone());
            tokio::spawn(async move { client.post(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 400, 400, 400, 400, 400, 400, 400],
        "one POST verifies"
    );
    mail_to(&app, email, "export is ready").await;
    app.queue_drained().await;
    assert_eq!(
        mails_to(&app, email, "export is ready"),
        1,
        "one export, one email"
    );
    assert_eq!(app.count("privacy_export").await, 1);
}

/// Every column that can hold a person's id: foreign keys to `person`, and uuid columns named
/// for a person without one (the job queue's `person_id`). Found in the schema, not listed.
async fn person_columns(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT kcu.table_name::text, kcu.column_name::text
         FROM information_schema.table_constraints tc
         JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)
         JOIN information_schema.constraint_column_usage ccu USING (constraint_schema, constraint_name)
         WHERE tc.constraint_type = 'FOREIGN KEY' AND ccu.table_name = 'person'
         UNION
         SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type = 'uuid' AND table_name <> 'person'
           AND (column_name LIKE '%person%' OR column_name IN ('referred_by'))
         ORDER BY 1, 2",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap()
}

/// Every bytea value in every table, with where it is.
async fn all_bytea(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type = 'bytea'",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    let mut values = Vec::new();
    for (table, column) in columns {
        let rows: Vec<Option<Vec<u8>>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {column} FROM {table}")))
                .fetch_all(&app.platform.pool)
                .await
                .unwrap();
        values.extend(
            rows.into_iter()
                .flatten()
                .map(|v| (format!("{table}.{column}"), v)),
        );
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_column_pointing_at_the_person_and_nothing_sealed_under_their_key() {
    use pexper_platform::crypto::sealed_key_id;
    let app = app().await;
    let email = "everywhere@example.net";
    // Waitlist (entry, tokens, emails), a purchase (customer), a referral, a broadcast, a
    // job for later, and an access request with its export.
    customer(&app, email).await;
    let person: uuid::Uuid = sqlx::query_scalar("SELECT person_id FROM purchase")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    let code: String =
        sqlx::query_scalar("SELECT referral_code FROM waitlist_entry WHERE person_id = $1")
            .bind(person)
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    let friend = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "friend@example.net", "ref": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(friend.status(), 202);
    crate::product_email::broadcast(&app.cli_vars(), app.data_dir.path(), "News", false);
    mail_to(&app, email, "News").await;
    let mut tx = app.platform.pool.begin().await.unwrap();
    pexper_platform::jobs::enqueue(
        &mut tx,
        pexper_platform::jobs::NewJob::new(&pexper_waitlist::Welcome {})
            .for_person(pexper_platform::person::PersonId(person))
            .run_at(time::OffsetDateTime::now_utc() + time::Duration::days(1)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    request_and_verify(&app, email, "access").await;
    mail_to(&app, email, "export is ready").await;
    let out = announce(&app, "2027-02", 40, "A change.", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    mail_to(&app, email, "privacy policy").await;
    let res = app
        .client
        .post(app.url("/v1/support"))
        .json(&json!({"email": email, "message": "Where is my licence?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    mail_to(&app, email, "We have your message").await;
    // A day later (emails anyone could cause are over one day's budgets of three).
    sqlx::query(
        "UPDATE person SET request_mail_day = request_mail_day - 1,
                           access_mail_day = access_mail_day - 1",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();
    // The friend's entry names the customer only once the friend confirms.
    let confirm = mail_to(&app, "friend@example.net", "Confirm").await;
    let url = confirm.link(&app.url("/v1/waitlist/confirm?token="));
    assert_eq!(app.client.post(&url).send().await.unwrap().status(), 200);
    // An account, signed in, and a sign-up still pending besides (the API never makes both for
    // one address: opening the account clears its pending sign-ups; a row is written here).
    let password = "correct horse battery staple";
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let verify = mail_to(&app, email, "open your Pexper account").await;
    let url = verify.link(&app.url("/v1/accounts/verify?token="));
    assert_eq!(
        choose_password(&app.client, &url, &app.address, password)
            .await
            .status(),
        200
    );
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    sqlx::query(
        "INSERT INTO account_signup (id, person_id, expires_at)
         SELECT gen_random_uuid(), person_id, now() + interval '1 day' FROM account",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();

    let key_id = {
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT email_sealed FROM person WHERE id = $1")
            .bind(person)
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
        sealed_key_id(&sealed).unwrap()
    };
    let columns = person_columns(&app).await;
    assert!(columns.len() >= 8, "{columns:?}");
    let pointing = |app: &TestApp, columns: Vec<(String, String)>| {
        let pool = app.platform.pool.clone();
        async move {
            let mut found = Vec::new();
            for (table, column) in columns {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table} WHERE {column} = $1"
                )))
                .bind(person)
                .fetch_one(&pool)
                .await
                .unwrap();
                if n > 0 {
                    found.push(format!("{table}.{column}"));
                }
            }
            found
        }
    };
    let before = pointing(&app, columns.clone()).await;
    let all: Vec<String> = columns.iter().map(|(t, c)| format!("{t}.{c}")).collect();
    assert_eq!(
        before, all,
        "the customer has a row in every column that can name a person"
    );

    let res = request(&app, json!({"email": email, "kind": "deletion"})).await;
    assert_eq!(res.status(), 202);
    let verify = eventually(WAIT, "the second verification email", || async {
        let mails: Vec<_> = app
            .smtp
            .received()
            .into_iter()
            .filter(|m| is(m, email, "please confirm"))
            .collect();
        (mails.len() == 2).then(|| mails[1].clone())
    })
    .await;
    let url = verify.link(&app.url("/v1/privacy/verify?token="));
    assert_eq!(app.client.post(&url).send().await.unwrap().status(), 200);
    mail_to(&app, email, "has been deleted").await;
    eventually(WAIT, "the person to be destroyed", || async {
        (app.scalar(&format!(
            "SELECT count(*) FROM person WHERE id = '{person}'"
        ))
        .await
            == 0)
            .then_some(())
    })
    .await;

    assert_eq!(
        pointing(&app, columns).await,
        Vec::<String>::new(),
        "nothing points at the erased person"
    );
    let left: Vec<String> = all_bytea(&app)
        .await
        .into_iter()
        .filter(|(_, v)| sealed_key_id(v) == Some(key_id))
        .map(|(place, _)| place)
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "no ciphertext under their (destroyed) key"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM waitlist_entry").await,
        1,
        "the friend stays, unlinked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_for_an_address_between_its_erasure_and_the_goodbye_email_is_kept_for_a_new_person()
 {
    let app = app().await;
    let email = "window@example.net";
    customer(&app, email).await;
    let res = request(
        &app,
        json!({"email": email, "kind": "deletion", "jurisdiction": "gdpr"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let mail = mail_to(&app, email, "please confirm").await;
    let url = mail.link(&app.url("/v1/privacy/verify?token="));
    // The goodbye email cannot go out for now: the window between the erasure and the
    // destruction of the person's key stays open.
    app.smtp.reject_transiently(Some(email));
    assert_eq!(app.client.post(&url).send().await.unwrap().status(), 200);
    let pool = app.platform.pool.clone();
    let erased: pexper_platform::person::PersonId =
        eventually(WAIT, "the erasure, before the goodbye", || async {
            // Queued in the erasure's own transaction, retried while the relay refuses.
            sqlx::query_scalar("SELECT person_id FROM job WHERE kind = 'privacy.deletion_mail'")
                .fetch_optional(&pool)
                .await
                .unwrap()
        })
        .await;

    // In that window, they sign up again and buy again.
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let checkout = Checkout::new(email);
    let event = checkout.session_event("checkout.session.completed", "paid");
    assert_eq!(
        stripe::deliver(&app.client, &app.address, &event)
            .await
            .status(),
        200
    );

    // The goodbye goes out at last, and the erased person is destroyed.
    app.smtp.reject_transiently(None);
    sqlx::query("UPDATE job SET run_at = now() WHERE kind = 'privacy.deletion_mail'")
        .execute(&pool)
        .await
        .unwrap();
    mail_to(&app, email, "has been deleted").await;
    eventually(WAIT, "the erased person to be destroyed", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM person WHERE id = $1")
            .bind(erased)
            .fetch_one(&pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;

    // What came in the window belongs to a new person, and is all still here.
    let mut conn = pool.acquire().await.unwrap();
    let address = pexper_platform::address::EmailAddress::parse(email).unwrap();
    let now = pexper_platform::person::find(&mut conn, &app.platform.keyring, &address)
        .await
        .unwrap()
        .expect("the signup in the window kept its person");
    assert_ne!(now, erased);
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM waitlist_entry WHERE person_id = $1")
            .bind(now)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(entries, 1, "the signup is kept");
    let buyer: Option<pexper_platform::person::PersonId> =
        sqlx::query_scalar("SELECT person_id FROM purchase WHERE checkout_session_hash = $1")
            .bind(pexper_payments::seal::session_hash(
                &app.platform.keyring,
                &checkout.session,
            ))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        buyer,
        Some(now),
        "the purchase is kept, linked to its buyer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_does_not_bring_back_anyone_erased_since_it_was_taken() {
    let mut app = app().await;
    let erased = "erased.later@example.net";
    crate::waitlist::join(&app, erased, json!({})).await;
    crate::waitlist::join(&app, "stays@example.net", json!({})).await;
    app.queue_drained().await;
    let dir = tempdir::TempDir::new();
    let vars = app.cli_vars();
    let audience = crate::product_email::broadcast(&vars, dir.path(), "News", true);

    // The one who stays has an account, signed in, with a reset link not yet used.
    let stays: pexper_platform::person::PersonId = {
        let mut conn = app.platform.pool.acquire().await.unwrap();
        let address = pexper_platform::address::EmailAddress::parse("stays@example.net").unwrap();
        pexper_platform::person::find(&mut conn, &app.platform.keyring, &address)
            .await
            .unwrap()
            .unwrap()
    };
    sqlx::query(
        "WITH a AS (INSERT INTO account (id, person_id, password_hash)
                    VALUES (gen_random_uuid(), $1, '$argon2id$v=19$stand-in') RETURNING id),
              s AS (INSERT INTO account_session (id, account_id, token_hash, device, expires_at)
                    SELECT gen_random_uuid(), id, '\\x01', 'Firefox on Linux',
                           now() + interval '1 day' FROM a)
         INSERT INTO account_reset (token_hash, account_id, expires_at)
         SELECT '\\x02', id, now() + interval '1 hour' FROM a",
    )
    .bind(stays)
    .execute(&app.platform.pool)
    .await
    .unwrap();

    // Back up; then one of the two is erased.
    let file = dir.path().join("pexper.backup");
    // A symbolic link where the backup writes first is refused, not followed.
    let elsewhere_file = dir.path().join("not-the-backup");
    std::fs::write(&elsewhere_file, "untouched").unwrap();
    std::os::unix::fs::symlink(&elsewhere_file, dir.path().join("pexper.backup.partial")).unwrap();
    let out = admin(&vars, &["db", "backup", file.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a symbolic link is not written through"
    );
    assert_eq!(
        std::fs::read_to_string(&elsewhere_file).unwrap(),
        "untouched"
    );
    std::fs::remove_file(dir.path().join("pexper.backup.partial")).unwrap();
    // A reset request and a reset email still queued when the backup is taken (the live
    // queue moves on).
    let queued_reset = "INSERT INTO job (id, kind, payload, run_at)
                        SELECT gen_random_uuid(), kind, payload, now() + interval '1 day'
                        FROM (SELECT 'accounts.reset_mail' AS kind,
                                     jsonb_build_object('account', a.id) AS payload
                              FROM account a
                              UNION ALL
                              SELECT 'accounts.reset_request',
                                     jsonb_build_object('email_index',
                                         translate(rtrim(encode(p.email_index, 'base64'), '='),
                                                   '+/', '-_'),
                                         'requested_at', now())
                              FROM account a JOIN person p ON p.id = a.person_id) planted";
    sqlx::query(queued_reset)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    let taken = cli(&app, &["db", "backup", file.to_str().unwrap(), "--json"]);
    sqlx::query("DELETE FROM job WHERE kind IN ('accounts.reset_request', 'accounts.reset_mail')")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    assert!(taken["bytes"].as_u64().unwrap() > 1000, "{taken}");
    // The backup is sealed (issue 28): without the master key it is noise that pg_restore
    // cannot read; with it, it opens to the dump. One changed byte, or another master key,
    // and a restore refuses it before it touches anything.
    let sealed = std::fs::read(&file).unwrap();
    use pexper_platform::db::sealed_file;
    assert!(sealed.starts_with(sealed_file::MAGIC));
    let mut dump = Vec::new();
    sealed_file::open(&app.platform.keyring, &sealed[..], &mut dump).unwrap();
    assert!(dump.starts_with(b"PGDMP"), "a pg_dump inside");
    let tampered = dir.path().join("tampered.backup");
    let mut changed = sealed.clone();
    // A byte inside the first part: past the header (with its wrapped key) and the part's length.
    let header = sealed_file::MAGIC.len()
        + 16
        + 4
        + 2
        + usize::from(u16::from_be_bytes([sealed[36], sealed[37]]));
    changed[header + 4 + 100] ^= 0x20;
    std::fs::write(&tampered, &changed).unwrap();
    let mut other_key = vars.clone();
    other_key.retain(|(k, _)| k != "PEXPER_MASTER_KEY");
    other_key.push((
        "PEXPER_MASTER_KEY".into(),
        pexper_platform::crypto::MasterKeys::generate_encoded(),
    ));
    for (vars, backup, why) in [
        (&vars, &tampered, "was changed"),
        (&other_key, &file, "PEXPER_MASTER_KEY must list"),
    ] {
        let refused = admin(vars, &["db", "restore", backup.to_str().unwrap()]);
        assert!(!refused.status.success());
        assert!(stderr(&refused).contains(why), "{}", stderr(&refused));
    }
    assert_eq!(app.count("person").await, 2, "nothing was touched");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = admin(&vars, &["db", "backup", file.to_str().unwrap()]);
    assert!(
        !again.status.success(),
        "an existing file is not overwritten"
    );
    let erased_id: pexper_platform::person::PersonId = {
        let mut conn = app.platform.pool.acquire().await.unwrap();
        let address = pexper_platform::address::EmailAddress::parse(erased).unwrap();
        pexper_platform::person::find(&mut conn, &app.platform.keyring, &address)
            .await
            .unwrap()
            .unwrap()
    };
    request_and_verify(&app, erased, "deletion").await;
    mail_to(&app, erased, "has been deleted").await;
    app.queue_drained().await;
    assert_eq!(app.count("person").await, 1);
    let journal = cli(&app, &["db", "journal", "--json"]);
    let hash =
        pexper_platform::crypto::sha256(format!("pexper/erased-person/{}", erased_id.0).as_bytes());
    assert_eq!(
        journal[0]["person_hash"],
        pexper_platform::crypto::hex(&hash)
    );
    let exported = dir.path().join("journal.json");
    std::fs::write(&exported, journal.to_string()).unwrap();

    // Restoring with a server still connected is refused, and changes nothing.
    let refused = admin(&vars, &["db", "restore", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("stop every pexper-server"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(app.count("person").await, 1);

    // The servers stop; the backup is restored; the erasure is replayed from the live journal.
    app.shutdown().await;
    app.platform.close().await;
    let restored = cli(&app, &["db", "restore", file.to_str().unwrap(), "--json"]);
    let note = restored["note"].as_str().unwrap_or_default().to_owned();
    assert!(
        note.contains("Password changes made since the backup are lost"),
        "{restored}"
    );
    assert_eq!(
        restored,
        json!({"journal_entries": 1, "erased_again": 1, "sessions_and_links_ended": 4,
               "note": note})
    );
    let pool = app.db.pool().await;
    // The backup may predate a sign-out or a password change: no session, no reset link and
    // no reset email still queued in it survives.
    let live: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM account_session)
              + (SELECT count(*) FROM account_reset WHERE used_at IS NULL)
              + (SELECT count(*) FROM job
                 WHERE kind IN ('accounts.reset_request', 'accounts.reset_mail'))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(live, 0);
    let is_back = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM person WHERE id = $1")
            .bind(erased_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(
        is_back(pool.clone()).await,
        0,
        "their key is destroyed again"
    );
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM waitlist_entry")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(entries, 1, "only the one who stayed");
    assert_eq!(audience["queued"], 2, "{audience}");
    assert_eq!(
        crate::product_email::broadcast(&vars, dir.path(), "News", true)["queued"],
        1,
        "not mailed"
    );

    // The live database is lost with its journal: the backup goes into a new one, with the
    // exported copy of the journal.
    let fresh = TestDatabase::empty().await;
    let mut elsewhere = vars.clone();
    elsewhere.retain(|(k, _)| k != "DATABASE_URL");
    elsewhere.push(("DATABASE_URL".into(), fresh.url()));
    let out = admin(
        &elsewhere,
        &[
            "db",
            "restore",
            file.to_str().unwrap(),
            "--journal",
            exported.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let restored: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(restored["erased_again"], 1, "{restored}");
    assert_eq!(is_back(fresh.pool().await).await, 0);
    assert_eq!(
        crate::product_email::broadcast(&elsewhere, dir.path(), "News", true)["queued"],
        1
    );
    // Replaying again (as after a point-in-time recovery) finds nobody left to erase.
    let out = admin(&elsewhere, &["db", "replay", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let replayed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(replayed, json!({"journal_entries": 1, "erased_again": 0}));

    // A plain pg_dump, as backups were before they were sealed, still restores, when the
    // operator says it is one.
    let plain = dir.path().join("plain.dump");
    let dumped = std::process::Command::new("pg_dump")
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&plain)
        .arg(format!("--dbname={}", fresh.url()))
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{}", stderr(&dumped));
    let older = TestDatabase::empty().await;
    let mut from_plain = vars.clone();
    from_plain.retain(|(k, _)| k != "DATABASE_URL");
    from_plain.push(("DATABASE_URL".into(), older.url()));
    // Only when the operator says so: a plain dump swapped in for a backup is not restored
    // unchecked.
    let out = admin(&from_plain, &["db", "restore", plain.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--unsealed"), "{}", stderr(&out));
    let out = admin(
        &from_plain,
        &[
            "db",
            "restore",
            plain.to_str().unwrap(),
            "--unsealed",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let people: i64 = sqlx::query_scalar("SELECT count(*) FROM person")
        .fetch_one(&older.pool().await)
        .await
        .unwrap();
    assert_eq!(people, 1, "the one who stayed, from the plain dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_does_not_start_on_a_database_being_restored_nor_a_restore_under_a_starting_server()
 {
    init();
    let db = TestDatabase::new().await;
    let smtp = SmtpServer::start().await;
    let dir = tempdir::TempDir::new();
    let vars = test_vars(&db, &smtp, dir.path());
    let config = pexper_platform::Config::from_vars(vars.clone()).unwrap();
    let lock = pexper_platform::db::RESTORE_LOCK;
    let pool = db.pool().await;

    // A restore holds the lock for its whole length: a server starting meanwhile waits.
    let mut restoring = pool.acquire().await.unwrap().detach();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut restoring)
        .await
        .unwrap();
    let starting = tokio::spawn(async move {
        let pool = pexper_platform::db::connect_and_migrate(&config).await?;
        pool.close().await;
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!starting.is_finished(), "the server waits for the restore");
    use sqlx::Connection;
    restoring.close().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), starting)
        .await
        .expect("it starts once the restore is over")
        .unwrap()
        .unwrap();

    // And a restore does not begin while a server is starting (holding the lock, shared).
    let backup = dir.path().join("pexper.backup");
    let cli_vars: Vec<(String, String)> = vars.into_iter().collect();
    let out = admin(&cli_vars, &["db", "backup", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut starting = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(lock)
        .execute(&mut *starting)
        .await
        .unwrap();
    let out = admin(&cli_vars, &["db", "restore", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is starting"), "{}", stderr(&out));
    sqlx::query("SELECT pg_advisory_unlock_shared($1)")
        .bind(lock)
        .execute(&mut *starting)
        .await
        .unwrap();
    drop(starting);

    // A restore killed midway: the live database set aside (with an erasure made since the
    // backup), a half-restored one in its place. No server starts on it, nor a migration.
    sqlx::raw_sql(
        "INSERT INTO erasure_journal (person_hash, erased_at) VALUES (sha256('someone'::bytea), now());
         ALTER SCHEMA public RENAME TO pexper_replaced_by_restore;
         CREATE SCHEMA public",
    )
    .execute(&pool)
    .await
    .unwrap();
    let config = pexper_platform::Config::from_vars(cli_vars.iter().cloned().collect()).unwrap();
    let refused = pexper_platform::db::connect_and_migrate(&config)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        refused.to_string().contains("did not finish"),
        "{refused:#}"
    );
    let out = admin(&cli_vars, &["migrate"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("did not finish"), "{}", stderr(&out));
    // Restoring again puts the live database back first (its journal is read), then restores.
    let out = admin(
        &cli_vars,
        &["db", "restore", backup.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let restored: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(restored["journal_entries"], 1, "{restored}");
    pexper_platform::db::connect_and_migrate(&config)
        .await
        .expect("a finished restore lets servers start")
        .close()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_links_mailed_to_an_address_die_when_a_correction_changes_it() {
    let app = app().await;
    let password = "correct horse battery staple";
    // Someone holds a sign-up link for one address, and a reset link for an account at another.
    let (pending, holder) = ("pending@example.net", "holder@example.net");
    for email in [pending, holder] {
        let res = app
            .client
            .post(app.url("/v1/accounts"))
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let signup_link = mail_to(&app, pending, "open your Pexper account")
        .await
        .link(&app.url("/v1/accounts/verify?token="));
    let opened = mail_to(&app, holder, "open your Pexper account")
        .await
        .link(&app.url("/v1/accounts/verify?token="));
    let res = choose_password(&app.client, &opened, &app.address, password).await;
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .post(app.url("/v1/accounts/password-reset"))
        .json(&json!({"email": holder}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let reset_link = mail_to(&app, holder, "password")
        .await
        .link(&app.url("/v1/accounts/password-reset/confirm?token="));

    // Each address is corrected to another (someone else's, say) by the operator.
    for (old, new) in [
        (pending, "someone@example.net"),
        (holder, "someone.else@example.net"),
    ] {
        request_and_verify(&app, old, "correction").await;
        let id = requests(&app)
            .iter()
            .find(|r| r["kind"] == "correction" && r["status"] == "verified")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        cli(
            &app,
            &[
                "privacy",
                "complete",
                &id,
                "--note",
                "Corrected.",
                "--new-email",
                new,
                "--json",
            ],
        );
    }
    // The links kept from before open nothing.
    for link in [&signup_link, &reset_link] {
        assert_eq!(
            app.client.get(link).send().await.unwrap().status(),
            400,
            "{link}"
        );
        let res = choose_password(
            &app.client,
            link,
            &app.address,
            "the holder's own choice now",
        )
        .await;
        assert_eq!(res.status(), 400, "{link}");
    }
    assert_eq!(app.count("account").await, 1);
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": "someone.else@example.net", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "the password is the one chosen before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_erases_without_a_link_and_the_audit_trail_names_who_and_why() {
    let app = app().await;
    let email = "too.young@example.net";
    customer(&app, email).await;
    let mut vars = app.cli_vars();
    vars.push(("PEXPER_OPERATOR".into(), "alice".into()));
    let run = |args: &[&str]| admin(&vars, args);

    // Addresses in clear only with a reason, which is recorded (redacted) with her name.
    let out = run(&["waitlist", "export", "--format", "json"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
    let out = run(&["purchases", "list", "--json"]);
    let purchase = serde_json::from_str::<Value>(&stdout(&out)).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run(&["purchases", "show", &purchase, "--email", "--json"]);
    assert!(!out.status.success(), "--email without --reason");
    let out = run(&[
        "waitlist",
        "export",
        "--format",
        "json",
        "--reason",
        &format!("checking {email}'s entry"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(email));

    // Nobody by that address: one clear line, nothing done.
    let out = run(&[
        "privacy",
        "erase",
        "--email",
        "nobody@example.net",
        "--reason",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nobody is known"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1);

    // The erasure: the same deletion as a verified request, confirmed to the address.
    let out = run(&[
        "privacy",
        "erase",
        "--email",
        email,
        "--reason",
        "a child under 16, ticket 42",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    mail_to(&app, email, "has been deleted").await;
    eventually(WAIT, "the person to be destroyed", || async {
        (app.count("person").await == 0).then_some(())
    })
    .await;
    let shown = cli(&app, &["privacy", "show", &id, "--json"]);
    assert_eq!(shown["source"], "operator");
    assert_eq!(shown["status"], "completed");
    let audit = shown["audit"].as_array().unwrap();
    let by = |event: &str| audit.iter().find(|e| e["event"] == event).unwrap().clone();
    assert_eq!(by("received")["actor"], "alice");
    assert_eq!(by("verified")["actor"], "alice");
    assert!(
        by("verified")["detail"]
            .as_str()
            .unwrap()
            .contains("a child under 16, ticket 42")
    );
    assert!(
        audit.iter().any(|e| e["actor"] == "system"),
        "the server's own steps: {audit:?}"
    );

    let reads: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, detail FROM privacy_audit WHERE event = 'read'")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].0, "alice");
    assert!(
        reads[0].1.contains("waitlist export: 1 addresses"),
        "{reads:?}"
    );
    assert!(
        !reads[0].1.contains(email),
        "the reason is redacted: {reads:?}"
    );
    let check = cli(&app, &["privacy", "audit", "--json"]);
    assert_eq!(check["broken_at"], Value::Null, "{check}");
}

/// Follows the unsubscribe link in the footer of `email`'s confirmation (one-click POST).
async fn unsubscribe_by_the_confirmation_link(app: &TestApp, email: &str) {
    let link = mail_to(app, email, "Confirm")
        .await
        .link(&app.url("/v1/unsubscribe?token="));
    let res = app.client.post(&link).body("").send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// `policy announce` with this summary, `days` ahead.
fn announce(
    app: &TestApp,
    version: &str,
    days: i64,
    summary: &str,
    extra: &[&str],
) -> std::process::Output {
    let file = app
        .data_dir
        .path()
        .join(format!("summary-{version}-{}.txt", summary.len()));
    std::fs::write(&file, summary).unwrap();
    let effective =
        (time::OffsetDateTime::now_utc().date() + time::Duration::days(days)).to_string();
    let mut args = vec![
        "policy",
        "announce",
        "--version",
        version,
        "--effective",
        &effective,
        "--summary-file",
        file.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    admin(&app.cli_vars(), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_is_announced_30_days_ahead_once_to_everyone_concerned_but_the_suppressed()
{
    let app = app().await;
    // A buyer; a confirmed member who unsubscribed from product email; someone who never
    // confirmed (no relationship yet); and someone who unsubscribed, was erased, and bought
    // again: the suppression kept at their erasure is what keeps them from the notice.
    customer(&app, "buyer@example.net").await;
    crate::waitlist::join(&app, "quiet@example.net", json!({})).await;
    unsubscribe_by_the_confirmation_link(&app, "quiet@example.net").await;
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "pending@example.net"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let returning = "returning@example.net";
    crate::waitlist::join(&app, returning, json!({})).await;
    unsubscribe_by_the_confirmation_link(&app, returning).await;
    request_and_verify(&app, returning, "deletion").await;
    mail_to(&app, returning, "has been deleted").await;
    app.queue_drained().await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM email_suppression").await,
        1
    );
    let checkout = Checkout::new(returning);
    let event = checkout.session_event("checkout.session.completed", "paid");
    assert_eq!(
        stripe::deliver(&app.client, &app.address, &event)
            .await
            .status(),
        200
    );
    app.queue_drained().await;

    // Less than 30 days' notice is refused, with one line and exit code 2.
    let out = announce(
        &app,
        "2027-01",
        29,
        "We now keep receipts for 10 years.",
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("30 days"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1);

    // A dry run counts the three concerned, and records nothing.
    let summary = "We now keep receipts for 10 years.\n\nNothing else changes.";
    let out = announce(&app, "2027-01", 45, summary, &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dry: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(dry["audience"], 3, "{dry}");
    assert_eq!(dry["queued"], 0);
    let policy = |app: &TestApp| {
        let url = app.url("/v1/policy");
        let client = app.client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        policy(&app).await,
        json!({"current": null, "upcoming": null})
    );

    let before = app.smtp.received().len();
    let out = announce(&app, "2027-01", 45, summary, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (done["audience"].clone(), done["queued"].clone()),
        (json!(3), json!(3))
    );
    // The website's banner reads it as the document states: an ISO date.
    let upcoming = policy(&app).await;
    assert_eq!(upcoming["upcoming"]["version"], "2027-01", "{upcoming}");
    let effective = (time::OffsetDateTime::now_utc().date() + time::Duration::days(45)).to_string();
    assert_eq!(effective.len(), 10, "YYYY-MM-DD");
    assert_eq!(
        upcoming["upcoming"]["effective_at"], effective,
        "{upcoming}"
    );
    app.queue_drained().await;
    let notices: Vec<smtp::ReceivedMail> = app.smtp.received()[before..].to_vec();
    let mut to: Vec<String> = notices.iter().map(|m| m.to.join(",")).collect();
    to.sort();
    assert_eq!(to, vec!["<buyer@example.net>", "<quiet@example.net>"]);
    for notice in &notices {
        assert!(notice.header("Subject").unwrap().contains("privacy policy"));
        assert!(
            notice.header("List-Unsubscribe").is_none(),
            "a legal notice, not marketing"
        );
        assert!(
            notice
                .part("text/plain")
                .unwrap()
                .contains("Nothing else changes.")
        );
    }
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM policy_notice GROUP BY status ORDER BY status",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec![("sent".into(), 2), ("suppressed".into(), 1)]);

    // Again: nobody twice. Another summary under the same version: refused.
    let again: Value =
        serde_json::from_str(&stdout(&announce(&app, "2027-01", 45, summary, &[]))).unwrap();
    assert_eq!(
        (again["queued"].clone(), again["already"].clone()),
        (json!(0), json!(3))
    );
    let out = announce(&app, "2027-01", 45, "Something else.", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), before + 2);

    // The banner's source, and the buyer's export.
    let status = policy(&app).await;
    assert_eq!(status["current"], Value::Null);
    assert_eq!(status["upcoming"]["version"], "2027-01");
    assert_eq!(status["upcoming"]["summary"], summary);
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let buyer = pexper_platform::person::find(
        &mut conn,
        &app.platform.keyring,
        &pexper_platform::address::EmailAddress::parse("buyer@example.net").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let export = pexper_server::personal_data(&app.platform.config)
        .export(&mut conn, &app.platform.keyring, buyer)
        .await
        .unwrap();
    let notices = &export["privacy_requests"]["policy_notices"];
    assert_eq!(notices[0]["version"], "2027-01", "{export}");
    assert_eq!(notices[0]["status"], "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restriction_stops_broadcasts_invitations_address_exports_and_referral_credit_until_lifted()
 {
    use crate::waitlist::join;
    let app = app().await;
    let (first, second) = ("first.in.line@example.net", "second.in.line@example.net");
    join(&app, first, json!({})).await;
    join(&app, second, json!({})).await;
    let restricted = person_of(&app, first).await.unwrap();
    let entry = |column: &'static str| {
        let pool = app.platform.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT {column}::text FROM waitlist_entry WHERE person_id = $1"
            )))
            .bind(restricted)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let code = entry("referral_code").await;

    // The first in line asks for a restriction, and the operator carries it out.
    request_and_verify(&app, first, "restriction").await;
    let id = request_of_kind(&app, "restriction");
    cli(
        &app,
        &[
            "privacy",
            "complete",
            &id,
            "--note",
            "Restricted.",
            "--json",
        ],
    );
    // A friend joins through their link: no credit while restricted.
    join(&app, "their.friend@example.net", json!({ "ref": code })).await;
    assert_eq!(entry("referrals").await, "0");
    // The operator's export keeps their row, without the address.
    let export = cli(
        &app,
        &["waitlist", "export", "--json", "--reason", "launch list"],
    );
    let rows = export.as_array().unwrap();
    let theirs: Vec<&Value> = rows
        .iter()
        .filter(|r| r["person_id"] == restricted.0.to_string())
        .collect();
    assert_eq!(theirs.len(), 1, "{export}");
    assert_eq!(theirs[0]["email"], Value::Null, "{export}");
    assert!(rows.iter().any(|r| r["email"] == second), "{export}");
    // A broadcast is not queued for them.
    let body = app.data_dir.path().join("update.md");
    std::fs::write(&body, "Pexper 0.9 is out.").unwrap();
    cli(
        &app,
        &[
            "mail",
            "broadcast",
            "--template",
            "product-update",
            "--subject",
            "Pexper 0.9",
            "--body-file",
            body.to_str().unwrap(),
            "--json",
        ],
    );
    let queued_for: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT person_id FROM broadcast_delivery")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert!(!queued_for.is_empty() && !queued_for.contains(&restricted.0));
    // The next invitation passes them over, and keeps their place.
    let invite =
        |count: &'static str| cli(&app, &["waitlist", "invite", "--count", count, "--json"]);
    assert_eq!(invite("1")["queued"], 1);
    assert_eq!(entry("status").await, "confirmed");

    // Lifted: they are invited next.
    cli(&app, &["privacy", "lift", &id, "--json"]);
    assert_eq!(invite("1")["queued"], 1);
    assert_eq!(entry("status").await, "invited");
}

async fn person_of(app: &TestApp, email: &str) -> Option<pexper_platform::person::PersonId> {
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let address = pexper_platform::address::EmailAddress::parse(email).unwrap();
    pexper_platform::person::find(&mut conn, &app.platform.keyring, &address)
        .await
        .unwrap()
}

/// The id of the (only) request of this kind.
fn request_of_kind(app: &TestApp, kind: &str) -> String {
    requests(app).iter().find(|r| r["kind"] == kind).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Who got a product update with this subject.
fn got(app: &TestApp, subject: &str) -> Vec<String> {
    let mut to: Vec<String> = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.header("Subject").as_deref() == Some(subject))
        .map(|m| m.to.join(","))
        .collect();
    to.sort();
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correction_restriction_and_objection_are_carried_out_when_completed() {
    let app = app().await;
    for who in ["old.name", "taken", "restricted", "objects"] {
        crate::waitlist::join(&app, &format!("{who}@example.net"), json!({})).await;
    }
    let vars = app.cli_vars();

    // A correction of the address: refused while the new one is someone else's (nothing
    // changes), then carried out: found by the new address only, told at the new address.
    request_and_verify(&app, "old.name@example.net", "correction").await;
    let id = request_of_kind(&app, "correction");
    let before = person_of(&app, "old.name@example.net").await.unwrap();
    let out = admin(
        &vars,
        &[
            "privacy",
            "complete",
            &id,
            "--note",
            "Corrected.",
            "--new-email",
            "taken@example.net",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another person"), "{}", stderr(&out));
    assert_eq!(
        cli(&app, &["privacy", "show", &id, "--json"])["status"],
        "verified"
    );
    assert_eq!(person_of(&app, "old.name@example.net").await, Some(before));
    cli(
        &app,
        &[
            "privacy",
            "complete",
            &id,
            "--note",
            "Corrected.",
            "--new-email",
            "new.name@example.net",
            "--json",
        ],
    );
    assert_eq!(person_of(&app, "new.name@example.net").await, Some(before));
    assert_eq!(person_of(&app, "old.name@example.net").await, None);
    mail_to(&app, "new.name@example.net", "request is complete").await;

    // A restriction: while it holds, no product email; lifted, product email again.
    request_and_verify(&app, "restricted@example.net", "restriction").await;
    let id = request_of_kind(&app, "restriction");
    cli(
        &app,
        &[
            "privacy",
            "complete",
            &id,
            "--note",
            "Restricted.",
            "--json",
        ],
    );
    let restricted = person_of(&app, "restricted@example.net").await.unwrap();
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let export = pexper_server::personal_data(&app.platform.config)
        .export(&mut conn, &app.platform.keyring, restricted)
        .await
        .unwrap();
    assert!(
        export["email"]["processing_restricted_since"].is_string(),
        "{export}"
    );
    // The export holds the request as it went: how it came, when it was verified, the
    // operator's note, and what the audit trail recorded of it.
    let request = &export["privacy_requests"]["requests"][0];
    assert_eq!(request["kind"], "restriction", "{export}");
    assert_eq!(request["source"], "web");
    assert_eq!(request["outcome"], "Restricted.");
    assert!(request["verified_at"].is_string(), "{request}");
    let events: Vec<&str> = request["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["received", "verified", "completed"], "{request}");
    drop(conn);

    // An objection: unsubscribed from product email.
    request_and_verify(&app, "objects@example.net", "objection").await;
    let id_objection = request_of_kind(&app, "objection");
    cli(
        &app,
        &[
            "privacy",
            "complete",
            &id_objection,
            "--note",
            "Stopped.",
            "--json",
        ],
    );

    let dir = tempdir::TempDir::new();
    crate::product_email::broadcast(&vars, dir.path(), "News one", false);
    app.queue_drained().await;
    assert_eq!(
        got(&app, "News one"),
        vec!["<new.name@example.net>", "<taken@example.net>"],
        "not the restricted, not the objector"
    );
    cli(&app, &["privacy", "lift", &id, "--json"]);
    crate::product_email::broadcast(&vars, dir.path(), "News two", false);
    app.queue_drained().await;
    assert_eq!(
        got(&app, "News two"),
        vec![
            "<new.name@example.net>",
            "<restricted@example.net>",
            "<taken@example.net>"
        ]
    );
}

/// The export gives what the data map says it gives, beyond each section's basics: the
/// person's id and since when we know them, each email's Message-ID, their suppression
/// status, the broadcasts queued for them, when a signup email last went, and a sign-up for
/// an account not yet verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_gives_ids_suppression_broadcasts_and_a_pending_sign_up() {
    let app = app().await;
    let email = "whole.export@example.net";
    crate::waitlist::join(&app, email, json!({})).await;
    app.queue_drained().await;
    let dir = tempdir::TempDir::new();
    let queued = crate::product_email::broadcast(&app.cli_vars(), dir.path(), "Spring news", false);
    assert_eq!(queued["queued"], 1, "{queued}");
    app.queue_drained().await;
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    app.queue_drained().await;

    let keyring = &app.platform.keyring;
    let address = pexper_platform::address::EmailAddress::parse(email).unwrap();
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let person = pexper_platform::person::find(&mut conn, keyring, &address)
        .await
        .unwrap()
        .unwrap();
    pexper_platform::suppression::suppress(
        &mut conn,
        keyring,
        &address,
        pexper_platform::suppression::Reason::Bounced,
    )
    .await
    .unwrap();
    let export = app
        .platform
        .personal_data
        .export(&mut conn, keyring, person)
        .await
        .unwrap();
    let mail = &export["email"];
    assert_eq!(mail["person_id"], person.0.to_string(), "{mail}");
    assert!(mail["known_since"].is_string(), "{mail}");
    assert_eq!(mail["suppressed"]["reason"], "bounced", "{mail}");
    let sent = mail["emails_sent"].as_array().unwrap();
    assert!(sent.len() >= 3, "confirmation, welcome, news: {mail}");
    assert!(sent.iter().all(|e| e["message_id"].is_string()), "{mail}");
    let waitlist = &export["waitlist"];
    assert_eq!(
        waitlist["broadcasts"][0]["subject"], "Spring news",
        "{waitlist}"
    );
    assert!(waitlist["broadcasts"][0]["queued_at"].is_string());
    assert!(waitlist["last_signup_mail_at"].is_string(), "{waitlist}");
    let account = &export["account"];
    assert_eq!(account["account"], Value::Null, "{account}");
    assert_eq!(
        account["pending_signups"].as_array().map(Vec::len),
        Some(1),
        "{account}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_written_while_its_person_is_erased_does_not_outlive_the_erasure() {
    let app = spawn_app().await;
    let email = "racing.link@example.net";
    let res = request(&app, json!({"email": email, "kind": "objection"})).await;
    assert_eq!(res.status(), 202);
    mail_to(&app, email, "please confirm").await;
    app.queue_drained().await;
    // A mail job writing a new link for the request, caught mid-statement: it holds the
    // request's row as `store::new_token` does, and its link is not yet written.
    let mut writer = app.platform.pool.begin().await.unwrap();
    let request_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM privacy_request WHERE person_id IS NOT NULL FOR SHARE")
            .fetch_one(&mut *writer)
            .await
            .unwrap();
    // The operator erases the person meanwhile; the erasure waits for the row.
    let out = admin(
        &app.cli_vars(),
        &[
            "privacy", "erase", "--email", email, "--reason", "race", "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        WAIT,
        "the erasure to wait for the request's row",
        || async {
            let waiting = app
                .scalar(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                )
                .await;
            (waiting > 0).then_some(())
        },
    )
    .await;
    sqlx::query(
        "INSERT INTO privacy_token (token_hash, request_id, purpose, expires_at)
         VALUES (sha256('a late link'), $1, 'verify', now() + interval '1 day')",
    )
    .bind(request_id)
    .execute(&mut *writer)
    .await
    .unwrap();
    writer.commit().await.unwrap();
    mail_to(&app, email, "has been deleted").await;
    eventually(WAIT, "the person to be destroyed", || async {
        (app.count("person").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        app.count("privacy_token").await,
        0,
        "the link written as the erasure ran went with it"
    );
}
