//! `/metrics` (issue 30): served on a listener of its own, never the public one; after real
//! flows it shows what happened (HTTP by route template, mail by template, the queue, the
//! privacy requests' due dates), and no label holds anything a person sent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pexper_tests::metrics::series;
use pexper_tests::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// What people sent, none of which may reach a label.
const CANARIES: &[&str] = &[
    "metrics-canary-4471",
    "canary-source-5582",
    "privacy-canary-6693",
    "canary details 7704",
    "canary-token-8815",
    "canary-path-9926",
    "canary.example",
    "canary-event-1337",
];

#[tokio::test]
async fn metrics_show_what_happened_on_their_own_listener_and_nothing_a_person_sent() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server =
        ServerProcess::start_with("info", &[("PEXPER_METRICS_ADDR", metrics_addr.as_str())]).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{}{path}", server.base))
            .json(&body)
            .send()
    };
    let res = post(
        "/v1/waitlist",
        json!({"email": "metrics-canary-4471@canary.example", "source": "canary-source-5582"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    // One address the relay turns away for now: a failure, counted, and retried.
    server.smtp.reject_transiently(Some("relay-says-later"));
    let res = post(
        "/v1/waitlist",
        json!({"email": "relay-says-later@example.org"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let res = post(
        "/v1/privacy/requests",
        json!({"email": "privacy-canary-6693@canary.example", "kind": "access", "details": "canary details 7704"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    for path in [
        "/v1/waitlist/confirm?token=canary-token-8815",
        "/no/such/canary-path-9926",
    ] {
        let res = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{path}");
    }
    // Strangers probing: many paths no route has, and methods no route takes (twelve: with
    // the requests above, within one client's burst of the rate limiter).
    for i in 0..12 {
        let res = client
            .request(
                reqwest::Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap(),
                format!("{}/no/such/canary-path-9926/{i}", server.base),
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error());
    }
    // A purchase, and a delivery nobody signed.
    buy(&client, &server.base, "buyer-canary@canary.example").await;
    let res = client
        .post(format!("{}/v1/webhooks/stripe", server.base))
        .header("content-type", "application/json")
        .body(r#"{"id":"evt_canary-token-8815"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // A usage batch with an event the app knows and one it does not.
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let res = post(
        "/v1/analytics/events",
        json!({
            "app_version": "1.4.0", "os": "linux", "arch": "x86_64",
            "session_id": uuid::Uuid::new_v4(),
            "events": [
                {"name": "app.started", "timestamp": timestamp, "props": {"first_run": true}},
                {"name": "canary-event-1337", "timestamp": timestamp},
            ],
        }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    server.smtp.wait_for(3, WAIT).await;
    // An address whose daily budget of contact mail is spent: its support request is kept,
    // its acknowledgement not sent.
    let pool = server.db().pool().await;
    sqlx::query(
        "UPDATE person SET request_mail_day = (now() AT TIME ZONE 'UTC')::date,
                           request_mail_count = 100",
    )
    .execute(&pool)
    .await
    .unwrap();
    let res = post(
        "/v1/support",
        json!({"email": "metrics-canary-4471@canary.example", "message": "canary details 7704"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    // One client over its limit: one route's series, however many it sent.
    let mut hammered = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let request = client.get(format!("{}/v1/licenses/public-key", server.base));
        hammered.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses = hammered.join_all().await;
    assert!(statuses.contains(&reqwest::StatusCode::TOO_MANY_REQUESTS));
    // A job whose worker died (its lease ran out), of a kind no worker here takes over.
    sqlx::query(
        "INSERT INTO job (id, kind, status, attempts, locked_until)
         VALUES (gen_random_uuid(), 'retired.kind', 'running', 1, now() - interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // A process last heard from ten minutes ago, on another master key version: gone.
    sqlx::query(
        "INSERT INTO replica (id, master_version, master_versions, seen_at)
         VALUES (gen_random_uuid(), 2, '{2,1}', now() - interval '10 minutes')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // And a job given up on, as a failing one ends.
    sqlx::query(
        "INSERT INTO job (id, kind, status, attempts, last_error)
         VALUES (gen_random_uuid(), 'mail.operator_notice', 'dead', 10, 'the relay refused')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let scrape_url = format!("http://{metrics_addr}/metrics");
    let (content_type, body) =
        eventually(WAIT, "both emails and their jobs' runs counted", || async {
            let res = client.get(&scrape_url).send().await.ok()?;
            let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
            let body = res.text().await.unwrap();
            (body.contains(r#"pexper_mail_sent_total{template="waitlist-confirm"} 1"#)
            && body.contains(r#"pexper_mail_sent_total{template="privacy-received"} 1"#)
            && body.contains(
                r#"pexper_mail_failed_total{template="waitlist-confirm",class="transient"}"#,
            )
            // A job's run is counted after its email's outcome: after the finisher has it,
            // or once its failure is recorded.
            && body.contains(r#"pexper_job_runs_total{kind="waitlist.signup_mail",outcome="done"}"#)
            && body.contains(
                r#"pexper_job_runs_total{kind="waitlist.signup_mail",outcome="failed"}"#,
            ))
            .then_some((content_type, body))
        })
        .await;
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(body.ends_with("# EOF\n"));
    let all = series(&body);
    let value = |name: &str| *all.get(name).unwrap_or_else(|| panic!("{name} in\n{body}"));
    assert_eq!(
        value(r#"pexper_http_requests_total{route="/v1/waitlist",method="POST",status="2xx"}"#),
        2.0
    );
    assert_eq!(
        value(
            r#"pexper_http_requests_total{route="/v1/waitlist/confirm",method="GET",status="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"pexper_http_requests_total{route="unmatched",method="GET",status="4xx"}"#),
        1.0
    );
    // However many strangers probe, they make one series.
    assert_eq!(
        value(r#"pexper_http_requests_total{route="unmatched",method="other",status="4xx"}"#),
        12.0
    );
    assert_eq!(value("pexper_http_requests_in_flight"), 0.0);
    assert_eq!(
        value(r#"pexper_privacy_requests_open{kind="access",status="received"}"#),
        1.0
    );
    assert_eq!(value("pexper_privacy_requests_overdue"), 0.0);
    let due_in_days = value("pexper_privacy_earliest_due_seconds") / 86_400.0;
    assert!((29.99..=30.0).contains(&due_in_days), "{due_in_days}");
    assert_eq!(value("pexper_database_gauges_up"), 1.0);
    assert_eq!(
        value(r#"pexper_jobs{kind="mail.operator_notice",state="dead"}"#),
        1.0
    );
    assert!(all.contains_key("pexper_jobs_oldest_ready_age_seconds"));
    assert_eq!(
        value(r#"pexper_jobs{kind="retired.kind",state="lapsed"}"#),
        1.0
    );
    let runs: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("pexper_job_runs_total"))
        .collect();
    assert!(
        value(r#"pexper_job_runs_total{kind="waitlist.signup_mail",outcome="done"}"#) >= 1.0,
        "{runs:?}"
    );
    assert!(
        value(r#"pexper_job_runs_total{kind="waitlist.signup_mail",outcome="failed"}"#) >= 1.0,
        "{runs:?}"
    );
    assert_eq!(
        value(r#"pexper_webhook_events_total{outcome="processed",reason="none"}"#),
        1.0
    );
    assert_eq!(
        value(r#"pexper_webhook_events_total{outcome="refused",reason="missing_signature"}"#),
        1.0
    );
    assert_eq!(value(r#"pexper_licences{state="valid"}"#), 1.0);
    assert_eq!(
        value(r#"pexper_analytics_events_total{outcome="accepted",reason="none"}"#),
        1.0
    );
    assert_eq!(
        value(r#"pexper_analytics_events_total{outcome="dropped",reason="unknown_event"}"#),
        1.0
    );
    assert_eq!(
        value(r#"pexper_mail_budget_spent_total{budget="contact"}"#),
        1.0
    );
    assert!(
        value(
            r#"pexper_http_rate_limited_total{route="/v1/licenses/public-key",limit="per_client"}"#
        ) >= 1.0
    );
    assert_eq!(value("pexper_ready"), 1.0);
    assert_eq!(value(r#"pexper_replicas{master_version="1"}"#), 1.0);
    assert!(!all.contains_key(r#"pexper_replicas{master_version="2"}"#));
    // The requests above left connections open and idle.
    assert!(value(r#"pexper_db_pool_connections{pool="request",state="idle"}"#) >= 1.0);
    for pool in ["request", "ingest", "jobs"] {
        assert!(
            value(&format!(
                r#"pexper_db_pool_max_connections{{pool="{pool}"}}"#
            )) >= 1.0
        );
        assert!(all.contains_key(&format!(
            r#"pexper_db_pool_connections{{pool="{pool}",state="in_use"}}"#
        )));
    }
    assert!(
        all.keys()
            .any(|k| k.starts_with("pexper_build_info{version="))
    );
    assert!(all.keys().any(|k| {
        k.starts_with("pexper_http_request_duration_seconds_bucket{")
            && k.contains(r#"route="/v1/waitlist""#)
    }));

    // Nothing a person sent is in any label, and no label of any metric takes more than a
    // handful of values.
    for canary in CANARIES {
        assert!(!body.contains(canary), "{canary} in /metrics");
    }
    let mut values: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for name in all.keys() {
        let Some((metric, labels)) = name.split_once('{') else {
            continue;
        };
        for pair in labels.trim_end_matches('}').split("\",") {
            let (label, value) = pair.split_once("=\"").unwrap();
            values
                .entry((metric, label))
                .or_default()
                .insert(value.trim_end_matches('"'));
        }
    }
    assert!(values.len() > 10, "{values:?}");
    for ((metric, label), seen) in &values {
        assert!(
            seen.len() <= 20,
            "{metric}'s label {label} has {} values: {seen:?}",
            seen.len()
        );
    }

    // Every metric an alert rule or the autoscaler watches is served.
    for metric in watched_metrics() {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("{metric}{{"))
                    || l.starts_with(&format!("{metric} "))),
            "{metric}, which an alert or the autoscaler watches, is not served"
        );
    }

    // The public listener has no /metrics.
    let public = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}

/// A paid checkout for `email`, delivered as Stripe would.
async fn buy(client: &reqwest::Client, base: &str, email: &str) {
    let checkout = stripe::Checkout::new(email);
    let res = stripe::deliver(
        client,
        base,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!(res.status(), 200);
}

fn deploy(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus")
        .join(file)
}

#[test]
fn every_alert_rule_checks_fires_on_the_series_it_watches_and_has_a_runbook() {
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(deploy(""))
            .output()
            .expect("promtool runs (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let rules = std::fs::read_to_string(deploy("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("alerts.test.yml")).unwrap();
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
        assert!(
            readme.contains(&format!("#### Runbook: {alert}")),
            "{alert} has no runbook in README"
        );
    }
}

/// The metrics the alert rules and the autoscaler's adapter watch, by name.
fn watched_metrics() -> BTreeSet<String> {
    let re = regex::Regex::new(r"pexper_[a-z_]+").unwrap();
    let mut watched = BTreeSet::new();
    for file in ["alerts.yml", "adapter.yaml"] {
        let rules = std::fs::read_to_string(deploy(file)).unwrap();
        watched.extend(re.find_iter(&rules).map(|m| m.as_str().to_owned()));
    }
    // The adapter's name for what it makes, not a series of ours.
    watched.remove("pexper_http_requests_per_second");
    watched
}

/// Debian's Prometheus server, started as the tests start Postgres: a throwaway configuration
/// and storage, scraping `target` every second and evaluating the alert rules every second.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempdir::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Self {
        let dir = tempdir::TempDir::new();
        let rules = deploy("alerts.yml");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: pexper\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus runs (apt-get install prometheus)");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        eventually(WAIT, "Prometheus ready", || async {
            let res = client
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                .ok()?;
            res.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    /// The result of an instant query.
    async fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let res: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query?query={}", self.url, encode(query)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", self.log()))
            .json()
            .await
            .unwrap();
        res["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The alerts firing now, by name.
    async fn firing(&self) -> Vec<String> {
        let res: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        res["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Percent-encodes a query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_server_and_an_overdue_request_fires_its_alert() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server =
        ServerProcess::start_with("info", &[("PEXPER_METRICS_ADDR", metrics_addr.as_str())]).await;
    let prometheus = Prometheus::start(&metrics_addr).await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/v1/privacy/requests", server.base))
        .json(&json!({"email": "late@example.org", "kind": "access"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // A signup and a purchase while it scrapes.
    let res = client
        .post(format!("{}/v1/waitlist", server.base))
        .json(&json!({"email": "early@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    buy(&client, &server.base, "buyer@example.org").await;
    eventually(WAIT, "the request seen by Prometheus", || async {
        let open = prometheus
            .query(r#"pexper_privacy_requests_open{kind="access",status="received"}"#)
            .await;
        (open.len() == 1 && open[0]["value"][1] == "1").then_some(())
    })
    .await;
    assert!(prometheus.firing().await.is_empty());

    // A month on (the request's due date moved into the past, as the clock would): overdue.
    let pool = server.db().pool().await;
    sqlx::query("UPDATE privacy_request SET due_at = now() - interval '1 day'")
        .execute(&pool)
        .await
        .unwrap();
    eventually(WAIT, "the overdue alert firing", || async {
        let firing = prometheus.firing().await;
        firing
            .contains(&"PexperPrivacyRequestOverdue".to_owned())
            .then_some(())
    })
    .await;
    let overdue = prometheus
        .query("max(pexper_privacy_requests_overdue)")
        .await;
    assert_eq!(overdue[0]["value"][1], "1");
    let requests = prometheus
        .query(r#"sum(pexper_http_requests_total{route="/v1/privacy/requests",status="2xx"})"#)
        .await;
    assert_eq!(requests[0]["value"][1], "1");
    for (query, expected) in [
        (
            r#"sum(pexper_http_requests_total{route="/v1/waitlist",status="2xx"})"#,
            "1",
        ),
        (
            r#"sum(pexper_webhook_events_total{outcome="processed"})"#,
            "1",
        ),
        (r#"max(pexper_licences{state="valid"})"#, "1"),
    ] {
        let got = prometheus.query(query).await;
        assert_eq!(got[0]["value"][1], expected, "{query}");
    }
}

/// A request that waits in vain for one of the request pool's connections is answered 503
/// and counted, by pool.
#[tokio::test]
async fn a_wait_for_a_connection_that_runs_out_of_time_is_counted_by_pool() {
    let app = spawn_app().await;
    // Every connection, however long opening them takes on a busy machine (one acquire
    // waits 800 ms at most, and the server's own tasks use the pool too).
    let mut held = Vec::new();
    while held.len() < app.platform.pool.options().get_max_connections() as usize {
        if let Ok(connection) = app.platform.pool.acquire().await {
            held.push(connection);
        }
    }
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "waits@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    drop(held);
    assert_eq!(
        app.metric(r#"pexper_db_pool_acquire_timeouts_total{pool="request"}"#)
            .await,
        Some(1.0)
    );
}
