//! The device-side promises, tested without a window against a loopback stub that records every
//! request: nothing before consent or after declining, the preview is what is sent, off purges,
//! the kill switch blocks, keys go only to their provider, the licence matrix, state survives a
//! restart, and no HTTP client exists outside the egress module.

use std::path::Path;

use crate::common::{PLANTED_KEY, Seen, Stub, all_files, assert_nowhere_under, dirs};

use pexper_desktop::egress::{Egress, EgressError, Purpose, Request};
use pexper_desktop::license::{self, Status};
use pexper_desktop::providers::Provider;
use pexper_desktop::secrets::{EncryptedFileStore, SecretStore};
use pexper_desktop::store::{Dirs, Settings, Workflow};
use pexper_desktop::telemetry::{self, Level, Telemetry};
use pexper_wire::license::{LicenseClaims, SigningKey};
use secrecy::SecretString;
use serde_json::{Value, json};

/// The command line on `data_dir` with only `env` added (no inherited passphrase), `stdin`
/// written and closed.
fn cli(data_dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pexper-desktop"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PEXPER_PASSPHRASE")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that needs no input may exit before it is written: the pipe is then closed,
    // which is no failure of the test (what it answered is in its output).
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn props(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Settings pointing at the stub, telemetry chosen as `level` (schema consented).
fn consented(dirs: &Dirs, stub: &Stub, level: Level) -> Settings {
    let mut settings = Settings {
        server_url: stub.url.clone(),
        ..Settings::default()
    };
    let egress = Egress::new(dirs.network_log(), false);
    let schema = telemetry::fetch_schema(dirs, &settings, &egress).unwrap();
    settings.consented_schema_version = telemetry::schema_version(Some(&schema));
    settings.telemetry = Some(level);
    settings.save(dirs).unwrap();
    settings
}

#[test]
fn nothing_is_collected_or_sent_before_a_choice_or_after_declining() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    let mut settings = Settings {
        server_url: stub.url.clone(),
        ..Settings::default()
    };
    for choice in [None, Some(Level::Off)] {
        settings.telemetry = choice;
        let t = Telemetry::new(&dirs, &settings, false);
        assert_eq!(t.level(), Level::Off);
        assert!(!t.record("app.started", props(json!({}))));
        let egress = Egress::new(dirs.network_log(), false);
        assert_eq!(
            telemetry::send(&dirs, &settings, t.level(), &egress).unwrap(),
            0
        );
    }
    assert!(telemetry::outbox(&dirs).unwrap().is_empty());
    assert_eq!(stub.seen().len(), 0, "no socket was opened");
}

#[test]
fn the_preview_is_exactly_what_is_sent_and_off_purges_and_sends_nothing() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    let settings = consented(&dirs, &stub, Level::All);
    let t = Telemetry::new(&dirs, &settings, false);
    assert_eq!(t.level(), Level::All);
    assert!(t.record("feature.used", props(json!({"feature": "providers"}))));
    assert!(t.record("app.started", props(json!({"first_run": true}))));
    assert!(
        !t.record("feature.used", props(json!({"feature": "secret"}))),
        "outside the schema"
    );
    assert!(
        !t.record("user.email", props(json!({}))),
        "not in the schema"
    );
    let preview = telemetry::outbox(&dirs).unwrap();
    assert_eq!(preview.len(), 1);
    let egress = Egress::new(dirs.network_log(), false);
    assert_eq!(
        telemetry::send(&dirs, &settings, Level::All, &egress).unwrap(),
        1
    );
    let sent: Vec<Seen> = stub
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/analytics/events")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].body, preview[0].body, "byte for byte");
    assert!(
        telemetry::outbox(&dirs).unwrap().is_empty(),
        "sent means gone"
    );
    for (name, _) in &sent[0].headers {
        assert!(!["cookie", "authorization", "x-api-key"].contains(&name.as_str()));
    }

    // Turning it off purges what is queued, and nothing more is sent.
    assert!(t.record("feature.used", props(json!({"feature": "license"}))));
    let before = stub.seen().len();
    let off = Settings {
        telemetry: Some(Level::Off),
        ..settings.clone()
    };
    let t = Telemetry::new(&dirs, &off, false);
    assert_eq!(t.level(), Level::Off);
    assert!(telemetry::outbox(&dirs).unwrap().is_empty());
    assert_eq!(telemetry::send(&dirs, &off, t.level(), &egress).unwrap(), 0);
    assert_eq!(stub.seen().len(), before);
}

