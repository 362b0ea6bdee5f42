//! Loading the root secrets — the master key and the licence signing key — from their
//! environment variables, or in development from key files in the data dir that are generated
//! on first use (mode 0600) with a warning; and the deployment's lookup keys from Postgres.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use secrecy::{ExposeSecret, SecretString};

use sqlx::PgPool;

use crate::config::{Config, Environment};
use crate::crypto::{Keyring, LookupPurpose, MasterKeys, WrappedKey};

/// The development key file, in the env var's format (one `version:base64` per line, current
/// first).
pub fn dev_key_file(config: &Config) -> PathBuf {
    config.data_dir.join("master.key")
}

pub fn load_master_keys(config: &Config) -> anyhow::Result<MasterKeys> {
    let spec = load_secret(
        config,
        config.master_key.as_ref(),
        "PEXPER_MASTER_KEY",
        &dev_key_file(config),
        || format!("1:{}\n", MasterKeys::generate_encoded()),
    )?;
    MasterKeys::parse(&spec)
}

/// The keyring with the deployment's lookup keys (see `crypto`). The first process to start
/// stores the ones derived from its current master version; a concurrent first start stores
/// nothing (`ON CONFLICT DO NOTHING`) and reads the winner's, so every process uses the same.
pub async fn keyring(pool: &PgPool, master: &MasterKeys) -> anyhow::Result<Keyring> {
    let derived = Keyring::new(master);
    for (purpose, wrapped) in derived.wrap_lookup_keys() {
        sqlx::query(
            "INSERT INTO lookup_key (purpose, master_version, wrapped) VALUES ($1, $2, $3)
             ON CONFLICT (purpose) DO NOTHING",
        )
        .bind(purpose.as_str())
        .bind(wrapped.master_version)
        .bind(wrapped.bytes)
        .execute(pool)
        .await
        .context("failed to store the lookup keys")?;
    }
    let stored = stored_lookup_keys(pool).await?;
    let versions: Vec<i32> = master.versions().collect();
    derived.with_lookup_keys(&stored).map_err(|e| {
        let wrapped_under: Vec<i32> = stored.iter().map(|(_, w)| w.master_version).collect();
        anyhow::anyhow!(
            "cannot open the lookup keys ({e}): they are wrapped under master key version(s) \
             {wrapped_under:?} and PEXPER_MASTER_KEY lists {versions:?}; give this process every \
             version `pexper-admin keys status` names (README: Rotating the master key)"
        )
    })
}

async fn stored_lookup_keys(pool: &PgPool) -> anyhow::Result<Vec<(LookupPurpose, WrappedKey)>> {
    let rows: Vec<(String, i32, Vec<u8>)> =
        sqlx::query_as("SELECT purpose, master_version, wrapped FROM lookup_key")
            .fetch_all(pool)
            .await
            .context("failed to load the lookup keys")?;
    rows.into_iter()
        .map(|(purpose, master_version, bytes)| {
            let purpose = LookupPurpose::parse(&purpose)
                .with_context(|| format!("unknown lookup key purpose {purpose}"))?;
            Ok((
                purpose,
                WrappedKey {
                    master_version,
                    bytes,
                },
            ))
        })
        .collect()
}

/// Re-wraps the lookup keys under the current master version (they do not change).
pub async fn rewrap_lookup_keys(pool: &PgPool, keyring: &Keyring) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (purpose, wrapped) in keyring.wrap_lookup_keys() {
        sqlx::query(
            "UPDATE lookup_key SET master_version = $2, wrapped = $3, updated_at = now()
             WHERE purpose = $1",
        )
        .bind(purpose.as_str())
        .bind(wrapped.master_version)
        .bind(wrapped.bytes)
        .execute(&mut *tx)
        .await
        .context("failed to store a re-wrapped lookup key")?;
    }
    tx.commit().await?;
    Ok(())
}

/// How many lookup keys are wrapped under each master version.
pub async fn lookup_key_versions(pool: &PgPool) -> anyhow::Result<Vec<(i32, i64)>> {
    sqlx::query_as("SELECT master_version, count(*) FROM lookup_key GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .context("failed to count lookup keys")
}

/// The Ed25519 key licences are signed with: `PEXPER_LICENSE_KEY` (standard base64 of the
/// 32-byte secret), or in development `<data dir>/license.key`.
pub fn load_license_key(config: &Config) -> anyhow::Result<SigningKey> {
    let encoded = load_secret(
        config,
        config.license_key.as_ref(),
        "PEXPER_LICENSE_KEY",
        &config.data_dir.join("license.key"),
        || {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            rand::fill(&mut seed[..]);
            format!("{}\n", STANDARD.encode(seed.as_slice()))
        },
    )?;
    let seed: [u8; 32] = STANDARD
        .decode(encoded.expose_secret().trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("PEXPER_LICENSE_KEY must be the standard base64 of 32 bytes")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A secret from its variable, or in development from `path`, written by `generate` first if
/// it does not exist yet.
fn load_secret(
    config: &Config,
    configured: Option<&SecretString>,
    variable: &str,
    path: &std::path::Path,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<SecretString> {
    if let Some(value) = configured {
        return Ok(value.clone());
    }
    // Config::from_vars already refused production without it; keep the invariant local.
    anyhow::ensure!(
        config.env == Environment::Development,
        "{variable} is required in production"
    );
    if !path.exists() {
        std::fs::create_dir_all(&config.data_dir)?;
        write_key_file(path, &generate())?;
        tracing::warn!(
            path = %path.display(),
            "generated a development key; set {variable} in production"
        );
    }
    let contents = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(SecretString::from(contents))
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
