//! Telemetry, as far as the person allows and no further. One gate every event passes; a
//! level of `off` (the default until the person chooses, and forced by `DO_NOT_TRACK=1`,
//! `CI=1` or `--disable-telemetry`) means nothing is queued and no socket is opened, and
//! turning it off purges the outbox. Events are checked against the server's published schema
//! and queued on disk; the preview is the exact bytes the uploader sends.

use std::path::PathBuf;

use anyhow::Context;

use serde_json::{Map, Value, json};

use crate::egress::{Egress, Purpose, Request};
use crate::store::{Dirs, Settings, write_atomic};

pub use crate::store::Level;

/// Forced off by the environment or a flag, whatever the settings say.
pub fn forced_off(disable_flag: bool) -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    disable_flag || set("DO_NOT_TRACK") || set("CI")
}

/// The level in force: the person's choice (off until they make one), capped at `crash` while
/// the schema they consented to is not the current one.
pub fn effective(settings: &Settings, forced_off: bool, schema: Option<&Value>) -> Level {
    if forced_off {
        return Level::Off;
    }
    match settings.telemetry.unwrap_or(Level::Off) {
        Level::All if schema_version(schema) != settings.consented_schema_version => Level::Crash,
        level => level,
    }
}

pub fn schema_version(schema: Option<&Value>) -> Option<u32> {
    schema?.get("version")?.as_u64().map(|v| v as u32)
}

fn schema_path(dirs: &Dirs) -> PathBuf {
    dirs.config.join("analytics-schema.json")
}

pub fn cached_schema(dirs: &Dirs) -> Option<Value> {
    crate::store::read_json(&schema_path(dirs)).ok().flatten()
}

/// Fetches the server's schema (what we may send) and keeps it on the device.
pub fn fetch_schema(dirs: &Dirs, settings: &Settings, egress: &Egress) -> anyhow::Result<Value> {
    let res = egress.send(Request {
        purpose: Purpose::Schema,
        method: "GET",
        url: format!("{}/v1/analytics/schema", settings.server_url),
        content_type: None,
        body: vec![],
        key: None,
        headers: vec![],
    })?;
    anyhow::ensure!(
        res.status == 200,
        "the schema request answered {}",
        res.status
    );
    let schema: Value = serde_json::from_slice(&res.body).context("the schema is not JSON")?;
    crate::store::write_json(&schema_path(dirs), &schema)?;
    Ok(schema)
}

/// Whether `name` with `props` is an event the schema describes, with allowed values.
pub fn allowed(schema: &Value, name: &str, props: &Map<String, Value>) -> bool {
    let Some(event) = schema["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == name))
    else {
        return false;
    };
    let specs = event["props"].as_array().cloned().unwrap_or_default();
    let known = props.iter().all(|(k, v)| {
        specs.iter().any(|p| {
            p["name"] == k.as_str()
                && match p["type"].as_str() {
                    Some("enum") => p["values"].as_array().is_some_and(|vs| vs.contains(v)),
                    Some("integer") => v.as_i64().is_some_and(|n| {
                        p["min"].as_i64().is_none_or(|m| n >= m)
                            && p["max"].as_i64().is_none_or(|m| n <= m)
                    }),
                    Some("boolean") => v.is_boolean(),
                    _ => false,
                }
        })
    });
    let required = specs
        .iter()
        .filter(|p| p["required"] == true)
        .all(|p| p["name"].as_str().is_some_and(|n| props.contains_key(n)));
    known && required
}

/// The telemetry of one app session.
#[derive(Debug)]
pub struct Telemetry {
    dirs: Dirs,
    level: Level,
    schema: Option<Value>,
    /// Random for this session; never written anywhere but this session's queued events.
    session_id: uuid::Uuid,
    started: std::time::Instant,
}

impl Telemetry {
    pub fn new(dirs: &Dirs, settings: &Settings, forced_off: bool) -> Self {
        let schema = cached_schema(dirs);
        let level = effective(settings, forced_off, schema.as_ref());
        let telemetry = Self {
            dirs: dirs.clone(),
            level,
            schema,
            session_id: uuid::Uuid::new_v4(),
            started: std::time::Instant::now(),
        };
        if level == Level::Off {
            telemetry.purge();
        }
        telemetry
    }

    /// After a change of settings: the level and schema are read again, the session goes on.
    pub fn reconfigure(&mut self, settings: &Settings, forced_off: bool) {
        let session_id = self.session_id;
        let started = self.started;
        *self = Self {
            session_id,
            started,
            ..Self::new(&self.dirs, settings, forced_off)
        };
    }

    /// Whole seconds since this session started.
    pub fn session_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// The version of the schema on the device, if one was fetched.
    pub fn schema_version(&self) -> Option<u32> {
        schema_version(self.schema.as_ref())
    }

    fn session_file(&self) -> PathBuf {
        self.dirs
            .outbox()
            .join(format!("events-{}.jsonl", self.session_id.simple()))
    }

    /// The gate: queues the event only at level `all`, only if the schema allows it exactly.
    pub fn record(&self, name: &str, props: Map<String, Value>) -> bool {
        let Some(schema) = self.schema.as_ref().filter(|_| self.level == Level::All) else {
            return false;
        };
        if !allowed(schema, name, &props) {
            return false;
        }
        let event = json!({
            "name": name,
            "timestamp": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "props": props,
        });
        let line = format!("{event}\n");
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.session_file())
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .is_ok()
    }

    /// Deletes everything queued: events and crash reports.
    pub fn purge(&self) {
        purge(&self.dirs);
    }
}

