//! `Platform`: what every handler and job shares — configuration, the pool, the keyring, the
//! mailer — and `Service`, the shape every service crate has.

use std::ops::Deref;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use lettre::message::Mailbox;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::crypto::Keyring;
use crate::jobs::{JobRegistry, NewJob};
use crate::mail::Mailer;
use crate::personal_data::{DynPersonalData, Registry};

#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
    /// The connections this side of the process uses: the requests' pool, or in the job
    /// worker's copy (`for_jobs`) a pool of its own, so that background work, however much
    /// of it there is, never takes the connections requests need.
    pub pool: PgPool,
}

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    /// Connections for analytics and crash ingestion only (`db::ingest_pool`).
    pub ingest_pool: PgPool,
    pub keyring: Keyring,
    pub mailer: Mailer,
    pub mail_from: Mailbox,
    /// Signs licence keys (payments); its public half is published for offline checks.
    pub license_key: SigningKey,
    /// Every service's personal data, whichever services this process serves.
    pub personal_data: Registry,
    /// Wakes this process's job workers after a commit that queued work without a `NOTIFY`.
    pub job_wake: crate::jobs::Wake,
    /// The requests in flight, which the job worker gives way to.
    pub foreground: crate::jobs::Foreground,
    /// What `/readyz` last saw.
    pub readiness: crate::outage::Readiness,
    /// What this process counts as it runs (`/metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Deref for Platform {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Platform {
    pub fn new(
        config: Config,
        pool: PgPool,
        keyring: Keyring,
        mailer: Mailer,
        personal_data: Registry,
    ) -> anyhow::Result<Self> {
        let mail_from = crate::mail::sender(&config)?;
        let license_key = crate::keys::load_license_key(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                ingest_pool: crate::db::ingest_pool(&pool),
                keyring,
                mailer,
                mail_from,
                license_key,
                personal_data,
                job_wake: crate::jobs::Wake::default(),
                foreground: crate::jobs::Foreground::default(),
                readiness: crate::outage::Readiness::default(),
                metrics: crate::metrics::Metrics::new(),
            }),
            pool,
        })
    }

    /// Closes the request and ingestion pools: every connection they keep open is ended.
    pub async fn close(&self) {
        tokio::join!(self.pool.close(), self.ingest_pool.close());
    }

    /// What `/readyz` answers: whether the request pool's database answers `SELECT 1` within
    /// 2 s, as seen at most a second ago (`outage::Readiness`).
    pub async fn ready(&self) -> bool {
        let ping = || async {
            let ping = sqlx::query("SELECT 1").execute(&self.pool);
            matches!(
                tokio::time::timeout(std::time::Duration::from_secs(2), ping).await,
                Ok(Ok(_))
            )
        };
        self.readiness.ready(ping).await
    }

    /// The same platform over `pool`: what the job worker runs with (`db::job_pool`).
    pub fn for_jobs(&self, pool: PgPool) -> Self {
        Self {
            inner: self.inner.clone(),
            pool,
        }
    }
}

/// A page that takes a form post, and where its error pages send the person back to
/// (`http::error_page`).
#[derive(Debug, Clone, Copy)]
pub struct FormPage {
    /// The path the form posts to (and, for an emailed link, the link's path).
    pub posts_to: &'static str,
    pub back: Back,
    /// The back link's words, e.g. "Back to sign-in".
    pub label: &'static str,
}

/// Where an error page links back to.
#[derive(Debug, Clone, Copy)]
pub enum Back {
    /// The page the form is on.
    Page(&'static str),
    /// The emailed link itself, with its token: opening it again shows its page.
    ThisLink,
}

/// A service: its routes, its job handlers, its personal data. The server composes a list of
/// these; `--services` picks which ones serve routes and run jobs in a process.
pub trait Service: Send + Sync {
    fn name(&self) -> &'static str;

    fn routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
    }

    /// Public collection endpoints (the desktop app's analytics and crash reports): behind a
    /// per-client limit of their own, more generous than `routes`' (apps send in bursts, and
    /// many share an office's address), besides whatever global limits the service keeps.
    /// The client's address lives only in the limiter's memory; handlers never see it.
    fn ingest_routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
    }

    /// Routes for machines that authenticate every request by a signature or a key and share
    /// addresses (Stripe's webhooks come from a handful of IPs): not behind the per-client
    /// rate limiter, which would refuse a legitimate burst.
    fn machine_routes(&self) -> OpenApiRouter<Platform> {
        OpenApiRouter::new()
    }

    /// The pages whose forms post to this service's routes: where an error page for such a
    /// post links back to (`FormPage`).
    fn form_pages(&self) -> &'static [FormPage] {
        &[]
    }

    /// The job types this service runs.
    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new()
    }

    /// Jobs to run periodically (sweeps, rollups, retention). Each is enqueued every
    /// `WorkerOptions::recurring_every` with its kind as the dedupe key, so however many
    /// replicas run, at most one of each is waiting; they must be idempotent.
    fn recurring(&self) -> Vec<NewJob> {
        Vec::new()
    }

    /// Gauges read from the database at each scrape of `/metrics` (`metrics::GaugeQuery`).
    fn gauges(&self) -> Vec<crate::metrics::GaugeQuery> {
        Vec::new()
    }

    /// What this service keeps about a person; `config` for settings that shape an export.
    fn personal_data(&self, _config: &Config) -> Option<Arc<dyn DynPersonalData>> {
        None
    }

    /// Every table this service's migrations made, every column declared (`data_map`).
    fn tables(&self) -> &'static [crate::data_map::Table] {
        &[]
    }
}
