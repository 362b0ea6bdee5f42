//! Provider API keys: behind one trait so the OS keychain, an encrypted file, or (in tests)
//! `keyring-core`'s mock store can hold them. Never in plaintext on disk, never in a log, an
//! export, a crash report or the UI tree (the key field is a password field).
//!
//! The encrypted file is unlocked by a passphrase the person chooses: argon2id stretches it
//! into an AES-256-GCM key (a key compiled into the app would only be obfuscation).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use keyring_core::api::CredentialStore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Where a key is kept, and why there if not in the keychain.
pub trait SecretStore: Send + Sync {
    /// What to show in the UI: "OS keychain", "encrypted file", …
    fn backend(&self) -> String;
    fn get(&self, name: &str) -> anyhow::Result<Option<SecretString>>;
    fn set(&self, name: &str, value: &SecretString) -> anyhow::Result<()>;
    fn delete(&self, name: &str) -> anyhow::Result<()>;
}

/// The service name under which keys sit in the OS keychain; the account is the provider.
const KEYCHAIN_SERVICE: &str = "pexper";

/// The OS keychain (macOS Keychain, Windows Credential Manager, the Secret Service on Linux)
/// through `keyring-core`, or any other `keyring-core` store (its mock store in tests).
pub struct KeychainStore {
    store: Arc<CredentialStore>,
    name: String,
}

impl std::fmt::Debug for KeychainStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeychainStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KeychainStore {
    /// Any `keyring-core` store, shown in the UI as `name`.
    pub fn new(store: Arc<CredentialStore>, name: &str) -> Self {
        Self {
            store,
            name: name.to_owned(),
        }
    }

    /// This OS's keychain, if it answers a lookup; else why not, in words for the UI
    /// (headless Linux has no Secret Service on a session bus).
    pub fn system() -> Result<Self, String> {
        let store = system_store().map_err(|e| format!("no OS keychain: {e}"))?;
        let this = Self::new(store, "OS keychain");
        match this.get("availability-check") {
            Ok(_) => Ok(this),
            Err(e) => Err(format!("the OS keychain did not answer: {e}")),
        }
    }

    fn entry(&self, name: &str) -> anyhow::Result<keyring_core::Entry> {
        Ok(keyring_core::Entry::new_in_store(
            &self.store,
            KEYCHAIN_SERVICE,
            name,
        )?)
    }
}

#[cfg(target_os = "linux")]
fn system_store() -> keyring_core::Result<Arc<CredentialStore>> {
    Ok(zbus_secret_service_keyring_store::Store::new()?)
}

#[cfg(target_os = "macos")]
fn system_store() -> keyring_core::Result<Arc<CredentialStore>> {
    Ok(apple_native_keyring_store::keychain::Store::new()?)
}