#[test]
fn a_new_schema_version_asks_again_and_do_not_track_forces_off() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    let mut settings = consented(&dirs, &stub, Level::All);
    settings.consented_schema_version = Some(0);
    let t = Telemetry::new(&dirs, &settings, false);
    assert_eq!(
        t.level(),
        Level::Crash,
        "no usage events until consent to the new schema"
    );
    assert!(!t.record("app.started", props(json!({}))));
    settings.consented_schema_version = Some(1);
    assert_eq!(
        Telemetry::new(&dirs, &settings, true).level(),
        Level::Off,
        "forced off"
    );

    let out = cli(
        dirs.config.parent().unwrap(),
        &["telemetry", "status"],
        &[("DO_NOT_TRACK", "1")],
        "",
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["effective"], "off");
    assert_eq!(status["forced_off"], true);
}

#[test]
fn the_kill_switch_blocks_everything_and_keys_go_only_to_their_provider() {
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    let key = SecretString::from(PLANTED_KEY);
    let offline = Egress::new(dirs.network_log(), true);
    let run = Provider::Ollama.chat(&stub.url, "llama3", "hi", None);
    assert!(matches!(
        offline.send(run),
        Err(EgressError::Blocked("offline"))
    ));
    let cloud = Provider::Openai.chat("", "gpt-4o", "hi", Some(key.clone()));
    assert!(matches!(offline.send(cloud), Err(EgressError::Blocked(_))));

    let online = Egress::new(dirs.network_log(), false);
    // A cloud key pointed anywhere but its provider's host is refused before any socket opens.
    let mut misdirected = Provider::Openai.chat("", "gpt-4o", "hi", Some(key.clone()));
    misdirected.url = format!("{}/v1/chat/completions", stub.url);
    assert!(matches!(
        online.send(misdirected),
        Err(EgressError::Blocked(_))
    ));
    let to_us = Request {
        purpose: Purpose::Telemetry,
        method: "POST",
        url: format!("{}/v1/analytics/events", stub.url),
        content_type: None,
        body: vec![],
        key: Some(("authorization", key.clone())),
        headers: vec![],
    };
    assert!(matches!(online.send(to_us), Err(EgressError::Blocked(_))));
    let remote_local = Provider::Ollama.chat("http://192.0.2.10:11434", "llama3", "hi", None);
    assert!(matches!(
        online.send(remote_local),
        Err(EgressError::Blocked(_))
    ));
    assert_eq!(stub.seen().len(), 0);

    // A local model: loopback only, no key, and the reply comes back.
    let res = online
        .send(Provider::Ollama.chat(&stub.url, "llama3", "hi", None))
        .unwrap();
    assert_eq!(
        Provider::Ollama.reply_text(&res.body).unwrap(),
        "hello from a local model"
    );
    assert_eq!(Provider::Ollama.destination(), "stays on this device");
    assert_eq!(Provider::Openai.destination(), "goes to api.openai.com");
    let log = online.log();
    assert!(
        log.iter()
            .filter(|e| e.outcome.starts_with("blocked"))
            .count()
            >= 5,
        "{log:?}"
    );
    assert_eq!(log.last().unwrap().outcome, "sent");
}

