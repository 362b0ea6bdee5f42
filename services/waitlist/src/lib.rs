//! The pexper.com waitlist: double opt-in signups that never reveal whether an address is
//! known, a place in line with referrals, and RFC 8058 one-click unsubscribe.
//!
//! Tables: `waitlist_entry`, `waitlist_token`, `email_suppression` (migrations/…_waitlist.sql).
//! Jobs: `waitlist.signup_mail` (confirmation, or a reminder of one's place), `waitlist.welcome`,
//! `waitlist.broadcast` (product updates), `waitlist.invitation`.
#![forbid(unsafe_code)]

pub mod admin;
mod confirm;
mod emails;
mod pages;
mod signup;
mod store;
mod tables;
mod unsubscribe;

use std::sync::Arc;

use pexper_platform::jobs::JobRegistry;
use pexper_platform::personal_data::DynPersonalData;
use pexper_platform::{Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use emails::Welcome;
pub use store::position;
pub use unsubscribe::UnsubscribeToken;

#[derive(Debug, Clone, Copy, Default)]
pub struct Waitlist;

impl Service for Waitlist {
    fn name(&self) -> &'static str {
        "waitlist"
    }

    /// The emailed links' pages: an error links back to the link.
    fn form_pages(&self) -> &'static [pexper_platform::http::FormPage] {
        use pexper_platform::http::{Back, FormPage};
        &[
            FormPage {
                posts_to: "/v1/waitlist/confirm",
                back: Back::ThisLink,
                label: "Open the page again",
            },
            FormPage {
                posts_to: "/v1/unsubscribe",
                back: Back::ThisLink,
                label: "Open the page again",
            },
        ]
    }

    fn tables(&self) -> &'static [pexper_platform::data_map::Table] {
        tables::TABLES
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(signup::signup))
            .layer(axum::Extension(signup::Signups::default()))
            .routes(routes!(confirm::page, confirm::confirm))
            .routes(routes!(unsubscribe::page, unsubscribe::unsubscribe))
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new()
            .register::<emails::SignupMail>()
            .register::<emails::Welcome>()
            .register::<emails::Broadcast>()
            .register::<emails::Invitation>()
    }

    fn personal_data(&self, config: &pexper_platform::Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(store::WaitlistData {
            referral_bump: config.referral_bump,
        }))
    }
}
