//! `pexper-server`: reads the configuration, connects, and runs every service (or the ones
//! `--services` names) until SIGTERM or Ctrl-C. The binary is `main` in `pexper_server::cli`,
//! so that the tests build and run the very same entry point.

use std::process::ExitCode;
use std::time::Duration;

use crate::WorkerOptions;
use clap::Parser;
use pexper_platform::http::HttpOptions;
use pexper_platform::{Config, telemetry};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(name = "pexper-server", version, about = "The Pexper website backend")]
struct Args {
    /// Run only these services (comma-separated), routes and workers; default: all.
    #[arg(long, value_name = "NAMES")]
    services: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Exit 0 if the server on PEXPER_BIND answers `/readyz` with 200, 1 otherwise: a
    /// container HEALTHCHECK that needs no curl and no shell.
    Healthcheck,
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::for_binary("pexper-server", pexper_platform::config::Role::Server) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(Command::Healthcheck) = args.command {
        return match crate::health::check(config.bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pexper-server healthcheck: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.env);
    let services = match crate::select_services(args.services.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pexper-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(config, services).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %telemetry::redact(&format!("{e:#}")), "pexper-server stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    services: Vec<std::sync::Arc<dyn pexper_platform::Service>>,
) -> anyhow::Result<()> {
    let bind = config.bind;
    let recurring_seconds = config.recurring_seconds;
    let shutdown_grace_seconds = config.shutdown_grace_seconds;
    if config.uses_dev_stripe_secret() {
        // Not a secret: it is in the source, so that `stripe listen` or a script can sign.
        tracing::warn!(
            secret = pexper_platform::config::DEV_STRIPE_WEBHOOK_SECRET,
            "Stripe webhooks are verified with the development secret; set STRIPE_WEBHOOK_SECRET"
        );
    }
    let platform = crate::platform(config, None).await?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        services = %services.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        "listening"
    );
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests and jobs");
        let _ = stop.send(true);
    });
    crate::launch(
        listener,
        platform,
        services,
        HttpOptions::default(),
        WorkerOptions {
            recurring_every: Duration::from_secs(recurring_seconds),
            shutdown_grace: Duration::from_secs(shutdown_grace_seconds),
            ..WorkerOptions::default()
        },
        shutdown,
    )
    .await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
