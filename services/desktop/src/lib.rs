//! pexper-desktop: the minimal local-first client. Workflows, settings and provider keys live
//! on the device; AI traffic goes straight from the device to the provider (or stays on it,
//! for local models); our backend hears only what the person allows — anonymous usage events
//! and crash reports — and nothing before they choose.
//!
//! The core is here, usable without a window: `store` (atomic files), `secrets` (keys behind
//! a trait), `egress` (the only place that opens a connection, and its network log),
//! `provider` (which provider, and its rules), `providers` (calling them), `telemetry` (the gate and the outbox), `crash` (the panic hook), `license`
//! (offline verification), and `cli` (the scriptable surface).
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod crash;
pub mod egress;
pub mod license;
pub mod provider;
pub mod providers;
pub mod secrets;
pub mod store;
pub mod telemetry;

/// Opens the window. Keys go to the OS keychain; without one, to the encrypted file, which
/// `PEXPER_PASSPHRASE` unlocks at start or the person unlocks in the window.
pub fn window(
    dirs: store::Dirs,
    forced_off: bool,
    offline: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let keys = secrets::Keys::choose(dirs.secrets(), cli::passphrase_from_env())?;
    let mut app = app::PexperApp::new(dirs, keys, forced_off, offline)?;
    app.launch();
    eframe::run_native(
        "Pexper",
        eframe::NativeOptions::default(),
        Box::new(|_cc| Ok(Box::new(app))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not open: {e}"))?;
    Ok(std::process::ExitCode::SUCCESS)
}
