//! Completeness, proved against the data (issue 28): one person goes through every public
//! flow, so that every table the data map declares holds something; their export gives back
//! what went in (compared with the inputs, not with the code's own output); and after their
//! erasure, what is left of them anywhere — their address, its keyed hashes, their ids, every
//! value planted on the way — sits only in columns the data map declares kept.

use std::collections::{BTreeMap, BTreeSet};

use pexper_platform::data_map::{OnErasure, Table};
use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use serde_json::{Value, json};

const EMAIL: &str = "every.flow@example.net";
const SOURCE: &str = "planted-source";
const SUPPORT_SUBJECT: &str = "planted support subject 4417";
const SUPPORT_MESSAGE: &str = "planted support message 5521";
const REPLY: &str = "planted operator reply 6632";
const DETAILS: &str = "planted request details 7743";
const BROADCAST: &str = "planted broadcast subject 8854";
const LETTER: &str = "planted letter words 9965";
const AMOUNT: i64 = 6173;
const REFUND: i64 = 2719;

/// Declared tables that may hold nothing of one person after every flow, and why.
const EMPTY_BY_DESIGN: &[(&str, &str)] = &[
    (
        "payments_unsealed",
        "only between migration 24 and the first start",
    ),
    ("erasure_journal", "only once someone is erased"),
    (
        "job",
        "work in progress: done by now (recurring jobs aside)",
    ),
    ("account_signup", "consumed when the account opened"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_through_every_flow_is_exported_whole_and_erased_to_what_the_map_keeps() {
    let app = crate::privacy::app().await;
    let vars = app.cli_vars();
    let dir = tempdir::TempDir::new();
    let cli = |args: &[&str]| {
        let out = admin(&vars, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let code_in = |page: &str| {
        page.split("?ref=")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_else(|| panic!("a referral link in {page}"))
            .to_owned()
    };

    // The waitlist: joined through someone's link, with a source, and brought a friend.
    let referrer = crate::waitlist::join(&app, "the.referrer@example.net", json!({})).await;
    let page = crate::waitlist::join(
        &app,
        EMAIL,
        json!({"source": SOURCE, "ref": code_in(&referrer)}),
    )
    .await;
    let own_code = code_in(&page);
    crate::waitlist::join(&app, "the.friend@example.net", json!({"ref": own_code})).await;
    app.queue_drained().await;
    // A broadcast, and a policy change announced.
    let sent = crate::product_email::broadcast(&vars, dir.path(), BROADCAST, false);
    assert!(sent["queued"].as_u64() >= Some(1), "{sent}");
    let summary = dir.path().join("summary.txt");
    std::fs::write(&summary, "What changes.").unwrap();
    let effective = (time::OffsetDateTime::now_utc().date() + time::Duration::days(45)).to_string();
    cli(&[
        "policy",
        "announce",
        "--version",
        "2027-05",
        "--effective",
        &effective,
        "--summary-file",
        summary.to_str().unwrap(),
        "--json",
    ]);
    app.queue_drained().await;

    // A purchase, partly refunded, then disputed.
    let mut checkout = Checkout::new(EMAIL);
    checkout.amount = AMOUNT;
    for event in [
        checkout.session_event("checkout.session.completed", "paid"),
        checkout.refund_event(REFUND),
        checkout.dispute_event("charge.dispute.created", "needs_response"),
    ] {
        let res = stripe::deliver(&app.client, &app.address, &event).await;
        assert_eq!(res.status(), 200);
    }
    let receipt = crate::privacy::mail_to(&app, EMAIL, "licence key").await;
    let licence = crate::payments::licence_in(&receipt);

    // An account: opened through its link, signed in, one wrong password, a reset asked for.
    crate::accounts::open_account(&app, EMAIL).await;
    let session = crate::accounts::signed_in(&app, EMAIL, crate::accounts::PASSWORD).await;
    let wrong = crate::accounts::sign_in(&app, EMAIL, "not the password at all").await;
    assert_eq!(wrong.status(), 401);
    let reset = app
        .client
        .post(app.url("/v1/accounts/password-reset"))
        .json(&json!({ "email": EMAIL }))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 202);
    crate::privacy::mail_to(&app, EMAIL, "choose a new password").await;

    // Support, answered.
    let res = app
        .client
        .post(app.url("/v1/support"))
        .json(&json!({"email": EMAIL, "subject": SUPPORT_SUBJECT, "message": SUPPORT_MESSAGE}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    app.queue_drained().await;
    let reference = cli(&["support", "list", "--json"])[0]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = dir.path().join("reply.txt");
    std::fs::write(&body, REPLY).unwrap();
    cli(&[
        "support",
        "reply",
        &reference,
        "--body-file",
        body.to_str().unwrap(),
        "--json",
    ]);

    // Every kind of privacy request but deletion, each in their own words; access verified.
    for kind in [
        "access",
        "correction",
        "restriction",
        "objection",
        "opt_out_of_sale",
    ] {
        let res = crate::privacy::request(
            &app,
            json!({"email": EMAIL, "kind": kind, "details": format!("{DETAILS} {kind}")}),
        )
        .await;
        assert_eq!(res.status(), 202);
        if kind == "access" {
            let mail = crate::privacy::mail_to(&app, EMAIL, "please confirm").await;
            let url = mail.link(&app.url("/v1/privacy/verify?token="));
            assert_eq!(app.client.post(&url).send().await.unwrap().status(), 200);
        }
    }
    // And a letter to privacy@, read from its mailbox: a request in their words.
    let read = crate::inbox::read_letter(
        &app,
        &format!(
            "From: {EMAIL}\r\nTo: privacy@pexper.com\r\nSubject: My data\r\nMessage-ID: <letter@example.net>\r\n\r\n{LETTER}\r\n"
        ),
    );
    assert_eq!(read["letters"]["requests"], 1, "{read}");
    app.queue_drained().await;

    // The broadcast bounced softly once, then was reported as spam.
    let news = app
        .smtp
        .received()
        .into_iter()
        .find(|m| {
            m.header("Subject").as_deref() == Some(BROADCAST)
                && m.to.iter().any(|t| t.contains(EMAIL))
        })
        .expect("the broadcast reached them");
    let mbox = dir.path().join("reports.mbox");
    let separator = "From MAILER-DAEMON Mon Nov 30 12:00:00 2026\n";
    let reports: String = [
        crate::product_email::dsn(&news, None, "4.2.2"),
        crate::product_email::complaint(&news),
    ]
    .iter()
    .map(|r| format!("{separator}{}\n", r.replace("\r\n", "\n")))
    .collect();
    std::fs::write(&mbox, reports).unwrap();
    let read = cli(&["mail", "bounces", mbox.to_str().unwrap(), "--json"]);
    assert_eq!(
        (read["soft_bounces"].clone(), read["complaints"].clone()),
        (json!(1), json!(1)),
        "{read}"
    );
    app.queue_drained().await;

    // Every table declared to hold personal data holds something now, but those empty by
    // design.
    let declared: Vec<(&str, Table)> = pexper_server::all_services()
        .iter()
        .flat_map(|s| s.tables().iter().map(move |t| (s.name(), *t)))
        .collect();
    let mut empty = BTreeSet::new();
    for (_, table) in declared
        .iter()
        .filter(|(_, t)| t.columns.iter().any(|c| c.personal.is_some()))
    {
        // The recurring jobs (the privacy sweep, rollups, retention) come and go every period
        // here and carry no one's data: only a person's work in progress is done by now.
        let only = if table.name == "job" {
            " WHERE kind NOT IN (SELECT kind FROM recurring_job)"
        } else {
            ""
        };
        let rows = app
            .scalar(&format!("SELECT count(*) FROM {}{only}", table.name))
            .await;
        if rows == 0 {
            empty.insert(table.name);
        }
    }
    let by_design: BTreeSet<&str> = EMPTY_BY_DESIGN.iter().map(|(t, _)| *t).collect();
    assert_eq!(empty, by_design, "tables no flow reached");

    // The export, as the person downloads it: everything that went in comes back.
    let keyring = &app.platform.keyring;
    let address = pexper_platform::address::EmailAddress::parse(EMAIL).unwrap();
    let person = {
        let mut conn = app.platform.pool.acquire().await.unwrap();
        pexper_platform::person::find(&mut conn, keyring, &address)
            .await
            .unwrap()
            .unwrap()
    };
    // The emails sent before the export is asked for: each must be in it. The held
    // acknowledgements go out first (the privacy sweep's, whose budget is one email a day),
    // so that no sweep sends one while the export is being read.
    crate::privacy::sweep_once_more(&app).await;
    let message_ids: Vec<String> = app
        .smtp
        .received()
        .into_iter()
        .filter(|m| m.to.iter().any(|t| t.contains(EMAIL)))
        .filter_map(|m| m.header("Message-ID"))
        .map(|id| id.trim_matches(['<', '>']).to_owned())
        .collect();
    assert!(message_ids.len() >= 8, "{message_ids:?}");
    let res = crate::accounts::form(&app, &session, "/account/export", &[]).await;
    assert_eq!(res.status(), 200);
    let export: Value = res.json().await.unwrap();
    let text = export.to_string();
    let kinds = [
        "access",
        "correction",
        "restriction",
        "objection",
        "opt_out_of_sale",
    ];
    let details: Vec<String> = kinds
        .iter()
        .map(|k| format!("{DETAILS} {k}"))
        .chain([LETTER.to_owned()])
        .collect();
    let inputs: Vec<(&str, String)> = [
        ("address", EMAIL.to_owned()),
        ("person id", person.0.to_string()),
        ("waitlist source", SOURCE.to_owned()),
        ("own referral code", own_code.clone()),
        ("broadcast", BROADCAST.to_owned()),
        ("policy version", "2027-05".to_owned()),
        ("Checkout Session", checkout.session.clone()),
        ("payment intent", checkout.intent.clone()),
        ("charge", checkout.charge.clone()),
        ("price", "price_1PexperOneTime".to_owned()),
        ("amount", format!("\"amount\":{AMOUNT}")),
        ("refund", format!("\"amount_refunded\":{REFUND}")),
        ("dispute", "needs_response".to_owned()),
        ("country", "\"GB\"".to_owned()),
        ("licence", licence.clone()),
        ("support subject", SUPPORT_SUBJECT.to_owned()),
        ("support message", SUPPORT_MESSAGE.to_owned()),
        ("support reply", REPLY.to_owned()),
        ("support reference", reference.clone()),
        ("suppression", "\"complained\"".to_owned()),
    ]
    .into_iter()
    .chain(details.iter().map(|d| ("request details", d.clone())))
    .chain(
        message_ids
            .iter()
            .map(|id| ("an email's Message-ID", id.clone())),
    )
    .collect();
    for (what, value) in &inputs {
        assert!(
            text.contains(value.as_str()),
            "the export lacks the {what} {value}"
        );
    }
    assert_eq!(export["sections"]["waitlist"]["referrals"], 1);
    assert_eq!(export["sections"]["waitlist"]["referred_by_someone"], true);
    assert!(
        export["sections"]["email"]["emails_sent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["soft_bounces"] == 1),
        "the soft bounce"
    );
    let sessions = export["sections"]["account"]["sessions"]
        .as_array()
        .unwrap();
    assert!(!sessions.is_empty() && sessions.iter().all(|s| s["expires_at"].is_string()));
    let account_id = export["sections"]["account"]["account"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // What stands for them in the database: ids, the keys their rows are found by, and the
    // values planted on the way that are stored in clear. Values stored only sealed are found
    // by the key id every sealed value carries (their person id, as bytes).
    let ids = |sql: &str| {
        let sql = sql.to_owned();
        let pool = app.platform.pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(sqlx::AssertSqlSafe(sql))
                .bind(person)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let request_ids = ids("SELECT id FROM privacy_request WHERE person_id = $1").await;
    let support_ids = ids("SELECT id FROM support_request WHERE person_id = $1").await;
    let purchase_ids = ids("SELECT id FROM purchase WHERE person_id = $1").await;
    // Five requests of theirs, their letter, and the access request their download made.
    assert_eq!(
        (request_ids.len(), support_ids.len(), purchase_ids.len()),
        (7, 1, 1)
    );
    let hash = |domain: &str| keyring.blind_index(domain, EMAIL).to_vec();
    let email_index = hash("email");
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("person id".into(), person.0.to_string().into()),
        (
            "person id as a sealed value's key id".into(),
            person.0.as_bytes().to_vec(),
        ),
        ("account id".into(), account_id.clone().into()),
        ("address's blind index".into(), email_index.clone()),
        ("address's suppression hash".into(), hash("suppression")),
        ("address's sign-in throttle hash".into(), hash("signin")),
        (
            "Checkout Session's keyed hash".into(),
            pexper_payments::seal::session_hash(keyring, &checkout.session).into(),
        ),
        (
            "payment intent's keyed hash".into(),
            pexper_payments::seal::payment_hash(keyring, &checkout.intent).into(),
        ),
        (
            "charge's keyed hash".into(),
            pexper_payments::seal::payment_hash(keyring, &checkout.charge).into(),
        ),
        ("own referral code".into(), own_code.clone().into()),
        ("waitlist source".into(), SOURCE.into()),
        ("support reference".into(), reference.clone().into()),
    ];
    needles.extend(
        request_ids
            .iter()
            .map(|id| ("privacy request id".into(), id.to_string().into())),
    );
    needles.extend(
        support_ids
            .iter()
            .map(|id| ("support request id".into(), id.to_string().into())),
    );
    needles.extend(
        purchase_ids
            .iter()
            .map(|id| ("purchase id".into(), id.to_string().into())),
    );
    // Stored only sealed or hashed (never found in clear, before or after), or only while
    // work is queued (a reset request's job names the address's blind index, a signup's its
    // suppression hash, base64url):
    // searched all the same, in case one is ever left.
    let sealed_only: Vec<(String, Vec<u8>)> = [
        ("address", EMAIL.to_owned()),
        ("support subject", SUPPORT_SUBJECT.to_owned()),
        ("support message", SUPPORT_MESSAGE.to_owned()),
        ("support reply", REPLY.to_owned()),
        ("licence", licence.clone()),
        ("Checkout Session", checkout.session.clone()),
        ("payment intent", checkout.intent.clone()),
        ("charge", checkout.charge.clone()),
    ]
    .into_iter()
    .chain(details.iter().map(|d| ("request details", d.clone())))
    .chain([
        ("address's blind index, base64url", base64url(&email_index)),
        // A signup's job carries the suppression key, while it waits.
        (
            "address's suppression hash, base64url",
            base64url(&hash("suppression")),
        ),
    ])
    .map(|(what, value)| (what.to_owned(), value.into_bytes()))
    .collect();

    // Before the erasure, every needle is somewhere, and every table declared to hold
    // personal data (but those empty by design) holds one of them.
    let before = scan(&app, &declared, &needles).await;
    let seen: BTreeSet<&String> = before.values().flatten().collect();
    for (what, _) in &needles {
        assert!(
            seen.contains(what),
            "{what} is nowhere before the erasure: the search is blind to it"
        );
    }
    let reached: BTreeSet<&str> = before.keys().map(|(table, _)| table.as_str()).collect();
    for (_, table) in &declared {
        if table.columns.iter().any(|c| c.personal.is_some()) && !by_design.contains(table.name) {
            assert!(
                reached.contains(table.name),
                "nothing of theirs in {}: {before:#?}",
                table.name
            );
        }
    }

    // Erased, from the account itself.
    let deleted =
        crate::accounts::form(&app, &session, "/account/delete", &[("confirm", "delete")]).await;
    assert_eq!(deleted.status(), 200);
    app.queue_drained().await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM person WHERE id = '{}'",
            person.0
        ))
        .await,
        0
    );

    // Rows that name the person also go when the person row does (foreign keys cascade), so
    // the end state alone cannot show that a service's own erasure did its part: the audit
    // trail's record of the erasure counts what each removed. And what is sealed under the
    // records key is opened: the purchase record no longer holds the session id in clear.
    let erased: String =
        sqlx::query_scalar("SELECT detail FROM privacy_audit WHERE event = 'erased'")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    let counts: BTreeMap<&str, u64> = erased
        .split(' ')
        .filter_map(|c| c.split_once('='))
        .map(|(what, n)| (what, n.parse().unwrap_or(0)))
        .collect();
    for what in [
        "email.email_history",
        "waitlist.broadcast_deliveries",
        "waitlist.confirmation_tokens",
        "waitlist.waitlist_entries",
        "payments.purchase_links",
        "payments.session_ids",
        "privacy_requests.exports",
        "privacy_requests.link_tokens",
        "privacy_requests.policy_notices",
        "privacy_requests.request_links",
        "support.support_requests",
        "account.accounts",
        "account.failed_sign_in_counts",
    ] {
        assert!(
            counts.get(what).is_some_and(|n| *n >= 1),
            "{what} in {erased}"
        );
    }
    let session_hash = pexper_payments::seal::session_hash(keyring, &checkout.session);
    let (id, sealed): (pexper_payments::PurchaseId, Option<Vec<u8>>) =
        sqlx::query_as("SELECT id, record_sealed FROM purchase WHERE checkout_session_hash = $1")
            .bind(&session_hash)
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    let record = pexper_payments::store::open_record(keyring, id, sealed.as_deref()).unwrap();
    assert_eq!(
        record.session, None,
        "the clear session id, in the sealed record"
    );
    assert_eq!(
        record.amount_total, AMOUNT,
        "the accounting record is whole"
    );

    // After it, what is left of them is exactly what the map keeps, where it keeps it: the
    // purchase record and its events by their keyed hashes, the address's suppression hash (a
    // complaint), the requests' receipts and their audit trail.
    let all: Vec<(String, Vec<u8>)> = needles.iter().chain(&sealed_only).cloned().collect();
    let after = scan(&app, &declared, &all).await;
    let expected: BTreeMap<(String, String), BTreeSet<String>> = [
        ("purchase", "id", &["purchase id"][..]),
        (
            "purchase",
            "checkout_session_hash",
            &["Checkout Session's keyed hash"],
        ),
        (
            "purchase",
            "payment_intent_hash",
            &["payment intent's keyed hash"],
        ),
        ("purchase", "charge_hash", &["charge's keyed hash"]),
        ("license", "purchase_id", &["purchase id"]),
        (
            "stripe_event",
            "payment_ref",
            &[
                "Checkout Session's keyed hash",
                "payment intent's keyed hash",
            ],
        ),
        (
            "payment_adjustment",
            "payment_intent_hash",
            &["payment intent's keyed hash"],
        ),
        (
            "payment_adjustment",
            "charge_hash",
            &["charge's keyed hash"],
        ),
        (
            "email_suppression",
            "address_hash",
            &["address's suppression hash"],
        ),
        ("privacy_request", "id", &["privacy request id"]),
        ("privacy_audit", "request_id", &["privacy request id"]),
        ("privacy_letter", "request_id", &["privacy request id"]),
    ]
    .into_iter()
    .map(|(table, column, what)| {
        (
            (table.to_owned(), column.to_owned()),
            what.iter().map(|w| w.to_string()).collect(),
        )
    })
    .collect();
    assert_eq!(after, expected, "what is left of them after the erasure");
    for (table, column) in expected.keys() {
        let kept = declared
            .iter()
            .flat_map(|(_, t)| t.columns.iter().map(move |c| (t.name, c)))
            .find(|(t, c)| t == table && c.name == column)
            .map(|(_, c)| c);
        assert!(
            kept.is_some_and(|c| matches!(c.on_erasure, OnErasure::Kept(_)) || c.personal.is_none()),
            "{table}.{column} holds something of theirs the map does not declare kept"
        );
    }

    // And a dump, text and bytea (a binary needle as the hex pg_dump writes): nothing of theirs
    // but what the map keeps.
    let left: BTreeSet<&String> = after.values().flatten().collect();
    let dump = app.db.dump();
    for (what, needle) in &all {
        if left.contains(what) {
            continue;
        }
        let in_dump = match std::str::from_utf8(needle) {
            Ok(text) => dump.contains(text),
            Err(_) => dump.contains(&hex(needle)),
        } || dump.contains(&hex(needle));
        assert!(!in_dump, "{what} in a dump after erasure");
    }
}

/// Every column of every declared table searched (text, and bytea as bytes) for each needle:
/// where each was found, by (table, column).
async fn scan(
    app: &TestApp,
    declared: &[(&str, Table)],
    needles: &[(String, Vec<u8>)],
) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut found: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (_, table) in declared {
        for column in table.columns {
            let bytea: bool = sqlx::query_scalar(
                "SELECT data_type = 'bytea' FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            )
            .bind(table.name)
            .bind(column.name)
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
            let value = if bytea {
                column.name.to_owned()
            } else {
                format!("convert_to({}::text, 'UTF8')", column.name)
            };
            let values: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {value} FROM {t} WHERE {c} IS NOT NULL",
                c = column.name,
                t = table.name
            )))
            .fetch_all(&app.platform.pool)
            .await
            .unwrap_or_else(|e| panic!("{}.{}: {e}", table.name, column.name));
            for (what, needle) in needles {
                if values.iter().any(|v| contains(v, needle)) {
                    found
                        .entry((table.name.to_owned(), column.name.to_owned()))
                        .or_default()
                        .insert(what.clone());
                }
            }
        }
    }
    found
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
