//! Payments: Stripe Checkout webhooks, verified and applied idempotently and in any order;
//! purchase metadata only (never card data, names, phones, addresses or a raw payload); refunds
//! and disputes; Ed25519 licence keys the desktop app verifies offline.
//!
//! Tables: `stripe_event`, `purchase`, `payment_adjustment`, `license`
//! (migrations/…_payments.sql). Jobs: `payments.receipt` (the purchase confirmation with the
//! licence key).
#![forbid(unsafe_code)]

pub mod admin;
mod fulfilment;
mod license;
mod personal;
mod receipt;
pub mod seal;
pub mod store;
mod stripe;
mod tables;
mod webhook;

use std::sync::Arc;

use pexper_platform::jobs::JobRegistry;
use pexper_platform::personal_data::DynPersonalData;
use pexper_platform::{Config, Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use receipt::{SendReceipt, format_amount};
pub use store::{PurchaseId, PurchaseStatus};

#[derive(Debug, Clone, Copy, Default)]
pub struct Payments;

impl Service for Payments {
    fn name(&self) -> &'static str {
        "payments"
    }

    fn tables(&self) -> &'static [pexper_platform::data_map::Table] {
        tables::TABLES
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(license::public_key))
            .routes(routes!(license::validate))
    }

    fn machine_routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new().routes(routes!(webhook::receive))
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new().register::<receipt::SendReceipt>()
    }

    /// Licences on record, valid or revoked (by a refund, a lost dispute or an operator).
    fn gauges(&self) -> Vec<pexper_platform::metrics::GaugeQuery> {
        vec![pexper_platform::metrics::GaugeQuery {
            name: "licences",
            help: "Licences on record by state: valid or revoked",
            labels: &["state"],
            sql: "SELECT CASE WHEN revoked_at IS NULL THEN 'valid' ELSE 'revoked' END,
                         count(*)::float8
                  FROM license GROUP BY 1",
        }]
    }

    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(personal::PaymentsData))
    }
}