#[test]
fn a_planted_key_is_nowhere_on_disk_or_on_the_wire_except_to_its_provider() {
    let stub = Stub::start();
    let (dirs, root) = dirs();
    let store = EncryptedFileStore::open(
        dirs.secrets(),
        &SecretString::from("a long passphrase"),
        "no keychain here",
    )
    .unwrap();
    store
        .set("openai", &SecretString::from(PLANTED_KEY))
        .unwrap();
    let settings = consented(&dirs, &stub, Level::All);
    let t = Telemetry::new(&dirs, &settings, false);
    t.record(
        "workflow.run",
        props(json!({"nodes": "1", "outcome": "ok", "target": "cloud"})),
    );
    let egress = Egress::new(dirs.network_log(), false);
    telemetry::send(&dirs, &settings, Level::All, &egress).unwrap();
    let mut misdirected = Provider::Openai.chat("", "gpt-4o", "hi", store.get("openai").unwrap());
    misdirected.url = format!("{}/v1/chat/completions", stub.url);
    let _ = egress.send(misdirected);

    assert_nowhere_under(&root, PLANTED_KEY);
    for seen in stub.seen() {
        let all = format!("{:?}{}", seen.headers, String::from_utf8_lossy(&seen.body));
        assert!(!all.contains(PLANTED_KEY), "the key reached {}", seen.path);
    }
}

/// The panic hook is process-wide: tests that install one take turns.
static PANIC_HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_panic_leaves_a_scrubbed_crash_report_that_goes_out_only_when_allowed() {
    let _hook = PANIC_HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    Settings {
        telemetry: Some(Level::Crash),
        ..Settings::default()
    }
    .save(&dirs)
    .unwrap();
    pexper_desktop::crash::install(&dirs, false);
    let home = std::env::var("HOME").unwrap_or_default();
    let _ = std::panic::catch_unwind(|| {
        panic!("failed on {home}/projects/x.json with {PLANTED_KEY} for a@b.example")
    });
    let _ = std::panic::take_hook();
    // The hook is process-wide: another test's failing assertion may add its own report.
    let queued = telemetry::outbox(&dirs).unwrap();
    let ours: Vec<_> = queued
        .iter()
        .filter(|q| String::from_utf8_lossy(&q.body).contains("projects/x.json"))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].kind, "crash");
    let text = String::from_utf8(ours[0].body.clone()).unwrap();
    assert!(
        !text.contains(PLANTED_KEY) && !text.contains("a@b.example"),
        "{text}"
    );
    assert!(home.len() < 2 || !text.contains(&home), "{text}");
    let body = ours[0].body.clone();
    telemetry::purge(&dirs);
    telemetry::queue_crash(&dirs, &body).unwrap();

    let egress = Egress::new(dirs.network_log(), false);
    let mut settings = Settings {
        server_url: stub.url.clone(),
        ..Settings::default()
    };
    assert_eq!(
        telemetry::send(&dirs, &settings, Level::Off, &egress).unwrap(),
        0,
        "off sends nothing"
    );
    assert_eq!(stub.seen().len(), 0);
    telemetry::queue_crash(&dirs, &body).unwrap();
    settings.telemetry = Some(Level::Crash);
    assert_eq!(
        telemetry::send(&dirs, &settings, Level::Crash, &egress).unwrap(),
        1
    );
    let seen = stub.seen();
    assert_eq!(seen[0].path, "/api/1/envelope/");
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "x-sentry-auth" && v.contains("sentry_key=pexper-dev"))
    );
}

