//! Checking batches against the allow-list (`pexper_wire::analytics`, re-exported here): the
//! list and the document `GET /v1/analytics/schema` publishes come from that one place, so
//! what we say we collect and what we accept cannot drift.

use serde_json::{Map, Value};

pub use pexper_wire::analytics::*;

/// Events older than this (by their timestamp) are dropped.
pub const MAX_AGE: time::Duration = time::Duration::days(1);
/// Events further in the future than this are dropped (clock skew allowance).
pub const MAX_AHEAD: time::Duration = time::Duration::minutes(10);

/// Why an event (or a property of one) was refused. Counted by reason, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    UnknownEvent,
    UnknownProperty,
    InvalidProperty,
    MissingProperty,
    TooOld,
    InFuture,
    Malformed,
}

impl Drop {
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::UnknownEvent => "unknown_event",
            Drop::UnknownProperty => "unknown_property",
            Drop::InvalidProperty => "invalid_property",
            Drop::MissingProperty => "missing_property",
            Drop::TooOld => "too_old",
            Drop::InFuture => "in_future",
            Drop::Malformed => "malformed",
        }
    }
}

/// Checks one event's properties: unknown ones are removed (and counted), a bad or missing
/// value refuses the event. Returns the properties to store.
pub fn check_props(
    spec: &EventSpec,
    props: Option<&Map<String, Value>>,
    drops: &mut Vec<Drop>,
) -> Result<Map<String, Value>, Drop> {
    let empty = Map::new();
    let props = props.unwrap_or(&empty);
    let mut kept = Map::new();
    for (key, value) in props {
        let Some(p) = spec.props.iter().find(|p| p.name == key) else {
            drops.push(Drop::UnknownProperty);
            continue;
        };
        let ok = match p.kind {
            PropType::Enum(values) => value.as_str().is_some_and(|v| values.contains(&v)),
            PropType::Int { min, max } => value.as_i64().is_some_and(|v| (min..=max).contains(&v)),
            PropType::Bool => value.is_boolean(),
        };
        if !ok {
            return Err(Drop::InvalidProperty);
        }
        kept.insert(p.name.to_owned(), value.clone());
    }
    if spec
        .props
        .iter()
        .any(|p| p.required && !kept.contains_key(p.name))
    {
        return Err(Drop::MissingProperty);
    }
    Ok(kept)
}

/// `1.4.0` or `1.4.0-beta.2`: nothing else can reach the database.
pub fn valid_app_version(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|p| {
            (1..=20).contains(&p.len())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_are_strict() {
        for ok in ["1.0.0", "12.34.5678", "1.4.0-beta.2", "0.0.1-rc1"] {
            assert!(valid_app_version(ok), "{ok}");
        }
        for bad in [
            "1.0",
            "1.0.0.0",
            "v1.0.0",
            "1.0.0-Beta",
            "1.0.0-",
            "1.0.0-alice@example.com",
            "12345.0.0",
            "",
        ] {
            assert!(!valid_app_version(bad), "{bad}");
        }
    }

    #[test]
    fn free_text_never_passes_a_property() {
        let spec = event("feature.used").expect("known");
        let mut drops = Vec::new();
        let props = json!({"feature": "alice@example.com"});
        assert_eq!(
            check_props(spec, props.as_object(), &mut drops),
            Err(Drop::InvalidProperty)
        );
        let props = json!({"feature": "providers", "note": "/home/alice"});
        let kept = check_props(spec, props.as_object(), &mut drops).expect("kept");
        assert_eq!(Value::Object(kept), json!({"feature": "providers"}));
        assert_eq!(drops, [Drop::UnknownProperty]);
        assert_eq!(
            check_props(spec, None, &mut drops),
            Err(Drop::MissingProperty)
        );
    }
}
