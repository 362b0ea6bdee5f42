//! The desktop client against the real backend: a licence the payments service issued
//! verifies in the client offline; the usage events and crash envelopes the client sends are
//! accepted by the analytics service unchanged.

use pexper_desktop::egress::Egress;
use pexper_desktop::license::{self, Status};
use pexper_desktop::store::{Dirs, Settings};
use pexper_desktop::telemetry::{self, Level, Telemetry};
use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use serde_json::json;

fn device(app: &TestApp) -> (Dirs, Settings, Egress, tempdir::TempDir) {
    let root = tempdir::TempDir::new();
    let dirs = Dirs::new(Some(root.path())).unwrap();
    let settings = Settings {
        server_url: app.address.clone(),
        ..Settings::default()
    };
    let egress = Egress::new(dirs.network_log(), false);
    (dirs, settings, egress, root)
}

#[tokio::test]
async fn a_licence_from_a_purchase_verifies_in_the_client_with_only_the_public_key() {
    let app = spawn_app().await;
    let checkout = Checkout::new("desktop.buyer@example.net");
    let event = checkout.session_event("checkout.session.completed", "paid");
    let res = stripe::deliver(&app.client, &app.address, &event).await;
    assert_eq!(res.status(), 200);
    let mail = eventually(
        std::time::Duration::from_secs(10),
        "the receipt",
        || async { app.smtp.received().into_iter().next() },
    )
    .await;
    let text = mail.part("text/plain").unwrap();
    let licence = text
        .split_whitespace()
        .find(|w| w.starts_with("PEXPER1."))
        .unwrap()
        .to_owned();

    // A build without a key fetches it once, through the egress module; checking is offline.
    let (_, settings, egress, _root) = device(&app);
    let (published, egress) = tokio::task::spawn_blocking(move || {
        (
            license::fetch_public_key(&settings.server_url, &egress),
            egress,
        )
    })
    .await
    .unwrap();
    let key = license::public_key(Some(&published.unwrap()));
    let requests = egress.log().len();
    assert_eq!(requests, 1, "one request for the key");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let check = license::check(&licence, key.as_ref(), now, now);
    assert!(
        matches!(check.status, Status::Valid(ref c) if c.product == "pexper"),
        "{check:?}"
    );
    assert_eq!(egress.log().len(), requests, "checked without a request");
}

#[tokio::test]
async fn the_clients_events_and_crash_reports_are_accepted_unchanged() {
    let app = spawn_app().await;
    let (dirs, mut settings, egress, _root) = device(&app);
    let egress_result = tokio::task::spawn_blocking({
        let (dirs, settings) = (dirs.clone(), settings.clone());
        move || telemetry::fetch_schema(&dirs, &settings, &egress).map(|s| (s, egress))
    })
    .await
    .unwrap();
    let (schema, egress) = egress_result.unwrap();
    settings.consented_schema_version = telemetry::schema_version(Some(&schema));
    settings.telemetry = Some(Level::All);
    let t = Telemetry::new(&dirs, &settings, false);
    let events = [
        ("app.started", json!({"first_run": true})),
        ("feature.used", json!({"feature": "providers"})),
        (
            "workflow.run",
            json!({"nodes": "2-5", "outcome": "ok", "target": "local"}),
        ),
        ("model.used", json!({"kind": "local", "provider": "ollama"})),
        ("app.exited", json!({"duration_s": 1800})),
        // Every other value the window records (app.rs).
        ("telemetry.level_changed", json!({"level": "all"})),
        ("feature.used", json!({"feature": "workflow_editor"})),
        ("feature.used", json!({"feature": "privacy_settings"})),
        ("feature.used", json!({"feature": "license"})),
        ("feature.used", json!({"feature": "data_export"})),
        ("feature.used", json!({"feature": "offline_mode"})),
        (
            "workflow.run",
            json!({"nodes": "1", "outcome": "error", "target": "cloud"}),
        ),
        (
            "model.used",
            json!({"kind": "cloud", "provider": "anthropic"}),
        ),
    ];
    for (name, props) in &events {
        assert!(t.record(name, props.as_object().unwrap().clone()), "{name}");
    }
    telemetry::queue_crash(
        &dirs,
        &pexper_desktop::crash::envelope(
            "boom in /home/alice/x",
            Some(("src/main.rs", 3)),
            Some("/home/alice"),
            Some("alice"),
        ),
    )
    .unwrap();
    let sent = tokio::task::spawn_blocking(move || {
        telemetry::send(&dirs, &settings, Level::All, &egress).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(sent, 2, "one batch, one crash report");
    assert_eq!(app.count("analytics_event").await, events.len() as i64);
    assert_eq!(
        app.scalar("SELECT coalesce(sum(count), 0)::bigint FROM analytics_drop")
            .await,
        0,
        "nothing dropped"
    );
    assert_eq!(app.count("crash_report").await, 1);
}
