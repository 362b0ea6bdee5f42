//! What a privacy request is: its kind, its jurisdiction, its status, and when it is due.
//! Parsed at the edge; past the handler nothing re-checks.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// The rights the policy names. `access` covers GDPR access and CCPA "know"; `portability`
/// gets the same machine-readable export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Access,
    Portability,
    Deletion,
    Correction,
    Restriction,
    Objection,
    OptOutOfSale,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Access,
        Kind::Portability,
        Kind::Deletion,
        Kind::Correction,
        Kind::Restriction,
        Kind::Objection,
        Kind::OptOutOfSale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Portability => "portability",
            Kind::Deletion => "deletion",
            Kind::Correction => "correction",
            Kind::Restriction => "restriction",
            Kind::Objection => "objection",
            Kind::OptOutOfSale => "opt_out_of_sale",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Access, portability and deletion run by themselves once verified; the rest need an
    /// operator's judgement.
    pub fn is_automatic(self) -> bool {
        matches!(self, Kind::Access | Kind::Portability | Kind::Deletion)
    }

    /// How the request reads in an email: "access to your data".
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Access => "access to your data",
            Kind::Portability => "a portable copy of your data",
            Kind::Deletion => "deletion of your data",
            Kind::Correction => "correction of your data",
            Kind::Restriction => "restriction of processing",
            Kind::Objection => "objection to processing",
            Kind::OptOutOfSale => "opt-out of the sale of your data",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jurisdiction {
    Gdpr,
    Ccpa,
    #[default]
    Other,
}

impl Jurisdiction {
    pub fn as_str(self) -> &'static str {
        match self {
            Jurisdiction::Gdpr => "gdpr",
            Jurisdiction::Ccpa => "ccpa",
            Jurisdiction::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Jurisdiction> {
        [Jurisdiction::Gdpr, Jurisdiction::Ccpa, Jurisdiction::Other]
            .into_iter()
            .find(|j| j.as_str() == s)
    }

    /// The legal deadline: GDPR one month (Art. 12(3)), CCPA 45 days (§1798.130).
    fn legal_deadline(self, received: OffsetDateTime) -> OffsetDateTime {
        match self {
            Jurisdiction::Gdpr => add_one_month(received),
            Jurisdiction::Ccpa => received + Duration::days(45),
            Jurisdiction::Other => received + PROMISED,
        }
    }
}

/// The policy's promise: "We respond to all data requests within 30 days."
pub const PROMISED: Duration = Duration::days(30);

/// Received + 30 days, or the legal deadline if that comes first (February).
pub fn due_at(received: OffsetDateTime, jurisdiction: Jurisdiction) -> OffsetDateTime {
    (received + PROMISED).min(jurisdiction.legal_deadline(received))
}

/// The same day next month, or the month's last day if it has no such day (Jan 31 → Feb 28).
fn add_one_month(t: OffsetDateTime) -> OffsetDateTime {
    let (year, month) = match t.month() {
        time::Month::December => (t.year() + 1, time::Month::January),
        m => (t.year(), m.next()),
    };
    let day = t.day().min(month.length(year));
    let date = time::Date::from_calendar_date(year, month, day).expect("a valid day");
    t.replace_date(date)
}

pub mod status {
    pub const RECEIVED: &str = "received";
    pub const VERIFIED: &str = "verified";
    pub const PROCESSING: &str = "processing";
    pub const COMPLETED: &str = "completed";
    pub const REJECTED: &str = "rejected";
    pub const EXPIRED: &str = "expired";
    pub const ALL: [&str; 6] = [RECEIVED, VERIFIED, PROCESSING, COMPLETED, REJECTED, EXPIRED];
    pub const OPEN: [&str; 3] = [RECEIVED, VERIFIED, PROCESSING];
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn due_is_thirty_days_unless_the_law_says_sooner() {
        let jan2 = datetime!(2026-01-02 09:00 UTC);
        for j in [Jurisdiction::Gdpr, Jurisdiction::Ccpa, Jurisdiction::Other] {
            assert_eq!(due_at(jan2, j), datetime!(2026-02-01 09:00 UTC), "{j:?}");
        }
        // One month from Jan 31 is Feb 28: sooner than 30 days.
        let jan31 = datetime!(2026-01-31 00:00 UTC);
        assert_eq!(
            due_at(jan31, Jurisdiction::Gdpr),
            datetime!(2026-02-28 00:00 UTC)
        );
        assert_eq!(
            due_at(jan31, Jurisdiction::Ccpa),
            datetime!(2026-03-02 00:00 UTC)
        );
        assert_eq!(
            due_at(datetime!(2026-12-15 00:00 UTC), Jurisdiction::Gdpr),
            datetime!(2027-01-14 00:00 UTC)
        );
    }

    #[test]
    fn kinds_round_trip_and_only_access_portability_and_deletion_run_alone() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).expect("serializes"),
                serde_json::Value::String(k.as_str().into())
            );
        }
        assert_eq!(Kind::parse("Access"), None);
        let automatic: Vec<_> = Kind::ALL.into_iter().filter(|k| k.is_automatic()).collect();
        assert_eq!(automatic, [Kind::Access, Kind::Portability, Kind::Deletion]);
    }
}
