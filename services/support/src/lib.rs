//! Support requests from pexper.com (the policy's "Support requests — when you contact us for
//! help"): a form or JSON post, sealed at rest under the person's key, acknowledged by email
//! with a reference; operators read, reply (by email) and close with `pexper-admin support`.
//!
//! Tables: `support_request`, `support_reply` (migrations/…_support.sql).
#![forbid(unsafe_code)]

pub mod admin;
mod http;
mod mail;
mod personal;
pub mod store;
mod tables;

use std::sync::Arc;

use pexper_platform::jobs::JobRegistry;
use pexper_platform::personal_data::DynPersonalData;
use pexper_platform::{Config, Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Clone, Copy, Default)]
pub struct Support;

impl Service for Support {
    fn name(&self) -> &'static str {
        "support"
    }

    fn tables(&self) -> &'static [pexper_platform::data_map::Table] {
        tables::TABLES
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new().routes(routes!(http::create))
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new()
            .register::<mail::Acknowledge>()
            .register::<mail::SendReply>()
    }

    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(personal::SupportData))
    }
}
