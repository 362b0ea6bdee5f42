//! The device's files: settings and workflows as our own JSON files, each written atomically
//! (a temporary file, fsync, rename, fsync of the directory), so a crash mid-write leaves the
//! previous version intact rather than a half-written one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the client keeps things: `--data-dir DIR` puts everything under DIR; otherwise the
/// OS's own places (`~/.config/pexper`, `~/.local/share/pexper` on Linux).
#[derive(Debug, Clone)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
}

impl Dirs {
    pub fn new(data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let dirs = match data_dir {
            Some(dir) => Self {
                config: dir.join("config"),
                data: dir.join("data"),
            },
            None => {
                let p = directories::ProjectDirs::from("com", "Pexper", "pexper")
                    .context("no home directory to keep Pexper's files in")?;
                Self {
                    config: p.config_dir().to_owned(),
                    data: p.data_dir().to_owned(),
                }
            }
        };
        dirs.ensure()?;
        Ok(dirs)
    }

    /// Creates the directories (again, after "delete all local data").
    pub fn ensure(&self) -> anyhow::Result<()> {
        for dir in [&self.config, &self.data, &self.workflows(), &self.outbox()] {
            fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn settings(&self) -> PathBuf {
        self.config.join("settings.json")
    }
    pub fn workflows(&self) -> PathBuf {
        self.data.join("workflows")
    }
    pub fn outbox(&self) -> PathBuf {
        self.data.join("outbox")
    }
    pub fn network_log(&self) -> PathBuf {
        self.data.join("network.log")
    }
    pub fn secrets(&self) -> PathBuf {
        self.config.join("secrets.enc")
    }
}

/// Writes `bytes` to `path` so that readers see either the old file or the new one, never a
/// mix, even across a power cut. Files are private to the user (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a directory")?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path).with_context(|| format!("failed to replace {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not valid", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

/// How much telemetry the person allows (`telemetry` applies it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing leaves the device.
    Off,
    /// Crash reports only.
    Crash,
    /// Crash reports and anonymous usage events.
    All,
}

/// The person's choices. Nothing here is secret: keys live in the secret store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `None` until the person has chosen at first run: nothing is collected before a choice.
    pub telemetry: Option<Level>,
    /// The analytics schema version the person consented to; a new version asks again.
    pub consented_schema_version: Option<u32>,
    /// The kill switch: no request leaves the device.
    pub offline: bool,
    /// Our backend, for telemetry, crash reports and licence checks only.
    pub server_url: String,
    pub ollama_url: String,
    pub lmstudio_url: String,
    /// The crash intake's project and public key (a Sentry DSN's parts).
    pub crash_project: u64,
    pub crash_key: String,
    /// The licence as pasted.
    pub license: Option<String>,
    /// The licence verification key (standard base64); empty: the one built in.
    pub license_public_key: Option<String>,
    /// The latest time the app has seen (Unix seconds): a clock far behind it is flagged.
    pub last_seen: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            telemetry: None,
            consented_schema_version: None,
            offline: false,
            server_url: "https://pexper.com".to_owned(),
            ollama_url: "http://127.0.0.1:11434".to_owned(),
            lmstudio_url: "http://127.0.0.1:1234".to_owned(),
            crash_project: 1,
            crash_key: "pexper-dev".to_owned(),
            license: None,
            license_public_key: None,
            last_seen: 0,
        }
    }
}

impl Settings {
    pub fn load(dirs: &Dirs) -> anyhow::Result<Self> {
        Ok(read_json(&dirs.settings())?.unwrap_or_default())
    }

    pub fn save(&self, dirs: &Dirs) -> anyhow::Result<()> {
        write_json(&dirs.settings(), self)
    }
}

/// A simple prompt workflow: one model call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: String,
    pub name: String,
    pub provider: crate::provider::Provider,
    pub model: String,
    pub prompt: String,
}

impl Workflow {
    fn path(dirs: &Dirs, id: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a workflow id is letters, digits, - and _"
        );
        Ok(dirs.workflows().join(format!("{id}.json")))
    }

    pub fn save(&self, dirs: &Dirs) -> anyhow::Result<()> {
        write_json(&Self::path(dirs, &self.id)?, self)
    }

    pub fn load(dirs: &Dirs, id: &str) -> anyhow::Result<Option<Self>> {
        read_json(&Self::path(dirs, id)?)
    }

    pub fn list(dirs: &Dirs) -> anyhow::Result<Vec<Self>> {
        let mut all = Vec::new();
        for entry in fs::read_dir(dirs.workflows())? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(w) = read_json::<Self>(&path)?
            {
                all.push(w);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}