#[test]
fn a_crash_while_reports_are_off_undecided_or_forced_off_is_never_written_nor_sent_later() {
    let _hook = PANIC_HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let stub = Stub::start();
    let (dirs, _root) = dirs();
    let crash_with = |telemetry: Option<Level>, forced_off: bool, marker: &str| {
        Settings {
            server_url: stub.url.clone(),
            telemetry,
            ..Settings::default()
        }
        .save(&dirs)
        .unwrap();
        pexper_desktop::crash::install(&dirs, forced_off);
        let marker = marker.to_owned();
        let _ = std::panic::catch_unwind(move || panic!("{marker}"));
        let _ = std::panic::take_hook();
    };
    crash_with(None, false, "crash-while-undecided");
    crash_with(Some(Level::Off), false, "crash-while-off");
    crash_with(Some(Level::Crash), true, "crash-while-forced-off");
    let ours = |marker: &str| {
        telemetry::outbox(&dirs)
            .unwrap()
            .iter()
            .any(|q| String::from_utf8_lossy(&q.body).contains(marker))
    };
    for marker in [
        "crash-while-undecided",
        "crash-while-off",
        "crash-while-forced-off",
    ] {
        assert!(!ours(marker), "{marker} was written");
    }
    // The person turns crash reports on: what happened before stays unsent.
    let settings = Settings {
        server_url: stub.url.clone(),
        telemetry: Some(Level::Crash),
        ..Settings::default()
    };
    let egress = Egress::new(dirs.network_log(), false);
    telemetry::send(&dirs, &settings, Level::Crash, &egress).unwrap();
    let sent: Vec<String> = stub
        .seen()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    assert!(
        !sent.iter().any(|b| b.contains("crash-while-")),
        "sent later: {sent:?}"
    );
    // And from then on a crash is reported.
    crash_with(Some(Level::Crash), false, "crash-while-allowed");
    assert!(ours("crash-while-allowed"));
}

#[test]
fn the_licence_matrix_is_checked_offline() {
    let (dirs, _root) = dirs();
    let key = SigningKey::from_bytes(&[5; 32]);
    let public = key.verifying_key();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |expires_at| LicenseClaims {
        id: uuid::Uuid::now_v7().to_string(),
        product: "pexper".into(),
        issued_at: now - 100,
        expires_at,
        key_id: pexper_wire::license::key_id(&public),
        livemode: true,
    };
    let valid = pexper_wire::license::sign(&claims(None), &key);
    assert!(matches!(
        license::check(&valid, Some(&public), now, now).status,
        Status::Valid(_)
    ));
    let mut tampered = valid.clone();
    tampered.insert(
        12,
        if tampered.as_bytes()[12] == b'A' {
            'B'
        } else {
            'A'
        },
    );
    assert!(matches!(
        license::check(&tampered, Some(&public), now, now).status,
        Status::Invalid(_)
    ));
    let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
    assert!(matches!(
        license::check(&valid, Some(&other), now, now).status,
        Status::Invalid(_)
    ));
    let expired = pexper_wire::license::sign(&claims(Some(now - 10)), &key);
    assert!(matches!(
        license::check(&expired, Some(&public), now, now).status,
        Status::Expired(_)
    ));
    let back = license::check(&valid, Some(&public), now - 3 * 86_400, now);
    assert!(back.clock_went_back);
    assert!(matches!(back.status, Status::Valid(_)), "fail soft");

    // Through the command line: no request at all.
    let file = dirs.data.join("licence.txt");
    std::fs::write(&file, &valid).unwrap();
    let public_b64 = pexper_wire::license::PublicKey::new(&public).public_key;
    let out = cli(
        dirs.config.parent().unwrap(),
        &[
            "license",
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            &public_b64,
        ],
        &[],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "valid");
    assert!(!dirs.network_log().exists(), "the network log is empty");
}

#[test]
fn settings_and_workflows_survive_a_restart_and_a_torn_write_never_corrupts_them() {
    let (dirs, root) = dirs();
    let settings = Settings {
        offline: true,
        telemetry: Some(Level::Crash),
        ..Settings::default()
    };
    settings.save(&dirs).unwrap();
    let w = Workflow {
        id: "summarise".into(),
        name: "Summarise".into(),
        provider: Provider::Ollama,
        model: "llama3".into(),
        prompt: "Summarise this".into(),
    };
    w.save(&dirs).unwrap();
    // A crash mid-write leaves a temporary file behind, never a half-written real one.
    std::fs::write(
        dirs.config.join(".settings.json.dead.tmp"),
        b"{\"offline\": fal",
    )
    .unwrap();

    let again = Dirs::new(Some(&*root)).unwrap();
    assert_eq!(Settings::load(&again).unwrap(), settings);
    assert_eq!(Workflow::list(&again).unwrap(), vec![w]);
    assert!(Workflow::load(&again, "../../etc/passwd").is_err());

    let out = cli(&root, &["telemetry", "set", "off"], &[], "");
    assert!(out.status.success());
    assert_eq!(Settings::load(&again).unwrap().telemetry, Some(Level::Off));
}

