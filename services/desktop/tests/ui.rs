//! The window, driven headless through its accessibility tree (egui_kittest): consent before
//! anything, a key typed into its field never shows, the kill switch stops a run, and the
//! Privacy screen's preview is what "Send now" sends.
#![allow(clippy::unwrap_used)]

mod common;

use common::{PLANTED_KEY, Stub, dirs};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use pexper_desktop::app::PexperApp;
use pexper_desktop::egress::Egress;
use pexper_desktop::providers::Provider;
use pexper_desktop::secrets::MemoryStore;
use pexper_desktop::store::{Dirs, Settings, Workflow};
use pexper_desktop::telemetry::{self, Level};

fn harness(dirs: &Dirs) -> Harness<'static, PexperApp> {
    let app = PexperApp::new(dirs.clone(), Box::new(MemoryStore::default()), false, false).unwrap();
    let mut harness = Harness::new_ui_state(|ui, app: &mut PexperApp| app.ui(ui), app);
    harness.run();
    harness
}

fn settings(dirs: &Dirs, stub: &Stub, edit: impl FnOnce(&mut Settings)) {
    let mut s = Settings {
        server_url: stub.url.clone(),
        ollama_url: stub.url.clone(),
        telemetry: Some(Level::Off),
        ..Settings::default()
    };
    edit(&mut s);
    s.save(dirs).unwrap();
}

fn local_workflow(dirs: &Dirs) {
    Workflow {
        id: "hello".into(),
        name: "Hello".into(),
        provider: Provider::Ollama,
        model: "llama3".into(),
        prompt: "Say hello".into(),
    }
    .save(dirs)
    .unwrap();
}

#[test]
fn the_first_run_asks_before_anything_and_declining_sends_nothing() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |s| s.telemetry = None);
    let mut h = harness(&dirs);
    assert!(
        h.query_by_label("Workflows").is_none(),
        "nothing but the question first"
    );
    h.get_by_label("Keep everything off").click();
    h.run();
    assert_eq!(Settings::load(&dirs).unwrap().telemetry, Some(Level::Off));
    assert!(h.query_by_label("Workflows").is_some());
    assert_eq!(stub.seen().len(), 0, "no request before or after declining");
}

#[test]
fn a_key_typed_into_its_field_never_appears_in_the_ui() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |_| {});
    let mut h = harness(&dirs);
    h.get_by_label("Providers & keys").click();
    h.run();
    let field = h.get_by_label("openai API key");
    field.focus();
    field.type_text(PLANTED_KEY);
    h.run();
    let shown = h.query_by(|n| {
        n.label().is_some_and(|l| l.contains("planted"))
            || n.value().is_some_and(|v| v.contains("planted"))
    });
    assert!(shown.is_none(), "the key is in the UI tree");
    h.get_by_label("Save openai key").click();
    h.run();
    assert!(h.query_by_label("saved").is_some());
    assert!(
        h.query_by(|n| n.value().is_some_and(|v| v.contains("planted")))
            .is_none()
    );
}

#[test]
fn offline_stops_a_run_before_any_socket_opens() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |s| s.offline = true);
    local_workflow(&dirs);
    let mut h = harness(&dirs);
    assert!(h.query_by_label("This run stays on this device").is_some());
    h.get_by_label("Run").click();
    h.run();
    assert!(h.query_by_label_contains("blocked: offline").is_some());
    assert_eq!(stub.seen().len(), 0);
}

#[test]
fn the_privacy_preview_is_exactly_what_send_now_sends() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |_| {});
    let s = Settings::load(&dirs).unwrap();
    let schema =
        telemetry::fetch_schema(&dirs, &s, &Egress::new(dirs.network_log(), false)).unwrap();
    settings(&dirs, &stub, |s| {
        s.telemetry = Some(Level::All);
        s.consented_schema_version = telemetry::schema_version(Some(&schema));
    });
    local_workflow(&dirs);
    let mut h = harness(&dirs);
    h.get_by_label("Run").click();
    h.run();
    assert!(h.query_by_label("hello from a local model").is_some());

    h.get_by_label("Privacy").click();
    h.run();
    let queued = telemetry::outbox(&dirs).unwrap();
    assert_eq!(queued.len(), 1);
    let preview = String::from_utf8(queued[0].body.clone()).unwrap();
    assert!(
        h.query_by_label(&preview).is_some(),
        "the exact bytes are shown"
    );
    h.get_by_label("Send now").click();
    h.run();
    let sent = stub
        .seen()
        .into_iter()
        .find(|s| s.path == "/v1/analytics/events")
        .unwrap();
    assert_eq!(sent.body, queued[0].body);
    assert!(
        h.query_by_label_contains("GET").is_some() || h.query_by_label_contains("POST").is_some(),
        "the network log is shown"
    );
}
