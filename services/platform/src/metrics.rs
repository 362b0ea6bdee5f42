//! Prometheus metrics (issue 30), in the OpenMetrics text format, with `prometheus-client`:
//! what the process counts as it runs (`Metrics`: HTTP requests, email), and what the
//! database says when scraped (`DatabaseGauges`: each service's `GaugeQuery`s, such as the
//! job queue and the privacy requests' due dates). The server serves both on a listener of
//! its own (`PEXPER_METRICS_ADDR`), never on the public one.
//!
//! No label carries personal data or grows without bound: a route is its template (never the
//! URL), a status is its class, a method is one of the standard ones, and every other label
//! value is a name from the code (a template, a job kind, a request kind or status).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use axum::http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use sqlx::{PgPool, Row};

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    template: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    template: &'static str,
    /// `permanent` (an SMTP 5xx reply) or `transient` (4xx, network, TLS, timeout).
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    route: String,
    /// The 429's error code (`rate_limited`, `too_many_attempts`, `busy`, …), or
    /// `per_client` for the per-client limiter, which answers before any handler.
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    outcome: &'static str,
    /// For `refused` and `unreadable`, the error code; else `none`.
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    /// `accepted`, or `dropped` with its reason.
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// What this process counts as it runs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    mail_sent: Family<TemplateLabels, Counter>,
    mail_failed: Family<FailureLabels, Counter>,
    mail_not_sent: Family<ReasonLabels, Counter>,
    mail_budget_spent: Family<BudgetLabels, Counter>,
    mail_reports: Family<KindLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    webhook_events: Family<WebhookLabels, Counter>,
    analytics_events: Family<DropLabels, Counter>,
    crash_events: Counter,
    jobs: JobCounters,
}

/// How a job run ended, for `pexper_job_runs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Failed, and queued again after a backoff.
    Failed,
    /// Failed for good: left `dead` for an operator.
    Dead,
}

/// The job worker's counters (`pexper_job_runs_total`, `pexper_job_hand_backs_total`). The
/// worker is generic over its context, so it holds these rather than the `Metrics`; one
/// made with `default()` counts into no registry (a worker outside the server, in a test).
#[derive(Debug, Clone, Default)]
pub struct JobCounters {
    runs: Family<JobLabels, Counter>,
    hand_backs: Family<KindLabels, Counter>,
    pool_timeouts: Family<PoolLabels, Counter>,
}

impl JobCounters {
    /// `kind` is the handler's registered kind, never a string read from the queue.
    pub fn ran(&self, kind: &'static str, outcome: JobOutcome) {
        let outcome = match outcome {
            JobOutcome::Done => "done",
            JobOutcome::Failed => "failed",
            JobOutcome::Dead => "dead",
        };
        self.runs.get_or_create(&JobLabels { kind, outcome }).inc();
    }

    /// A job run that got no connection from the job pool in time.
    pub fn pool_timed_out(&self) {
        self.pool_timeouts
            .get_or_create(&PoolLabels { pool: "jobs" })
            .inc();
    }

    /// A job still running at the end of the shutdown grace, whose lease was ended so that
    /// another worker takes it at once.
    pub fn handed_back(&self, kind: &'static str) {
        self.hand_backs.get_or_create(&KindLabels { kind }).inc();
    }
}

/// Put on an answer by the code that got no connection from a pool in time (`request`,
/// `ingest`), so that `pexper_db_pool_acquire_timeouts_total` counts it.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimedOut(pub &'static str);

