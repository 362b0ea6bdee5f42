//! Privacy requests (GDPR/CCPA): intake from the website and from privacy@, identity
//! verification by emailed link, a queue with a 30-day due date (sooner where the law says so),
//! automatic access exports and erasure, operator handling for the rest, reminders, SLA
//! reporting, and a hash-chained audit trail without personal data.
//!
//! Tables: `privacy_request`, `privacy_token`, `privacy_export`, `privacy_audit`
//! (migrations/…_privacy.sql). Jobs: see `jobs`.
#![forbid(unsafe_code)]

pub mod admin;
mod audit;
mod emails;
mod export;
mod http;
mod jobs;
mod personal;
pub mod request;
mod store;

use std::sync::Arc;

use pexper_platform::jobs::{Handler, handler};
use pexper_platform::personal_data::PersonalData;
use pexper_platform::{Config, Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use jobs::SWEEP_JOB;

#[derive(Debug, Clone, Copy, Default)]
pub struct Privacy;

impl Service for Privacy {
    fn name(&self) -> &'static str {
        "privacy"
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(http::create))
            .routes(routes!(http::verify_page, http::verify))
            .routes(routes!(export::download))
    }

    fn jobs(&self) -> Vec<(&'static str, Handler<Platform>)> {
        vec![
            (jobs::RECEIVED_MAIL_JOB, handler(jobs::received_mail)),
            (jobs::PROCESS_JOB, handler(jobs::process)),
            (jobs::EXPORT_MAIL_JOB, handler(jobs::export_mail)),
            (jobs::DELETION_MAIL_JOB, handler(jobs::deletion_mail)),
            (jobs::OUTCOME_MAIL_JOB, handler(jobs::outcome_mail)),
            (jobs::SWEEP_JOB, handler(jobs::sweep)),
        ]
    }

    fn recurring(&self) -> Vec<&'static str> {
        vec![jobs::SWEEP_JOB]
    }

    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn PersonalData>> {
        Some(Arc::new(personal::PrivacyData))
    }
}
