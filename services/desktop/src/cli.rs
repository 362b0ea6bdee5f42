//! The scriptable surface, for operators and tests: no window needed.
//!
//! ```text
//! pexper-desktop [--data-dir DIR] [--offline] [--disable-telemetry] COMMAND
//! ```
//!
//! `run WORKFLOW`, `keys status|set|delete`, `telemetry status|set LEVEL`,
//! `outbox list|preview|clear|send`, `license verify FILE|-`, `license fetch-key`.
//! Exit codes: 0 ok, 1 error, 2 usage.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

use crate::egress::Egress;
use crate::license::{self, Status};
use crate::providers::Provider;
use crate::secrets::Keys;
use crate::store::{Dirs, Settings, Workflow};
use crate::telemetry::{self, Level, Telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "pexper-desktop",
    version,
    about = "Pexper: local-first AI workflows"
)]
pub struct Cli {
    /// Keep everything under DIR instead of the OS's own directories.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Block every request (the kill switch), whatever the settings say.
    #[arg(long, global = true)]
    offline: bool,
    /// Telemetry off for this run, whatever the settings say.
    #[arg(long, global = true)]
    disable_telemetry: bool,
    /// Without a command, the window opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow by id and print the reply. Keys come from the OS keychain, else from the
    /// encrypted key file, unlocked by PEXPER_PASSPHRASE.
    Run { workflow: String },
    /// Provider keys: where they are kept, and setting one (read from stdin, never an argument,
    /// so it stays out of shell history and the process list).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// What telemetry does, or set its level (off, crash, all).
    Telemetry {
        #[command(subcommand)]
        command: TelemetryCommand,
    },
    /// What is waiting to be sent.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Licences, checked on this device.
    License {
        #[command(subcommand)]
        command: LicenseCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// The backend in use, why, and which providers have a key.
    Status,
    /// Store the key for PROVIDER from the first line of stdin.
    Set {
        #[arg(value_parser = cloud_provider)]
        provider: Provider,
    },
    Delete {
        #[arg(value_parser = cloud_provider)]
        provider: Provider,
    },
}

fn cloud_provider(name: &str) -> Result<Provider, String> {
    Provider::ALL
        .into_iter()
        .find(|p| p.name() == name && !p.is_local())
        .ok_or_else(|| "openai, anthropic or google".to_owned())
}

/// The passphrase for the key file, if the environment gives one.
pub fn passphrase_from_env() -> Option<SecretString> {
    std::env::var("PEXPER_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
        .map(SecretString::from)
}

#[derive(Debug, Subcommand)]
enum TelemetryCommand {
    Status,
    /// Set the level; `all` fetches the server's schema and records consent to its version;
    /// `off` purges the outbox.
    Set {
        level: Level,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    List,
    /// The exact bytes each upload will send.
    Preview,
    Clear,
    /// Send what the level allows now.
    Send,
}

#[derive(Debug, Subcommand)]
enum LicenseCommand {
    /// Verify a licence from a file, or from stdin with `-`.
    Verify {
        file: String,
        /// The server's public key (standard base64), if not built in or configured.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Fetch the server's public key (one request) and keep it in the settings.
    FetchKey,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pexper-desktop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn egress(dirs: &Dirs, settings: &Settings, offline_flag: bool) -> Egress {
    Egress::new(dirs.network_log(), offline_flag || settings.offline)
}

fn unlocked(keys: &Keys) -> anyhow::Result<&dyn crate::secrets::SecretStore> {
    keys.store().with_context(|| {
        format!(
            "keys are kept in: {}; set PEXPER_PASSPHRASE to unlock the file",
            keys.backend()
        )
    })
}

/// What every command works with.
struct Session {
    dirs: Dirs,
    settings: Settings,
    forced_off: bool,
    net: Egress,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(cli.data_dir.as_deref())?;
    let forced_off = telemetry::forced_off(cli.disable_telemetry);
    crate::crash::install(&dirs, forced_off);
    let settings = Settings::load(&dirs)?;
    let net = egress(&dirs, &settings, cli.offline);
    let Some(command) = cli.command else {
        return crate::window(dirs, forced_off, cli.offline);
    };
    let mut session = Session {
        dirs,
        settings,
        forced_off,
        net,
    };
    match command {
        Command::Run { workflow } => run_workflow(&session, &workflow)?,
        Command::Keys { command } => keys(&session, command)?,
        Command::Telemetry { command } => telemetry_command(&mut session, command)?,
        Command::Outbox { command } => outbox(&session, command)?,
        Command::License { command } => return license_command(&mut session, command),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_workflow(session: &Session, workflow: &str) -> anyhow::Result<()> {
    let dirs = &session.dirs;
    let w = Workflow::load(dirs, workflow)?.with_context(|| format!("no workflow {workflow}"))?;
    eprintln!("{}: {}", w.name, w.provider.destination());
    let t = Telemetry::new(dirs, &session.settings, session.forced_off);
    let key = |provider: &str| Keys::choose(dirs.secrets(), passphrase_from_env())?.key(provider);
    let reply = crate::providers::run_workflow(&w, &session.settings, key, &session.net, &t)?;
    println!("{reply}");
    Ok(())
}

fn keys(session: &Session, command: KeysCommand) -> anyhow::Result<()> {
    let keys = Keys::choose(session.dirs.secrets(), passphrase_from_env())?;
    match command {
        KeysCommand::Status => {
            let saved: Vec<&str> = Provider::ALL
                .into_iter()
                .filter(|p| keys.key(p.name()).is_ok())
                .map(Provider::name)
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "backend": keys.backend(),
                    "unlocked": keys.store().is_some(),
                    "keys": saved,
                })
            );
        }
        KeysCommand::Set { provider } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let value = SecretString::from(line.trim().to_owned());
            line.zeroize();
            anyhow::ensure!(!value.expose_secret().is_empty(), "no key on stdin");
            unlocked(&keys)?.set(provider.name(), &value)?;
            println!("saved the {} key in: {}", provider.name(), keys.backend());
        }
        KeysCommand::Delete { provider } => {
            unlocked(&keys)?.delete(provider.name())?;
            println!("deleted the {} key", provider.name());
        }
    }
    Ok(())
}

fn telemetry_command(session: &mut Session, command: TelemetryCommand) -> anyhow::Result<()> {
    let Session {
        dirs,
        settings,
        forced_off,
        net,
    } = session;
    match command {
        TelemetryCommand::Status => {
            let schema = telemetry::cached_schema(dirs);
            let level = telemetry::effective(settings, *forced_off, schema.as_ref());
            println!(
                "{}",
                serde_json::json!({
                    "chosen": settings.telemetry,
                    "effective": level,
                    "forced_off": forced_off,
                    "schema_version": telemetry::schema_version(schema.as_ref()),
                    "consented_schema_version": settings.consented_schema_version,
                    "offline": net.offline(),
                })
            );
        }
        TelemetryCommand::Set { level } => {
            if level == Level::All {
                let schema = telemetry::fetch_schema(dirs, settings, net)?;
                settings.consented_schema_version = telemetry::schema_version(Some(&schema));
            }
            if level == Level::Off {
                telemetry::purge(dirs);
            }
            settings.telemetry = Some(level);
            settings.save(dirs)?;
            println!("telemetry: {level:?}");
        }
    }
    Ok(())
}

fn outbox(session: &Session, command: OutboxCommand) -> anyhow::Result<()> {
    let dirs = &session.dirs;
    let items = telemetry::outbox(dirs)?;
    match command {
        OutboxCommand::List => {
            for item in &items {
                println!(
                    "{}\t{} bytes\t{}",
                    item.kind,
                    item.body.len(),
                    item.file.display()
                );
            }
        }
        OutboxCommand::Preview => {
            for item in &items {
                println!("{}", String::from_utf8_lossy(&item.body));
            }
        }
        OutboxCommand::Clear => telemetry::purge(dirs),
        OutboxCommand::Send => {
            let schema = telemetry::cached_schema(dirs);
            let level =
                telemetry::effective(&session.settings, session.forced_off, schema.as_ref());
            let sent = telemetry::send(dirs, &session.settings, level, &session.net)?;
            println!("sent {sent}");
        }
    }
    Ok(())
}

/// `license verify` fails (exit 1) unless the licence is ours, valid or merely expired.
fn license_command(session: &mut Session, command: LicenseCommand) -> anyhow::Result<ExitCode> {
    let Session {
        dirs,
        settings,
        net,
        ..
    } = session;
    match command {
        LicenseCommand::FetchKey => {
            let key = license::fetch_public_key(&settings.server_url, net)?;
            println!("{key}");
            settings.license_public_key = Some(key);
            settings.save(dirs)?;
        }
        LicenseCommand::Verify { file, public_key } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("failed to read {file}"))?
            };
            let key = license::public_key(
                public_key
                    .as_deref()
                    .or(settings.license_public_key.as_deref()),
            );
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let check = license::check(&text, key.as_ref(), now, settings.last_seen);
            settings.last_seen = settings.last_seen.max(now);
            settings.save(dirs)?;
            let (status, detail) = match &check.status {
                Status::Valid(c) => ("valid", serde_json::json!(c)),
                Status::Expired(c) => ("expired", serde_json::json!(c)),
                Status::Invalid(e) => ("invalid", serde_json::json!(e.to_string())),
                Status::NoKey => (
                    "no_key",
                    serde_json::json!(
                        "no public key: pass --public-key, or run `license fetch-key`"
                    ),
                ),
            };
            println!(
                "{}",
                serde_json::json!({"status": status, "detail": detail, "clock_went_back": check.clock_went_back})
            );
            if !matches!(check.status, Status::Valid(_) | Status::Expired(_)) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
