//! pexper-desktop: the minimal local-first client. Workflows, settings and provider keys live
//! on the device; AI traffic goes straight from the device to the provider (or stays on it,
//! for local models); our backend hears only what the person allows — anonymous usage events
//! and crash reports — and nothing before they choose.
//!
//! The core is here, usable without a window: `store` (atomic files), `secrets` (keys behind
//! a trait), `egress` (the only place that opens a connection, and its network log),
//! `providers`, `telemetry` (the gate and the outbox), `crash` (the panic hook), `license`
//! (offline verification), and `cli` (the scriptable surface).
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod crash;
pub mod egress;
pub mod license;
pub mod providers;
pub mod secrets;
pub mod store;
pub mod telemetry;

/// Opens the window. Keys go to the encrypted file when `PEXPER_PASSPHRASE` unlocks it, else
/// they are kept in memory for this session only (the keychain backend is not built yet).
pub fn window(
    dirs: store::Dirs,
    forced_off: bool,
    offline: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let secrets: Box<dyn secrets::SecretStore> = match std::env::var("PEXPER_PASSPHRASE") {
        Ok(pass) if !pass.is_empty() => Box::new(secrets::EncryptedFileStore::open(
            dirs.secrets(),
            &secrecy::SecretString::from(pass),
            "no OS keychain backend in this build",
        )?),
        _ => Box::new(secrets::MemoryStore::default()),
    };
    let app = app::PexperApp::new(dirs, secrets, forced_off, offline)?;
    eframe::run_native(
        "Pexper",
        eframe::NativeOptions::default(),
        Box::new(|_cc| Ok(Box::new(app))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not open: {e}"))?;
    Ok(std::process::ExitCode::SUCCESS)
}
