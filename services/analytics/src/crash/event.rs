//! Rebuilding a crash event from an allow-list: we copy the few fields we want out of what
//! the SDK sent, scrubbing every string, and never store the original. Everything else —
//! `server_name`, `user`, `request`, `breadcrumbs`, `extra`, `tags`, frame variables and
//! source lines, `debug_meta`, device names — is simply never copied.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::scrub::{label, scrub};
use pexper_platform::crypto::{hex, sha256};

/// Longest string kept from an event, in characters.
const MAX_TEXT: usize = 2000;
/// Frames kept per exception (the innermost ones).
const MAX_FRAMES: usize = 64;
/// In-app frames that make a crash signature.
const SIGNATURE_FRAMES: usize = 3;

/// A rebuilt, scrubbed event and what we index it by.
#[derive(Debug)]
pub struct Rebuilt {
    pub event_id: uuid::Uuid,
    pub occurred_at: OffsetDateTime,
    pub release: Option<String>,
    pub environment: Option<String>,
    pub level: Option<String>,
    pub exception_type: Option<String>,
    pub signature: String,
    pub event: Value,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

fn timestamp(v: &Value) -> Option<OffsetDateTime> {
    match v.get("timestamp")? {
        Value::Number(n) => {
            let nanos = (n.as_f64()? * 1e9) as i128;
            OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
        }
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            // Python sends naive UTC (no offset).
            .or_else(|| OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339).ok()),
        _ => None,
    }
}