#[test]
fn requests_ignore_proxies_named_in_the_environment() {
    let (dirs, root) = dirs();
    let (server, proxy) = (Stub::start(), Stub::start());
    Settings {
        server_url: server.url.clone(),
        ..Settings::default()
    }
    .save(&dirs)
    .unwrap();
    let proxy_url = proxy.url.as_str();
    let out = cli(
        &root,
        &["license", "fetch-key"],
        &[
            ("HTTP_PROXY", proxy_url),
            ("http_proxy", proxy_url),
            ("HTTPS_PROXY", proxy_url),
            ("ALL_PROXY", proxy_url),
            ("all_proxy", proxy_url),
            ("NO_PROXY", ""),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server
            .seen()
            .iter()
            .map(|s| s.path.as_str())
            .collect::<Vec<_>>(),
        ["/v1/licenses/public-key"],
        "the request went straight to the server"
    );
    assert!(proxy.seen().is_empty(), "the proxy saw {:?}", proxy.seen());
}

#[test]
fn no_http_client_exists_outside_the_egress_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // Crate paths and socket types: `hyperlink_to` in the UI is not an HTTP client.
    let needles = [
        "ureq::",
        "reqwest",
        "hyper::",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "std::net::",
    ];
    for file in all_files(&src) {
        if file.file_name().is_some_and(|n| n == "egress.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in needles {
            assert!(!text.contains(needle), "{} uses {needle}", file.display());
        }
    }
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for server in ["pexper-platform", "pexper-server", "axum", "sqlx"] {
        assert!(
            !manifest.contains(server),
            "the client must not depend on {server}"
        );
    }
}

/// The command line on a Linux session with no Secret Service (the session bus address points
/// nowhere): keys go to the encrypted file, which only the passphrase opens, and `keys status`
/// says why the keychain is not in use.
#[cfg(target_os = "linux")]
#[test]
fn without_a_keychain_the_command_line_uses_the_key_file_and_says_why() {
    let (_dirs, root) = dirs();
    let desktop = |args: &[&str], passphrase: Option<&str>, stdin: &str| {
        let bus = (
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/pexper-bus",
        );
        match passphrase {
            Some(p) => cli(&root, args, &[bus, ("PEXPER_PASSPHRASE", p)], stdin),
            None => cli(&root, args, &[bus], stdin),
        }
    };
    let status = |passphrase| {
        let out = desktop(&["keys", "status"], passphrase, "");
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };

    let locked = status(None);
    assert_eq!(locked["unlocked"], false);
    let backend = locked["backend"].as_str().unwrap();
    assert!(
        backend.starts_with("encrypted file, locked (no OS keychain"),
        "{backend}"
    );
    let refused = desktop(&["keys", "set", "openai"], None, PLANTED_KEY);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PEXPER_PASSPHRASE"));

    // The window's minimum holds for the environment too: no new file under a short one.
    let short = desktop(
        &["keys", "set", "openai"],
        Some("hunter2"),
        &format!("{PLANTED_KEY}\n"),
    );
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    assert_eq!(status(None)["unlocked"], false);
    assert!(
        !all_files(&root).iter().any(|f| f.ends_with("secrets.enc")),
        "no key file was created"
    );

    let pass = "a passphrase for the key file";
    let saved = desktop(
        &["keys", "set", "openai"],
        Some(pass),
        &format!("{PLANTED_KEY}\n"),
    );
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    assert_eq!(status(Some(pass))["keys"], json!(["openai"]));
    assert!(
        !desktop(&["keys", "status"], Some("the wrong one"), "")
            .status
            .success()
    );
    assert_nowhere_under(&root, PLANTED_KEY);
    assert!(
        !desktop(&["keys", "set", "ollama"], Some(pass), "x")
            .status
            .success()
    );

    assert!(
        desktop(&["keys", "delete", "openai"], Some(pass), "")
            .status
            .success()
    );
    assert_eq!(status(Some(pass))["keys"], json!([]));
}

