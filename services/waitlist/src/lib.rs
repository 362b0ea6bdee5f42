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
mod unsubscribe;

use std::sync::Arc;

use pexper_platform::jobs::{self, Handler};
use pexper_platform::personal_data::PersonalData;
use pexper_platform::{Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use store::position;
pub use unsubscribe::UnsubscribeToken;

#[derive(Debug, Clone, Copy, Default)]
pub struct Waitlist;

impl Service for Waitlist {
    fn name(&self) -> &'static str {
        "waitlist"
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(signup::signup))
            .routes(routes!(confirm::page, confirm::confirm))
            .routes(routes!(unsubscribe::page, unsubscribe::unsubscribe))
    }

    fn jobs(&self) -> Vec<(&'static str, Handler<Platform>)> {
        vec![
            (emails::SIGNUP_MAIL_JOB, jobs::handler(emails::signup_mail)),
            (emails::WELCOME_JOB, jobs::handler(emails::welcome)),
            (emails::BROADCAST_JOB, jobs::handler(emails::broadcast)),
            (emails::INVITATION_JOB, jobs::handler(emails::invitation)),
        ]
    }

    fn personal_data(&self, config: &pexper_platform::Config) -> Option<Arc<dyn PersonalData>> {
        Some(Arc::new(store::WaitlistData {
            referral_bump: config.referral_bump,
        }))
    }
}
