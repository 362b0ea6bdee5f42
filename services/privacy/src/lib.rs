//! Privacy requests (GDPR/CCPA): intake from the website and from privacy@, identity
//! verification by emailed link, a queue with a 30-day due date (sooner where the law says so),
//! automatic access exports and erasure, operator handling for the rest, reminders, SLA
//! reporting, and a hash-chained audit trail without personal data.
//!
//! Tables: `privacy_request`, `privacy_token`, `privacy_export`, `privacy_audit`
//! (migrations/…_privacy.sql), `policy_version` and `policy_notice` (…_policy.sql).
//! Jobs: see `jobs` and `policy`.
#![forbid(unsafe_code)]

pub mod admin;
mod audit;
mod emails;
mod export;
mod http;
pub mod inbox;
mod intake;
mod jobs;
pub mod letter;
mod personal;
pub mod policy;
mod reply;
pub mod request;
pub mod self_service;
mod store;
mod tables;

use std::sync::Arc;

use pexper_platform::jobs::{JobRegistry, NewJob};
use pexper_platform::personal_data::DynPersonalData;
use pexper_platform::{Config, Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use jobs::Sweep;
pub use request::PrivacyRequestId;

#[derive(Debug, Clone, Copy, Default)]
pub struct Privacy;

impl Service for Privacy {
    fn name(&self) -> &'static str {
        "privacy"
    }

    /// The emailed links' pages: an error links back to the link.
    fn form_pages(&self) -> &'static [pexper_platform::http::FormPage] {
        use pexper_platform::http::{Back, FormPage};
        &[FormPage {
            posts_to: "/v1/privacy/verify",
            back: Back::ThisLink,
            label: "Open the page again",
        }]
    }

    fn tables(&self) -> &'static [pexper_platform::data_map::Table] {
        tables::TABLES
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(http::create))
            .routes(routes!(http::verify_page, http::verify))
            .routes(routes!(export::download))
            .routes(routes!(policy::status))
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new()
            .register::<jobs::ReceivedMail>()
            .register::<jobs::ReceivedHeldMail>()
            .register::<jobs::Process>()
            .register::<jobs::ExportMail>()
            .register::<jobs::DeletionMail>()
            .register::<jobs::OutcomeMail>()
            .register::<jobs::Sweep>()
            .register::<policy::PolicyNotice>()
    }

    fn recurring(&self) -> Vec<NewJob> {
        vec![NewJob::new(&jobs::Sweep {})]
    }

    /// The open requests and how close the earliest is to its due date: what the policy's
    /// "within 30 days" needs watched.
    fn gauges(&self) -> Vec<pexper_platform::metrics::GaugeQuery> {
        use pexper_platform::metrics::GaugeQuery;
        vec![
            GaugeQuery {
                name: "privacy_requests_open",
                help: "Open privacy requests by kind and status",
                labels: &["kind", "status"],
                sql: "SELECT kind, status, count(*)::float8 FROM privacy_request
                      WHERE status IN ('received', 'verified', 'processing') GROUP BY 1, 2",
            },
            GaugeQuery {
                name: "privacy_requests_overdue",
                help: "Open privacy requests past their due date",
                labels: &[],
                sql: "SELECT count(*)::float8 FROM privacy_request
                      WHERE status IN ('received', 'verified', 'processing') AND due_at < now()",
            },
            GaugeQuery {
                name: "privacy_earliest_due_seconds",
                help: "Seconds until the earliest open privacy request is due (negative: overdue); absent when none is open",
                labels: &[],
                sql: "SELECT extract(epoch FROM min(due_at) - now())::float8 FROM privacy_request
                      WHERE status IN ('received', 'verified', 'processing')",
            },
            GaugeQuery {
                name: "privacy_acknowledgements_held",
                help: "Privacy requests whose acknowledgement the address's daily mail budget holds back until the next sweep",
                labels: &[],
                sql: "SELECT count(*)::float8 FROM privacy_request
                      WHERE acknowledgement_held_at IS NOT NULL AND status = 'received'",
            },
            GaugeQuery {
                name: "privacy_erasures_last_day",
                help: "People erased in the last 24 hours (the erasure journal), by any process, the admin CLI's included",
                labels: &[],
                sql: "SELECT count(*)::float8 FROM erasure_journal
                      WHERE erased_at > now() - interval '1 day'",
            },
        ]
    }

    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(personal::PrivacyData))
    }
}
