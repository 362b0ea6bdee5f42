//! Loading the master key: from `PEXPER_MASTER_KEY`, or in development from a key file that is
//! generated on first use (mode 0600) with a warning.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use secrecy::SecretString;

use crate::config::{Config, Environment};
use crate::crypto::MasterKeys;

/// The development key file, in the env var's format (one `version:base64` per line, current
/// first).
pub fn dev_key_file(config: &Config) -> PathBuf {
    config.data_dir.join("master.key")
}

pub fn load_master_keys(config: &Config) -> anyhow::Result<MasterKeys> {
    if let Some(spec) = &config.master_key {
        return MasterKeys::parse(spec);
    }
    // Config::from_vars already refused production without a key; keep the invariant local.
    anyhow::ensure!(
        config.env == Environment::Development,
        "PEXPER_MASTER_KEY is required in production"
    );
    let path = dev_key_file(config);
    if !path.exists() {
        std::fs::create_dir_all(&config.data_dir)?;
        write_key_file(&path, &format!("1:{}\n", MasterKeys::generate_encoded()))?;
        tracing::warn!(
            path = %path.display(),
            "generated a development master key; set PEXPER_MASTER_KEY in production"
        );
    }
    let spec = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    MasterKeys::parse(&SecretString::from(spec))
}

/// In development, adds a new current version to the key file (the old ones stay, so
/// existing data keys still unwrap until `keys rotate` re-wraps them).
pub fn add_dev_version(config: &Config) -> anyhow::Result<i32> {
    anyhow::ensure!(
        config.master_key.is_none(),
        "PEXPER_MASTER_KEY is set: put the new key first in it as `N:<base64>,<old entries>`, then run `keys rotate`"
    );
    let keys = load_master_keys(config)?;
    let next = keys.versions().max().unwrap_or(0) + 1;
    let path = dev_key_file(config);
    let old = std::fs::read_to_string(&path)?;
    let spec = format!("{next}:{}\n{}", MasterKeys::generate_encoded(), old);
    write_key_file(&path, &spec)?;
    Ok(next)
}

fn write_key_file(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to replace {}", path.display()))
}
