//! `Platform`: what every handler and job shares — configuration, the pool, the keyring, the
//! mailer — and `Service`, the shape every service crate has.

use std::ops::Deref;
use std::sync::Arc;

use lettre::message::Mailbox;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::crypto::{Keyring, MasterKeys};
use crate::jobs::Handler;
use crate::mail::Mailer;
use crate::personal_data::{PersonalData, Registry};

#[derive(Clone)]
pub struct Platform(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub pool: PgPool,
    pub keyring: Keyring,
    pub mailer: Mailer,
    pub mail_from: Mailbox,
    /// Every service's personal data, whichever services this process serves.
    pub personal_data: Registry,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Deref for Platform {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Platform {
    pub fn new(
        config: Config,
        pool: PgPool,
        master: &MasterKeys,
        mailer: Mailer,
        personal_data: Registry,
    ) -> anyhow::Result<Self> {
        let mail_from = crate::mail::sender(&config)?;
        Ok(Self(Arc::new(Inner {
            config,
            pool,
            keyring: Keyring::new(master),
            mailer,
            mail_from,
            personal_data,
        })))
    }
}

/// A service: its routes, its job handlers, its personal data. The server composes a list of
/// these; `--services` picks which ones serve routes and run jobs in a process.
pub trait Service: Send + Sync {
    fn name(&self) -> &'static str;

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
    }

    fn jobs(&self) -> Vec<(&'static str, Handler<Platform>)> {
        Vec::new()
    }

    /// What this service keeps about a person; `config` for settings that shape an export.
    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn PersonalData>> {
        None
    }
}
