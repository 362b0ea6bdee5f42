//! Accounts on pexper.com: sign up with a verified address, sign in with an argon2id
//! password, and see one's purchases, licences, notices and privacy requests in one place,
//! with export and deletion a click away. Server-rendered pages under `/account/…` that work
//! without JavaScript; the same operations as JSON under `/v1/…`.
//!
//! An account adds a password to a `person`: the address stays sealed there, so the waitlist
//! entry, purchases and privacy requests of that address are the account's without a copy.
//!
//! Tables: `account`, `account_signup`, `account_reset`, `account_session`,
//! `signin_throttle` (migrations/…_accounts.sql).
#![forbid(unsafe_code)]

mod account;
pub mod admin;
mod http;
mod mail;
mod pages;
mod password;
mod personal;
mod session;
pub mod store;
mod tables;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use pexper_platform::jobs::JobRegistry;
use pexper_platform::personal_data::DynPersonalData;
use pexper_platform::{Config, Platform, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use password::{Password, current_params};

/// What the account handlers share in one server: the password hasher (started at its first
/// use, from the configuration) and the in-memory count of failed sign-ins per client.
#[derive(Debug, Clone, Default)]
pub struct AccountsState {
    hasher: Arc<std::sync::OnceLock<password::Hasher>>,
    clients: Arc<throttle::Clients>,
}

impl AccountsState {
    /// `PEXPER_PASSWORD_HASHERS` threads at nice 19 (under contention everything else comes
    /// first: sign-ins slow down before anything else does); a sign-in waits at most 5 s for
    /// its turn.
    fn hasher(&self, platform: &Platform) -> anyhow::Result<&password::Hasher> {
        if let Some(hasher) = self.hasher.get() {
            return Ok(hasher);
        }
        let hasher =
            password::Hasher::new(platform.config.password_hashers, 19, Duration::from_secs(5))?;
        // Two first sign-ins at once: one hasher is kept, the other's threads end with it.
        Ok(self.hasher.get_or_init(|| hasher))
    }
}

/// The largest body an account endpoint reads: 128 characters of 4 bytes, percent-encoded
/// (12 bytes each), is 1.5 KiB per password field.
pub const BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts;

impl Service for Accounts {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn tables(&self) -> &'static [pexper_platform::data_map::Table] {
        tables::TABLES
    }

    fn form_pages(&self) -> &'static [pexper_platform::http::FormPage] {
        use pexper_platform::http::{Back, FormPage};
        const ACCOUNT: &str = "/account";
        const BACK: &str = "Back to your account";
        &[
            FormPage {
                posts_to: "/v1/accounts",
                back: Back::Page("/account/sign-up"),
                label: "Back to sign-up",
            },
            FormPage {
                posts_to: "/v1/sessions",
                back: Back::Page("/account/sign-in"),
                label: "Back to sign-in",
            },
            FormPage {
                posts_to: "/v1/accounts/password-reset",
                back: Back::Page("/account/password-reset"),
                label: "Back to the password reset",
            },
            FormPage {
                posts_to: "/v1/accounts/verify",
                back: Back::ThisLink,
                label: "Open the page again",
            },
            FormPage {
                posts_to: "/v1/accounts/password-reset/confirm",
                back: Back::ThisLink,
                label: "Open the page again",
            },
            FormPage {
                posts_to: "/account/sign-out",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
            FormPage {
                posts_to: "/account/sessions/end-others",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
            FormPage {
                posts_to: "/account/password",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
            FormPage {
                posts_to: "/account/licences/resend",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
            FormPage {
                posts_to: "/account/confirm-password",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
            FormPage {
                posts_to: "/account/export",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
            FormPage {
                posts_to: "/account/delete",
                back: Back::Page(ACCOUNT),
                label: BACK,
            },
        ]
    }

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
            .routes(routes!(http::create_account))
            .routes(routes!(http::verify_page, http::verify))
            .routes(routes!(http::sign_in))
            .routes(routes!(http::sign_out))
            .routes(routes!(http::request_reset))
            .routes(routes!(http::reset_page, http::reset))
            .routes(routes!(account::get_account))
            .routes(routes!(account::account_page))
            .routes(routes!(account::sign_up_page))
            .routes(routes!(account::sign_in_page))
            .routes(routes!(account::reset_request_page))
            .routes(routes!(account::sign_out_form))
            .routes(routes!(account::end_other_sessions))
            .routes(routes!(account::change_password_form))
            .routes(routes!(account::resend_licence))
            .routes(routes!(account::confirm_password_form))
            .routes(routes!(account::export))
            .routes(routes!(account::delete))
            .layer(axum::Extension(AccountsState::default()))
            // An account form is an address and a password or two: a few kilobytes at most.
            // A bigger body is refused as it arrives, before it is buffered whole, so no
            // request here can make the server hold a megabyte.
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new()
            .register::<mail::SendVerification>()
            .register::<mail::SendAlreadyRegistered>()
            .register::<mail::DecideReset>()
            .register::<mail::SendReset>()
            .register::<mail::SendPasswordChanged>()
    }

    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(personal::AccountData))
    }
}