#[cfg(target_os = "windows")]
fn system_store() -> keyring_core::Result<Arc<CredentialStore>> {
    Ok(windows_native_keyring_store::Store::new()?)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn system_store() -> keyring_core::Result<Arc<CredentialStore>> {
    Err(keyring_core::Error::NoDefaultStore)
}

impl SecretStore for KeychainStore {
    fn backend(&self) -> String {
        self.name.clone()
    }
    fn get(&self, name: &str) -> anyhow::Result<Option<SecretString>> {
        match self.entry(name)?.get_password() {
            Ok(value) => Ok(Some(SecretString::from(value))),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn set(&self, name: &str, value: &SecretString) -> anyhow::Result<()> {
        Ok(self.entry(name)?.set_password(value.expose_secret())?)
    }
    fn delete(&self, name: &str) -> anyhow::Result<()> {
        match self.entry(name)?.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The shortest passphrase a new key file takes: long enough that argon2id makes guessing it
/// offline hopeless, short enough to type.
pub const MIN_PASSPHRASE: usize = 12;

/// The store in use: the OS keychain when it answers; else the encrypted file, which stays
/// locked until its passphrase is given (`PEXPER_PASSPHRASE`, or the field in the window).
pub enum Keys {
    Keychain(KeychainStore),
    File(EncryptedFileStore),
    Locked { path: PathBuf, reason: String },
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.backend())
    }
}

impl Keys {
    /// The keychain if it answers, else the file at `path` (opened now if `passphrase` is given).
    pub fn choose(path: PathBuf, passphrase: Option<SecretString>) -> anyhow::Result<Self> {
        let reason = match KeychainStore::system() {
            Ok(keychain) => return Ok(Self::Keychain(keychain)),
            Err(reason) => reason,
        };
        let mut keys = Self::Locked { path, reason };
        if let Some(passphrase) = passphrase {
            keys.unlock(&passphrase)?;
        }
        Ok(keys)
    }

    /// Opens the locked file (creating it on first use, with a passphrase of at least
    /// `MIN_PASSPHRASE` characters, whether typed in the window or given by
    /// `PEXPER_PASSPHRASE`). A wrong or too short passphrase leaves it locked.
    pub fn unlock(&mut self, passphrase: &SecretString) -> anyhow::Result<()> {
        if self.is_new_file() && passphrase.expose_secret().chars().count() < MIN_PASSPHRASE {
            anyhow::bail!(
                "that passphrase is too short for a new key file: use at least {MIN_PASSPHRASE} characters"
            );
        }
        if let Self::Locked { path, reason } = self {
            let store = EncryptedFileStore::open(path.clone(), passphrase, reason)?;
            *self = Self::File(store);
        }
        Ok(())
    }

    pub fn store(&self) -> Option<&dyn SecretStore> {
        match self {
            Self::Keychain(store) => Some(store),
            Self::File(store) => Some(store),
            Self::Locked { .. } => None,
        }
    }

    /// Deletes every key: from the keychain entry by entry; the file as a whole, which locks
    /// again (a new one needs a passphrase again).
    pub fn erase_all(&mut self, names: &[&str]) -> anyhow::Result<()> {
        match self {
            Self::Keychain(store) => {
                for name in names {
                    store.delete(name)?;
                }
            }
            Self::File(store) => {
                let (path, reason) = (store.path.clone(), store.reason.clone());
                *self = Self::Locked { path, reason };
            }
            Self::Locked { .. } => {}
        }
        if let Self::Locked { path, .. } = self {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// What the UI shows: where keys are kept and, for the file, why not in the keychain.
    pub fn backend(&self) -> String {
        match self {
            Self::Keychain(store) => store.backend(),
            Self::File(store) => store.backend(),
            Self::Locked { reason, .. } => format!("encrypted file, locked ({reason})"),
        }
    }

    /// True when the locked file does not exist yet: the passphrase given will create it.
    pub fn is_new_file(&self) -> bool {
        matches!(self, Self::Locked { path, .. } if !path.exists())
    }

    /// A provider's key, or why there is none.
    pub fn key(&self, provider: &str) -> anyhow::Result<SecretString> {
        let store = self.store().with_context(|| {
            format!(
                "keys are in the {}: unlock it with its passphrase",
                self.backend()
            )
        })?;
        store
            .get(provider)?
            .with_context(|| format!("no key for {provider}"))
    }
}

const MAGIC: &[u8; 8] = b"PXSECRT1";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// An AES-256-GCM file keyed by argon2id(passphrase, salt): `MAGIC ‖ salt ‖ nonce ‖ sealed
/// JSON map`. Written atomically; the header is bound as associated data.
pub struct EncryptedFileStore {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
    salt: [u8; SALT_LEN],
    reason: String,
}

impl std::fmt::Debug for EncryptedFileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedFileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EncryptedFileStore {
    /// Opens (or creates) the file with `passphrase`; a wrong passphrase is an error, never an
    /// empty store that would overwrite the real one. `reason` says why the keychain is not in
    /// use, for the UI.
    pub fn open(path: PathBuf, passphrase: &SecretString, reason: &str) -> anyhow::Result<Self> {
        let salt = match std::fs::read(&path) {
            Ok(bytes) => {
                anyhow::ensure!(
                    bytes.len() > MAGIC.len() + SALT_LEN && bytes.starts_with(MAGIC),
                    "{} is not a Pexper secret file",
                    path.display()
                );
                bytes[MAGIC.len()..MAGIC.len() + SALT_LEN].try_into()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = [0u8; SALT_LEN];
                rand::fill(&mut salt);
                salt
            }
            Err(e) => return Err(e).context("failed to read the secret file"),
        };
        let mut key = Zeroizing::new([0u8; 32]);
        argon2::Argon2::default()
            .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, key.as_mut())
            .map_err(|e| anyhow::anyhow!("failed to derive the file key: {e}"))?;
        let store = Self {
            path,
            key,
            salt,
            reason: reason.to_owned(),
        };
        store.read()?; // Checks the passphrase now.
        Ok(store)
    }

    fn header(&self) -> Vec<u8> {
        [MAGIC.as_slice(), &self.salt].concat()
    }

    fn read(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).context("failed to read the secret file"),
        };
        let header = self.header();
        let rest = bytes
            .get(header.len()..)
            .context("a truncated secret file")?;
        anyhow::ensure!(rest.len() > NONCE_LEN, "a truncated secret file");
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into()?;
        let cipher = Aes256Gcm::new_from_slice(self.key.as_slice()).expect("32-byte key");
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &header,
                    },
                )
                .map_err(|_| anyhow::anyhow!("wrong passphrase, or the secret file was altered"))?,
        );
        Ok(serde_json::from_slice(&plain)?)
    }

    fn write(&self, map: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let plain = Zeroizing::new(serde_json::to_vec(map)?);
        let header = self.header();
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let cipher = Aes256Gcm::new_from_slice(self.key.as_slice()).expect("32-byte key");
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &header,
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        crate::store::write_atomic(&self.path, &[header.as_slice(), &nonce, &sealed].concat())
    }
}

