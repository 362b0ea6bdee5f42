//! The HTTP stack, black-box: health and readiness, JSON errors for bad requests, rate
//! limits, CORS, and an OpenAPI document that lists exactly the routed operations.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use pexper_platform::http::{ApiJson, HttpOptions};
use pexper_platform::state::{Platform, Service};
use pexper_tests::*;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;

/// A service that exists only in tests: a JSON endpoint to exercise the HTTP stack.
struct Probe;

async fn echo(ApiJson(body): ApiJson<Value>) -> axum::Json<Value> {
    axum::Json(body)
}

impl Service for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new().route("/v1/probe/echo", axum::routing::post(echo))
    }
}

fn with_probe(http: Option<HttpOptions>) -> AppOptions {
    let mut services = pexper_server::all_services();
    services.push(Arc::new(Probe));
    let defaults = AppOptions::default();
    AppOptions {
        services,
        http: http.unwrap_or(defaults.http),
        ..defaults
    }
}

async fn error_code(res: reqwest::Response) -> (StatusCode, String) {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{status}: {ct}");
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn health_and_readiness_answer_ok_and_readiness_fails_fast_without_a_database() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    }
    // The database goes away: readiness says so within the acquire timeout, health does not care.
    let mut admin = sqlx::PgConnection::connect_with(&cluster().connect_options("postgres"))
        .await
        .unwrap();
    use sqlx::Connection;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {} WITH (FORCE)",
        app.db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // What it saw stands for at most a second (`Readiness`), then it looks again.
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(5),
        "readiness to say unavailable",
        || async {
            let res = app.client.get(app.url("/readyz")).send().await.unwrap();
            (res.status() == 503).then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_json_errors_never_a_500() {
    let app = spawn_app_with(with_probe(None)).await;
    let echo = app.url("/v1/probe/echo");

    let res = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let res = app
        .client
        .post(&echo)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::BAD_REQUEST, "malformed_json".into())
    );

    let res = app.client.post(&echo).body("{}").send().await.unwrap();
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".into()
        )
    );

    let res = app.client.delete(&echo).send().await.unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );

    let three_mb = format!("{{\"pad\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let res = app
        .client
        .post(&echo)
        .header("content-type", "application/json")
        .body(three_mb)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
    );

    // And a good request still works.
    let res = app
        .client
        .post(&echo)
        .json(&json!({"ok": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"ok": true}));
}

#[tokio::test]
async fn a_burst_from_one_client_meets_429_with_retry_after() {
    let app = spawn_app_with(with_probe(Some(HttpOptions {
        burst: 5,
        replenish: Duration::from_secs(1),
        ..HttpOptions::default()
    })))
    .await;
    let echo = || async {
        app.client
            .post(app.url("/v1/probe/echo"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
    };
    // Exactly the burst goes through, then 429: a limiter that refused everything, or nothing,
    // fails here.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..7 {
        let res = echo().await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 && limited.is_none() {
            limited = Some(res);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let res = limited.expect("the burst is limited");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "whole seconds, at least 1");
    assert_eq!(
        error_code(res).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    // One token comes back each second: one more request, then 429 again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(echo().await.status(), 200, "after the refill");
    assert_eq!(echo().await.status(), 429);
    // Health checks are not rate limited (load balancers poll them).
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cors_preflight_allows_exactly_the_configured_origins() {
    let app = spawn_app_with(with_probe(None)).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/probe/echo"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://pexper.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://pexper.com"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn openapi_documents_exactly_the_routed_operations() {
    let app = spawn_app().await;
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let documented: Vec<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    // Every route the services register through utoipa-axum's `routes!` is documented by the
    // same annotation; these are all of them, so a route that loses its document (or a
    // document that loses its route) fails here.
    let mut expected = vec![
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/v1/waitlist"),
        ("GET", "/v1/waitlist/confirm"),
        ("POST", "/v1/waitlist/confirm"),
        ("GET", "/v1/unsubscribe"),
        ("POST", "/v1/unsubscribe"),
        ("POST", "/v1/webhooks/stripe"),
        ("GET", "/v1/licenses/public-key"),
        ("POST", "/v1/licenses/validate"),
        ("POST", "/v1/privacy/requests"),
        ("GET", "/v1/privacy/verify"),
        ("POST", "/v1/privacy/verify"),
        ("GET", "/v1/privacy/exports/{token}"),
        ("GET", "/v1/policy"),
        ("POST", "/v1/support"),
        ("POST", "/v1/analytics/events"),
        ("GET", "/v1/analytics/schema"),
        ("POST", "/api/{project_id}/envelope/"),
        ("POST", "/v1/accounts"),
        ("GET", "/v1/accounts/verify"),
        ("POST", "/v1/accounts/verify"),
        ("POST", "/v1/sessions"),
        ("DELETE", "/v1/sessions/current"),
        ("POST", "/v1/accounts/password-reset"),
        ("GET", "/v1/accounts/password-reset/confirm"),
        ("POST", "/v1/accounts/password-reset/confirm"),
        ("GET", "/v1/account"),
        ("GET", "/account"),
        ("GET", "/account/sign-up"),
        ("GET", "/account/sign-in"),
        ("GET", "/account/password-reset"),
        ("POST", "/account/sign-out"),
        ("POST", "/account/sessions/end-others"),
        ("POST", "/account/password"),
        ("POST", "/account/licences/resend"),
        ("POST", "/account/confirm-password"),
        ("POST", "/account/export"),
        ("POST", "/account/delete"),
    ];
    expected.sort();
    let mut found: Vec<(&str, &str)> = documented
        .iter()
        .map(|(m, p)| (m.as_str(), p.as_str()))
        .collect();
    found.sort();
    assert_eq!(found, expected, "the documented operations");
    // And each documented operation is routed: it never meets the router's own 404 or 405.
    for (method, path) in &documented {
        let concrete = path.replace("{token}", "x").replace("{project_id}", "1");
        let res = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path} is documented but not routed"
        );
    }
}

/// A certificate for 127.0.0.1 from a fresh CA, written (each file replaced whole) to `cert`
/// and `key`; returns the CA's certificate, to trust.
fn issue_certificate(cert: &std::path::Path, key: &std::path::Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    for (path, pem) in [(key, leaf_key.serialize_pem()), (cert, leaf.pem())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    ca.pem()
}

/// A client that trusts only `ca`, and opens a new connection for every request.
fn trusting(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn with_a_certificate_the_server_speaks_only_https_sends_hsts_and_takes_a_renewed_certificate()
 {
    init();
    let dir = tempdir::TempDir::new();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first_ca = issue_certificate(&cert, &key);
    let app = spawn_app_with(AppOptions {
        vars: vec![
            ("PEXPER_TLS_CERT", cert.display().to_string()),
            ("PEXPER_TLS_KEY", key.display().to_string()),
        ],
        http: HttpOptions {
            tls_reload_every: Duration::from_millis(100),
            ..AppOptions::default().http
        },
        ..AppOptions::default()
    })
    .await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://127.0.0.1:{port}/healthz");

    let res = trusting(&first_ca).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err(),
        "no plain HTTP on the HTTPS port"
    );

    // Renewed (here by another CA, so that each client can tell which one it was shown):
    // new connections get the new certificate, without a restart.
    let second_ca = issue_certificate(&cert, &key);
    eventually(
        Duration::from_secs(10),
        "the renewed certificate",
        || async {
            let res = trusting(&second_ca).get(&url).send().await.ok()?;
            (res.status() == 200).then_some(())
        },
    )
    .await;
    assert!(
        trusting(&first_ca).get(&url).send().await.is_err(),
        "the old certificate is no longer shown"
    );
}