/// Put on a 429 by the code that refused it (`ApiError::into_response`), so that
/// `pexper_http_rate_limited_total` says which limit it was.
#[derive(Debug, Clone, Copy)]
pub struct Limit(pub &'static str);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pexper");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status class",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "How long HTTP requests took to answer, by route template",
            request_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being answered now",
            in_flight.clone(),
        );
        let mail_sent = Family::<TemplateLabels, Counter>::default();
        registry.register(
            "mail_sent",
            "Emails the relay accepted, by template",
            mail_sent.clone(),
        );
        let mail_failed = Family::<FailureLabels, Counter>::default();
        registry.register(
            "mail_failed",
            "Emails the relay refused or could not be reached for, by template and class (permanent: an SMTP 5xx reply; transient: anything that may pass on retry)",
            mail_failed.clone(),
        );
        let mail_not_sent = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mail_not_sent",
            "Emails not sent because of the suppression list (unsubscribed, bounced, complained) or a restriction of processing (restricted)",
            mail_not_sent.clone(),
        );
        let mail_budget_spent = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "mail_budget_spent",
            "Emails not sent (or held for the next day) because the address's daily budget of that kind of mail was spent, by budget",
            mail_budget_spent.clone(),
        );
        let mail_reports = Family::<KindLabels, Counter>::default();
        registry.register(
            "mail_reports_applied",
            "Bounce and complaint reports applied from the bounce mailbox, by kind (hard_bounce, soft_bounce, complaint)",
            mail_reports.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "http_rate_limited",
            "Requests answered 429, by route template and the limit that refused them",
            rate_limited.clone(),
        );
        let webhook_events = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Stripe webhook deliveries by outcome: processed, duplicate, ignored (a type we do not use), refused (missing, wrong or stale signature: the reason says which), unreadable (signed, but not an event we can read), failed (our error, or no answer in time; Stripe retries)",
            webhook_events.clone(),
        );
        let analytics_events = Family::<DropLabels, Counter>::default();
        registry.register(
            "analytics_events",
            "Usage events received in accepted batches: accepted, or dropped with the reason (for unknown_property, a property dropped from an event that was kept)",
            analytics_events.clone(),
        );
        let crash_events = Counter::default();
        registry.register(
            "crash_events_stored",
            "Crash reports (error events) stored from envelopes; one sent again is not counted",
            crash_events.clone(),
        );
        let jobs = JobCounters::default();
        registry.register(
            "db_pool_acquire_timeouts",
            "Requests and job runs that got no connection from a pool in time, by pool: the pool was exhausted, or the database unreachable or slow to connect (request: answered 503, each signup of a batch that failed so counted; ingest: answered 429 busy; jobs: the run failed)",
            jobs.pool_timeouts.clone(),
        );
        registry.register(
            "job_runs",
            "Job runs by kind and how they ended: done, failed (to be retried) or dead",
            jobs.runs.clone(),
        );
        registry.register(
            "job_hand_backs",
            "Jobs still running when the shutdown grace ended, handed back for another worker to take at once, by kind",
            jobs.hand_backs.clone(),
        );
        registry.register(
            "build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: option_env!("PEXPER_GIT_COMMIT").unwrap_or("unknown"),
            }),
        );
        Self {
            registry,
            requests,
            request_seconds,
            in_flight,
            mail_sent,
            mail_failed,
            mail_not_sent,
            mail_budget_spent,
            mail_reports,
            rate_limited,
            webhook_events,
            analytics_events,
            crash_events,
            jobs,
        }
    }

    /// The counters a job worker records its runs in.
    pub fn jobs(&self) -> JobCounters {
        self.jobs.clone()
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records an answered request. `route` is the route's template (`None`: no route
    /// matched, e.g. a 404).
    pub fn answered(
        &self,
        route: Option<&str>,
        method: &Method,
        status: StatusCode,
        took: Duration,
    ) {
        let route = route.unwrap_or("unmatched").to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method: method_label(method),
                status: status_class(status),
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    pub fn mail_sent(&self, template: &'static str) {
        self.mail_sent
            .get_or_create(&TemplateLabels { template })
            .inc();
    }

    pub fn mail_failed(&self, template: &'static str, permanent: bool) {
        let class = if permanent { "permanent" } else { "transient" };
        self.mail_failed
            .get_or_create(&FailureLabels { template, class })
            .inc();
    }

    /// A request that got no connection from `pool` in time.
    pub fn pool_timed_out(&self, pool: &'static str) {
        self.jobs
            .pool_timeouts
            .get_or_create(&PoolLabels { pool })
            .inc();
    }

    /// A 429 (`limit`: see `Limit`).
    pub fn rate_limited(&self, route: Option<&str>, limit: &'static str) {
        let route = route.unwrap_or("unmatched").to_owned();
        self.rate_limited
            .get_or_create(&LimitLabels { route, limit })
            .inc();
    }

    /// An email the address's daily `budget` did not allow (counted after the commit that
    /// decided it).
    pub fn mail_budget_spent(&self, budget: crate::person::MailBudget) {
        self.mail_budget_spent
            .get_or_create(&BudgetLabels {
                budget: budget.name(),
            })
            .inc();
    }

    /// `n` bounce or complaint reports applied (`hard_bounce`, `soft_bounce`, `complaint`).
    pub fn mail_reports_applied(&self, kind: &'static str, n: u64) {
        self.mail_reports
            .get_or_create(&KindLabels { kind })
            .inc_by(n);
    }

    /// A webhook delivery's outcome and, for a refusal, its reason (see the metric's help).
    pub fn webhook_event(&self, outcome: &'static str, reason: &'static str) {
        self.webhook_events
            .get_or_create(&WebhookLabels { outcome, reason })
            .inc();
    }

    /// `n` usage events accepted.
    pub fn analytics_accepted(&self, n: u64) {
        self.analytics_events
            .get_or_create(&DropLabels {
                outcome: "accepted",
                reason: "none",
            })
            .inc_by(n);
    }

    /// `n` usage events dropped for `reason`.
    pub fn analytics_dropped(&self, reason: &'static str, n: u64) {
        self.analytics_events
            .get_or_create(&DropLabels {
                outcome: "dropped",
                reason,
            })
            .inc_by(n);
    }

    /// `n` crash reports stored.
    pub fn crash_events_stored(&self, n: u64) {
        self.crash_events.inc_by(n);
    }

    /// An email not sent: `reason` is a suppression's reason or `restricted`.
    pub fn mail_not_sent(&self, reason: &'static str) {
        self.mail_not_sent
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn encode(&self, out: &mut String) -> std::fmt::Result {
        text::encode_registry(out, &self.registry)
    }
}

/// A request in flight (`Metrics::in_flight`).
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A gauge read from the database at each scrape: `sql` returns one row per series, its
/// label values first (as text, in the order of `labels`), then its value (as a double).
#[derive(Debug, Clone, Copy)]
pub struct GaugeQuery {
    /// Without the `pexper_` prefix.
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub sql: &'static str,
}

type DynamicGauge = Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    pool: &'static str,
    /// `idle` or `in_use`.
    state: &'static str,
}

/// What each scrape reads: the services' `GaugeQuery`s from the database, the connection
/// pools from memory, and whether `/readyz` would answer ready.
#[derive(Debug)]
pub struct DatabaseGauges {
    registry: Registry,
    gauges: Vec<(GaugeQuery, DynamicGauge)>,
    /// The process's pools by name (`request`, `ingest`, `jobs`).
    pools: Vec<(&'static str, PgPool)>,
    pool_connections: Family<PoolStateLabels, Gauge>,
    pool_max: Family<PoolLabels, Gauge>,
    ready: Gauge,
    /// One scrape reads and encodes at a time (two would interleave their setting and
    /// encoding), and a scrape within `FRESH` of the last read serves what it read: scrapers
    /// at once (a pair of Prometheus servers) cost the database one read.
    last_read: tokio::sync::Mutex<Option<std::time::Instant>>,
    up: Gauge,
}

/// How long a read of the database's gauges serves further scrapes.
const FRESH: Duration = Duration::from_secs(2);

/// The most a scrape waits for the database: under Prometheus's default scrape timeout
/// (10 s), so a slow database shows as `pexper_database_gauges_up 0`, not as a failed scrape.
const READ_TIMEOUT: Duration = Duration::from_secs(4);

impl DatabaseGauges {
    pub fn new(queries: Vec<GaugeQuery>, pools: Vec<(&'static str, PgPool)>) -> Self {
        let mut registry = Registry::with_prefix("pexper");
        let up = Gauge::default();
        registry.register(
            "database_gauges_up",
            "1 if the last scrape read the database's gauges, 0 if it could not",
            up.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 if /readyz answers ready (the database answers), 0 if not",
            ready.clone(),
        );
        let pool_connections = Family::<PoolStateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Open database connections by pool (request, ingest, jobs) and state (idle, in_use)",
            pool_connections.clone(),
        );
        let pool_max = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_max_connections",
            "The most connections each pool opens; a pool with none idle at its maximum makes callers wait",
            pool_max.clone(),
        );
        let gauges = queries
            .into_iter()
            .map(|query| {
                let family = DynamicGauge::default();
                registry.register(query.name, query.help, family.clone());
                (query, family)
            })
            .collect();
        Self {
            registry,
            gauges,
            pools,
            pool_connections,
            pool_max,
            ready,
            last_read: tokio::sync::Mutex::new(None),
            up,
        }
    }

    /// The pools as they are now: read from memory, at every scrape.
    fn read_pools(&self) {
        for (pool, connections) in &self.pools {
            let idle = i64::try_from(connections.num_idle()).unwrap_or(i64::MAX);
            let open = i64::from(connections.size());
            self.pool_connections
                .get_or_create(&PoolStateLabels {
                    pool,
                    state: "idle",
                })
                .set(idle);
            self.pool_connections
                .get_or_create(&PoolStateLabels {
                    pool,
                    state: "in_use",
                })
                .set((open - idle).max(0));
            self.pool_max
                .get_or_create(&PoolLabels { pool })
                .set(i64::from(connections.options().get_max_connections()));
        }
    }

    /// Reads every gauge from the database in one read-only transaction, each statement
    /// bounded: a slow database makes a scrape fail its gauges, not hang.
    async fn refresh(&self, pool: &PgPool) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        // Under `READ_TIMEOUT`: the server ends a slow read before the scrape gives up on
        // it, so no abandoned query holds a request connection.
        sqlx::query("SET LOCAL statement_timeout = '3s'")
            .execute(&mut *tx)
            .await?;
        let mut read = Vec::with_capacity(self.gauges.len());
        for (query, _) in &self.gauges {
            let rows = sqlx::query(query.sql)
                .fetch_all(&mut *tx)
                .await
                .with_context(|| format!("failed to read the gauge {}", query.name))?;
            let mut series = Vec::with_capacity(rows.len());
            for row in rows {
                let mut labels = Vec::with_capacity(query.labels.len());
                for (i, name) in query.labels.iter().enumerate() {
                    labels.push((*name, row.try_get::<String, _>(i)?));
                }
                let value: Option<f64> = row.try_get(query.labels.len())?;
                series.push((labels, value));
            }
            read.push(series);
        }
        tx.rollback().await?;
        for ((_, family), series) in self.gauges.iter().zip(read) {
            family.clear();
            for (labels, value) in series {
                if let Some(value) = value {
                    family.get_or_create(&labels).set(value);
                }
            }
        }
        Ok(())
    }

    fn encode(&self, out: &mut String) -> std::fmt::Result {
        text::encode_registry(out, &self.registry)
    }
}

