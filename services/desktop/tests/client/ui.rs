//! The window, driven headless through its accessibility tree (egui_kittest): consent before
//! anything, a key typed into its field never shows and lands only in the keychain (here
//! `keyring-core`'s mock store) or the encrypted file, the kill switch stops a run, the Privacy
//! screen's preview is what "Send now" sends, the licence is checked offline, choices survive a
//! restart, and the Data screen exports without keys and deletes everything.

use std::sync::Arc;

use crate::common::{PLANTED_KEY, Stub, assert_nowhere_under, dirs};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use pexper_desktop::app::PexperApp;
use pexper_desktop::egress::Egress;
use pexper_desktop::providers::Provider;
use pexper_desktop::secrets::{KeychainStore, Keys, SecretStore};
use pexper_desktop::store::{Dirs, Settings, Workflow};
use pexper_desktop::telemetry::{self, Level};
use pexper_wire::license::{LicenseClaims, SigningKey};
use secrecy::{ExposeSecret, SecretString};

/// A keychain that lives in this test only: `keyring-core`'s mock store.
fn mock_keychain() -> Arc<keyring_core::api::CredentialStore> {
    keyring_core::mock::Store::new().unwrap()
}

fn keychain(store: &Arc<keyring_core::api::CredentialStore>) -> Keys {
    Keys::Keychain(KeychainStore::new(store.clone(), "OS keychain (mock)"))
}

fn harness(dirs: &Dirs) -> Harness<'static, PexperApp> {
    harness_with(dirs, keychain(&mock_keychain()))
}

fn harness_with(dirs: &Dirs, keys: Keys) -> Harness<'static, PexperApp> {
    let mut app = PexperApp::new(dirs.clone(), keys, false, false).unwrap();
    app.launch();
    let mut harness = Harness::new_ui_state(|ui, app: &mut PexperApp| app.ui(ui), app);
    harness.run();
    harness
}

/// True if `text` is anywhere in the UI tree, as a label or a field's value.
fn shows(h: &Harness<'static, PexperApp>, text: &str) -> bool {
    h.query_all_by(|n| {
        n.label().is_some_and(|l| l.contains(text)) || n.value().is_some_and(|v| v.contains(text))
    })
    .next()
    .is_some()
}

fn type_into(h: &mut Harness<'static, PexperApp>, label: &str, text: &str) {
    let field = h.get_by_label(label);
    field.focus();
    field.type_text(text);
    h.run();
}

