//! The analytics allow-list: every usage event the backend accepts, its properties and their
//! allowed values, and the document `GET /v1/analytics/schema` publishes. It lives here, in
//! the crate without server dependencies, so that the server that validates against it, the
//! desktop app that sends and its tests' stand-in server all read the same list.

use serde_json::{Value, json};

/// Bumped whenever the allow-list changes: the desktop app asks for consent again.
pub const SCHEMA_VERSION: u32 = 1;

/// At most this many events per batch.
pub const MAX_EVENTS: usize = 100;

pub const OS: &[&str] = &["linux", "macos", "windows"];
pub const ARCH: &[&str] = &["x86_64", "aarch64"];

/// The screens and actions a `feature.used` event may name.
pub const FEATURES: &[&str] = &[
    "workflow_editor",
    "workflow_run",
    "workflow_import",
    "workflow_export",
    "providers",
    "local_models",
    "license",
    "privacy_settings",
    "outbox_preview",
    "network_log",
    "data_export",
    "offline_mode",
];

pub const PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "google",
    "ollama",
    "lmstudio",
    "mlx",
    "other",
];

/// A property's type. Strings are only ever one of a fixed set: free text is never accepted.
#[derive(Debug, Clone, Copy)]
pub enum PropType {
    Enum(&'static [&'static str]),
    Int { min: i64, max: i64 },
    Bool,
}

#[derive(Debug, Clone, Copy)]
pub struct PropSpec {
    pub name: &'static str,
    pub kind: PropType,
    pub required: bool,
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct EventSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub props: &'static [PropSpec],
}

const fn prop(
    name: &'static str,
    kind: PropType,
    required: bool,
    description: &'static str,
) -> PropSpec {
    PropSpec {
        name,
        kind,
        required,
        description,
    }
}

pub const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "app.started",
        description: "The app was opened.",
        props: &[prop(
            "first_run",
            PropType::Bool,
            false,
            "Whether this is the first launch after installing.",
        )],
    },
    EventSpec {
        name: "app.exited",
        description: "The app was closed normally: gives the session duration.",
        props: &[prop(
            "duration_s",
            PropType::Int {
                min: 0,
                max: 7 * 24 * 3600,
            },
            true,
            "How long the session lasted, in seconds.",
        )],
    },
    EventSpec {
        name: "feature.used",
        description: "A screen or action was used.",
        props: &[prop(
            "feature",
            PropType::Enum(FEATURES),
            true,
            "Which one.",
        )],
    },
    EventSpec {
        name: "workflow.run",
        description: "A workflow ran. Never its content, prompts or results.",
        props: &[
            prop(
                "nodes",
                PropType::Enum(&["1", "2-5", "6-20", "21-50", "51+"]),
                true,
                "How many nodes it has, in buckets.",
            ),
            prop(
                "outcome",
                PropType::Enum(&["ok", "error", "cancelled"]),
                true,
                "How it ended.",
            ),
            prop(
                "target",
                PropType::Enum(&["local", "cloud", "mixed"]),
                false,
                "Whether its models run on the device, at a provider, or both.",
            ),
        ],
    },
    EventSpec {
        name: "model.used",
        description: "A model was called. Never the prompt, the answer or the key.",
        props: &[
            prop(
                "kind",
                PropType::Enum(&["local", "cloud"]),
                true,
                "On the device, or at a provider.",
            ),
            prop(
                "provider",
                PropType::Enum(PROVIDERS),
                false,
                "Which provider or local runtime.",
            ),
        ],
    },
    EventSpec {
        name: "telemetry.level_changed",
        description: "Telemetry was set to a level that still sends usage data.",
        props: &[prop(
            "level",
            PropType::Enum(&["crash", "all"]),
            true,
            "The new level.",
        )],
    },
];

pub fn event(name: &str) -> Option<&'static EventSpec> {
    EVENTS.iter().find(|e| e.name == name)
}

fn prop_doc(p: &PropSpec) -> Value {
    let mut doc = json!({"name": p.name, "required": p.required, "description": p.description});
    match p.kind {
        PropType::Enum(values) => {
            doc["type"] = json!("enum");
            doc["values"] = json!(values);
        }
        PropType::Int { min, max } => {
            doc["type"] = json!("integer");
            doc["min"] = json!(min);
            doc["max"] = json!(max);
        }
        PropType::Bool => doc["type"] = json!("boolean"),
    }
    doc
}

/// The published schema: what we collect, in what shape, and for how long.
pub fn document(retention_days: u32) -> Value {
    json!({
        "version": SCHEMA_VERSION,
        "retention_days": retention_days,
        "batch": {
            "max_events": MAX_EVENTS,
            "app_version": "MAJOR.MINOR.PATCH with an optional -prerelease of [a-z0-9.]",
            "os": OS,
            "arch": ARCH,
            "session_id": "a random UUID for one app session, never kept across sessions",
            "timestamp": "RFC 3339; events older than 24 hours or more than 10 minutes ahead are dropped",
        },
        "events": EVENTS.iter().map(|e| json!({
            "name": e.name,
            "description": e.description,
            "props": e.props.iter().map(prop_doc).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "never_collected": [
            "IP addresses, user agents or any request header",
            "accounts, email addresses, names, device or install identifiers",
            "workflow content, prompts, model outputs, API keys, file paths",
        ],
        "crash_reports": "Sentry envelopes at /api/{project_id}/envelope/, rebuilt from an allow-list: exception types, scrubbed messages and stack frames (home directories replaced by ~), release, OS name and version, architecture. No hostname, user, request, breadcrumbs, extra data, tags or local variables.",
    })
}
