//! Composes the services into one process: `launch` serves their routes and runs their jobs
//! until told to stop. `main` and the tests both call it.
#![forbid(unsafe_code)]

pub mod cli;
mod health;
pub mod inbox;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum_server::tls_rustls::RustlsConfig;
use pexper_platform::config::TlsFiles;
use pexper_platform::http::HttpOptions;
use pexper_platform::jobs::{self, Worker};
use pexper_platform::mail::Mailer;
use pexper_platform::personal_data::Registry;
use pexper_platform::{Config, Platform, Service, core, db, keys};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Every service, registered in this one place. Order is the order of a privacy export.
pub fn all_services() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(core::Core),
        Arc::new(pexper_waitlist::Waitlist),
        Arc::new(pexper_payments::Payments),
        Arc::new(pexper_privacy::Privacy),
        Arc::new(pexper_analytics::Analytics),
        Arc::new(pexper_support::Support),
        Arc::new(pexper_accounts::Accounts),
        Arc::new(inbox::Inbox),
    ]
}

/// The services a `--services a,b` list names; the platform's own is always included.
pub fn select_services(names: Option<&str>) -> anyhow::Result<Vec<Arc<dyn Service>>> {
    let all = all_services();
    let Some(names) = names else {
        return Ok(all);
    };
    let wanted: Vec<&str> = names
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for name in &wanted {
        anyhow::ensure!(
            all.iter().any(|s| s.name() == *name),
            "unknown service `{name}`; known: {}",
            all.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(all
        .into_iter()
        .filter(|s| s.name() == "platform" || wanted.contains(&s.name()))
        .collect())
}

/// The registry of every service's personal data, whichever services this process runs:
/// an erasure must reach everything.
pub fn personal_data(config: &Config) -> Registry {
    Registry::new(
        all_services()
            .iter()
            .filter_map(|s| s.personal_data(config))
            .collect(),
    )
}

/// Connects (starting the managed Postgres if configured so), migrates, loads keys.
pub async fn platform(config: Config, mailer: Option<Mailer>) -> anyhow::Result<Platform> {
    let master = keys::load_master_keys(&config)?;
    let pool = db::connect_and_migrate(&config).await?;
    let mailer = match mailer {
        Some(m) => m,
        None => Mailer::from_config(&config)?,
    };
    let keyring = keys::keyring(&pool, &master).await?;
    let registry = personal_data(&config);
    // Rows from before a migration that needed the keys (sealed purchase records), brought up
    // to date before any request or job reads them.
    registry.prepare(&pool, &keyring).await?;
    let platform = Platform::new(config, pool, keyring, mailer, registry)?;
    // Requests never wait for a connection's handshake (db::fill).
    tokio::join!(db::fill(&platform.pool), db::fill(&platform.ingest_pool));
    Ok(platform)
}

/// Enqueues each recurring job once per period of `every` across every replica
/// (`jobs::enqueue_recurring`): each process looks once a period, the first time one period
/// after start, until shutdown.
async fn schedule(
    platform: Platform,
    recurring: Vec<jobs::NewJob>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if recurring.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for job in &recurring {
            if let Err(e) = jobs::enqueue_recurring(&platform.pool, job.clone(), every).await {
                tracing::warn!(error = %pexper_platform::telemetry::redact(&format!("{e:#}")), kind = job.kind(), "failed to schedule a recurring job");
            }
        }
    }
}

/// Serves `GET /metrics` on a listener of its own (`PEXPER_METRICS_ADDR`) until shutdown: the
/// process's metrics and the services' database gauges, read at each scrape.
async fn serve_metrics(
    listener: TcpListener,
    platform: Platform,
    gauges: Vec<pexper_platform::metrics::GaugeQuery>,
    job_pool: sqlx::PgPool,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use pexper_platform::metrics::{CONTENT_TYPE, DatabaseGauges, scrape};
    let pools = vec![
        ("request", platform.pool.clone()),
        ("ingest", platform.ingest_pool.clone()),
        ("jobs", job_pool),
    ];
    let gauges = Arc::new(DatabaseGauges::new(gauges, pools));
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (platform, gauges) = (platform.clone(), gauges.clone());
            async move {
                let ready = platform.ready().await;
                let body = scrape(&platform.metrics, &gauges, &platform.pool, ready).await;
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    );
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(pexper_platform::shutdown::requested(shutdown))
        .await
        .context("the metrics listener failed");
    if let Err(e) = &served {
        tracing::error!(error = %format!("{e:#}"), "the metrics listener stopped");
    }
    served
}

/// TLS terminated by the server itself.
struct Tls {
    files: TlsFiles,
    /// How often the files are checked for a new certificate.
    reload_every: Duration,
    /// How long open connections may take to finish after shutdown.
    drain: Duration,
}

/// Serves HTTPS on `listener` with rustls. A renewed certificate is picked up without a
/// restart: the files are checked every `reload_every` and re-read when they change; a pair
/// that does not load (half written, a key that does not match) leaves the one in use.
async fn serve_tls(
    listener: TcpListener,
    make_service: IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
    tls: Tls,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = RustlsConfig::from_pem_file(&tls.files.cert, &tls.files.key)
        .await
        .with_context(|| {
            format!(
                "failed to load PEXPER_TLS_CERT {} and PEXPER_TLS_KEY {}",
                tls.files.cert.display(),
                tls.files.key.display()
            )
        })?;
    let reloader = tokio::spawn(reload_when_changed(
        config.clone(),
        tls.files,
        tls.reload_every,
    ));
    let handle = axum_server::Handle::<SocketAddr>::new();
    let stopper = {
        let handle = handle.clone();
        tokio::spawn(async move {
            pexper_platform::shutdown::requested(shutdown).await;
            handle.graceful_shutdown(Some(tls.drain));
        })
    };
    let served = axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(make_service)
        .await
        .context("the HTTPS server failed");
    reloader.abort();
    stopper.abort();
    served
}

async fn reload_when_changed(config: RustlsConfig, files: TlsFiles, every: Duration) {
    let stamp = |files: &TlsFiles| {
        let modified =
            |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (modified(&files.cert), modified(&files.key))
    };
    let mut loaded = stamp(&files);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = stamp(&files);
        if now == loaded {
            continue;
        }
        match config.reload_from_pem_file(&files.cert, &files.key).await {
            Ok(()) => {
                tracing::info!("TLS certificate reloaded");
                loaded = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; the one in use stays")
            }
        }
    }
}

