//! Three `pexper-server` replicas on one Postgres, as pexper.com runs them behind a load
//! balancer: they migrate one empty database at once, share the load, and behave as one
//! server — one email per signup, each job run once, each recurring job once per period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pexper_platform::crypto::MasterKeys;
use pexper_tests::smtp::ReceivedMail;
use pexper_tests::*;
use serde_json::{Value, json};

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
    // The version is the table's key, so the count above cannot be 2: what the migrations did
    // is the schema they made, which must be exactly what one migrator alone makes.
    let schema = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(x, E'\n' ORDER BY x) FROM (
                 SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
                 FROM information_schema.columns WHERE table_schema = 'public'
                 UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
                 UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(c.oid)
                 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                 WHERE n.nspname = 'public'
                 UNION ALL SELECT 'function ' || p.oid::regprocedure::text
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'public'
                 UNION ALL SELECT 'trigger ' || tgrelid::regclass || ' ' || tgname
                 FROM pg_trigger WHERE NOT tgisinternal
             ) made(x)",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let alone = TestDatabase::new().await;
    assert_eq!(
        schema(pool.clone()).await,
        schema(alone.pool().await).await,
        "three migrators at once made what one makes"
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

    // One confirmation link, posted to all three at once: it confirms once, and one welcome
    // goes out.
    let confirm = replicas
        .smtp
        .received()
        .into_iter()
        .find(|m| m.to.iter().any(|t| t.contains("person0@")))
        .unwrap()
        .link(&format!("{PUBLIC_URL}/v1/waitlist/confirm?token="));
    let posts = replicas.bases.iter().map(|base| {
        let (client, url) = (client.clone(), on(base, &confirm));
        tokio::spawn(async move { client.post(url).send().await.unwrap().status().as_u16() })
    });
    let mut statuses = join_all(posts.collect::<Vec<_>>()).await;
    statuses.sort();
    assert_eq!(statuses, [200, 400, 400], "one replica confirms");
    mails_to(&replicas, "person0@", "You're", 1).await;

    // The same Stripe event, delivered to all three at once: one purchase, one licence.
    let event = stripe::Checkout::new("buyer@example.com")
        .session_event("checkout.session.completed", "paid");
    let deliveries = replicas.bases.iter().map(|base| {
        let (client, base, event) = (client.clone(), base.clone(), event.clone());
        tokio::spawn(async move {
            let res = stripe::deliver(&client, &base, &event).await;
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    });
    let mut answers = join_all(deliveries.collect::<Vec<_>>()).await;
    answers.sort();
    assert_eq!(answers, ["duplicate", "duplicate", "processed"]);
    let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM purchase")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(purchases, 1);

    // One address pushed past its daily budget through all three at once: six privacy
    // requests (each a different kind, so none merges with another) get three
    // acknowledgements, not three a replica.
    let kinds = [
        "access",
        "deletion",
        "correction",
        "restriction",
        "objection",
        "opt_out_of_sale",
    ];
    let requests = kinds.iter().enumerate().map(|(i, kind)| {
        let (client, base) = (client.clone(), replicas.bases[i % 3].clone());
        let body = json!({"email": "budget@example.com", "kind": kind});
        tokio::spawn(async move {
            client
                .post(format!("{base}/v1/privacy/requests"))
                .header("X-Forwarded-For", format!("203.0.113.{i}"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    assert!(
        join_all(requests.collect::<Vec<_>>())
            .await
            .iter()
            .all(|s| *s == 202)
    );
    mails_to(&replicas, "budget@", "please confirm", 3).await;
    eventually(
        Duration::from_secs(30),
        "the privacy jobs to finish",
        || async {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job WHERE kind LIKE 'privacy.received%'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (waiting == 0).then_some(())
        },
    )
    .await;
    let to_budget = |subject: &str| {
        replicas
            .smtp
            .received()
            .iter()
            .filter(|m| {
                m.to.iter().any(|t| t.contains("budget@"))
                    && m.header("Subject").is_some_and(|s| s.contains(subject))
            })
            .count()
    };
    assert_eq!(
        to_budget("request: please confirm it"),
        3,
        "the budget, not three times it"
    );
    // The held ones are acknowledged together, from the budget of one a day (the privacy
    // sweep runs every second here): at most one more email, however many replicas.
    assert!(to_budget("requests: please confirm them") <= 1);

    let welcomes = replicas
        .smtp
        .received()
        .iter()
        .filter(|m| {
            m.to.iter().any(|t| t.contains("person0@"))
                && m.header("Subject").is_some_and(|s| s.starts_with("You're"))
        })
        .count();
    assert_eq!(welcomes, 1, "confirmed once");

    // More than one replica ran jobs.
    let working = replicas
        .logs()
        .iter()
        .filter(|log| log.contains("job done"))
        .count();
    assert!(working >= 2, "{working} replica(s) ran jobs");

    // The rollup is due every second. Each replica looks once a second; together they must
    // run it once a second, not three times: over five seconds, five, give or take one.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let before = logged(&replicas, "analytics rolled up");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rollups = logged(&replicas, "analytics rolled up") - before;
    assert!(
        (4..=6).contains(&rollups),
        "{rollups} rollups in 5 periods of a second (with each replica enqueuing on its own tick, about three times as many)"
    );
}

/// pexper.com's address in the replicas' links, and the same link on one replica.
const PUBLIC_URL: &str = "https://api.pexper.test";

fn on(base: &str, link: &str) -> String {
    link.replacen(PUBLIC_URL, base, 1)
}

/// Every mail to `to` so far whose subject contains `subject`, once there are `n`.
async fn mails_to(replicas: &Replicas, to: &str, subject: &str, n: usize) -> Vec<ReceivedMail> {
    eventually(Duration::from_secs(30), subject, || async {
        let found: Vec<ReceivedMail> = replicas
            .smtp
            .received()
            .into_iter()
            .filter(|m| {
                m.to.iter().any(|t| t.contains(to))
                    && m.header("Subject").is_some_and(|s| s.contains(subject))
            })
            .collect();
        (found.len() >= n).then_some(found)
    })
    .await
}

fn admin_json(vars: &[(String, String)], key: &str, args: &[&str]) -> Value {
    let mut vars = vars.to_vec();
    vars.retain(|(k, _)| k != "PEXPER_MASTER_KEY");
    vars.push(("PEXPER_MASTER_KEY".into(), key.into()));
    let out = admin(&vars, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[tokio::test]
async fn the_master_key_rotates_in_a_rolling_restart_without_a_second_person_or_a_dead_link() {
    let old = MasterKeys::generate_encoded();
    let new = MasterKeys::generate_encoded();
    let both = format!("2:{new},1:{old}");
    let only_new = format!("2:{new}");
    let mut replicas = Replicas::start(
        1,
        TestDatabase::empty().await,
        "info",
        &[
            ("PEXPER_MASTER_KEY", &old),
            ("PEXPER_TRUSTED_PROXY", "127.0.0.1"),
        ],
    )
    .await;
    let pool = replicas.db.pool().await;
    let vars = replicas.cli_vars();
    let client = reqwest::Client::new();
    let next_client = std::sync::atomic::AtomicU32::new(1);
    let post = |url: String, body: Value| {
        let ip = next_client.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = client
            .post(url)
            .header("X-Forwarded-For", format!("192.0.2.{ip}"));
        async move {
            let sent = if body.is_null() {
                sent.body("List-Unsubscribe=One-Click")
            } else {
                sent.json(&body)
            };
            sent.send().await.unwrap().status().as_u16()
        }
    };
    let join =
        |base: &str, email: &str| post(format!("{base}/v1/waitlist"), json!({ "email": email }));
    let people = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM person")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let suppressed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM email_suppression")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let confirm_subject = "Confirm your place";
    let unsubscribe = format!("{PUBLIC_URL}/v1/unsubscribe?token=");

    // Before the rotation, under version 1 alone: Alice joins, confirms and keeps her mail;
    // Dave joins, unsubscribes and has everything erased, which leaves a keyed hash of his
    // address.
    let first = replicas.bases[0].clone();
    assert_eq!(join(&first, "alice@example.com").await, 202);
    assert_eq!(join(&first, "dave@example.com").await, 202);
    let alice_mail = &mails_to(&replicas, "alice@", confirm_subject, 1).await[0];
    let alice_unsubscribe = alice_mail.link(&unsubscribe);
    let alice_confirm = on(
        &first,
        &alice_mail.link(&format!("{PUBLIC_URL}/v1/waitlist/confirm?token=")),
    );
    assert_eq!(
        client.post(alice_confirm).send().await.unwrap().status(),
        200
    );
    let dave_mail = &mails_to(&replicas, "dave@", confirm_subject, 1).await[0];
    let dave_unsubscribe = on(&first, &dave_mail.link(&unsubscribe));
    assert_eq!(post(dave_unsubscribe, Value::Null).await, 200);
    let deletion = json!({"email": "dave@example.com", "kind": "deletion", "jurisdiction": "gdpr"});
    assert_eq!(
        post(format!("{first}/v1/privacy/requests"), deletion).await,
        202
    );
    let verify = &mails_to(&replicas, "dave@", "please confirm", 1).await[0];
    let verify = on(
        &first,
        &verify.link(&format!("{PUBLIC_URL}/v1/privacy/verify?token=")),
    );
    assert_eq!(client.post(verify).send().await.unwrap().status(), 200);
    mails_to(&replicas, "dave@", "has been deleted", 1).await;
    eventually(Duration::from_secs(30), "Dave's erasure", || async {
        (people().await == 1 && suppressed().await == 1).then_some(())
    })
    .await;

    // A process given only the new version before the rotation cannot work, and says why.
    let mut early = vars.clone();
    early.retain(|(k, _)| k != "PEXPER_MASTER_KEY");
    early.push(("PEXPER_MASTER_KEY".into(), only_new.clone()));
    let refused = admin(
        &early,
        &[
            "waitlist",
            "export",
            "--format",
            "json",
            "--reason",
            "checking the rotation",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("cannot open the lookup keys"),
        "{}",
        stderr(&refused)
    );

    // The rolling restart, half done: a replica with version 2 current beside one that still
    // runs with version 1 alone. The operator rotates, and is told the old one is behind.
    let i = replicas.add_with(&[("PEXPER_MASTER_KEY", &both)]).await;
    let second = replicas.bases[i].clone();
    eventually(
        Duration::from_secs(30),
        "both replicas in `replica`",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM replica")
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 2).then_some(())
        },
    )
    .await;
    let rotated = admin_json(&vars, &both, &["keys", "rotate", "--json"]);
    assert_eq!(rotated["rewrapped"], 1, "{rotated}");
    assert_eq!(rotated["processes_behind"].as_array().unwrap().len(), 1);

    // The stale replica still finds everyone, and so does the new one: one person each.
    assert_eq!(join(&first, "alice@example.com").await, 202);
    assert_eq!(join(&second, "alice@example.com").await, 202);
    assert_eq!(join(&second, "bob@example.com").await, 202);
    assert_eq!(join(&first, "bob@example.com").await, 202);
    assert_eq!(join(&first, "carol@example.com").await, 202);
    assert_eq!(people().await, 3, "Alice, Bob and Carol, once each");

    // Version 1 is not removable while a process wraps under it, or a key is wrapped under it.
    let status = admin_json(&vars, &both, &["keys", "status", "--json"]);
    assert_eq!(status["removable_versions"], json!([]), "{status}");
    let in_use = status["in_use"]["1"].to_string();
    assert!(
        in_use.contains("1 data keys") && in_use.contains("wraps new keys"),
        "{status}"
    );

    // The rolling restart ends; the operator rotates again, and now version 1 can go.
    replicas.terminate(0).await;
    let rotated = admin_json(&vars, &both, &["keys", "rotate", "--json"]);
    assert_eq!(
        rotated["rewrapped"], 1,
        "Carol's key, made by the stale replica"
    );
    assert_eq!(rotated["processes_behind"], json!([]));
    let status = admin_json(&vars, &both, &["keys", "status", "--json"]);
    assert_eq!(status["removable_versions"], json!([1]), "{status}");
    assert_eq!(status["data_keys_to_rotate"], 0);

    // Version 1 removed. Everything made under it still works on a replica without it: every
    // address opens, Alice's link from before the rotation unsubscribes her, and Dave's
    // suppression is found (and lifted) when he joins again and confirms.
    let i = replicas.add_with(&[("PEXPER_MASTER_KEY", &only_new)]).await;
    let third = replicas.bases[i].clone();
    let alice_subscribed = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT subscribed FROM waitlist_entry WHERE status = 'confirmed'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert!(alice_subscribed().await);
    assert_eq!(post(on(&third, &alice_unsubscribe), Value::Null).await, 200);
    assert!(
        !alice_subscribed().await,
        "her link from before the rotation worked"
    );
    let export = admin_json(
        &vars,
        &only_new,
        &[
            "waitlist",
            "export",
            "--format",
            "json",
            "--reason",
            "checking the rotation",
        ],
    );
    let rows: BTreeMap<String, bool> = export
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["email"].as_str().unwrap().to_owned(),
                r["subscribed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        BTreeMap::from([
            ("alice@example.com".to_owned(), false),
            ("bob@example.com".to_owned(), false),
            ("carol@example.com".to_owned(), false),
        ])
    );
    assert_eq!(join(&third, "dave@example.com").await, 202);
    let again = mails_to(&replicas, "dave@", confirm_subject, 2).await;
    let confirm = on(
        &third,
        &again[1].link(&format!("{PUBLIC_URL}/v1/waitlist/confirm?token=")),
    );
    assert_eq!(client.post(confirm).send().await.unwrap().status(), 200);
    assert_eq!(
        suppressed().await,
        0,
        "the hash made under version 1 was found"
    );
    assert_eq!(people().await, 4);
}