/// The body of `/metrics`: the process's metrics and the database's gauges, read now (or
/// within the last `FRESH`). A database that cannot be read in `READ_TIMEOUT` says so
/// (`pexper_database_gauges_up 0`) and its gauges keep their last values: an overdue request
/// must not look answered because the database is slow. `ready` is what `/readyz` answers.
pub async fn scrape(
    metrics: &Metrics,
    gauges: &DatabaseGauges,
    pool: &PgPool,
    ready: bool,
) -> String {
    gauges.ready.set(i64::from(ready));
    gauges.read_pools();
    let mut last_read = gauges.last_read.lock().await;
    if last_read.is_none_or(|at| at.elapsed() >= FRESH) {
        let read = tokio::time::timeout(READ_TIMEOUT, gauges.refresh(pool))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the database did not answer in time")));
        match read {
            Ok(()) => {
                gauges.up.set(1);
            }
            Err(e) => {
                gauges.up.set(0);
                tracing::warn!(error = %crate::telemetry::redact(&format!("{e:#}")), "metrics: the database's gauges could not be read");
            }
        }
        *last_read = Some(std::time::Instant::now());
    }
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = metrics
        .encode(&mut out)
        .and_then(|()| gauges.encode(&mut out))
        .and_then(|()| text::encode_eof(&mut out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_that_cannot_be_read_says_so_and_the_rest_is_served() {
        // Nobody listens on port 1: every connection is refused at once.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy("postgres://pexper@127.0.0.1:1/pexper")
            .expect("a lazy pool");
        let gauges = DatabaseGauges::new(
            vec![GaugeQuery {
                name: "things",
                help: "Things",
                labels: &[],
                sql: "SELECT 1::float8",
            }],
            vec![("request", pool.clone())],
        );
        let metrics = Metrics::new();
        metrics.mail_sent("waitlist-confirm");
        let body = scrape(&metrics, &gauges, &pool, false).await;
        assert!(body.contains("pexper_database_gauges_up 0"), "{body}");
        assert!(body.contains("pexper_ready 0"), "{body}");
        assert!(
            body.contains(r#"pexper_db_pool_connections{pool="request",state="in_use"} 0"#),
            "{body}"
        );
        assert!(body.contains(r#"pexper_mail_sent_total{template="waitlist-confirm"} 1"#));
        assert!(body.ends_with("# EOF\n"));
    }

    #[test]
    fn labels_are_templates_and_classes_never_what_a_request_carried() {
        let metrics = Metrics::new();
        metrics.answered(
            Some("/v1/waitlist/confirm"),
            &Method::POST,
            StatusCode::UNPROCESSABLE_ENTITY,
            Duration::from_millis(3),
        );
        metrics.answered(
            None,
            &Method::from_bytes(b"BREW").expect("a method"),
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let mut out = String::new();
        metrics.encode(&mut out).expect("encodes");
        assert!(
            out.contains(
                r#"pexper_http_requests_total{route="/v1/waitlist/confirm",method="POST",status="4xx"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"pexper_http_requests_total{route="unmatched",method="other",status="4xx"} 1"#
            ),
            "{out}"
        );
        assert!(!out.contains("BREW"));
        assert!(out.contains("pexper_build_info{version="));
    }
}