/// How the process's job worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub lease: Duration,
    pub poll_interval: Duration,
    /// How often each service's recurring jobs are enqueued.
    pub recurring_every: Duration,
    /// After shutdown, how long jobs in hand may run before they are handed back.
    pub shutdown_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            recurring_every: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Serves HTTP on `listener` and runs the services' jobs until `shutdown` turns true; then
/// stops accepting, finishes in-flight requests and jobs, and returns.
pub async fn launch(
    listener: TcpListener,
    platform: Platform,
    services: Vec<Arc<dyn Service>>,
    http: HttpOptions,
    worker: WorkerOptions,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = pexper_platform::http::app(platform.clone(), &services, &http);
    // Bound before anything starts: a port in use stops the start, not a running process.
    let metrics_listener = match platform.config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on PEXPER_METRICS_ADDR {addr}"))?,
        ),
        None => None,
    };

    let concurrency = platform.config.job_concurrency;
    let job_pool = pexper_platform::db::job_pool(&platform.pool, concurrency);
    let mut jobs = Worker::new(job_pool.clone(), platform.for_jobs(job_pool.clone()))
        .concurrency(concurrency)
        .lease(worker.lease)
        .poll_interval(worker.poll_interval)
        .shutdown_grace(worker.shutdown_grace)
        .wake(platform.job_wake.clone())
        .foreground(platform.foreground.clone())
        .counted(platform.metrics.jobs());
    for service in &services {
        jobs = jobs.jobs(service.jobs());
    }
    let worker_task = tokio::spawn(jobs.run(shutdown.clone()));
    let recurring: Vec<jobs::NewJob> = services.iter().flat_map(|s| s.recurring()).collect();
    let scheduler = tokio::spawn(schedule(
        platform.clone(),
        recurring,
        worker.recurring_every,
        shutdown.clone(),
    ));

    let heartbeat = {
        let platform = platform.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            pexper_platform::replica::heartbeat(platform.pool.clone(), &platform.keyring, shutdown)
                .await
        })
    };

    let prune = {
        let mut shutdown = shutdown.clone();
        let gc = app.limiter_gc();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => gc(),
                    _ = shutdown.changed() => break,
                }
            }
        })
    };

    // The metrics listener outlives the job worker: what the worker counts while it drains
    // (its last runs, the jobs it hands back) can still be scraped.
    let (stop_metrics, metrics_stopped) = watch::channel(false);
    let metrics = metrics_listener.map(|listener| {
        tokio::spawn(serve_metrics(
            listener,
            platform.clone(),
            services.iter().flat_map(|s| s.gauges()).collect(),
            job_pool.clone(),
            metrics_stopped,
        ))
    });

    let make_service = app
        .router
        .into_make_service_with_connect_info::<SocketAddr>();
    let served = match platform.config.tls.clone() {
        None => axum::serve(listener, make_service)
            .with_graceful_shutdown(pexper_platform::shutdown::requested(shutdown.clone()))
            .await
            .context("the HTTP server failed"),
        Some(files) => {
            let tls = Tls {
                files,
                reload_every: http.tls_reload_every,
                drain: http.timeout,
            };
            serve_tls(listener, make_service, tls, shutdown.clone()).await
        }
    };

    let worked = worker_task.await.context("the job worker panicked");
    stop_metrics.send_replace(true);
    worked?;
    heartbeat.await.context("the heartbeat panicked")?;
    let metrics = match metrics {
        Some(metrics) => metrics.await.context("the metrics listener panicked")?,
        None => Ok(()),
    };
    prune.abort();
    scheduler.abort();
    // Its connections end now, not whenever the last handle is dropped: a restore after a
    // stop (which refuses while any is open) must not race them.
    job_pool.close().await;
    served.and(metrics)
}