fn click(h: &mut Harness<'static, PexperApp>, label: &str) {
    h.get_by_label(label).click();
    h.run();
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
fn a_key_goes_to_the_keychain_never_to_the_data_dir_or_the_ui() {
    let stub = Stub::start();
    let (dirs, root) = dirs();
    settings(&dirs, &stub, |_| {});
    let store = mock_keychain();
    let mut h = harness_with(&dirs, keychain(&store));
    click(&mut h, "Providers & keys");
    assert!(shows(&h, "Keys are kept in: OS keychain (mock)"));
    type_into(&mut h, "openai API key", PLANTED_KEY);
    assert!(!shows(&h, "planted"), "the key is in the UI tree");
    click(&mut h, "Save openai key");
    assert!(h.query_by_label("saved").is_some());
    assert!(!shows(&h, "planted"));

    let held = KeychainStore::new(store.clone(), "mock")
        .get("openai")
        .unwrap();
    assert_eq!(held.unwrap().expose_secret(), PLANTED_KEY);
    assert_nowhere_under(&root, PLANTED_KEY);

    click(&mut h, "Remove openai key");
    assert!(h.query_by_label("saved").is_none());
    let held = KeychainStore::new(store, "mock").get("openai").unwrap();
    assert!(held.is_none(), "removed from the keychain");
}

#[test]
fn without_a_keychain_the_key_file_is_unlocked_by_a_passphrase_typed_in_the_window() {
    let stub = Stub::start();
    let (dirs, root) = dirs();
    settings(&dirs, &stub, |_| {});
    let passphrase = "a passphrase nobody guesses";
    let locked = || Keys::Locked {
        path: dirs.secrets(),
        reason: "no OS keychain: none in this test".into(),
    };
    let mut h = harness_with(&dirs, locked());
    click(&mut h, "Providers & keys");
    assert!(shows(
        &h,
        "encrypted file, locked (no OS keychain: none in this test)"
    ));
    assert!(h.query_by_label("openai API key").is_none(), "locked first");
    type_into(&mut h, "Passphrase", "short");
    click(&mut h, "Create key file");
    assert!(shows(&h, "too short"));
    type_into(&mut h, "Passphrase", passphrase);
    assert!(!shows(&h, passphrase), "the passphrase is masked");
    click(&mut h, "Create key file");
    type_into(&mut h, "openai API key", PLANTED_KEY);
    click(&mut h, "Save openai key");
    assert!(h.query_by_label("saved").is_some());
    assert_nowhere_under(&root, PLANTED_KEY);
    assert_nowhere_under(&root, passphrase);
    drop(h);

    // After a restart: a wrong passphrase opens nothing; the right one finds the key.
    let mut h = harness_with(&dirs, locked());
    click(&mut h, "Providers & keys");
    type_into(&mut h, "Passphrase", "not the passphrase at all");
    click(&mut h, "Unlock key file");
    assert!(shows(&h, "Not unlocked"));
    assert!(h.query_by_label("openai API key").is_none());
    type_into(&mut h, "Passphrase", passphrase);
    click(&mut h, "Unlock key file");
    assert!(h.query_by_label("saved").is_some(), "the key survived");
    let mut keys = locked();
    keys.unlock(&SecretString::from(passphrase)).unwrap();
    assert_eq!(keys.key("openai").unwrap().expose_secret(), PLANTED_KEY);

    // Deleting everything removes the file and locks it again.
    click(&mut h, "Data");
    click(&mut h, "Delete all local data");
    click(&mut h, "Yes, delete everything");
    assert!(!dirs.secrets().exists());
    click(&mut h, "Keep everything off");
    click(&mut h, "Providers & keys");
    assert!(shows(&h, "encrypted file, locked"));
    assert!(h.query_by_label("Create key file").is_some());
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
        .rfind(|s| s.path == "/v1/analytics/events")
        .unwrap();
    assert_eq!(sent.body, queued[0].body);
    h.run();
    assert!(
        shows(&h, "Telemetry POST 127.0.0.1/v1/analytics/events"),
        "the network log is shown"
    );
}

#[test]
fn the_licence_screen_gets_the_key_once_then_verifies_offline() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |_| {});
    let key = crate::common::licence_key();
    let public = key.verifying_key();
    let mut h = harness(&dirs);
    click(&mut h, "Licence");
    assert!(shows(&h, "no key to check licences against"));
    click(&mut h, "Get the public key from the server");
    let key_id = pexper_wire::license::key_id(&public);
    assert!(shows(&h, &format!("Checked against the key {key_id}")));
    let fetched = Settings::load(&dirs).unwrap().license_public_key;
    assert!(fetched.is_some());
    assert_eq!(stub.seen().len(), 1, "one request, for the key");

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let licence = |expires_at, signer: &SigningKey| {
        pexper_wire::license::sign(
            &LicenseClaims {
                id: uuid::Uuid::now_v7().to_string(),
                product: "pexper-pro".into(),
                issued_at: now - 60,
                expires_at,
                key_id: key_id.clone(),
                livemode: true,
            },
            signer,
        )
    };
    // Each case from the same settings: a checked licence is kept and would fill the field.
    let verify = |text: &str| {
        settings(&dirs, &stub, |s| s.license_public_key = fetched.clone());
        let mut h = harness(&dirs);
        click(&mut h, "Licence");
        type_into(&mut h, "Licence key", text);
        click(&mut h, "Verify on this device");
        h
    };
    assert!(shows(&verify("PEXPER1.not-a-licence"), "Not valid"));
    let forged = licence(None, &SigningKey::from_bytes(&[8; 32]));
    assert!(shows(&verify(&forged), "Not valid"));
    assert!(shows(
        &verify(&licence(Some(now - 10), &key)),
        "Expired (pexper-pro): Pexper keeps working"
    ));
    let valid = licence(None, &key);
    assert!(shows(&verify(&valid), "Valid: pexper-pro licence"));
    assert_eq!(
        Settings::load(&dirs).unwrap().license.as_deref(),
        Some(valid.as_str())
    );
    assert_eq!(stub.seen().len(), 1, "verified without a request");
    assert_eq!(Egress::new(dirs.network_log(), false).log().len(), 1);
}

#[test]
fn what_is_made_in_the_window_survives_a_restart() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |_| {});
    let mut h = harness(&dirs);
    click(&mut h, "New workflow");
    type_into(&mut h, "Name", " renamed"); // appended to "New workflow"
    type_into(&mut h, "Prompt", "Summarise my notes");
    click(&mut h, "Save");
    click(&mut h, "Privacy");
    click(&mut h, "Offline: block every request");
    click(&mut h, "Crash reports only");
    drop(h);

    let saved = Workflow::list(&dirs).unwrap();
    assert_eq!(saved.len(), 1);
    assert!(saved[0].name.ends_with("renamed"), "{:?}", saved[0].name);
    let mut h = harness(&dirs);
    assert!(
        h.query_by_label(&saved[0].name).is_some(),
        "the workflow is listed"
    );
    assert!(shows(&h, "Summarise my notes"));
    click(&mut h, "Privacy");
    let s = Settings::load(&dirs).unwrap();
    assert!(s.offline);
    assert_eq!(s.telemetry, Some(Level::Crash));
    assert!(stub.seen().is_empty(), "nothing was sent");
}