impl SecretStore for EncryptedFileStore {
    fn backend(&self) -> String {
        format!("encrypted file ({})", self.reason)
    }
    fn get(&self, name: &str) -> anyhow::Result<Option<SecretString>> {
        Ok(self.read()?.remove(name).map(SecretString::from))
    }
    fn set(&self, name: &str, value: &SecretString) -> anyhow::Result<()> {
        let mut map = self.read()?;
        map.insert(name.to_owned(), value.expose_secret().to_owned());
        self.write(&map)
    }
    fn delete(&self, name: &str) -> anyhow::Result<()> {
        let mut map = self.read()?;
        map.remove(name);
        self.write(&map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_encrypted_and_a_wrong_passphrase_opens_nothing() {
        let dir = std::env::temp_dir().join(format!("pexper-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secrets.enc");
        let pass = SecretString::from("correct horse battery staple");
        let planted = "sk-planted-0123456789abcdefghij";
        let store = EncryptedFileStore::open(path.clone(), &pass, "no keychain").expect("opens");
        store
            .set("openai", &SecretString::from(planted))
            .expect("set");
        let bytes = std::fs::read(&path).expect("file");
        assert!(
            !bytes
                .windows(planted.len())
                .any(|w| w == planted.as_bytes()),
            "never in clear"
        );
        let again = EncryptedFileStore::open(path.clone(), &pass, "no keychain").expect("reopens");
        assert_eq!(
            again
                .get("openai")
                .expect("get")
                .map(|s| s.expose_secret().to_owned())
                .as_deref(),
            Some(planted)
        );
        assert!(EncryptedFileStore::open(path, &SecretString::from("wrong"), "x").is_err());
        assert!(again.backend().starts_with("encrypted file"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
