//! Retention: each rule removes what its period makes due, and only that; a person left with
//! nothing is erased; `retention status` shows what is due and when each rule last ran.

use pexper_platform::address::EmailAddress;
use pexper_platform::person;
use pexper_tests::*;
use serde_json::{Value, json};

use crate::waitlist::{WAIT, join, signup};

/// Runs statements as they are (several, separated by `;`).
async fn exec(app: &TestApp, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&app.platform.pool)
        .await
        .unwrap();
}

async fn person_of(app: &TestApp, email: &str) -> Option<person::PersonId> {
    let mut conn = app.platform.pool.acquire().await.unwrap();
    person::find(
        &mut conn,
        &app.platform.keyring,
        &EmailAddress::parse(email).unwrap(),
    )
    .await
    .unwrap()
}

fn due(status: &Value) -> Vec<(String, i64)> {
    status
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_owned(),
                r["due"].as_i64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test]
async fn each_rule_removes_what_its_period_makes_due_and_a_person_left_with_nothing_is_erased() {
    let app = spawn_app().await;
    // A member who confirmed; two who never did, one of them long ago; a stranger whose
    // privacy request was never verified.
    join(&app, "member@example.net", json!({})).await;
    for email in ["forgot@example.net", "recent@example.net"] {
        assert_eq!(signup(&app, json!({"email": email})).await.status(), 202);
    }
    let res = app
        .client
        .post(app.url("/v1/privacy/requests"))
        .json(&json!({"email": "stranger@example.net", "kind": "correction", "details": "My name is Sam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    app.smtp.wait_for(5, WAIT).await;
    app.queue_drained().await;
    let forgot = person_of(&app, "forgot@example.net").await.unwrap();
    let stranger = person_of(&app, "stranger@example.net").await.unwrap();

    // Time passes, as rows say it.
    exec(&app, &format!(
        "UPDATE waitlist_entry SET updated_at = now() - interval '38 days' WHERE person_id = '{forgot}';
         UPDATE waitlist_token SET expires_at = now() - interval '31 days' WHERE person_id = '{forgot}';
         UPDATE person SET created_at = now() - interval '38 days'
             WHERE id IN ('{forgot}', '{stranger}');
         UPDATE waitlist_token SET used_at = now() - interval '2 days' WHERE used_at IS NOT NULL;
         UPDATE privacy_request SET status = 'expired', closed_at = now() - interval '1 day'
             WHERE person_id = '{stranger}';
         UPDATE email_event SET sent_at = now() - interval '25 months'
             WHERE template = 'waitlist-welcome';"
    ))
    .await;
    // A request closed four years ago, a job dead for 40 days and one dead since yesterday.
    exec(&app, "INSERT INTO privacy_request (id, kind, jurisdiction, source, status, received_at, due_at, verify_by, closed_at)
                VALUES (gen_random_uuid(), 'access', 'gdpr', 'web', 'completed', now() - interval '4 years',
                        now() - interval '4 years' + interval '30 days', now() - interval '4 years', now() - interval '4 years')").await;
    exec(&app, "INSERT INTO job (id, kind, payload, status, updated_at) VALUES
                (gen_random_uuid(), 'mail.operator_notice', '{}', 'dead', now() - interval '40 days'),
                (gen_random_uuid(), 'mail.operator_notice', '{}', 'dead', now() - interval '1 day')").await;
    // An unlinked purchase (with its licence) and a Stripe event (with the refund it reported)
    // from eleven years ago, and the same from nine; a support request never answered,
    // received thirteen months ago.
    for (years, n) in [(11, 1), (9, 2)] {
        exec(
            &app,
            &format!(
                "INSERT INTO purchase (id, checkout_session_hash, product, livemode, status,
                                   created_at, record_sealed)
             VALUES ('00000000-0000-0000-0000-00000000000{n}', 'h:old{n}', 'pexper', false,
                     'paid', now() - interval '{years} years', '\\x00');
             INSERT INTO license (id, purchase_id, token_sealed, product, issued_at)
             VALUES (gen_random_uuid(), '00000000-0000-0000-0000-00000000000{n}', '\\x00',
                     'pexper', now() - interval '{years} years');
             INSERT INTO stripe_event (id, type, livemode, occurred_at, received_at, outcome)
             VALUES ('evt_old{n}', 'charge.refunded', false, now() - interval '{years} years',
                     now() - interval '{years} years', 'pending');
             INSERT INTO payment_adjustment (id, event_id, kind, charge_hash, sealed, occurred_at)
             VALUES (gen_random_uuid(), 'evt_old{n}', 'refund', 'h:old{n}', '\\x00',
                     now() - interval '{years} years');"
            ),
        )
        .await;
    }
    exec(&app, "INSERT INTO support_request (id, reference, message_sealed, status, created_at, updated_at)
                VALUES (gen_random_uuid(), 'S-OLD00001', '\\x00', 'open',
                        now() - interval '13 months', now() - interval '13 months')").await;
    // Erasures journalled just over 31 days ago (past the 30 days backups are kept, and a day)
    // and just under; daily analytics summaries from just over two years ago and just under.
    exec(
        &app,
        "INSERT INTO erasure_journal (person_hash, erased_at) VALUES
                (sha256('old'), now() - interval '31 days 1 hour'),
                (sha256('recent'), now() - interval '30 days 23 hours');
         INSERT INTO analytics_rollup (day, metric, key, value, sessions) VALUES
                (current_date - interval '2 years' - interval '1 day', 'sessions', 'old', 1, 1),
                (current_date - interval '2 years' + interval '1 day', 'sessions', 'kept', 1, 1)",
    )
    .await;
    // A member's broadcasts queued just over and just under two years ago; their policy
    // notices just over and just under three years ago.
    let member = person_of(&app, "member@example.net").await.unwrap();
    exec(
        &app,
        &format!(
            "INSERT INTO broadcast (id, content_hash, template, subject, body) VALUES
                ('00000000-0000-0000-0000-0000000000b1', '\\xb1', 'product-update', 'Old', 'x'),
                ('00000000-0000-0000-0000-0000000000b2', '\\xb2', 'product-update', 'New', 'x');
             INSERT INTO broadcast_delivery (broadcast_id, person_id, queued_at) VALUES
                ('00000000-0000-0000-0000-0000000000b1', '{member}',
                 now() - interval '2 years' - interval '1 day'),
                ('00000000-0000-0000-0000-0000000000b2', '{member}',
                 now() - interval '2 years' + interval '1 day');
             INSERT INTO policy_version (version, effective_at, summary) VALUES
                ('2022-01', '2022-02-01', 'Old.'), ('2022-02', '2022-03-01', 'Older.');
             INSERT INTO policy_notice (person_id, version, status, queued_at) VALUES
                ('{member}', '2022-01', 'sent', now() - interval '3 years' - interval '1 day'),
                ('{member}', '2022-02', 'sent', now() - interval '3 years' + interval '1 day')"
        ),
    )
    .await;
    // Reset decisions (an address's keyed hash) given up on two hours ago and ten minutes ago.
    exec(
        &app,
        "INSERT INTO job (id, kind, payload, status, created_at, updated_at) VALUES
                (gen_random_uuid(), 'accounts.reset_request', '{}', 'dead',
                 now() - interval '2 hours', now() - interval '2 hours'),
                (gen_random_uuid(), 'accounts.reset_request', '{}', 'dead',
                 now() - interval '10 minutes', now() - interval '10 minutes')",
    )
    .await;

    let vars = app.cli_vars();
    let cli = |args: &[&str]| {
        let out = admin(&vars, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let expected = vec![
        ("mail.history".to_owned(), 1),
        ("platform.erasure_journal".to_owned(), 1),
        ("analytics.rollups".to_owned(), 1),
        ("waitlist.broadcast_deliveries".to_owned(), 1),
        ("privacy.policy_notices".to_owned(), 1),
        ("jobs.dead".to_owned(), 1),
        ("accounts.reset_requests".to_owned(), 1),
        ("payments.records".to_owned(), 1),
        ("payments.events".to_owned(), 1),
        ("support.closed".to_owned(), 1),
        ("waitlist.unconfirmed".to_owned(), 1),
        ("waitlist.links".to_owned(), 2),
        ("privacy.unverified".to_owned(), 1),
        ("privacy.receipts".to_owned(), 1),
    ];
    let mut before = due(&cli(&["retention", "status", "--json"]));
    before.sort();
    // The stranger is held by nothing already (an expired request holds nobody); the
    // forgotten signup will be once its entry is gone.
    let mut want = expected.clone();
    want.push(("people.unlinked".to_owned(), 1));
    want.sort();
    assert_eq!(before, want);

    let run = cli(&["retention", "run", "--json"]);
    for (rule, n) in &expected {
        assert_eq!(run["removed"][rule], *n, "{rule}: {run}");
    }
    assert_eq!(
        run["removed"]["people.unlinked"], 2,
        "the forgotten signup and the stranger: {run}"
    );

    // What was due is gone; the rest is here.
    let ten_years: Vec<(String, i64)> = sqlx::query_as(
        "SELECT 'purchase', count(*) FROM purchase UNION ALL
         SELECT 'license', count(*) FROM license UNION ALL
         SELECT 'stripe_event', count(*) FROM stripe_event UNION ALL
         SELECT 'payment_adjustment', count(*) FROM payment_adjustment UNION ALL
         SELECT 'old support request', count(*) FROM support_request
             WHERE reference = 'S-OLD00001'",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(
        ten_years,
        [
            ("purchase".to_owned(), 1),
            ("license".to_owned(), 1),
            ("stripe_event".to_owned(), 1),
            ("payment_adjustment".to_owned(), 1),
            ("old support request".to_owned(), 0),
        ],
        "the nine-year-old records stay"
    );
    assert_eq!(person_of(&app, "forgot@example.net").await, None);
    assert_eq!(person_of(&app, "stranger@example.net").await, None);
    assert!(person_of(&app, "recent@example.net").await.is_some());
    assert!(person_of(&app, "member@example.net").await.is_some());
    assert_eq!(app.count("waitlist_entry").await, 2);
    assert_eq!(app.scalar("SELECT count(*) FROM privacy_request WHERE details_sealed IS NOT NULL OR person_id IS NOT NULL").await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM privacy_request").await,
        1,
        "the expired receipt stays, unlinked"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE status = 'dead'")
            .await,
        2,
        "the notice dead since yesterday, the decision from ten minutes ago"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM erasure_journal").await,
        3,
        "today's two erasures, and the one of just under 31 days ago"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM analytics_rollup WHERE key IN ('old', 'kept')")
            .await,
        1
    );
    for (table, kept) in [
        ("broadcast_delivery", "00000000-0000-0000-0000-0000000000b2"),
        ("policy_notice", "2022-02"),
    ] {
        let column = if table == "policy_notice" {
            "version::text"
        } else {
            "broadcast_id::text"
        };
        let left: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {column} FROM {table}")))
                .fetch_all(&app.platform.pool)
                .await
                .unwrap();
        assert_eq!(left, vec![kept.to_owned()], "{table}");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM analytics_rollup WHERE key = 'kept'")
            .await,
        1
    );
    let dump = app.db.dump();
    for gone in [
        "forgot@example.net",
        "stranger@example.net",
        "My name is Sam",
    ] {
        assert!(!dump.contains(gone) && !dump.bytea_contains(gone), "{gone}");
    }

    let after = cli(&["retention", "status", "--json"]);
    assert_eq!(due(&after), Vec::<(String, i64)>::new(), "{after}");
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["last_run_at"].is_string())
    );
}

#[tokio::test]
async fn the_sweep_of_unlinked_people_never_erases_what_arrives_for_them_while_it_runs() {
    let app = spawn_app().await;
    let email = "returning@example.net";
    // Someone we hold nothing for any more, for long enough to be erased.
    let person = {
        let mut conn = app.platform.pool.acquire().await.unwrap();
        person::find_or_create(
            &mut conn,
            &app.platform.keyring,
            &EmailAddress::parse(email).unwrap(),
        )
        .await
        .unwrap()
    };
    exec(
        &app,
        &format!("UPDATE person SET created_at = now() - interval '2 days' WHERE id = '{person}'"),
    )
    .await;
    // A use case has found them (and not yet written what it came to write) when the sweep
    // comes: the sweep must wait for it.
    let mut hold = app.platform.pool.begin().await.unwrap();
    let found = person::find_or_create(
        &mut hold,
        &app.platform.keyring,
        &EmailAddress::parse(email).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(found, person);
    let vars = app.cli_vars();
    let sweep = tokio::task::spawn_blocking(move || admin(&vars, &["retention", "run", "--json"]));
    eventually(WAIT, "the sweep to wait for the row", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    // Meanwhile the person writes to support.
    let res = app
        .client
        .post(app.url("/v1/support"))
        .json(&json!({"email": email, "message": "I am back, with a question."}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    hold.rollback().await.unwrap();
    let out = sweep.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(run["removed"]["people.unlinked"], 0, "{run}");
    // The request is there, with the person it came from and their address.
    let holder: Option<person::PersonId> =
        sqlx::query_scalar("SELECT person_id FROM support_request")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(holder, Some(person));
    assert_eq!(person_of(&app, email).await, Some(person));
}