/// A private session bus (`dbus-run-session`) with gnome-keyring's Secret Service on it, its
/// login keyring unlocked by a password, as a desktop login does. Closing stdin ends it all.
#[cfg(target_os = "linux")]
struct SecretService {
    address: String,
    session: std::process::Child,
}

#[cfg(target_os = "linux")]
impl SecretService {
    /// None when the tools are not installed (CI installs them and sets
    /// `PEXPER_REQUIRE_KEYRING=1`, which turns a skip into a failure).
    fn start(home: &Path) -> Option<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let installed = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if !installed("dbus-run-session") || !installed("gnome-keyring-daemon") {
            assert!(
                std::env::var("PEXPER_REQUIRE_KEYRING").is_err(),
                "PEXPER_REQUIRE_KEYRING is set but dbus-run-session/gnome-keyring-daemon are missing"
            );
            eprintln!("skipped: no dbus-run-session or gnome-keyring-daemon");
            return None;
        }
        // The daemon forks once it is up and serving; only then is the address printed, so no
        // client can make the bus start a second, locked daemon first.
        // The login keyring is created (and unlocked) a moment later: wait for its file.
        let script = r#"printf %s "keyring password" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
for _ in $(seq 100); do [ -s "$HOME/.local/share/keyrings/login.keyring" ] && break; sleep 0.05; done
echo "$DBUS_SESSION_BUS_ADDRESS"
exec cat >/dev/null"#;
        let mut session = Command::new("dbus-run-session")
            .args(["--", "sh", "-c", script])
            .env("HOME", home)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Read on a thread of its own, so a session that never says fails the test (and is
        // killed) instead of hanging it.
        let stdout = session.stdout.take().unwrap();
        let (said, heard) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut address = String::new();
            std::io::BufReader::new(stdout).read_line(&mut address).ok();
            said.send(address).ok();
        });
        let Ok(address) = heard.recv_timeout(std::time::Duration::from_secs(30)) else {
            session.kill().ok();
            session.wait().ok();
            panic!("the session bus did not say its address within 30 s");
        };
        let address = address.trim().to_owned();
        assert!(address.starts_with("unix:"), "no session bus: {address:?}");
        Some(Self { address, session })
    }
}

#[cfg(target_os = "linux")]
impl Drop for SecretService {
    fn drop(&mut self) {
        drop(self.session.stdin.take()); // `cat` ends, and with it the session and its bus
        let _ = self.session.wait();
    }
}

/// With a real Secret Service on the session bus, keys go to it: nothing under the data dir
/// holds the key, and the keyring's own files do not hold it in clear either.
#[cfg(target_os = "linux")]
#[test]
fn with_a_secret_service_keys_go_to_the_os_keychain() {
    let (_dirs, root) = dirs();
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let Some(service) = SecretService::start(&home) else {
        return;
    };
    let desktop = |args: &[&str], stdin: &str| {
        let bus = ("DBUS_SESSION_BUS_ADDRESS", service.address.as_str());
        let out = cli(&root.join("app"), args, &[bus], stdin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let status = desktop(&["keys", "status"], "");
    assert_eq!(status["backend"], "OS keychain", "{status}");
    desktop(&["keys", "set", "anthropic"], PLANTED_KEY);
    assert_eq!(
        desktop(&["keys", "status"], "")["keys"],
        json!(["anthropic"])
    );
    assert!(!root.join("app/config/secrets.enc").exists(), "no key file");
    assert_nowhere_under(&root, PLANTED_KEY);
    desktop(&["keys", "delete", "anthropic"], "");
    assert_eq!(desktop(&["keys", "status"], "")["keys"], json!([]));
    drop(service);
}
