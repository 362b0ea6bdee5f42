//! Analytics, black-box: usage batches against the published schema, the crash intake fed by
//! the official `sentry` crate and by hand-written envelopes, scrubbing, rollups, the report,
//! and canary personal data that must reach neither the database nor the logs.

use std::io::Write;
use std::time::Duration;

use pexper_tests::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const WAIT: Duration = Duration::from_secs(15);

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

fn batch(events: Vec<Value>) -> Value {
    json!({
        "app_version": "1.4.0",
        "os": "linux",
        "arch": "x86_64",
        "session_id": uuid::Uuid::new_v4(),
        "events": events,
    })
}

async fn send(client: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{base}/v1/analytics/events"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Every event the schema describes, with every allowed value of every property.
fn events_from_schema(schema: &Value) -> Vec<Value> {
    let mut events = Vec::new();
    for event in schema["events"].as_array().unwrap() {
        let props = event["props"].as_array().unwrap();
        let variants: Vec<Vec<Value>> = props
            .iter()
            .map(|p| match p["type"].as_str().unwrap() {
                "enum" => p["values"].as_array().unwrap().clone(),
                "integer" => vec![p["min"].clone(), p["max"].clone()],
                "boolean" => vec![json!(true), json!(false)],
                other => panic!("a schema type the test does not know: {other}"),
            })
            .collect();
        let widest = variants.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for i in 0..widest {
            let mut values = serde_json::Map::new();
            for (p, vs) in props.iter().zip(&variants) {
                values.insert(p["name"].as_str().unwrap().into(), vs[i % vs.len()].clone());
            }
            events.push(json!({"name": event["name"], "timestamp": now(), "props": values}));
        }
    }
    events
}

#[tokio::test]
async fn everything_the_schema_describes_is_accepted_and_nothing_else_is_stored() {
    let app = spawn_app().await;
    let schema: Value = app
        .client
        .get(app.url("/v1/analytics/schema"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(schema["retention_days"], 90);
    let events = events_from_schema(&schema);
    assert!(events.len() > 20, "{}", events.len());
    let res = send(&app.client, &app.address, &batch(events.clone())).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"accepted": events.len(), "dropped": 0}));
    assert_eq!(
        app.scalar("SELECT count(*) FROM analytics_event").await,
        events.len() as i64
    );

    let outside = vec![
        json!({"name": "user.logged_in", "timestamp": now()}),
        json!({"name": "feature.used", "timestamp": now(), "props": {"feature": "secret_plans"}}),
        json!({"name": "app.exited", "timestamp": now(), "props": {"duration_s": -1}}),
        json!({"name": "app.exited", "timestamp": now(), "props": {"duration_s": "10"}}),
        json!({"name": "app.exited", "timestamp": now()}),
        json!({"name": "app.started", "timestamp": now(), "props": {"first_run": "yes"}}),
        json!({"name": "app.started", "timestamp": "2020-01-01T00:00:00Z"}),
        json!({"name": "app.started", "timestamp": "2999-01-01T00:00:00Z"}),
        json!({"name": "app.started"}),
        json!("app.started"),
    ];
    let res = send(&app.client, &app.address, &batch(outside.clone())).await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"accepted": 0, "dropped": outside.len()})
    );
    // An unknown property is dropped, the event kept.
    let extra = vec![
        json!({"name": "feature.used", "timestamp": now(), "props": {"feature": "providers", "path": "/home/alice"}}),
    ];
    let res = send(&app.client, &app.address, &batch(extra)).await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"accepted": 1, "dropped": 0})
    );
    let props: Value =
        sqlx::query_scalar("SELECT props FROM analytics_event ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(props, json!({"feature": "providers"}));
    assert_eq!(
        app.scalar("SELECT sum(count)::bigint FROM analytics_drop")
            .await,
        outside.len() as i64 + 1
    );

    for (field, value, code) in [
        ("app_version", json!("1.4"), "invalid_app_version"),
        ("os", json!("haiku"), "invalid_os"),
        ("arch", json!("sparc"), "invalid_arch"),
        ("session_id", json!("alice"), "invalid_session_id"),
    ] {
        let mut body = batch(vec![]);
        body[field] = value;
        let res = send(&app.client, &app.address, &body).await;
        assert_eq!(res.status(), 422, "{field}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code);
    }
    let too_many = batch(
        (0..101)
            .map(|_| json!({"name": "app.started", "timestamp": now()}))
            .collect(),
    );
    assert_eq!(
        send(&app.client, &app.address, &too_many).await.status(),
        422
    );
}

/// A Sentry envelope for project 1 with the development key.
async fn envelope(
    app_base: &str,
    client: &reqwest::Client,
    body: Vec<u8>,
    encoding: Option<&str>,
    auth: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{app_base}/api/1/envelope/"))
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    if let Some(key) = auth {
        req = req.header(
            "x-sentry-auth",
            format!("Sentry sentry_key={key}, sentry_version=7, sentry_client=test/1.0"),
        );
    }
    req.send().await.unwrap()
}

/// An envelope carrying canaries in every field a Python SDK would fill.
fn canary_envelope() -> Vec<u8> {
    use canary::*;
    let event = json!({
        "event_id": uuid::Uuid::new_v4().simple().to_string(),
        "timestamp": now(),
        "level": "error",
        "platform": "python",
        "server_name": HOSTNAME,
        "release": RELEASE,
        "environment": "production",
        "message": sentence(),
        "user": {"email": EMAIL, "ip_address": IPV4, "username": "alice"},
        "request": {"url": format!("http://{IPV4}/x"), "headers": {"X-Forwarded-For": IPV6}},
        "breadcrumbs": {"values": [{"message": sentence()}]},
        "extra": {"sys.argv": [format!("{LINUX_HOME}app.py"), API_KEY]},
        "tags": {"email": EMAIL},
        "contexts": {"os": {"name": "Windows", "version": "11"}, "device": {"name": HOSTNAME, "arch": "x86_64"}},
        "debug_meta": {"images": [{"code_file": format!("{WINDOWS_HOME}pexper.dll")}]},
        "exception": {"values": [{
            "type": "SyncError",
            "value": sentence(),
            "stacktrace": {"frames": [
                {"function": "sync", "module": "pexper.sync", "filename": format!("{WINDOWS_HOME}pexper\\sync.py"), "abs_path": format!("{WINDOWS_HOME}pexper\\sync.py"), "lineno": 7, "in_app": true, "vars": {"email": EMAIL, "key": API_KEY}, "context_line": format!("open('{MAC_HOME}x')")},
            ]},
        }]},
    });
    let session = json!({"sid": uuid::Uuid::new_v4(), "did": EMAIL, "init": true, "started": now(), "status": "exited", "errors": 1, "attrs": {"release": RELEASE, "environment": "production", "ip_address": IPV4, "user_agent": format!("{HOSTNAME}/1.0")}});
    let event = event.to_string();
    let session = session.to_string();
    format!(
        "{{\"event_id\":\"x\",\"dsn\":\"http://pexper-dev@{HOSTNAME}/1\",\"trace\":{{\"user_id\":\"{EMAIL}\"}}}}\n\
{{\"type\":\"event\",\"length\":{}}}\n{event}\n\
{{\"type\":\"attachment\",\"length\":{}}}\n{}\n\
{{\"type\":\"session\"}}\n{session}\n",
        event.len(),
        sentence().len(),
        sentence()
    )
    .into_bytes()
}

#[tokio::test]
async fn canary_personal_data_reaches_neither_the_database_nor_the_logs() {
    use canary::*;
    // Behind a proxy the server believes, so the canary addresses are the clients' own: the
    // rate limiters hold them (in memory), nothing else may.
    let server = ServerProcess::start_with("trace", &[("PEXPER_TRUSTED_PROXY", "127.0.0.1")]).await;
    let from = |ip: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-forwarded-for", ip.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    let (client, client_v6) = (from(IPV4), from(IPV6));
    let base = server.base.clone();
    // Usage batches: a canary in each field in turn.
    let event =
        |name: &str, props: Value| json!({"name": name, "timestamp": now(), "props": props});
    let fields: Vec<(&str, Value)> = vec![
        ("app_version", json!(format!("1.0.0-{EMAIL}"))),
        ("os", json!(HOSTNAME)),
        ("arch", json!(IPV6)),
        ("session_id", json!(IPV4)),
    ];
    for (field, value) in fields {
        let mut body = batch(vec![event("app.started", json!({}))]);
        body[field] = value;
        assert_eq!(send(&client, &base, &body).await.status(), 422);
    }
    let events = vec![
        event(EMAIL, json!({})),
        event("feature.used", json!({"feature": LINUX_HOME})),
        event(
            "feature.used",
            json!({"feature": "providers", WINDOWS_HOME: API_KEY}),
        ),
        event("model.used", json!({"kind": "cloud", "provider": CARD})),
        json!({"name": "app.started", "timestamp": sentence()}),
        event(
            "workflow.run",
            json!({"nodes": "1", "outcome": "ok", "target": MAC_HOME, "note": sentence()}),
        ),
    ];
    let res = send(&client, &base, &batch(events)).await;
    assert_eq!(res.status(), 202);

    // Crash reports: a hand-written envelope with canaries everywhere…
    let res = envelope(
        &base,
        &client_v6,
        canary_envelope(),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 200);
    // …and the official Rust SDK, with every PII option on.
    let dsn = format!("http://pexper-dev@{}/1", base.trim_start_matches("http://"));
    let out = std::process::Command::new(binary("pexper-crasher"))
        .args([&dsn, "panic"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the crasher panics");

    let dump = eventually(WAIT, "both crash reports in the database", || async {
        let dump = server.dump();
        (dump.matches("SyncError").count() >= 1 && dump.contains("\"panic\"")).then_some(dump)
    })
    .await;
    let logs = server.stop().await;
    assert_eq!(found(&dump), Vec::<&str>::new(), "canaries in the database");
    assert_eq!(found(&logs), Vec::<&str>::new(), "canaries in the logs");
    assert!(
        dump.contains("sync.py") && !dump.contains("Users"),
        "paths are kept, rebased on ~"
    );
    assert!(logs.contains("crash report stored"));
}

#[tokio::test]
async fn no_table_has_a_column_for_an_ip_address_or_a_user_agent() {
    let app = spawn_app().await;
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public'
           AND (column_name ~* '(^|_)(ip|ips|ip_address|ipaddr|addr|remote_addr|user_agent|ua|useragent|host|hostname|device_id|install_id|did)($|_)')",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(columns, vec![]);
}

#[tokio::test]
async fn a_panic_reported_by_the_sentry_crate_is_stored_scrubbed_grouped_and_counted_in_release_health()
 {
    let app = spawn_app().await;
    let dsn = format!(
        "http://pexper-dev@{}/1",
        app.address.trim_start_matches("http://")
    );
    let run = |mode: &'static str| {
        let dsn = dsn.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary("pexper-crasher"))
                .args([&dsn, mode])
                .output()
                .unwrap()
        })
    };
    // Two crashes at the same place, one reported error, three clean sessions.
    let mut runs = Vec::new();
    for mode in ["panic", "panic", "error", "ok", "ok", "ok"] {
        runs.push(run(mode));
    }
    for r in runs {
        r.await.unwrap();
    }
    let pool = app.platform.pool.clone();
    eventually(WAIT, "six sessions and three reports", || {
        let pool = pool.clone();
        async move {
            let (sessions, reports): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM app_session WHERE status <> 'ok'), (SELECT count(*) FROM crash_report)",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (sessions == 6 && reports == 3).then_some(())
        }
    })
    .await;

    let panics: Vec<(String, Value)> =
        sqlx::query_as("SELECT signature, event FROM crash_report WHERE exception_type = 'panic'")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(panics.len(), 2);
    assert_eq!(panics[0].0, panics[1].0, "one signature for the same panic");
    let stored = panics[0].1.to_string();
    assert_eq!(canary::found(&stored), Vec::<&str>::new(), "{stored}");
    assert!(
        stored.contains("[email]") && stored.contains("[ip]") && stored.contains("[card]"),
        "{stored}"
    );
    assert_eq!(panics[0].1["release"], canary::RELEASE);

    let crashed: i64 = app
        .scalar("SELECT count(*) FROM app_session WHERE status = 'crashed'")
        .await;
    assert_eq!(crashed, 2);
    let out = admin(
        &app.cli_vars(),
        &["analytics", "report", "--days", "1", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let release = report["crash_free_by_release"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["release"] == canary::RELEASE)
        .unwrap()
        .clone();
    assert_eq!(release["sessions"], 6);
    assert_eq!(release["crashed"], 2);
    assert_eq!(release["crash_free_rate"], 0.667);
    let top = &report["top_crash_signatures"][0];
    assert_eq!(top["reports"], 2);
    assert_eq!(top["exception_type"], "panic");
    assert_eq!(top["signature"], panics[0].0.as_str());
    let table = stdout(&admin(&app.cli_vars(), &["analytics", "report"]));
    assert!(
        table.contains("Crash-free sessions by release") && table.contains("0.667"),
        "{table}"
    );
}

#[tokio::test]
async fn small_cohorts_are_reported_as_fewer_than_k_and_rollups_outlive_raw_events() {
    let app = spawn_app().await;
    let mut sessions = Vec::new();
    for i in 0..7 {
        let mut events = vec![
            json!({"name": "feature.used", "timestamp": now(), "props": {"feature": "providers"}}),
        ];
        if i == 0 {
            events.push(json!({"name": "feature.used", "timestamp": now(), "props": {"feature": "network_log"}}));
        }
        events.push(json!({"name": "app.exited", "timestamp": now(), "props": {"duration_s": 600 + i * 60}}));
        let body = batch(events);
        sessions.push(body["session_id"].clone());
        assert_eq!(send(&app.client, &app.address, &body).await.status(), 202);
    }
    let report = |app: &TestApp| {
        let out = admin(&app.cli_vars(), &["analytics", "report", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let before = report(&app);
    assert_eq!(before["sessions"], 7);
    assert_eq!(before["median_session_duration_s"], 780);
    let features = before["top_features"].as_array().unwrap();
    assert_eq!(
        features[0],
        json!({"feature": "providers", "uses": 7, "sessions": 7})
    );
    assert_eq!(
        features[1],
        json!({"feature": "network_log", "uses": "<5", "sessions": "<5"})
    );

    // Retention deletes raw events; the rollups (and so the report) stay.
    sqlx::query("UPDATE analytics_event SET occurred_at = occurred_at - interval '91 days'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE analytics_rollup SET day = day - 91")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    let deleted = pexper_analytics::rollup::retain(&app.platform.pool, 90)
        .await
        .unwrap();
    assert_eq!(deleted, 15);
    assert_eq!(app.scalar("SELECT count(*) FROM analytics_event").await, 0);
    let after = report(&app);
    assert_eq!(after["sessions"], 0, "the window is the last 7 days");
    let kept: i64 = app
        .scalar("SELECT count(*) FROM analytics_rollup WHERE metric = 'feature_use'")
        .await;
    assert_eq!(kept, 2, "the rollups outlive the raw events");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A valid brotli stream made of stored (uncompressed) meta-blocks (RFC 7932, 9.2): enough to
/// prove the intake decodes `br` without an encoder dependency.
fn brotli_stored(bytes: &[u8]) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        fn align(&mut self) {
            if self.n > 0 {
                self.put(0, 8 - self.n);
            }
        }
    }
    let mut w = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    w.put(0, 1); // WBITS = 16
    for chunk in bytes.chunks(65536) {
        w.put(0, 1); // ISLAST = 0
        w.put(0, 2); // MNIBBLES = 4
        w.put(chunk.len() as u64 - 1, 16); // MLEN - 1
        w.put(1, 1); // ISUNCOMPRESSED
        w.align();
        w.out.extend_from_slice(chunk);
    }
    w.put(1, 1); // ISLAST
    w.put(1, 1); // ISLASTEMPTY
    w.align();
    w.out
}

#[tokio::test]
async fn envelopes_are_authenticated_decoded_capped_and_rate_limited_as_the_sdks_expect() {
    let app = spawn_app_with(AppOptions {
        vars: vec![("PEXPER_CRASH_KEYS", "1:pexper-dev,77:flood-key".into())],
        ..AppOptions::default()
    })
    .await;
    let client = &app.client;
    let body = b"{}\n{\"type\":\"client_report\"}\n{\"discarded_events\":[]}\n".to_vec();
    assert_eq!(
        envelope(&app.address, client, body.clone(), None, None)
            .await
            .status(),
        401
    );
    assert_eq!(
        envelope(&app.address, client, body.clone(), None, Some("wrong"))
            .await
            .status(),
        403
    );
    let res = client
        .post(app.url("/api/1/envelope?sentry_key=pexper-dev&sentry_version=7"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "query auth, no trailing slash");
    assert_eq!(res.json::<Value>().await.unwrap(), json!({}));

    for (encoding, encoded) in [
        ("gzip", gzip(&canary_envelope())),
        ("deflate", {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&canary_envelope()).unwrap();
            e.finish().unwrap()
        }),
        ("br", brotli_stored(&canary_envelope())),
    ] {
        let res = envelope(
            &app.address,
            client,
            encoded,
            Some(encoding),
            Some("pexper-dev"),
        )
        .await;
        assert_eq!(res.status(), 200, "{encoding}");
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32, "{encoding}");
    }
    assert_eq!(app.scalar("SELECT count(*) FROM crash_report").await, 3);
    // An envelope sent again (an SDK's retry) stores nothing, and counts nothing, new.
    let again = canary_envelope();
    for _ in 0..2 {
        let res = envelope(
            &app.address,
            client,
            again.clone(),
            None,
            Some("pexper-dev"),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(app.scalar("SELECT count(*) FROM crash_report").await, 4);
    assert_eq!(
        app.metric("pexper_crash_events_stored_total").await,
        Some(4.0)
    );

    let bomb = gzip(&vec![b' '; 5 * 1024 * 1024]);
    assert!(bomb.len() < 100_000);
    assert_eq!(
        envelope(&app.address, client, bomb, Some("gzip"), Some("pexper-dev"))
            .await
            .status(),
        413
    );
    let res = envelope(
        &app.address,
        client,
        b"not an envelope".to_vec(),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_envelope"
    );
    let res = envelope(
        &app.address,
        client,
        b"{}".to_vec(),
        Some("zstd"),
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 415);

    // Project 77 floods: the SDK is told how long to back off, in whole seconds.
    let mut limited = None;
    for _ in 0..600 {
        let res = client
            .post(app.url("/api/77/envelope/"))
            .header(
                "x-sentry-auth",
                "Sentry sentry_key=flood-key, sentry_version=7",
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
    }
    let res = limited.expect("a 429 within 600 envelopes");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        res.headers()["x-sentry-rate-limits"].to_str().unwrap(),
        format!("{retry}::organization")
    );
    // Project 1 is not affected.
    assert_eq!(
        envelope(&app.address, client, body, None, Some("pexper-dev"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_privacy_export_says_analytics_hold_nothing_linkable_and_erasure_changes_nothing_there()
{
    let app = spawn_app().await;
    send(
        &app.client,
        &app.address,
        &batch(vec![json!({"name": "app.started", "timestamp": now()})]),
    )
    .await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let email = pexper_platform::address::EmailAddress::parse("someone@example.net").unwrap();
    let person = pexper_platform::person::find_or_create(&mut conn, &app.platform.keyring, &email)
        .await
        .unwrap();
    let export = app
        .platform
        .personal_data
        .export(&mut conn, &app.platform.keyring, person)
        .await
        .unwrap();
    assert!(
        export["analytics"]["statement"]
            .as_str()
            .unwrap()
            .contains("nothing linkable")
    );
    let summaries = app
        .platform
        .personal_data
        .erase(&mut conn, &app.platform.keyring, person)
        .await
        .unwrap();
    let analytics = summaries.iter().find(|s| s.section == "analytics").unwrap();
    assert!(analytics.removed.is_empty());
    assert_eq!(app.scalar("SELECT count(*) FROM analytics_event").await, 1);
}

/// An envelope of `n` session items (distinct sessions) starting now.
fn sessions_envelope(n: usize) -> Vec<u8> {
    let mut body = b"{}\n".to_vec();
    for _ in 0..n {
        let session = json!({"sid": uuid::Uuid::new_v4(), "started": now(), "status": "exited",
                             "attrs": {"release": "pexper@1.4.0", "environment": "production"}})
        .to_string();
        body.extend(b"{\"type\":\"session\"}\n");
        body.extend(session.as_bytes());
        body.push(b'\n');
    }
    body
}

#[tokio::test]
async fn an_envelope_over_the_item_or_aggregate_caps_is_refused_whole_and_stores_nothing() {
    let app = spawn_app().await;
    let client = &app.client;
    let ok = envelope(
        &app.address,
        client,
        sessions_envelope(100),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(app.count("app_session").await, 100);

    // The flood measured before the caps: thousands of session items in one gzip envelope.
    let flood = gzip(&sessions_envelope(15_000));
    let res = envelope(
        &app.address,
        client,
        flood,
        Some("gzip"),
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );
    let over = envelope(
        &app.address,
        client,
        sessions_envelope(101),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(over.status(), 413);
    assert_eq!(
        app.count("app_session").await,
        100,
        "nothing of either was stored"
    );

    let bucket = json!({"started": now(), "exited": 1});
    let aggregates = |n: usize| {
        let item = json!({"aggregates": vec![bucket.clone(); n],
                          "attrs": {"release": "pexper@1.4.0", "environment": "production"}})
        .to_string();
        format!("{{}}\n{{\"type\":\"sessions\"}}\n{item}\n").into_bytes()
    };
    let res = envelope(
        &app.address,
        client,
        aggregates(101),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 413);
    assert_eq!(app.count("session_aggregate").await, 0);
    let res = envelope(
        &app.address,
        client,
        aggregates(100),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.scalar("SELECT sum(exited)::bigint FROM session_aggregate")
            .await,
        100
    );

    // Release health is scrubbed like events, and dated only within retention.
    let far = (OffsetDateTime::now_utc() + time::Duration::days(3650))
        .format(&Rfc3339)
        .unwrap();
    let mut body = b"{}\n".to_vec();
    for (started, release) in [
        (far.as_str(), "pexper@1.4.0"),
        (now().as_str(), "canary.release@example.com"),
    ] {
        let s = json!({"sid": uuid::Uuid::new_v4(), "started": started, "status": "ok",
                       "attrs": {"release": release, "environment": "canary.env@example.org"}});
        body.extend(format!("{{\"type\":\"session\"}}\n{s}\n").as_bytes());
    }
    assert_eq!(
        envelope(&app.address, client, body, None, Some("pexper-dev"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM app_session WHERE started_at > now() + interval '1 day'")
            .await,
        0,
        "a far-future start would outlive retention"
    );
    let dump = app.db.dump();
    for canary in ["canary.release", "canary.env"] {
        assert!(!dump.contains(canary), "{canary} reached the database");
    }
}

#[tokio::test]
async fn collection_has_a_per_client_limit_keyed_by_ipv4_address_or_ipv6_64() {
    let app = spawn_app_with(AppOptions {
        http: pexper_platform::http::HttpOptions {
            ingest_burst: 3,
            ingest_replenish: Duration::from_secs(60),
            ..AppOptions::default().http
        },
        vars: vec![("PEXPER_TRUSTED_PROXY", "127.0.0.1".into())],
        ..AppOptions::default()
    })
    .await;
    let post = |client_ip: &'static str| {
        app.client
            .post(app.url("/v1/analytics/events"))
            .header("x-forwarded-for", client_ip)
            .json(&batch(vec![]))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(post("198.51.100.7").await.unwrap().status(), 202);
    }
    let limited = post("198.51.100.7:40112").await.unwrap();
    assert_eq!(
        limited.status(),
        429,
        "the same client, written with a port"
    );
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        limited.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    assert_eq!(
        post("198.51.100.8").await.unwrap().status(),
        202,
        "another IPv4 address is another client"
    );
    // One /64 is one client, whichever of its addresses it uses.
    for ip in [
        "[2001:db8:5:6::1]:443",
        "2001:db8:5:6::2",
        "2001:db8:5:6:ffff::3",
    ] {
        assert_eq!(post(ip).await.unwrap().status(), 202, "{ip}");
    }
    assert_eq!(post("2001:db8:5:6::99").await.unwrap().status(), 429);
    assert_eq!(post("2001:db8:5:7::1").await.unwrap().status(), 202);
    // The crash intake shares the collection limit.
    let res = app
        .client
        .post(app.url("/api/1/envelope/?sentry_key=pexper-dev"))
        .header("x-forwarded-for", "198.51.100.7")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // The per-client limiter answers before any handler: its 429s say so.
    let metrics = app.metrics().await;
    assert_eq!(
        pexper_tests::metrics::metric(
            &metrics,
            r#"pexper_http_rate_limited_total{route="/v1/analytics/events",limit="per_client"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
}

/// Batches sent at once are stored together (one `COPY` for several, `events::store`): each
/// row must still be exactly what its batch said, and each batch's drops counted once.
#[tokio::test]
async fn batches_sent_at_once_are_each_stored_as_sent_with_their_drops_counted() {
    let app = spawn_app().await;
    const BATCHES: usize = 30;
    let versions = ["1.4.0", "2.0.0-beta.1", "10.20.30"];
    let systems = ["linux", "macos", "windows"];
    let archs = ["x86_64", "aarch64"];
    let features = ["workflow_editor", "providers", "local_models", "license"];
    // Nanoseconds Postgres must round to microseconds, and an offset it must apply: each row
    // is compared with Postgres's own reading of the text that was sent.
    let at = |i: usize, nanos: u32| {
        (OffsetDateTime::now_utc() - Duration::from_secs(60 + i as u64))
            .replace_nanosecond(nanos)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap())
            .format(&Rfc3339)
            .unwrap()
    };
    let bodies: Vec<Value> = (0..BATCHES)
        .map(|i| {
            let mut events = vec![
                json!({"name": "app.started", "timestamp": at(i, 123_456_789), "props": {"first_run": i % 2 == 0}}),
                json!({"name": "feature.used", "timestamp": at(i, 999_999_400), "props": {"feature": features[i % 4]}}),
                json!({"name": "app.exited", "timestamp": at(i, 7_000), "props": {"duration_s": i * 1000}}),
            ];
            if i % 3 == 0 {
                events.push(json!({"name": "not.in.the.schema", "timestamp": now()}));
            }
            json!({
                "app_version": versions[i % 3],
                "os": systems[i % 3],
                "arch": archs[i % 2],
                "session_id": uuid::Uuid::new_v4(),
                "events": events,
            })
        })
        .collect();
    // The table locked, so the batches queue behind the first ones while they wait.
    let lock = TableLock::take(&app.platform.pool, "analytics_event").await;
    let sending: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (client, base, body) = (app.client.clone(), app.address.clone(), body.clone());
            tokio::spawn(async move {
                let res = send(&client, &base, &body).await;
                (res.status(), res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    lock.until_someone_waits(&app.platform.pool).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        sending.iter().all(|s| !s.is_finished()),
        "no batch is answered before its rows are committed"
    );
    lock.release().await;
    for (i, sent) in sending.into_iter().enumerate() {
        let (status, answer) = sent.await.unwrap();
        assert_eq!(status.as_u16(), 202, "{answer}");
        assert_eq!(
            answer,
            json!({"accepted": 3, "dropped": usize::from(i % 3 == 0)})
        );
    }

    let pool = &app.platform.pool;
    for body in &bodies {
        let session = uuid::Uuid::parse_str(body["session_id"].as_str().unwrap()).unwrap();
        let stored: Vec<(bool, String, String, String, String, Value)> = sqlx::query_as(
            "SELECT e.occurred_at = s.sent, e.app_version, e.os, e.arch, e.name, e.props
             FROM analytics_event e
             JOIN unnest($2::text[], $3::timestamptz[]) AS s (name, sent) USING (name)
             WHERE e.session_id = $1 ORDER BY e.name",
        )
        .bind(session)
        .bind(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .collect::<Vec<_>>(),
        )
        .bind(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["timestamp"].as_str().unwrap())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let mut expected: Vec<(bool, String, String, String, String, Value)> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] != "not.in.the.schema")
            .map(|e| {
                (
                    true,
                    body["app_version"].as_str().unwrap().to_owned(),
                    body["os"].as_str().unwrap().to_owned(),
                    body["arch"].as_str().unwrap().to_owned(),
                    e["name"].as_str().unwrap().to_owned(),
                    e["props"].clone(),
                )
            })
            .collect();
        expected.sort_by(|a, b| a.4.cmp(&b.4));
        assert_eq!(stored, expected, "session {session}");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM analytics_event").await,
        3 * BATCHES as i64
    );
    // Stored together: rows of one transaction share its id (`xmin`).
    let transactions = app
        .scalar("SELECT count(DISTINCT xmin::text) FROM analytics_event")
        .await;
    assert!(
        transactions <= 8,
        "{BATCHES} batches in {transactions} transactions"
    );
    assert_eq!(
        app.scalar("SELECT count FROM analytics_drop WHERE reason = 'unknown_event'")
            .await,
        (BATCHES / 3) as i64
    );
}

/// A batch's events and its drop counts commit together: when either cannot be stored, neither
/// is (and the client hears it failed, to send it again without duplicates).
#[tokio::test]
async fn drop_counts_are_not_kept_when_their_events_are_not_stored() {
    let app = spawn_app().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
         CREATE TRIGGER refuse_event BEFORE INSERT ON analytics_event
             FOR EACH ROW EXECUTE FUNCTION refuse_event();",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();
    let body = batch(vec![
        json!({"name": "feature.used", "timestamp": now(), "props": {"feature": "providers"}}),
        json!({"name": "not.in.the.schema", "timestamp": now()}),
    ]);
    let res = send(&app.client, &app.address, &body).await;
    assert_eq!(res.status(), 500);
    assert_eq!(app.scalar("SELECT count(*) FROM analytics_drop").await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM analytics_event").await, 0);
    // And the other way round: drops that cannot be counted take their events with them.
    sqlx::raw_sql(
        "DROP TRIGGER refuse_event ON analytics_event;
         CREATE TRIGGER refuse_drop BEFORE INSERT OR UPDATE ON analytics_drop
             FOR EACH ROW EXECUTE FUNCTION refuse_event();",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();
    let res = send(&app.client, &app.address, &body).await;
    assert_eq!(res.status(), 500);
    assert_eq!(app.scalar("SELECT count(*) FROM analytics_event").await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM analytics_drop").await, 0);
}

#[tokio::test]
async fn a_flood_that_holds_every_ingestion_connection_leaves_signups_their_own() {
    let app = spawn_app().await;
    // Hold every connection collection may use, as a flood of slow batches would.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.platform.ingest_pool.acquire().await.unwrap());
    }
    let started = std::time::Instant::now();
    let res = send(
        &app.client,
        &app.address,
        &batch(vec![json!({"name": "app.started", "timestamp": now()})]),
    )
    .await;
    assert_eq!(
        res.status(),
        429,
        "collection is asked to come back, not failed"
    );
    // Counted by the limit that answered: the handler's `busy`, not the per-client limiter.
    let metrics = app.metrics().await;
    let limited = |limit: &str| {
        pexper_tests::metrics::metric(
            &metrics,
            &format!(
                r#"pexper_http_rate_limited_total{{route="/v1/analytics/events",limit="{limit}"}}"#
            ),
        )
    };
    assert_eq!(limited("busy"), Some(1.0), "{metrics}");
    assert_eq!(limited("per_client"), None, "{metrics}");
    assert_eq!(
        pexper_tests::metrics::metric(
            &metrics,
            r#"pexper_db_pool_acquire_timeouts_total{pool="ingest"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered quickly"
    );
    let res = envelope(
        &app.address,
        &app.client,
        sessions_envelope(1),
        None,
        Some("pexper-dev"),
    )
    .await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("x-sentry-rate-limits"));

    let signup = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "still.served@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        signup.status(),
        202,
        "signups have connections of their own"
    );
    drop(held);
    let res = send(&app.client, &app.address, &batch(vec![])).await;
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn a_limited_client_is_told_to_wait_at_least_a_second() {
    // The limiter's own wait is under a second here; `Retry-After: 0` would bring the client
    // (an SDK honours it) straight back.
    let app = spawn_app_with(AppOptions {
        http: pexper_platform::http::HttpOptions {
            ingest_burst: 1,
            // Under a second, and long enough that the second request surely comes before
            // the token does, even on a loaded machine (250 ms was not, once).
            ingest_replenish: Duration::from_millis(900),
            ..AppOptions::default().http
        },
        ..AppOptions::default()
    })
    .await;
    assert_eq!(
        send(&app.client, &app.address, &batch(vec![]))
            .await
            .status(),
        202
    );
    let limited = send(&app.client, &app.address, &batch(vec![])).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert!(!limited.headers().contains_key("x-ratelimit-after"));
}
