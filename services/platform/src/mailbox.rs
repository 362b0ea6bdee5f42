//! The mailboxes the server reads (privacy@ and the bounce address): over IMAP with TLS, or a
//! local Maildir. A reader takes a batch of messages not yet taken, commits what they mean,
//! and only then marks them taken, so a crash in between reads them again (and whoever takes
//! them in must make a message read twice the same: `privacy_letter`, `mail_report`).
//!
//! Taken means: IMAP `\Seen` plus the keyword `$PexperTaken` (the reader looks only for
//! messages without the keyword, so a person who opens the mailbox first, setting `\Seen`,
//! hides nothing from it); Maildir: moved from `new/` to `cur/` with the `S` flag (the
//! reader looks at every message in `new/` and every message in `cur/` not flagged `S`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The largest message read whole; a larger one is read as its headers only (its taker
/// decides what that means: a privacy letter becomes a request for the operator to read).
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// The IMAP keyword a taken message carries.
const TAKEN: &str = "$PexperTaken";

/// How long one IMAP exchange may take before the run gives up (and the next run retries).
const IMAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a mailbox is: `imaps://user@host[:port]/FOLDER` or `maildir:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxUrl {
    Imap {
        user: String,
        host: String,
        port: u16,
        folder: String,
    },
    Maildir(PathBuf),
}

impl MailboxUrl {
    /// Parses a mailbox setting; `name` is the variable's, for the error.
    pub fn parse(name: &str, value: &str) -> anyhow::Result<Self> {
        let shape = || {
            format!(
                "{name} must be imaps://user@host[:port]/FOLDER or maildir:/path (the password goes in PEXPER_IMAP_PASSWORD or PEXPER_IMAP_PASSWORD_FILE)"
            )
        };
        if let Some(path) = value.strip_prefix("maildir:") {
            anyhow::ensure!(path.starts_with('/'), shape());
            return Ok(MailboxUrl::Maildir(PathBuf::from(path)));
        }
        let rest = value.strip_prefix("imaps://").with_context(shape)?;
        let (authority, folder) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, host_port) = authority.rsplit_once('@').with_context(shape)?;
        anyhow::ensure!(!user.is_empty() && !user.contains(':'), shape());
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok().with_context(shape)?),
            None => (host_port, 993),
        };
        anyhow::ensure!(!host.is_empty(), shape());
        let folder = percent_decode(folder).with_context(shape)?;
        Ok(MailboxUrl::Imap {
            user: percent_decode(user).with_context(shape)?,
            host: host.to_owned(),
            port,
            folder: if folder.is_empty() {
                "INBOX".to_owned()
            } else {
                folder
            },
        })
    }
}

/// `%40` → `@`: user names are often addresses, and a URL cannot carry `@` twice.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// How to log in and whom to trust, for IMAP.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    /// A PEM CA the server's certificate may chain to, besides the public roots.
    pub ca_file: Option<PathBuf>,
}

/// One message not yet taken.
#[derive(Debug)]
pub struct Incoming {
    /// The IMAP UID, or the Maildir file name.
    pub id: String,
    pub raw: Vec<u8>,
    /// False when only its headers were read (over `MAX_MESSAGE`).
    pub whole: bool,
}

/// An open mailbox.
pub enum Mailbox {
    Imap(Box<async_imap::Session<TlsStream<TcpStream>>>),
    Maildir(PathBuf),
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailbox::Imap(_) => f.write_str("Mailbox::Imap"),
            Mailbox::Maildir(path) => f.debug_tuple("Mailbox::Maildir").field(path).finish(),
        }
    }
}

impl Mailbox {
    pub async fn open(url: &MailboxUrl, credentials: &Credentials) -> anyhow::Result<Self> {
        match url {
            MailboxUrl::Maildir(path) => {
                for sub in ["new", "cur"] {
                    anyhow::ensure!(
                        path.join(sub).is_dir(),
                        "{} is not a maildir (no {sub}/)",
                        path.display()
                    );
                }
                Ok(Mailbox::Maildir(path.clone()))
            }
            MailboxUrl::Imap {
                user,
                host,
                port,
                folder,
            } => {
                let session = tokio::time::timeout(
                    IMAP_TIMEOUT,
                    imap_login(user, host, *port, folder, credentials),
                )
                .await
                .context("the IMAP server did not answer in time")??;
                Ok(Mailbox::Imap(Box::new(session)))
            }
        }
    }

    /// Up to `limit` messages not yet taken, oldest first.
    pub async fn untaken(&mut self, limit: usize) -> anyhow::Result<Vec<Incoming>> {
        match self {
            Mailbox::Maildir(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || maildir_untaken(&path, limit)).await?
            }
            Mailbox::Imap(session) => {
                tokio::time::timeout(IMAP_TIMEOUT, imap_untaken(session, limit))
                    .await
                    .context("the IMAP server did not answer in time")?
            }
        }
    }

    /// Marks messages taken, once what they meant is committed.
    pub async fn mark_taken(&mut self, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Mailbox::Maildir(path) => {
                let (path, ids) = (path.clone(), ids.to_vec());
                tokio::task::spawn_blocking(move || maildir_mark_taken(&path, &ids)).await?
            }
            Mailbox::Imap(session) => {
                let set = ids.join(",");
                let done = async {
                    session
                        .uid_store(&set, format!("+FLAGS.SILENT (\\Seen {TAKEN})"))
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                };
                tokio::time::timeout(IMAP_TIMEOUT, done)
                    .await
                    .context("the IMAP server did not answer in time")?
                    .context("failed to mark messages taken")?;
                Ok(())
            }
        }
    }

    /// Says goodbye to an IMAP server (a Maildir has nothing to close).
    pub async fn close(self) {
        if let Mailbox::Imap(mut session) = self {
            let _ = tokio::time::timeout(IMAP_TIMEOUT, session.logout()).await;
        }
    }
}

async fn imap_login(
    user: &str,
    host: &str,
    port: u16,
    folder: &str,
    credentials: &Credentials,
) -> anyhow::Result<async_imap::Session<TlsStream<TcpStream>>> {
    let password = match (&credentials.password, &credentials.password_file) {
        (Some(password), _) => password.clone(),
        (None, Some(file)) => SecretString::from(
            std::fs::read_to_string(file)
                .with_context(|| format!("failed to read {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => {
            bail!("an IMAP mailbox needs PEXPER_IMAP_PASSWORD or PEXPER_IMAP_PASSWORD_FILE")
        }
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("failed to connect to the IMAP server {host}:{port}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host} is not a host name"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config(credentials.ca_file.as_deref())?)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with the IMAP server {host}:{port} failed"))?;
    let mut client = async_imap::Client::new(tls);
    client
        .read_response()
        .await?
        .context("the IMAP server closed the connection before its greeting")?;
    let mut session = client
        .login(user, password.expose_secret())
        .await
        .map_err(|(e, _)| e)
        .context("the IMAP server refused the login")?;
    session
        .select(folder)
        .await
        .with_context(|| format!("failed to open the IMAP folder {folder}"))?;
    Ok(session)
}

fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        for cert in CertificateDer::pem_file_iter(file)
            .with_context(|| format!("failed to read {}", file.display()))?
        {
            roots.add(
                cert.with_context(|| format!("{} holds a bad certificate", file.display()))?,
            )?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn imap_untaken(
    session: &mut async_imap::Session<TlsStream<TcpStream>>,
    limit: usize,
) -> anyhow::Result<Vec<Incoming>> {
    let mut uids: Vec<u32> = session
        .uid_search(format!("UNKEYWORD {TAKEN}"))
        .await
        .context("failed to search the IMAP folder")?
        .into_iter()
        .collect();
    uids.sort_unstable();
    uids.truncate(limit);
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let set = |uids: &[u32]| {
        uids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let sizes: Vec<(u32, u32)> = session
        .uid_fetch(set(&uids), "(UID RFC822.SIZE)")
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .iter()
        .filter_map(|f| Some((f.uid?, f.size.unwrap_or(0))))
        .collect();
    let (small, large): (Vec<_>, Vec<_>) = sizes
        .into_iter()
        .partition(|(_, size)| *size as usize <= MAX_MESSAGE);
    let mut out = Vec::with_capacity(small.len() + large.len());
    let uids_of = |list: &[(u32, u32)]| list.iter().map(|(uid, _)| *uid).collect::<Vec<_>>();
    for (list, query, whole) in [
        (uids_of(&small), "(UID BODY.PEEK[])", true),
        (uids_of(&large), "(UID BODY.PEEK[HEADER])", false),
    ] {
        if list.is_empty() {
            continue;
        }
        let fetched = session
            .uid_fetch(set(&list), query)
            .await?
            .try_collect::<Vec<_>>()
            .await
            .context("failed to fetch messages")?;
        for fetch in fetched {
            let (Some(uid), Some(raw)) =
                (fetch.uid, if whole { fetch.body() } else { fetch.header() })
            else {
                continue;
            };
            out.push(Incoming {
                id: uid.to_string(),
                raw: raw.to_vec(),
                whole,
            });
        }
    }
    out.sort_by_key(|m| m.id.parse::<u32>().unwrap_or(u32::MAX));
    Ok(out)
}

/// A Maildir file name's flags (`…:2,FS`), if any.
fn maildir_flags(name: &str) -> &str {
    name.rsplit_once(":2,").map_or("", |(_, flags)| flags)
}

fn maildir_untaken(path: &Path, limit: usize) -> anyhow::Result<Vec<Incoming>> {
    let mut names: Vec<(String, String)> = Vec::new();
    for sub in ["new", "cur"] {
        let dir = path.join(sub);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("failed to read {}", dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || (sub == "cur" && maildir_flags(&name).contains('S')) {
                continue;
            }
            names.push((sub.to_owned(), name));
        }
    }
    // Maildir names start with the delivery time: sorted, they are oldest first.
    names.sort_by(|a, b| a.1.cmp(&b.1));
    names.truncate(limit);
    let mut out = Vec::with_capacity(names.len());
    for (sub, name) in names {
        let file = path.join(&sub).join(&name);
        let size = match std::fs::metadata(&file) {
            Ok(m) => m.len() as usize,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // taken meanwhile
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", file.display())),
        };
        let (raw, whole) = if size <= MAX_MESSAGE {
            (std::fs::read(&file)?, true)
        } else {
            (maildir_header(&file)?, false)
        };
        out.push(Incoming {
            id: format!("{sub}/{name}"),
            raw,
            whole,
        });
    }
    Ok(out)
}

/// The header of a message too large to read whole: up to its first empty line, at most 1 MiB.
fn maildir_header(file: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(file)?
        .take(1024 * 1024)
        .read_to_end(&mut head)?;
    for end in [&b"\r\n\r\n"[..], b"\n\n"] {
        if let Some(at) = head.windows(end.len()).position(|w| w == end) {
            head.truncate(at + end.len());
            break;
        }
    }
    Ok(head)
}

fn maildir_mark_taken(path: &Path, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        let (sub, name) = id.split_once('/').context("not a maildir message id")?;
        anyhow::ensure!(
            matches!(sub, "new" | "cur") && !name.contains('/'),
            "not a maildir message id"
        );
        let (base, flags) = match name.rsplit_once(":2,") {
            Some((base, flags)) => (base, flags.to_owned()),
            None => (name, String::new()),
        };
        let mut flags: Vec<char> = flags.chars().chain(['S']).collect();
        flags.sort_unstable();
        flags.dedup();
        let taken = format!("{base}:2,{}", flags.into_iter().collect::<String>());
        std::fs::rename(path.join(sub).join(name), path.join("cur").join(taken))
            .with_context(|| format!("failed to mark {id} taken"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_settings_read_as_imap_or_maildir() {
        assert_eq!(
            MailboxUrl::parse("X", "imaps://privacy%40pexper.com@imap.fastmail.com/INBOX")
                .expect("parses"),
            MailboxUrl::Imap {
                user: "privacy@pexper.com".into(),
                host: "imap.fastmail.com".into(),
                port: 993,
                folder: "INBOX".into()
            }
        );
        assert_eq!(
            MailboxUrl::parse("X", "imaps://bounces@127.0.0.1:10993").expect("parses"),
            MailboxUrl::Imap {
                user: "bounces".into(),
                host: "127.0.0.1".into(),
                port: 10993,
                folder: "INBOX".into()
            }
        );
        assert_eq!(
            MailboxUrl::parse("X", "maildir:/var/mail/privacy").expect("parses"),
            MailboxUrl::Maildir(PathBuf::from("/var/mail/privacy"))
        );
        for bad in [
            "imap://u@host/INBOX",
            "imaps://u:secret@host/INBOX",
            "imaps://host/INBOX",
            "imaps://u@host:port/INBOX",
            "maildir:relative",
            "pop3://u@host",
        ] {
            let e = MailboxUrl::parse("PEXPER_PRIVACY_IMAP_URL", bad).expect_err(bad);
            assert!(e.to_string().contains("PEXPER_PRIVACY_IMAP_URL"), "{bad}");
            assert!(!e.to_string().contains("secret"));
        }
    }

    #[test]
    fn a_maildir_message_is_taken_once_and_keeps_its_flags() {
        let dir = std::env::temp_dir().join(format!("pexper-maildir-{}", uuid::Uuid::new_v4()));
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        std::fs::write(dir.join("new/1.a.host"), b"Subject: one\r\n\r\nhi").expect("write");
        std::fs::write(dir.join("cur/2.b.host:2,F"), b"Subject: two\r\n\r\nhi").expect("write");
        std::fs::write(dir.join("cur/0.c.host:2,S"), b"Subject: old\r\n\r\nhi").expect("write");
        let found = maildir_untaken(&dir, 10).expect("reads");
        let ids: Vec<&str> = found.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["new/1.a.host", "cur/2.b.host:2,F"]);
        assert!(found.iter().all(|m| m.whole));
        maildir_mark_taken(&dir, &[found[0].id.clone(), found[1].id.clone()]).expect("marks");
        assert!(maildir_untaken(&dir, 10).expect("reads").is_empty());
        assert!(dir.join("cur/1.a.host:2,S").exists());
        assert!(dir.join("cur/2.b.host:2,FS").exists());
        assert!(maildir_mark_taken(&dir, &["../../etc/passwd".into()]).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
