//! Storage: Postgres over TLS only (managed and external), encryption at rest bound to its
//! row, key rotation, migrations, and people created once.

use std::collections::HashSet;
use std::sync::Arc;

use pexper_platform::address::EmailAddress;
use pexper_platform::crypto::MasterKeys;
use pexper_platform::person;
use pexper_tests::*;
use serde_json::{Value, json};

#[tokio::test]
async fn every_database_connection_uses_tls_and_plain_connections_are_refused() {
    let app = spawn_app().await;
    // Make the pool open a few connections.
    let mut handles = Vec::new();
    for _ in 0..4 {
        let pool = app.platform.pool.clone();
        handles.push(tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(0.2)")
                .execute(&pool)
                .await
                .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let (tls, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.application_name = 'pexper'",
    )
    .fetch_one(&app.platform.pool)
    .await
    .unwrap();
    assert!(tls >= 2, "the app's connections: {tls} over TLS");
    assert_eq!(plain, 0);

    let plain_url = app
        .db
        .url()
        .replace("sslmode=verify-full", "sslmode=disable");
    // Refused by the server for being plain (the only pg_hba line is `hostssl`), not for a
    // wrong password or database: the same credentials work over TLS above.
    let refused = sqlx::PgPool::connect(&plain_url).await.err();
    let Some(sqlx::Error::Database(e)) = &refused else {
        panic!("a connection without TLS is refused by the server: {refused:?}");
    };
    assert_eq!(e.code().as_deref(), Some("28000"), "{e}");
    assert!(e.message().contains("no encryption"), "{e}");
}

/// A request never waits for a connection's TLS and SCRAM handshake: under load that took
/// longer than the acquire timeout, and a webhook got 503 from a pool that was not exhausted.
#[tokio::test]
async fn the_request_and_ingest_pools_are_open_before_the_first_request() {
    let app = spawn_app().await;
    let (pool, ingest) = (&app.platform.pool, &app.platform.ingest_pool);
    assert_eq!(pool.size(), pool.options().get_max_connections());
    assert_eq!(ingest.size(), ingest.options().get_max_connections());
    let open = app
        .scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'pexper'",
        )
        .await;
    assert!(
        open >= i64::from(pool.size() + ingest.size()),
        "{open} open"
    );
}

#[tokio::test]
async fn a_database_dump_holds_no_address_in_clear() {
    let app = spawn_app().await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let addresses = ["canary.alice@example.com", "bob.canary@example.org"];
    for a in addresses {
        let email = EmailAddress::parse(a).unwrap();
        let id = person::find_or_create(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap();
        // Same address, same person; and it opens again.
        let again = person::find_or_create(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap();
        assert_eq!(id, again);
        let opened = person::email(&mut conn, &app.platform.keyring, id)
            .await
            .unwrap();
        assert_eq!(opened.unwrap().as_str(), a);
    }
    let dump = app.db.dump();
    assert!(
        dump.contains("COPY public.person"),
        "the dump covers the table"
    );
    // Each person: an index, a sealed address and a wrapped key, all bytea, all searched.
    assert!(
        dump.bytea_values() >= 3 * addresses.len(),
        "bytea values decoded"
    );
    for a in addresses {
        for needle in [a, a.split('@').next().unwrap()] {
            assert!(!dump.contains(needle), "{needle} appears in the dump");
        }
    }
}

#[test]
fn a_dump_search_sees_into_bytea_values() {
    // What pg_dump writes for a bytea holding "ada@example.com" in clear.
    let hex: String = b"ada@example.com"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dump = Dump::new(format!(
        "COPY public.person (email_sealed) FROM stdin;\n\\\\x{hex}\n\\.\n"
    ));
    assert!(!(*dump).contains("ada@example.com"), "not in the text");
    assert!(
        dump.contains("ada@example.com"),
        "found in the decoded bytea"
    );
    assert!(!dump.contains("bob@example.com"));
}

#[tokio::test]
async fn a_copied_ciphertext_does_not_open_in_another_row() {
    let app = spawn_app().await;
    let ring = &app.platform.keyring;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let alice = person::find_or_create(
        &mut conn,
        ring,
        &EmailAddress::parse("a@example.com").unwrap(),
    )
    .await
    .unwrap();
    let bob = person::find_or_create(
        &mut conn,
        ring,
        &EmailAddress::parse("b@example.com").unwrap(),
    )
    .await
    .unwrap();
    // An attacker with write access copies Alice's sealed address into Bob's row.
    sqlx::query("UPDATE person SET email_sealed = (SELECT email_sealed FROM person WHERE id = $1) WHERE id = $2")
        .bind(alice)
        .bind(bob)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(person::email(&mut conn, ring, bob).await.is_err());
    assert!(
        person::email(&mut conn, ring, alice)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_under_the_same_key_fails_on_the_row_binding() {
    use pexper_platform::crypto::{CryptoError, Field, sealed_key_id};
    let app = spawn_app().await;
    // One person, two requests with details: two ciphertexts under one data key.
    for (kind, details) in [
        ("correction", "my name is spelt wrong"),
        ("restriction", "stop using my data"),
    ] {
        let res = app
            .client
            .post(app.url("/v1/privacy/requests"))
            .json(&json!({"email": "moved@example.com", "kind": kind, "details": details}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let rows: Vec<(uuid::Uuid, Vec<u8>, person::PersonId)> = sqlx::query_as(
        "SELECT id, details_sealed, person_id FROM privacy_request ORDER BY created_at",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let key = person::data_key(&mut conn, &app.platform.keyring, rows[0].2)
        .await
        .unwrap()
        .unwrap();
    let field = |row| Field {
        table: "privacy_request",
        column: "details_sealed",
        row,
    };
    let (first, moved) = (&rows[0], &rows[1]);
    assert_eq!(
        key.open(field(first.0), &first.1).unwrap(),
        b"my name is spelt wrong",
        "it opens where it was sealed"
    );
    // Copied into the other request's row: the key id matches, so only the binding of the
    // ciphertext to its row can refuse it.
    assert_eq!(sealed_key_id(&first.1), Some(key.id()));
    assert_eq!(sealed_key_id(&moved.1), Some(key.id()));
    assert_eq!(
        key.open(field(moved.0), &first.1),
        Err(CryptoError::Authentication)
    );
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    init();
    let db = TestDatabase::empty().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = db.pool().await;
        tasks.push(tokio::spawn(async move {
            pexper_platform::db::migrate(&pool).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    pexper_platform::db::migrate(&db.pool().await)
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files);
}

/// A rolling upgrade: the new version's replicas migrate first; a replica of the previous
/// version that restarts meanwhile finds migrations it does not know, and must still start.
/// A migration it knows whose text differs from its own still stops it.
#[tokio::test]
async fn the_previous_version_starts_on_a_database_a_newer_version_migrated() {
    let app = spawn_app().await;
    let pool = &app.platform.pool;
    // What a newer version's migrator leaves behind.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'a migration of a newer version', true, '\\x00', 1)",
    )
    .execute(pool)
    .await
    .unwrap();
    pexper_platform::db::migrate(pool).await.unwrap();
    let out = admin(&app.cli_vars(), &["migrate", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // One of this version's own migrations, changed since it was applied.
    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = '\\x00'
         WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
    )
    .execute(pool)
    .await
    .unwrap();
    let out = admin(&app.cli_vars(), &["migrate", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("previously applied but has been modified"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn key_rotation_rewraps_every_data_key_and_lookups_keep_working() {
    let app = spawn_app().await;
    let old = app.platform.config.master_key.clone().unwrap();
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let mut people = Vec::new();
    for i in 0..25 {
        let email = EmailAddress::parse(&format!("person{i}@example.com")).unwrap();
        let id = person::find_or_create(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap();
        people.push((id, email));
    }
    let new = MasterKeys::generate_encoded();
    let both = format!("2:{new},1:{}", secrecy::ExposeSecret::expose_secret(&old));
    let mut vars = app.cli_vars();
    vars.retain(|(k, _)| k != "PEXPER_MASTER_KEY");
    vars.push(("PEXPER_MASTER_KEY".into(), both));

    let status = admin(&vars, &["keys", "status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["current_version"], 2);
    assert_eq!(status["data_keys_to_rotate"], 25);

    let out = admin(&vars, &["keys", "rotate", "--batch", "10", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["rewrapped"],
        25
    );
    assert!(
        stderr(&out).contains("re-wrapped 25/25"),
        "progress: {}",
        stderr(&out)
    );

    // With only the new master key, every address still opens and is still found.
    let only_new = pexper_platform::keys::keyring(
        &app.platform.pool,
        &MasterKeys::parse(&format!("2:{new}").into()).unwrap(),
    )
    .await
    .unwrap();
    for (id, email) in &people {
        assert_eq!(
            person::email(&mut conn, &only_new, *id)
                .await
                .unwrap()
                .as_ref(),
            Some(email)
        );
        assert_eq!(
            person::find(&mut conn, &only_new, email).await.unwrap(),
            Some(*id)
        );
    }
    let status = admin(&vars, &["keys", "status", "--json"]);
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["data_keys_to_rotate"], 0);
}

#[tokio::test]
async fn the_managed_postgres_is_the_embedded_default_and_missing_binaries_say_what_to_do() {
    let dir = tempdir::TempDir::new();
    let vars = vec![
        (
            "PEXPER_DATA_DIR".to_owned(),
            dir.path().display().to_string(),
        ),
        ("PEXPER_BIND".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let out = admin(&vars, &["migrate", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("postgres/ca.crt").exists());
    let hba = std::fs::read_to_string(dir.path().join("postgres/data/pg_hba.conf")).unwrap();
    assert!(
        hba.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("hostssl")),
        "{hba}"
    );
    // A second process reuses the running cluster.
    let again = admin(&vars, &["keys", "status", "--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let stop = admin(&vars, &["db", "stop", "--json"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&stop)).unwrap()["stopped"],
        true
    );

    let mut missing = vars.clone();
    missing.push(("PG_BIN".to_owned(), "/nonexistent".to_owned()));
    let out = admin(&missing, &["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("initdb, pg_ctl") && err.contains("PG_BIN") && err.contains("DATABASE_URL"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_is_created_once_however_many_ask_at_the_same_moment() {
    let app = spawn_app().await;
    let email = EmailAddress::parse("race@example.com").unwrap();
    // Eight connections (of the pool's ten) look the address up at the same moment, find
    // nothing, and insert.
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (platform, email, barrier) = (app.platform.clone(), email.clone(), barrier.clone());
        tasks.spawn(async move {
            let mut conn = platform.pool.acquire().await.unwrap();
            barrier.wait().await;
            person::find_or_create(&mut conn, &platform.keyring, &email).await
        });
    }
    let ids: HashSet<_> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("no insert fails on a unique violation"))
        .collect();
    assert_eq!(ids.len(), 1, "one person");
    assert_eq!(app.count("person").await, 1);
}

/// The data map is the schema: after every migration, each column of each table is declared by
/// exactly one service (`Service::tables`), and nothing is declared that is not there.
#[tokio::test]
async fn every_column_in_the_schema_is_declared_by_exactly_one_service() {
    init();
    let db = TestDatabase::new().await;
    let in_schema: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' ORDER BY 1, 2",
    )
    .fetch_all(&db.pool().await)
    .await
    .unwrap();
    let mut declared: Vec<(String, String, &str)> = Vec::new();
    for service in pexper_server::all_services() {
        for table in service.tables() {
            for column in table.columns {
                declared.push((table.name.into(), column.name.into(), service.name()));
            }
        }
    }
    let mut by_column = std::collections::HashMap::<(String, String), Vec<&str>>::new();
    for (table, column, service) in &declared {
        by_column
            .entry((table.clone(), column.clone()))
            .or_default()
            .push(service);
    }
    let twice: Vec<_> = by_column.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "declared more than once: {twice:?}");
    let undeclared: Vec<_> = in_schema
        .iter()
        .filter(|c| !by_column.contains_key(*c))
        .collect();
    assert!(
        undeclared.is_empty(),
        "in the schema, declared by no service: {undeclared:?}"
    );
    let schema: HashSet<&(String, String)> = in_schema.iter().collect();
    let stale: Vec<_> = by_column.keys().filter(|c| !schema.contains(c)).collect();
    assert!(stale.is_empty(), "declared, not in the schema: {stale:?}");
}

/// PRIVACY.md's record of processing is what the declarations make now, word for word.
#[test]
fn privacy_md_holds_the_record_of_processing_the_declarations_make() {
    let out = admin(&[], &["privacy", "processing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made = stdout(&out);
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../PRIVACY.md")).unwrap();
    let held = doc
        .split_once("<!-- processing:start -->\n")
        .and_then(|(_, rest)| rest.split_once("<!-- processing:end -->"))
        .map(|(record, _)| record)
        .expect("PRIVACY.md has the record between its markers");
    assert_eq!(
        held.trim_end(),
        made.trim_end(),
        "PRIVACY.md's record of processing differs from the declarations: \
         run `pexper-admin privacy processing` and put its output between the markers"
    );
    // The declarations themselves, as `--format json` or `--json` gives them.
    let json = |args: &[&str]| {
        let out = admin(&[], args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let declared = json(&["privacy", "processing", "--format", "json"]);
    assert_eq!(declared, json(&["privacy", "processing", "--json"]));
    assert!(
        declared["payments"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
}

/// A database from before purchase records were sealed: migration 24 sets the clear values
/// aside, and the first process with the keys seals them where they belong and empties the
/// staging table; every value reads back the same, and none is left in clear.
#[tokio::test]
async fn purchase_records_from_before_sealing_are_sealed_by_the_first_start_and_read_the_same() {
    use pexper_payments::seal::{self, PurchaseRecord};

    let db = TestDatabase::empty().await;
    let pool = db.pool().await;
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    let (before, after): (Vec<_>, Vec<_>) = files
        .iter()
        .partition(|p| p.file_name().unwrap().to_str().unwrap() < "20261206000024");
    let apply = |paths: Vec<&std::path::PathBuf>| {
        let pool = pool.clone();
        let sqls: Vec<String> = paths
            .into_iter()
            .map(|path| std::fs::read_to_string(path).unwrap())
            .collect();
        async move {
            for sql in sqls {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
    };
    apply(before).await;
    // A purchase with its licence, the event that told us and a refund of it; and an erased
    // buyer's purchase, whose session id was hashed already.
    let master = MasterKeys::parse(&MasterKeys::generate_encoded().into()).unwrap();
    // The lookup keys a first start stores are the ones derived from the master key.
    let erased_session = seal::session_hash(
        &pexper_platform::crypto::Keyring::new(&master),
        "cs_test_erasedLegacy",
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO purchase (id, checkout_session_id, payment_intent_id, charge_id, product,
                               price_id, amount_total, currency, country, livemode, paid_at,
                               amount_refunded, dispute_status, status, created_at)
         VALUES ('00000000-0000-7000-8000-000000000001', 'cs_test_legacySession',
                 'pi_legacyIntent', 'ch_legacyCharge', 'pexper', 'price_legacy', 8642097, 'eur',
                 'DE', false, now(), 9753113, 'won', 'partially_refunded', now()),
                ('00000000-0000-7000-8000-000000000002', '{erased_session}', NULL, NULL,
                 'pexper', NULL, 999, 'usd', NULL, false, now(), 0, NULL, 'paid', now());
         INSERT INTO license (id, purchase_id, token, product, issued_at)
         VALUES ('00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000001',
                 'PEXPER1.legacyClaims.legacySignature', 'pexper', now());
         INSERT INTO stripe_event (id, type, livemode, occurred_at, outcome, payment_ref)
         VALUES ('evt_legacy1', 'charge.refunded', false, now(), 'applied', 'ch_legacyCharge'),
                ('evt_legacy2', 'checkout.session.completed', false, now(), 'applied',
                 'cs_test_legacySession');
         INSERT INTO payment_adjustment (event_id, kind, payment_intent_id, charge_id,
                                         amount_refunded, occurred_at)
         VALUES ('evt_legacy1', 'refund', 'pi_legacyIntent', 'ch_legacyCharge', 9753113, now());"
    )))
    .execute(&pool)
    .await
    .unwrap();
    apply(after).await;
    let keyring = pexper_platform::keys::keyring(&pool, &master)
        .await
        .unwrap();

    // The first purchase's buyer was erased after the backup this database came from was
    // taken: the replay that follows a restore erases them again, and must reach their
    // purchase while it still waits to be sealed.
    let buyer = {
        let mut conn = pool.acquire().await.unwrap();
        person::find_or_create(
            &mut conn,
            &keyring,
            &EmailAddress::parse("legacy.buyer@example.net").unwrap(),
        )
        .await
        .unwrap()
    };
    for statement in [
        "UPDATE purchase SET person_id = $1 WHERE id = '00000000-0000-7000-8000-000000000001'",
        "INSERT INTO erasure_journal (person_hash)
         VALUES (sha256(('pexper/erased-person/' || $1::text)::bytea))",
    ] {
        sqlx::query(statement)
            .bind(buyer)
            .execute(&pool)
            .await
            .unwrap();
    }
    let config = pexper_platform::Config::from_vars(Default::default()).unwrap();
    let replayed = pexper_platform::db::backup::replay(
        &pool,
        vec![],
        &master,
        &pexper_server::personal_data(&config),
    )
    .await
    .unwrap();
    assert_eq!(replayed.erased_again, 1);
    assert_eq!(
        seal::backlog(&pool, &keyring).await.unwrap(),
        0,
        "the replay sealed everything first"
    );
    let row = pexper_payments::admin::find(&pool, &keyring, "cs_test_legacySession")
        .await
        .unwrap()
        .expect("found by its session id");
    assert!(!row.has_buyer, "erased again");
    assert!(
        row.checkout_session_id.starts_with("h:"),
        "the erasure took the clear session id out of the record"
    );
    assert_eq!(
        (
            row.amount,
            row.amount_refunded,
            row.currency.as_str(),
            row.country.as_deref()
        ),
        (8642097, 9753113, "eur", Some("DE"))
    );
    assert_eq!(row.payment_intent_id.as_deref(), Some("pi_legacyIntent"));
    assert_eq!(row.charge_id.as_deref(), Some("ch_legacyCharge"));
    assert_eq!(row.price_id.as_deref(), Some("price_legacy"));
    assert_eq!(row.dispute_status.as_deref(), Some("won"));
    let events = pexper_payments::admin::events(&pool, &row).await.unwrap();
    assert_eq!(
        events.len(),
        2,
        "both events still name the purchase: {events:?}"
    );
    let licence = pexper_payments::admin::license(&pool, &keyring, &row.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(licence.license, "PEXPER1.legacyClaims.legacySignature");
    let erased = pexper_payments::admin::find(&pool, &keyring, "cs_test_erasedLegacy")
        .await
        .unwrap()
        .expect("an erased buyer's purchase is found by its session id");
    assert_eq!(
        erased.checkout_session_id, erased_session,
        "no clear id to give back"
    );
    let adjustment: (uuid::Uuid, Vec<u8>, String) = sqlx::query_as(
        "SELECT id, sealed, charge_hash FROM payment_adjustment WHERE event_id = 'evt_legacy1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let opened: seal::AdjustmentRecord = seal::open(
        &keyring,
        "payment_adjustment",
        "sealed",
        adjustment.0,
        Some(&adjustment.1),
    )
    .unwrap();
    assert_eq!(opened.amount_refunded, Some(9753113));
    assert_eq!(
        adjustment.2,
        seal::payment_hash(&keyring, "ch_legacyCharge")
    );
    let _: PurchaseRecord = pexper_payments::store::open_record(
        &keyring,
        row.id,
        sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT record_sealed FROM purchase WHERE id = $1",
        )
        .bind(row.id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .as_deref(),
    )
    .unwrap();

    let dump = db.dump();
    // Numbers are searched as numbers of their own, outside bytea hex.
    let text = regex::Regex::new(r"\\x[0-9a-f]+")
        .unwrap()
        .replace_all(&dump, "");
    for clear in [
        "cs_test_legacySession",
        "cs_test_erasedLegacy",
        "pi_legacyIntent",
        "ch_legacyCharge",
        "price_legacy",
        "8642097",
        "9753113",
        "legacySignature",
    ] {
        assert!(!text.contains(clear), "{clear} left in clear");
        assert!(
            !dump.bytea_contains(clear),
            "{clear} left in a bytea column"
        );
    }
}
