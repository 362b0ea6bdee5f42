//! Crash reports: a panic hook writes a scrubbed Sentry envelope into the outbox — home
//! directory as `~`, the user's name, key-like strings, emails and IP addresses removed, no
//! hostname — only if the person allows crash reports at that moment, and it is sent on a
//! later launch only if the person's level still allows.

use serde_json::json;

use crate::store::Dirs;

/// Removes what a panic message or a path may say about the person or the machine (the one
/// scrubber, `pexper_wire::scrub`, with the home directory as `~` and the user's name).
pub fn scrub(text: &str, home: Option<&str>, user: Option<&str>) -> String {
    let mut known = Vec::new();
    known.extend(home.map(|home| (home, "~")));
    known.extend(user.map(|user| (user, "[user]")));
    pexper_wire::scrub::scrub(text, &known)
}

fn home_and_user() -> (Option<String>, Option<String>) {
    let home = std::env::var("HOME")
        .or_else(|_| std::env::var("USERPROFILE"))
        .ok();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok();
    (home, user)
}

/// The envelope for a panic: an `event` item rebuilt from scratch (no hostname, no user, no
/// environment variables, no arguments).
pub fn envelope(
    message: &str,
    location: Option<(&str, u32)>,
    home: Option<&str>,
    user: Option<&str>,
) -> Vec<u8> {
    let event_id = uuid::Uuid::new_v4().simple().to_string();
    let frames: Vec<_> = location
        .map(|(file, line)| json!({"filename": scrub(file, home, user), "lineno": line, "in_app": true, "function": "panic"}))
        .into_iter()
        .collect();
    let event = json!({
        "event_id": event_id,
        "timestamp": time::OffsetDateTime::now_utc().unix_timestamp(),
        "level": "fatal",
        "platform": "native",
        "release": concat!("pexper-desktop@", env!("CARGO_PKG_VERSION")),
        "exception": {"values": [{"type": "panic", "value": scrub(message, home, user), "stacktrace": {"frames": frames}}]},
        "contexts": {"os": {"name": std::env::consts::OS}, "device": {"arch": std::env::consts::ARCH}},
    })
    .to_string();
    format!(
        "{{\"event_id\":\"{event_id}\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n",
        event.len()
    )
    .into_bytes()
}

/// Whether a crash now may be reported: the person chose crash reports (or more), and nothing
/// forces telemetry off. Read from the settings on disk at the moment of the crash, so a
/// change in the window counts at once; a report not written can never be sent later, when
/// the level changes.
fn reporting_allowed(dirs: &Dirs, forced_off: bool) -> bool {
    !forced_off
        && crate::store::Settings::load(dirs)
            .ok()
            .and_then(|s| s.telemetry)
            .is_some_and(|level| level >= crate::telemetry::Level::Crash)
}

/// Installs the hook: a panic writes its report to the outbox if reporting is allowed at that
/// moment (`forced_off`: `DO_NOT_TRACK`, `CI` or `--disable-telemetry`), then the default hook
/// runs. Sending is decided again by the level at send time; turning telemetry off purges.
pub fn install(dirs: &Dirs, forced_off: bool) {
    let dirs = dirs.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !reporting_allowed(&dirs, forced_off) {
            previous(info);
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        let location = info.location().map(|l| (l.file(), l.line()));
        let (home, user) = home_and_user();
        let _ = crate::telemetry::queue_crash(
            &dirs,
            &envelope(&message, location, home.as_deref(), user.as_deref()),
        );
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_report_names_no_person_or_machine() {
        let envelope = envelope(
            "cannot open /home/alice/work/x.json for alice@example.org from 192.168.1.20 with sk-proj-abcdefghij0123",
            Some(("/home/alice/src/pexper/main.rs", 7)),
            Some("/home/alice"),
            Some("alice"),
        );
        let text = String::from_utf8(envelope).expect("utf-8");
        for gone in ["alice", "192.168", "sk-proj", "example.org"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        assert!(
            text.contains("~/work/x.json") && text.contains("~/src/pexper/main.rs"),
            "{text}"
        );
        assert!(!text.contains("server_name") && !text.contains("\"user\""));
    }
}