#[test]
fn the_export_holds_no_key_and_delete_all_leaves_nothing_on_the_device() {
    let stub = Stub::start();
    let (dirs, root) = dirs();
    settings(&dirs, &stub, |_| {});
    local_workflow(&dirs);
    let store = mock_keychain();
    let keys = KeychainStore::new(store.clone(), "mock");
    keys.set("anthropic", &SecretString::from(PLANTED_KEY))
        .unwrap();
    let mut h = harness_with(&dirs, keychain(&store));
    click(&mut h, "Data");
    click(&mut h, "Export my data (without keys)");
    let export: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs.data.join("pexper-export.json")).unwrap())
            .unwrap();
    assert_eq!(export["workflows"][0]["prompt"], "Say hello");
    assert_nowhere_under(&root, PLANTED_KEY);

    click(&mut h, "Delete all local data");
    click(&mut h, "Yes, delete everything");
    h.run();
    assert!(shows(&h, "Everything on this device is deleted."));
    assert!(
        h.query_by_label("Keep everything off").is_some(),
        "a first run again: asked before anything"
    );
    assert!(Workflow::list(&dirs).unwrap().is_empty());
    assert!(
        crate::common::all_files(&root).is_empty(),
        "{:?}",
        crate::common::all_files(&root)
    );
    assert!(
        keys.get("anthropic").unwrap().is_none(),
        "the key left the keychain"
    );
}

#[test]
fn a_crash_report_from_an_earlier_run_goes_out_at_launch_only_when_allowed() {
    let envelope = b"{\"event_id\":\"0123456789abcdef0123456789abcdef\"}\n";
    for (level, sent) in [(Level::Off, false), (Level::Crash, true)] {
        let stub = Stub::start();
        let (dirs, _root) = dirs();
        settings(&dirs, &stub, |s| s.telemetry = Some(level));
        telemetry::queue_crash(&dirs, envelope).unwrap();
        let _h = harness(&dirs);
        let posted: Vec<_> = stub
            .seen()
            .into_iter()
            .filter(|s| s.path.ends_with("/envelope/"))
            .collect();
        assert_eq!(posted.len(), usize::from(sent), "{level:?}");
        if sent {
            assert_eq!(posted[0].body, envelope);
        } else {
            assert!(stub.seen().is_empty(), "off opens no socket");
        }
        assert!(telemetry::outbox(&dirs).unwrap().is_empty(), "{level:?}");
    }
}

#[test]
fn a_new_schema_version_asks_again_at_launch() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |s| {
        s.telemetry = Some(Level::All);
        s.consented_schema_version = Some(0);
    });
    let mut h = harness(&dirs);
    assert!(shows(&h, "What Pexper collects has changed"));
    assert!(shows(&h, "now version 1; you agreed to version 0"));
    assert!(
        !stub.seen().iter().any(|s| s.path == "/v1/analytics/events"),
        "no usage event before consent to the new schema"
    );
    click(&mut h, "Send crash reports and anonymous usage");
    assert_eq!(
        Settings::load(&dirs).unwrap().consented_schema_version,
        Some(1)
    );
    assert!(h.query_by_label("Workflows").is_some());
}

#[test]
fn a_sessions_usage_events_are_the_schemas_own_and_nothing_more() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    settings(&dirs, &stub, |s| {
        s.telemetry = Some(Level::All);
        s.consented_schema_version = Some(1);
    });
    local_workflow(&dirs);
    let mut h = harness(&dirs); // launch: app.started, sent at once
    click(&mut h, "Run");
    click(&mut h, "Providers & keys");
    click(&mut h, "Privacy");
    click(&mut h, "Privacy"); // the same screen again is not a new use
    h.state_mut().exit();

    let queued = telemetry::outbox(&dirs).unwrap();
    assert_eq!(queued.len(), 1, "one session, one batch");
    let batch: serde_json::Value = serde_json::from_slice(&queued[0].body).unwrap();
    let events: Vec<String> = batch["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["name"].as_str().unwrap(), e["props"]))
        .collect();
    // The session's length in whole seconds: whatever this machine took.
    let (last, rest) = events.split_last().unwrap();
    assert!(last.starts_with(r#"app.exited {"duration_s":"#), "{last}");
    assert_eq!(
        rest,
        [
            r#"workflow.run {"nodes":"1","outcome":"ok","target":"local"}"#,
            r#"model.used {"kind":"local","provider":"ollama"}"#,
            r#"feature.used {"feature":"providers"}"#,
            r#"feature.used {"feature":"privacy_settings"}"#,
        ],
    );
    let body = String::from_utf8_lossy(&queued[0].body);
    assert!(
        !body.contains("Say hello") && !body.contains("hello from"),
        "no content"
    );
    let sent = stub.seen();
    assert_eq!(sent.len(), 3, "schema, app.started, the run: {sent:?}");
}
