//! Analytics: anonymous usage events against a published allow-list, a Sentry-compatible crash
//! intake that rebuilds and scrubs every report, daily rollups with small cohorts masked, and
//! retention. Nothing here can identify a person: no table has a column for an IP address, a
//! user agent, an account or a device id, and no handler reads the connection.
//!
//! Tables: `analytics_event`, `analytics_drop`, `crash_report`, `app_session`,
//! `session_aggregate`, `analytics_rollup` (migrations/…_analytics.sql).
//! Jobs: `analytics.rollup` (recurring: rollups, then retention).
#![forbid(unsafe_code)]

pub mod crash;
mod events;
mod limit;
mod personal;
pub mod report;
pub mod rollup;
pub mod schema;
mod tables;

use std::sync::Arc;

use pexper_platform::jobs::{JobRegistry, NewJob};
use pexper_platform::personal_data::DynPersonalData;
use pexper_platform::{Config, Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Clone, Copy, Default)]
pub struct Analytics;

impl Service for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn tables(&self) -> &'static [pexper_platform::data_map::Table] {
        tables::TABLES
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        // The schema is public reading, not collection: the per-client limiter is fine here.
        OpenApiRouter::new().routes(routes!(events::schema))
    }

    /// Collection endpoints: the platform's per-client limit for collection, and global limits
    /// of their own (`limit`). The handlers never read the connection or a header that could
    /// identify anyone.
    fn ingest_routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(events::receive))
            .routes(routes!(crash::intake))
            .route(
                "/api/{project_id}/envelope",
                axum::routing::post(crash::intake),
            )
            .layer(axum::Extension(events::Ingest::default()))
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new().register::<rollup::RollUp>()
    }

    fn recurring(&self) -> Vec<NewJob> {
        vec![NewJob::new(&rollup::RollUp {})]
    }

    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(personal::AnalyticsData))
    }
}