pub fn purge(dirs: &Dirs) {
    if let Ok(entries) = std::fs::read_dir(dirs.outbox()) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// One thing waiting in the outbox, as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub file: PathBuf,
    /// `events` or `crash`.
    pub kind: &'static str,
    /// Exactly the request body.
    pub body: Vec<u8>,
}

fn os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "macos",
        "windows" => "windows",
        _ => "linux",
    }
}

/// Everything queued, as the exact bytes each upload sends.
pub fn outbox(dirs: &Dirs) -> anyhow::Result<Vec<Outgoing>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dirs.outbox())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for file in entries {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if let Some(session) = name
            .strip_prefix("events-")
            .and_then(|n| n.strip_suffix(".jsonl"))
        {
            let events: Vec<Value> = std::fs::read_to_string(&file)?
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            for chunk in events.chunks(100) {
                let batch = json!({
                    "app_version": env!("CARGO_PKG_VERSION"),
                    "os": os(),
                    "arch": std::env::consts::ARCH,
                    "session_id": uuid::Uuid::try_parse(session).map(|u| u.to_string()).unwrap_or_default(),
                    "events": chunk,
                });
                out.push(Outgoing {
                    file: file.clone(),
                    kind: "events",
                    body: serde_json::to_vec(&batch)?,
                });
            }
        } else if name.starts_with("crash-") && name.ends_with(".envelope") {
            out.push(Outgoing {
                body: std::fs::read(&file)?,
                file,
                kind: "crash",
            });
        }
    }
    Ok(out)
}

/// Sends what the level allows and deletes what was accepted. At `off`, sends nothing (and
/// purges). Returns how many uploads were accepted.
pub fn send(
    dirs: &Dirs,
    settings: &Settings,
    level: Level,
    egress: &Egress,
) -> anyhow::Result<usize> {
    if level == Level::Off {
        purge(dirs);
        return Ok(0);
    }
    let mut sent = 0;
    let mut done: Vec<PathBuf> = Vec::new();
    for item in outbox(dirs)? {
        let (purpose, url, headers) = match item.kind {
            "events" if level == Level::All => (
                Purpose::Telemetry,
                format!("{}/v1/analytics/events", settings.server_url),
                vec![],
            ),
            "crash" => (
                Purpose::CrashReport,
                format!(
                    "{}/api/{}/envelope/",
                    settings.server_url, settings.crash_project
                ),
                vec![(
                    "x-sentry-auth",
                    format!(
                        "Sentry sentry_key={}, sentry_version=7, sentry_client=pexper-desktop/{}",
                        settings.crash_key,
                        env!("CARGO_PKG_VERSION")
                    ),
                )],
            ),
            _ => continue,
        };
        let res = egress.send(Request {
            purpose,
            method: "POST",
            url,
            content_type: Some(if item.kind == "crash" {
                "application/x-sentry-envelope"
            } else {
                "application/json"
            }),
            body: item.body,
            key: None,
            headers,
        })?;
        if (200..300).contains(&res.status) {
            sent += 1;
            done.push(item.file);
        }
    }
    for file in done {
        let _ = std::fs::remove_file(file);
    }
    Ok(sent)
}

/// Writes a crash envelope into the outbox (the panic hook's half; `send` is the other).
pub fn queue_crash(dirs: &Dirs, envelope: &[u8]) -> anyhow::Result<()> {
    write_atomic(
        &dirs
            .outbox()
            .join(format!("crash-{}.envelope", uuid::Uuid::new_v4().simple())),
        envelope,
    )
}
