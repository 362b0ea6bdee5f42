//! Payments, black-box: Stripe webhooks signed as Stripe signs them, with complete payloads;
//! purchases, refunds and disputes in any order; licences verified offline; the receipt over a
//! real SMTP server; the admin CLI; what the database keeps.

use std::time::Duration;

use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use pexper_wire::license;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Posts `event` signed with the development secret, now.
async fn deliver(app: &TestApp, event: &Value) -> reqwest::Response {
    stripe::deliver(&app.client, &app.address, event).await
}

async fn post(app: &TestApp, payload: String, signature: Option<String>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/webhooks/stripe"))
        .header("content-type", "application/json; charset=utf-8")
        .body(payload);
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    request.send().await.unwrap()
}

async fn delivered(app: &TestApp, event: &Value) -> String {
    let res = deliver(app, event).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let body: Value = res.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

async fn purchase(app: &TestApp, checkout: &Checkout) -> Value {
    let out = admin(
        &app.cli_vars(),
        &["purchases", "show", &checkout.session, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

async fn validate(app: &TestApp, licence: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/licenses/validate"))
        .json(&serde_json::json!({ "license": licence }))
        .send()
        .await
        .unwrap()
}

async fn licence_status(app: &TestApp, licence: &str) -> String {
    let res = validate(app, licence).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["valid"], body["status"] == "active");
    body["status"].as_str().unwrap().to_owned()
}

async fn public_key(app: &TestApp) -> ed25519_dalek::VerifyingKey {
    let published: license::PublicKey = app
        .client
        .get(app.url("/v1/licenses/public-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(published.algorithm, "Ed25519");
    license::parse_public_key(&published.public_key).unwrap()
}

/// The licence key in a receipt's text body.
pub(crate) fn licence_in(mail: &smtp::ReceivedMail) -> String {
    let text = mail.part("text/plain").expect("a text part");
    text.split_whitespace()
        .find(|w| w.starts_with("PEXPER1."))
        .unwrap_or_else(|| panic!("a licence in {text}"))
        .to_owned()
}

async fn receipt(app: &TestApp, email: &str) -> smtp::ReceivedMail {
    let recipient = format!("<{email}>");
    eventually(WAIT, "the receipt", || async {
        app.smtp
            .received()
            .into_iter()
            .find(|m| m.to.contains(&recipient))
    })
    .await
}

#[tokio::test]
async fn a_paid_checkout_issues_a_licence_that_verifies_offline_and_a_refund_revokes_it() {
    let app = spawn_app().await;
    let checkout = Checkout::new("ada.buyer@example.net");
    let status = delivered(
        &app,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!(status, "processed");

    let mail = receipt(&app, &checkout.email).await;
    assert_eq!(mail.header("Subject").unwrap(), "Your Pexper licence key");
    assert!(
        mail.header("List-Unsubscribe").is_none(),
        "a receipt is transactional"
    );
    let text = mail.part("text/plain").unwrap();
    assert!(text.contains("49.00 USD"), "{text}");
    let licence = licence_in(&mail);

    // Offline: the public key alone.
    let claims = license::verify(&licence, &public_key(&app).await).unwrap();
    assert_eq!(claims.product, "pexper");
    assert!(!claims.livemode);
    let claims_json = serde_json::to_string(&claims).unwrap();
    // Not just "ada": the claims hold hex ids, where those three letters turn up by chance.
    assert!(
        !claims_json.contains("ada.buyer") && !claims_json.contains("example.net"),
        "no personal data in a licence: {claims_json}"
    );
    assert_eq!(licence_status(&app, &licence).await, "active");

    let row = purchase(&app, &checkout).await;
    assert_eq!(row["status"], "paid");
    assert_eq!(row["amount"], 4900);
    assert_eq!(row["currency"], "usd");
    assert_eq!(row["country"], "GB");
    assert_eq!(row["payment_intent_id"], checkout.intent.as_str());
    assert_eq!(row["price_id"], "price_1PexperOneTime");
    assert_eq!(row["license_status"], "active");
    assert!(row.get("email").is_none(), "the address only when asked");

    assert_eq!(
        delivered(&app, &checkout.refund_event(4900)).await,
        "processed"
    );
    assert_eq!(licence_status(&app, &licence).await, "revoked");
    let row = purchase(&app, &checkout).await;
    assert_eq!(row["status"], "refunded");
    assert_eq!(row["amount_refunded"], 4900);
    assert_eq!(row["license_status"], "revoked");
    let events: Vec<&str> = row["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["checkout.session.completed", "charge.refunded"]);
    assert_eq!(
        claims.id,
        row["license_id"].as_str().unwrap(),
        "the licence names its record"
    );
}

#[tokio::test]
async fn the_signature_tolerance_is_three_hundred_seconds_each_way_and_a_stale_one_says_so() {
    let app = spawn_app().await;
    // A second at most passes between signing here and the check there: 299 s stays inside.
    for (offset, status, code) in [
        (-299, 200, None),
        (299, 200, None),
        (-301, 400, Some("stale_signature")),
        (301, 400, Some("stale_signature")),
    ] {
        let payload = Checkout::new(&format!("edge.{}@example.net", stripe::unique()))
            .session_event("checkout.session.completed", "paid")
            .to_string();
        let signature = stripe::sign(&payload, stripe::SECRET, stripe::now() + offset);
        let res = post(&app, payload, Some(signature)).await;
        assert_eq!(res.status(), status, "signed {offset} s from now");
        if let Some(code) = code {
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{offset}: {body}");
        }
    }
    // A fresh signature under a secret we do not hold is invalid, not stale.
    let payload = Checkout::new("edge.foreign@example.net")
        .session_event("checkout.session.completed", "paid")
        .to_string();
    let signature = stripe::sign(&payload, "whsec_not_ours", stripe::now());
    let res = post(&app, payload, Some(signature)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_signature"
    );
    assert_eq!(
        app.count("purchase").await,
        2,
        "the two inside the tolerance"
    );
}

#[tokio::test]
async fn bad_missing_stale_or_foreign_signatures_answer_400_and_store_nothing() {
    let app = spawn_app().await;
    let checkout = Checkout::new("mallory@example.net");
    let payload = checkout
        .session_event("checkout.session.completed", "paid")
        .to_string();
    let now = stripe::now();
    let altered = payload.replace("4900", "1");
    let cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "wrong secret",
            payload.clone(),
            Some(stripe::sign(&payload, "whsec_not_ours", now)),
        ),
        (
            "altered body",
            altered,
            Some(stripe::sign(&payload, stripe::SECRET, now)),
        ),
        ("missing header", payload.clone(), None),
        (
            "ten minutes old",
            payload.clone(),
            Some(stripe::sign(&payload, stripe::SECRET, now - 600)),
        ),
        (
            "ten minutes ahead",
            payload.clone(),
            Some(stripe::sign(&payload, stripe::SECRET, now + 600)),
        ),
        (
            "no v1",
            payload.clone(),
            Some(format!(
                "t={now},v0={}",
                stripe::v1(&payload, stripe::SECRET, now)
            )),
        ),
        (
            "garbage header",
            payload.clone(),
            Some("t=yesterday,v1=zz".to_owned()),
        ),
        ("empty header", payload.clone(), Some(String::new())),
    ];
    for (case, body, signature) in cases {
        let res = post(&app, body, signature).await;
        assert_eq!(res.status(), 400, "{case}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{case}: {body}");
    }
    for table in [
        "stripe_event",
        "purchase",
        "payment_adjustment",
        "license",
        "person",
        "job",
    ] {
        assert_eq!(app.count(table).await, 0, "{table}");
    }
}

#[tokio::test]
async fn a_rotated_secret_and_any_of_several_v1_signatures_are_accepted() {
    let app = spawn_app_with(AppOptions {
        vars: vec![(
            "STRIPE_WEBHOOK_SECRET",
            "whsec_new_secret,whsec_old_secret".to_owned(),
        )],
        ..AppOptions::default()
    })
    .await;
    let now = stripe::now();
    for secret in ["whsec_old_secret", "whsec_new_secret"] {
        let payload = Checkout::new("rotation@example.net")
            .session_event("checkout.session.completed", "paid")
            .to_string();
        let res = post(
            &app,
            payload.clone(),
            Some(stripe::sign(&payload, secret, now)),
        )
        .await;
        assert_eq!(res.status(), 200, "signed with {secret}");
    }
    // Stripe sends one v1 per active secret during a roll: any match is enough.
    let payload = Checkout::new("rotation@example.net")
        .session_event("checkout.session.completed", "paid")
        .to_string();
    let header = format!(
        "t={now},v1={},v1={}",
        stripe::v1(&payload, "whsec_retired", now),
        stripe::v1(&payload, "whsec_new_secret", now)
    );
    assert_eq!(
        post(&app, payload.clone(), Some(header)).await.status(),
        200
    );
    // The development secret is not configured here any more.
    let res = post(
        &app,
        payload.clone(),
        Some(stripe::sign(&payload, stripe::SECRET, now)),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count("purchase").await, 3);
}

#[tokio::test]
async fn the_same_event_twenty_times_at_once_makes_one_purchase_and_one_email() {
    let app = spawn_app().await;
    let checkout = Checkout::new("twenty@example.net");
    let event = checkout.session_event("checkout.session.completed", "paid");
    let answers = deliver_all(&app, &vec![event; 20]).await;
    assert_eq!(
        answers.iter().filter(|s| *s == "processed").count(),
        1,
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|s| *s == "duplicate").count(), 19);

    receipt(&app, &checkout.email).await;
    app.queue_drained().await;
    assert_eq!(app.count("purchase").await, 1);
    assert_eq!(app.count("license").await, 1);
    assert_eq!(app.count("stripe_event").await, 1);
    assert_eq!(app.count("email_event").await, 1);
    assert_eq!(app.smtp.received().len(), 1);
}

#[tokio::test]
async fn one_session_told_by_several_events_at_once_is_fulfilled_once_and_stays_paid() {
    let app = spawn_app().await;
    let checkout = Checkout::new("async.payer@example.net");
    // A bank debit: completed but unpaid, then succeeded; Stripe may also resend `completed`
    // late. Each is its own event id, delivered concurrently.
    let events = [
        checkout.session_event("checkout.session.completed", "unpaid"),
        checkout.session_event("checkout.session.async_payment_succeeded", "paid"),
        checkout.session_event("checkout.session.completed", "unpaid"),
        checkout.session_event("checkout.session.async_payment_succeeded", "paid"),
    ];
    let answers = deliver_all(&app, &events).await;
    assert!(answers.iter().all(|s| s == "processed"), "{answers:?}");

    receipt(&app, &checkout.email).await;
    app.queue_drained().await;
    assert_eq!(purchase(&app, &checkout).await["status"], "paid");
    assert_eq!(app.count("purchase").await, 1);
    assert_eq!(app.count("license").await, 1);
    assert_eq!(app.smtp.received().len(), 1);
}

#[tokio::test]
async fn an_unpaid_or_failed_checkout_issues_nothing() {
    let app = spawn_app().await;
    let checkout = Checkout::new("declined@example.net");
    delivered(
        &app,
        &checkout.session_event("checkout.session.completed", "unpaid"),
    )
    .await;
    assert_eq!(purchase(&app, &checkout).await["status"], "unpaid");
    delivered(
        &app,
        &checkout.session_event("checkout.session.async_payment_failed", "unpaid"),
    )
    .await;
    let row = purchase(&app, &checkout).await;
    assert_eq!(row["status"], "payment_failed");
    assert_eq!(row["license_status"], "none");
    assert_eq!(app.count("license").await, 0);
    // No job for the checkout (a recurring sweep may come and go meanwhile).
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job WHERE kind NOT IN (SELECT kind FROM recurring_job)",
    )
    .fetch_one(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn a_refund_that_arrives_before_its_purchase_is_applied_when_the_purchase_lands() {
    let app = spawn_app().await;
    let full = Checkout::new("early.refund@example.net");
    assert_eq!(delivered(&app, &full.refund_event(4900)).await, "processed");
    assert_eq!(app.count("purchase").await, 0);
    delivered(
        &app,
        &full.session_event("checkout.session.completed", "paid"),
    )
    .await;
    let row = purchase(&app, &full).await;
    assert_eq!(row["status"], "refunded");
    assert_eq!(
        row["license_status"], "none",
        "no licence for a refunded order"
    );

    // Partial refunds, out of order: the cumulative amount wins, whatever came last.
    let partial = Checkout::new("partial.refund@example.net");
    delivered(&app, &partial.refund_event(2000)).await;
    delivered(&app, &partial.refund_event(1000)).await;
    delivered(
        &app,
        &partial.session_event("checkout.session.completed", "paid"),
    )
    .await;
    let row = purchase(&app, &partial).await;
    assert_eq!(row["status"], "partially_refunded");
    assert_eq!(row["amount_refunded"], 2000);
    assert_eq!(row["license_status"], "active");

    receipt(&app, &partial.email).await;
    app.queue_drained().await;
    let to: Vec<Vec<String>> = app.smtp.received().iter().map(|m| m.to.clone()).collect();
    assert_eq!(
        to,
        [vec![format!("<{}>", partial.email)]],
        "no receipt for the refunded order"
    );
}

#[tokio::test]
async fn a_lost_dispute_revokes_the_licence_and_a_won_one_keeps_it_in_any_order() {
    let app = spawn_app().await;
    let lost = Checkout::new("lost.dispute@example.net");
    delivered(
        &app,
        &lost.session_event("checkout.session.completed", "paid"),
    )
    .await;
    let licence = licence_in(&receipt(&app, &lost.email).await);
    // `closed` can overtake `created`: the later event decides, not the later delivery.
    let mut created = lost.dispute_event("charge.dispute.created", "needs_response");
    created["created"] = (stripe::now() - 30).into();
    delivered(&app, &lost.dispute_event("charge.dispute.closed", "lost")).await;
    delivered(&app, &created).await;
    assert_eq!(purchase(&app, &lost).await["status"], "dispute_lost");
    assert_eq!(licence_status(&app, &licence).await, "revoked");

    let won = Checkout::new("won.dispute@example.net");
    delivered(
        &app,
        &won.session_event("checkout.session.completed", "paid"),
    )
    .await;
    let licence = licence_in(&receipt(&app, &won.email).await);
    let mut created = won.dispute_event("charge.dispute.created", "needs_response");
    created["created"] = (stripe::now() - 30).into();
    delivered(&app, &created).await;
    assert_eq!(purchase(&app, &won).await["status"], "disputed");
    assert_eq!(licence_status(&app, &licence).await, "active");
    delivered(&app, &won.dispute_event("charge.dispute.closed", "won")).await;
    assert_eq!(purchase(&app, &won).await["status"], "paid");
    assert_eq!(licence_status(&app, &licence).await, "active");
}

#[tokio::test]
async fn other_event_types_are_acknowledged_and_ignored_and_unreadable_ones_are_retried() {
    let app = spawn_app().await;
    let checkout = Checkout::new("other@example.net");
    let other = stripe::event(
        "payment_intent.created",
        serde_json::json!({"id": checkout.intent, "object": "payment_intent"}),
    );
    assert_eq!(delivered(&app, &other).await, "ignored");
    assert_eq!(delivered(&app, &other).await, "duplicate");
    assert_eq!(app.count("purchase").await, 0);

    // Signed by Stripe but without the one field we need: 422 so Stripe retries, and the
    // event is not recorded (a fixed server will process the retry).
    let broken = stripe::event(
        "checkout.session.completed",
        serde_json::json!({"object": "checkout.session", "amount_total": 4900}),
    );
    let res = deliver(&app, &broken).await;
    assert_eq!(res.status(), 422);
    assert_eq!(app.count("stripe_event").await, 1);
    let res = post(
        &app,
        "{\"not\":\"an event\"}".into(),
        Some(stripe::sign(
            "{\"not\":\"an event\"}",
            stripe::SECRET,
            stripe::now(),
        )),
    )
    .await;
    assert_eq!(res.status(), 422);
}

#[tokio::test]
async fn licences_we_did_not_sign_are_refused_and_operators_can_revoke() {
    let app = spawn_app().await;
    let checkout = Checkout::new("operator.revoke@example.net");
    delivered(
        &app,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    let licence = licence_in(&receipt(&app, &checkout.email).await);

    let forged = license::sign(
        &license::verify(&licence, &public_key(&app).await).unwrap(),
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    );
    for bad in [forged.as_str(), "PEXPER1.e30.AAAA", "hello"] {
        let res = validate(&app, bad).await;
        assert_eq!(res.status(), 422, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_license");
    }

    let out = admin(&app.cli_vars(), &["licenses", "show", &licence, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["license"], licence.as_str());

    let out = admin(
        &app.cli_vars(),
        &[
            "licenses",
            "revoke",
            shown["id"].as_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(licence_status(&app, &licence).await, "revoked");
    let out = admin(&app.cli_vars(), &["licenses", "revoke", "no-such-licence"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn the_admin_lists_purchases_with_the_contracted_fields_and_shows_the_email_only_on_request()
{
    let app = spawn_app().await;
    let a = Checkout::new("list.a@example.net");
    let b = Checkout::new("list.b@example.net");
    delivered(&app, &a.session_event("checkout.session.completed", "paid")).await;
    delivered(
        &app,
        &b.session_event("checkout.session.completed", "unpaid"),
    )
    .await;

    let out = admin(&app.cli_vars(), &["purchases", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout_text = stdout(&out);
    assert!(
        !stdout_text.contains("example.net"),
        "no addresses in a list"
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout_text).unwrap();
    assert_eq!(rows.len(), 2);
    for field in [
        "id",
        "checkout_session_id",
        "amount",
        "currency",
        "status",
        "created_at",
        "license_status",
    ] {
        assert!(rows.iter().all(|r| r.get(field).is_some()), "{field}");
    }
    let out = admin(
        &app.cli_vars(),
        &["purchases", "list", "--status", "paid", "--json"],
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["checkout_session_id"], a.session.as_str());
    let out = admin(
        &app.cli_vars(),
        &[
            "purchases",
            "list",
            "--buyer",
            " List.B@Example.net ",
            "--json",
        ],
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["checkout_session_id"], b.session.as_str());

    let out = admin(
        &app.cli_vars(),
        &[
            "purchases",
            "show",
            &a.session,
            "--email",
            "--reason",
            "refund by hand",
            "--json",
        ],
    );
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["email"], "list.a@example.net");
    let table = stdout(&admin(&app.cli_vars(), &["purchases", "list"]));
    assert!(
        table.contains("49.00 USD") && table.contains("CHECKOUT_SESSION_ID"),
        "{table}"
    );
    assert_eq!(
        admin(&app.cli_vars(), &["purchases", "show", "cs_nope"])
            .status
            .code(),
        Some(1)
    );
}

#[tokio::test]
async fn export_holds_purchases_and_licences_and_erasure_keeps_only_the_unlinked_accounting_record()
{
    let app = spawn_app().await;
    let checkout = Checkout::new("erase.me@example.net");
    delivered(
        &app,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    let licence = licence_in(&receipt(&app, &checkout.email).await);
    app.queue_drained().await;

    let mut conn = app.platform.pool.acquire().await.unwrap();
    let email = pexper_platform::address::EmailAddress::parse(&checkout.email).unwrap();
    let person = pexper_platform::person::find(&mut conn, &app.platform.keyring, &email)
        .await
        .unwrap()
        .unwrap();
    let export = app
        .platform
        .personal_data
        .export(&mut conn, &app.platform.keyring, person)
        .await
        .unwrap();
    let purchases = export["payments"]["purchases"].as_array().unwrap();
    assert_eq!(purchases.len(), 1);
    assert_eq!(
        purchases[0]["checkout_session_id"],
        checkout.session.as_str()
    );
    assert_eq!(purchases[0]["license"], licence.as_str());
    assert_eq!(export["email"]["address"], checkout.email.as_str());

    let mut tx = app.platform.pool.begin().await.unwrap();
    let summaries = app
        .platform
        .personal_data
        .erase(&mut tx, &app.platform.keyring, person)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let payments = summaries.iter().find(|s| s.section == "payments").unwrap();
    assert_eq!(payments.removed["purchase_links"], 1);
    assert!(payments.kept.iter().any(|k| k.contains("tax")));

    assert_eq!(payments.removed["session_ids"], 1);

    // The record keeps what accounting needs, and no longer the session id in clear, even
    // to us with the keys: only its keyed hash, which still finds it.
    let row = purchase(&app, &checkout).await;
    assert_eq!(row["has_buyer"], false);
    assert_eq!(row["amount"], 4900);
    assert_eq!(row["country"], "GB");
    assert_eq!(row["payment_intent_id"], checkout.intent.as_str());
    let hashed = row["checkout_session_id"].as_str().unwrap().to_owned();
    assert!(hashed.starts_with("h:"), "{row}");
    let out = admin(&app.cli_vars(), &["purchases", "show", &hashed, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let by_hash: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(by_hash["id"], row["id"], "the hash as listed finds it too");
    assert_eq!(
        licence_status(&app, &licence).await,
        "active",
        "they paid for it"
    );
    let dump = app.db.dump();
    assert!(!dump.contains("erase.me"), "the address is gone");
    assert!(
        !dump.contains(&checkout.session),
        "the Checkout Session id is a keyed hash now"
    );
    // A late event for the session still finds its purchase (no second one), and records
    // the session under its hash.
    delivered(
        &app,
        &checkout.session_event("checkout.session.async_payment_succeeded", "paid"),
    )
    .await;
    assert_eq!(app.count("purchase").await, 1);
    assert!(!app.db.dump().contains(&checkout.session));
    let row = purchase(&app, &checkout).await;
    assert_eq!(row["has_buyer"], false);
    assert_eq!(
        row["checkout_session_id"],
        hashed.as_str(),
        "a late event does not bring the clear id back"
    );
}

#[tokio::test]
async fn the_database_and_the_logs_keep_no_card_name_address_phone_or_email_from_a_payload() {
    let server = ServerProcess::start("trace").await;
    let client = reqwest::Client::new();
    let mut checkout = Checkout::new("dump.check@example.net");
    // Amounts unlikely to be in a dump by chance, so finding them would mean something.
    checkout.amount = 7351;
    let events = [
        checkout.session_event("checkout.session.completed", "paid"),
        checkout.refund_event(2713),
        checkout.dispute_event("charge.dispute.created", "needs_response"),
        checkout.dispute_event("charge.dispute.closed", "won"),
    ];
    for event in &events {
        let res = stripe::deliver(&client, &server.base, event).await;
        assert_eq!(res.status(), 200);
    }
    let receipt = server.smtp.wait_for(1, WAIT).await;
    let licence = licence_in(&receipt[0]);
    let dump = server.dump();
    let logs = server.stop().await;
    let event_id = events[0]["id"].as_str().unwrap();
    assert!(dump.contains(event_id), "the dump is of the right database");
    // A number is searched in the dump's text and the logs without what holds digits by
    // chance (ids, hashes, timestamps), and only as a number of its own, not inside a longer
    // one (a latency of 14919 µs is not the card); anything else is searched as it is. The
    // bytea values, decoded, in full.
    let (text, log_text) = (
        without_incidental_digits(&dump),
        without_incidental_digits(&logs),
    );
    let found = |raw: &str, stripped: &str, planted: &str| {
        if planted.chars().all(|c| c.is_ascii_digit()) {
            regex::Regex::new(&format!("(^|[^0-9]){planted}([^0-9]|$)"))
                .unwrap()
                .is_match(stripped)
        } else {
            raw.contains(planted)
        }
    };
    for planted in stripe::PLANTED.iter().chain([
        &checkout.email.as_str(),
        &stripe::CARD_LAST4,
        &"203.0.113.77",
    ]) {
        assert!(!found(&dump, &text, planted), "{planted} in the database");
        assert!(
            !dump.bytea_contains(planted),
            "{planted} in the database, in a bytea column"
        );
        assert!(!found(&logs, &log_text, planted), "{planted} in the logs");
    }
    assert!(
        logs.contains("stripe event"),
        "the server did log the events"
    );
    // The purchase record is sealed (issue 28): neither what was paid nor which payment at
    // Stripe it was, nor the licence key, is in the database in clear.
    for sealed in [
        checkout.session.as_str(),
        &checkout.intent,
        &checkout.charge,
        "7351",
        "2713",
        &licence,
    ] {
        assert!(
            !found(&dump, &text, sealed),
            "{sealed} in the database in clear"
        );
        assert!(
            !dump.bytea_contains(sealed),
            "{sealed} in the database, in a bytea column"
        );
    }
}

/// The dump with what can hold four digits by chance (bytea hex, UUIDs, timestamps, and any
/// run of 16 or more letters and digits: ids, keyed hashes, tokens) removed, so a card's last
/// four digits are searched only where they would mean something.
fn without_incidental_digits(dump: &str) -> String {
    let noise = regex::Regex::new(
        r"\\x[0-9a-f]+|[0-9A-Za-z_-]{16,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{4}-\d{2}-\d{2}[ T][0-9:.+]+",
    )
    .unwrap();
    noise.replace_all(dump, "").into_owned()
}

/// Delivers every event at once, each from its own task; returns the acknowledgements.
async fn deliver_all(app: &TestApp, events: &[Value]) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for event in events {
        let (client, url, payload) = (
            app.client.clone(),
            app.url("/v1/webhooks/stripe"),
            event.to_string(),
        );
        tasks.spawn(async move {
            let signature = stripe::sign(&payload, stripe::SECRET, stripe::now());
            let res = client
                .post(url)
                .header("Stripe-Signature", signature)
                .body(payload)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            body["status"].as_str().unwrap().to_owned()
        });
    }
    tasks.join_all().await
}

/// Found by the contract test once its webhooks were signed (two seeds, two findings): an event
/// Postgres cannot store answered 500, one with a NUL (text holds none) in its id, its type or
/// its object, and one whose time is outside what a timestamp holds. Stripe sends neither;
/// each is refused 422, with nothing stored. A session whose own `created` is out of range is
/// dated by its event instead.
#[tokio::test]
async fn a_signed_event_postgres_cannot_store_is_refused_422_and_nothing_is_stored() {
    use serde_json::json;
    let app = spawn_app().await;
    let mut in_id = stripe::event("checkout.session.completed", json!({}));
    in_id["id"] = json!("evt_\u{0}1");
    let mut in_type = stripe::event("customer.created\u{0}", json!({}));
    in_type["id"] = json!("evt_nul_type");
    let in_object =
        Checkout::new("nul@example.com").session_event("checkout.session.completed", "paid");
    let in_object = serde_json::to_string(&in_object)
        .unwrap()
        .replace("\"paid\"", "\"pa\\u0000id\"");
    assert!(in_object.contains("\\u0000"));
    let mut payloads = vec![in_id.to_string(), in_type.to_string(), in_object];
    for created in [
        10_000_000_000_000_i64,
        1_000_000_000_000_000,
        -100_000_000_000,
    ] {
        let mut far = stripe::event("customer.created", json!({}));
        far["created"] = json!(created);
        payloads.push(far.to_string());
    }
    for payload in payloads {
        let signature = stripe::sign(&payload, stripe::SECRET, stripe::now());
        let res = post(&app, payload, Some(signature)).await;
        assert_eq!(res.status(), 422);
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "unreadable_event"
        );
    }
    assert_eq!(app.count("stripe_event").await, 0);
    assert_eq!(app.count("purchase").await, 0);

    let mut session =
        Checkout::new("far@example.com").session_event("checkout.session.completed", "paid");
    session["data"]["object"]["created"] = json!(1_000_000_000_000_000_i64);
    assert_eq!(deliver(&app, &session).await.status(), 200);
    let dated: bool = sqlx::query_scalar(
        "SELECT created_at = occurred_at FROM purchase p JOIN stripe_event e ON e.id = $1",
    )
    .bind(session["id"].as_str().unwrap())
    .fetch_one(&app.platform.pool)
    .await
    .unwrap();
    assert!(dated, "dated by its event");
}
