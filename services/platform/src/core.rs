//! The platform's own service: the operator-notice email job, the retention job, and the
//! email section of a person's data (their address and the history of what we sent them).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::address::EmailAddress;
use crate::jobs::{BackgroundJob, Job, JobError, JobRegistry, NewJob};
use crate::mail::{self, OperatorNotice};
use crate::personal_data::{DynPersonalData, EmailRecords};
use crate::state::{Platform, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct Core;

impl Service for Core {
    fn name(&self) -> &'static str {
        "platform"
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new()
            .register::<OperatorNoticeJob>()
            .register::<crate::retention::Retention>()
    }

    fn recurring(&self) -> Vec<NewJob> {
        vec![NewJob::new(&crate::retention::Retention {})]
    }

    fn personal_data(&self, config: &crate::Config) -> Option<Arc<dyn DynPersonalData>> {
        Some(Arc::new(EmailRecords::new(config)))
    }

    /// The job queue and the running processes, as the database holds them (every replica
    /// reports the same figures).
    fn gauges(&self) -> Vec<crate::metrics::GaugeQuery> {
        use crate::metrics::GaugeQuery;
        vec![
            GaugeQuery {
                name: "jobs",
                help: "Jobs in the queue by kind and state: ready (due now), scheduled (due later), retrying (failed before, due later), running, lapsed (running, but its lease ran out: its worker died, and another takes it over), dead (given up on)",
                labels: &["kind", "state"],
                sql: "SELECT kind,
                             CASE WHEN status = 'queued' AND run_at <= now() THEN 'ready'
                                  WHEN status = 'queued' AND attempts > 0 THEN 'retrying'
                                  WHEN status = 'queued' THEN 'scheduled'
                                  WHEN status = 'running' AND locked_until < now() THEN 'lapsed'
                                  ELSE status END,
                             count(*)::float8
                      FROM job GROUP BY 1, 2",
            },
            GaugeQuery {
                name: "jobs_oldest_ready_age_seconds",
                help: "How long the oldest job due now has waited (0 when none is due)",
                labels: &[],
                sql: "SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0)::float8
                      FROM job WHERE status = 'queued' AND run_at <= now()",
            },
            GaugeQuery {
                name: "replicas",
                help: "Server processes heard from in the last minute, by the master key version they wrap new data keys under",
                labels: &["master_version"],
                sql: "SELECT master_version::text, count(*)::float8 FROM replica
                      WHERE seen_at > now() - interval '60 seconds' GROUP BY 1",
            },
        ]
    }

    fn tables(&self) -> &'static [crate::data_map::Table] {
        crate::data_map::PLATFORM
    }
}

/// Payload of an operator notice. It goes to `PEXPER_PRIVACY_EMAIL`, so it must still hold no
/// personal data: request ids and dates, never an address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorNoticeJob {
    pub title: String,
    pub lines: Vec<String>,
}

/// Queues a notice to the operator address, in the caller's transaction.
pub fn operator_notice(title: impl Into<String>, lines: Vec<String>) -> NewJob {
    NewJob::new(&OperatorNoticeJob {
        title: title.into(),
        lines,
    })
}

impl BackgroundJob for OperatorNoticeJob {
    const KIND: &'static str = "mail.operator_notice";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let to = EmailAddress::parse(&platform.config.privacy_email).map_err(|e| {
            JobError::permanent(anyhow::anyhow!("PEXPER_PRIVACY_EMAIL is invalid: {e}"))
        })?;
        let notice = OperatorNotice {
            title: self.title,
            lines: self.lines,
        };
        let mut conn = platform.pool.acquire().await?;
        mail::send_template(&platform, &mut conn, job, None, to, &notice, vec![]).await
    }
}
