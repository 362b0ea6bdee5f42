//! What a privacy request is: its kind, its jurisdiction, its status, and when it is due.
//! Parsed at the edge; past the handler nothing re-checks.

use time::{Duration, OffsetDateTime};

pexper_platform::id!(
    /// A privacy request.
    PrivacyRequestId
);

pexper_platform::text_enum!(
    /// The rights the policy names. `access` covers GDPR access and CCPA "know";
    /// `portability` gets the same machine-readable export. `unclassified` is a letter to
    /// privacy@ whose right we could not tell: on the clock like the others until an operator
    /// classifies it (the website's form always names a right: `Kind::ASKABLE`).
    pub enum Kind {
        Access = "access",
        Portability = "portability",
        Deletion = "deletion",
        Correction = "correction",
        Restriction = "restriction",
        Objection = "objection",
        OptOutOfSale = "opt_out_of_sale",
        Unclassified = "unclassified",
    }
);

impl utoipa::PartialSchema for Kind {
    /// The rights a person can name (`ASKABLE`): `unclassified` is only ever ours to say.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Kind::ASKABLE.map(Kind::as_str)))
            .into()
    }
}

impl utoipa::ToSchema for Kind {}

impl Kind {
    /// The rights a person can name; every kind but `unclassified`.
    pub const ASKABLE: [Kind; 7] = [
        Kind::Access,
        Kind::Portability,
        Kind::Deletion,
        Kind::Correction,
        Kind::Restriction,
        Kind::Objection,
        Kind::OptOutOfSale,
    ];

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
            Kind::Unclassified => "your rights over your data",
        }
    }
}

pexper_platform::text_enum!(
    /// Whose law sets the deadline.
    #[derive(Default, utoipa::ToSchema)]
    pub enum Jurisdiction {
        Gdpr = "gdpr",
        Ccpa = "ccpa",
        #[default]
        Other = "other",
    }
);

pexper_platform::text_enum!(
    /// Where a request is. Received until its person follows the emailed link; expired if
    /// they never do; closed as completed or rejected.
    pub enum Status {
        Received = "received",
        Verified = "verified",
        Processing = "processing",
        Completed = "completed",
        Rejected = "rejected",
        Expired = "expired",
    }
);

impl Status {
    /// Still waiting for someone: the person, the automatic processing, or the operator.
    pub const OPEN: [Status; 3] = [Status::Received, Status::Verified, Status::Processing];
}

impl Jurisdiction {
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
    fn the_openapi_document_spells_kinds_and_jurisdictions_as_the_api_does() {
        let spelled = |schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>| {
            serde_json::to_value(schema).expect("serializes")["enum"].clone()
        };
        assert_eq!(
            spelled(<Kind as utoipa::PartialSchema>::schema()),
            serde_json::json!(Kind::ASKABLE.map(Kind::as_str))
        );
        assert_eq!(Kind::ALL.len(), Kind::ASKABLE.len() + 1);
        assert_eq!(
            spelled(<Jurisdiction as utoipa::PartialSchema>::schema()),
            serde_json::json!(Jurisdiction::ALL.map(Jurisdiction::as_str))
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