/// Rebuilds an event payload. `None` if it is not a JSON object.
pub fn rebuild(payload: &[u8]) -> Option<Rebuilt> {
    let raw: Value = serde_json::from_slice(payload).ok()?;
    raw.as_object()?;
    // Strings that identify this machine, wherever else they appear in the report.
    let identifying: Vec<&str> = [
        str_at(&raw, &["server_name"]),
        str_at(&raw, &["contexts", "device", "name"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    let text = |s: &str| clip(&scrub(s, &identifying));

    let exceptions: Vec<Value> = raw
        .get("exception")
        .and_then(|e| e.get("values").or(Some(e)))
        .and_then(Value::as_array)
        .map(|values| values.iter().map(|e| exception(e, &text)).collect())
        .unwrap_or_default();
    let message = str_at(&raw, &["message"])
        .or_else(|| str_at(&raw, &["message", "formatted"]))
        .or_else(|| str_at(&raw, &["logentry", "formatted"]))
        .or_else(|| str_at(&raw, &["logentry", "message"]))
        .map(text);

    let exception_type = exceptions
        .last()
        .and_then(|e| e["type"].as_str())
        .map(str::to_owned);
    let signature = signature(exceptions.last(), message.as_deref());

    let mut contexts = Map::new();
    if let Some(os) = raw.get("contexts").and_then(|c| c.get("os")) {
        contexts.insert(
            "os".into(),
            json!({"name": label(str_at(os, &["name"])), "version": label(str_at(os, &["version"]))}),
        );
    }
    if let Some(rt) = raw.get("contexts").and_then(|c| c.get("runtime")) {
        contexts.insert(
            "runtime".into(),
            json!({"name": label(str_at(rt, &["name"])), "version": label(str_at(rt, &["version"]))}),
        );
    }
    let arch = str_at(&raw, &["contexts", "device", "arch"])
        .or_else(|| str_at(&raw, &["contexts", "os", "arch"]));
    if let Some(arch) = label(arch) {
        contexts.insert("device".into(), json!({"arch": arch}));
    }

    let event_id = str_at(&raw, &["event_id"])
        .and_then(|id| uuid::Uuid::try_parse(id).ok())
        .unwrap_or_else(uuid::Uuid::new_v4);
    let occurred_at = timestamp(&raw)
        .filter(|t| (*t - OffsetDateTime::now_utc()).abs() < time::Duration::days(30))
        .unwrap_or_else(OffsetDateTime::now_utc);
    let release = label(str_at(&raw, &["release"]));
    let environment = label(str_at(&raw, &["environment"]));
    let level = label(str_at(&raw, &["level"]));
    let event = json!({
        "event_id": event_id,
        "timestamp": occurred_at.format(&Rfc3339).unwrap_or_default(),
        "level": level,
        "platform": label(str_at(&raw, &["platform"])),
        "release": release,
        "environment": environment,
        "message": message,
        "exception": exceptions,
        "contexts": contexts,
        "sdk": {
            "name": label(str_at(&raw, &["sdk", "name"])),
            "version": label(str_at(&raw, &["sdk", "version"])),
        },
    });
    Some(Rebuilt {
        event_id,
        occurred_at,
        release,
        environment,
        level,
        exception_type,
        signature,
        event,
    })
}

fn exception(e: &Value, text: &impl Fn(&str) -> String) -> Value {
    let frames: Vec<Value> = e
        .get("stacktrace")
        .and_then(|s| s.get("frames"))
        .and_then(Value::as_array)
        .map(|frames| {
            let skip = frames.len().saturating_sub(MAX_FRAMES);
            frames.iter().skip(skip).map(|f| frame(f, text)).collect()
        })
        .unwrap_or_default();
    json!({
        "type": str_at(e, &["type"]).map(text),
        "value": str_at(e, &["value"]).map(text),
        "module": str_at(e, &["module"]).map(text),
        "frames": frames,
    })
}

fn frame(f: &Value, text: &impl Fn(&str) -> String) -> Value {
    // `filename` is relative when the SDK knows the project root; `abs_path` is not kept.
    let file = str_at(f, &["filename"]).or_else(|| str_at(f, &["abs_path"]));
    json!({
        "function": str_at(f, &["function"]).map(text),
        "module": str_at(f, &["module"]).map(text),
        "filename": file.map(text),
        "lineno": f.get("lineno").and_then(Value::as_u64),
        "in_app": f.get("in_app").and_then(Value::as_bool),
    })
}

/// Groups reports: the exception type and its innermost in-app functions (or, without an
/// exception, the message with its numbers blanked).
fn signature(exception: Option<&Value>, message: Option<&str>) -> String {
    let basis = match exception {
        Some(e) => {
            let frames = e["frames"].as_array().cloned().unwrap_or_default();
            let in_app: Vec<&Value> = frames.iter().filter(|f| f["in_app"] == true).collect();
            let chosen = if in_app.is_empty() {
                frames.iter().collect()
            } else {
                in_app
            };
            let functions: Vec<&str> = chosen
                .iter()
                .rev()
                .take(SIGNATURE_FRAMES)
                .filter_map(|f| f["function"].as_str())
                .collect();
            format!(
                "{}|{}",
                e["type"].as_str().unwrap_or("?"),
                functions.join("|")
            )
        }
        None => {
            let message = message.unwrap_or("");
            let blanked: String = message
                .chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect();
            format!("message|{blanked}")
        }
    };
    hex(&sha256(basis.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_event() -> Value {
        json!({
            "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
            "timestamp": "2026-11-27T10:00:00.123456",
            "level": "error",
            "platform": "python",
            "server_name": "alices-laptop",
            "release": "pexper@1.4.0",
            "environment": "production",
            "user": {"email": "alice@example.com", "ip_address": "203.0.113.7"},
            "request": {"url": "https://x", "headers": {"Cookie": "secret"}},
            "breadcrumbs": {"values": [{"message": "opened /home/alice/notes.txt"}]},
            "extra": {"sys.argv": ["/home/alice/app.py", "--key", "sk-abcdefghijklmnop"]},
            "tags": {"user": "alice"},
            "contexts": {"os": {"name": "Linux", "version": "6.8"}, "device": {"name": "alices-laptop", "arch": "x86_64"}, "runtime": {"name": "CPython", "version": "3.11.2"}},
            "exception": {"values": [{
                "type": "FileNotFoundError",
                "value": "[Errno 2] No such file: '/home/alice/secret plans.txt' on alices-laptop",
                "module": "builtins",
                "stacktrace": {"frames": [
                    {"function": "main", "module": "app", "filename": "app.py", "abs_path": "/home/alice/app.py", "lineno": 10, "in_app": true, "vars": {"api_key": "sk-abcdefghijklmnop"}, "context_line": "open(path)"},
                    {"function": "load", "module": "app.io", "filename": "/home/alice/app/io.py", "lineno": 42, "in_app": true, "vars": {"path": "/home/alice/secret plans.txt"}}
                ]}
            }]}
        })
    }

    #[test]
    fn only_allow_listed_fields_survive_and_strings_are_scrubbed() {
        let rebuilt = rebuild(python_event().to_string().as_bytes()).expect("an event");
        let stored = rebuilt.event.to_string();
        for gone in [
            "alice",
            "203.0.113.7",
            "sk-abc",
            "Cookie",
            "breadcrumbs",
            "sys.argv",
            "vars",
            "open(path)",
            "server_name",
            "laptop",
        ] {
            assert!(!stored.contains(gone), "{gone} survived in {stored}");
        }
        assert_eq!(rebuilt.exception_type.as_deref(), Some("FileNotFoundError"));
        assert_eq!(rebuilt.release.as_deref(), Some("pexper@1.4.0"));
        let frames = &rebuilt.event["exception"][0]["frames"];
        assert_eq!(frames[1]["filename"], "~/app/io.py");
        assert_eq!(frames[1]["lineno"], 42);
        assert_eq!(rebuilt.event["contexts"]["os"]["name"], "Linux");
        assert_eq!(rebuilt.event["contexts"]["device"]["arch"], "x86_64");
    }

    #[test]
    fn the_same_crash_from_two_machines_has_one_signature() {
        let a = rebuild(python_event().to_string().as_bytes()).expect("a");
        let mut other = python_event();
        other["exception"]["values"][0]["value"] = json!("[Errno 2] No such file: '/home/bob/x'");
        other["server_name"] = json!("bobs-pc");
        let b = rebuild(other.to_string().as_bytes()).expect("b");
        assert_eq!(a.signature, b.signature);
        let mut different = python_event();
        different["exception"]["values"][0]["type"] = json!("PermissionError");
        assert_ne!(
            rebuild(different.to_string().as_bytes())
                .expect("c")
                .signature,
            a.signature
        );
    }

    #[test]
    fn rust_float_timestamps_and_python_naive_ones_both_read() {
        let now = OffsetDateTime::now_utc();
        let float = json!({"timestamp": now.unix_timestamp() as f64 + 0.5});
        let got = rebuild(float.to_string().as_bytes())
            .expect("event")
            .occurred_at;
        assert!((got - now).abs() < time::Duration::seconds(2));
        assert!(rebuild(b"[1,2]").is_none());
    }
}
