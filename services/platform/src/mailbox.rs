//! The mailboxes the server reads (privacy@ and the bounce address): over IMAP with TLS, or a
//! local Maildir. A reader takes a batch of messages not yet taken, commits what they mean,
//! and only then marks them taken, so a crash in between reads them again (and whoever takes
//! them in must make a message read twice the same: `privacy_letter`, `mail_report`).
//!
//! Taken means: IMAP the keyword `$PexperTaken`, with `\Seen` unless a person still has to
//! read the message (the reader looks only for messages without the keyword, so a person who
//! opens the mailbox first, setting `\Seen`, hides nothing from it; a folder that cannot keep
//! keywords is refused); Maildir: moved from `new/` to `cur/` with the `S` flag (the reader
//! looks at every message in `new/` and every message in `cur/` not flagged `S`: a Maildir is
//! the reader's own, as a mail client reading it would set `S` too).
//!
//! A batch is bounded in bytes as well as in messages, and a message over `MAX_MESSAGE` is
//! read as its headers only: however large the mail someone sends, a read holds at most
//! `BATCH_BYTES` of it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The largest message read whole; a larger one is read as its headers only (its taker
/// decides what that means: a privacy letter becomes a request for the operator to read).
/// A letter's words fit in far less: what is larger is attachments.
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// The most bytes one batch reads (at least one message, however large).
pub const BATCH_BYTES: usize = 16 * 1024 * 1024;

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

    /// Up to `limit` messages not yet taken and not in `skip` (read already in this run),
    /// oldest first, at most `BATCH_BYTES` of them.
    pub async fn untaken(
        &mut self,
        limit: usize,
        skip: &HashSet<String>,
    ) -> anyhow::Result<Vec<Incoming>> {
        match self {
            Mailbox::Maildir(path) => {
                let (path, skip) = (path.clone(), skip.clone());
                tokio::task::spawn_blocking(move || maildir_untaken(&path, limit, &skip)).await?
            }
            Mailbox::Imap(session) => {
                tokio::time::timeout(IMAP_TIMEOUT, imap_untaken(session, limit, skip))
                    .await
                    .context("the IMAP server did not answer in time")?
            }
        }
    }

    /// Marks messages taken, once what they meant is committed: `read` also marks them read
    /// (IMAP `\Seen`), for what no person needs to read in the mailbox.
    pub async fn mark_taken(&mut self, ids: &[String], read: bool) -> anyhow::Result<()> {
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
                let flags = if read {
                    format!("(\\Seen {TAKEN})")
                } else {
                    format!("({TAKEN})")
                };
                let done = async {
                    session
                        .uid_store(&set, format!("+FLAGS.SILENT {flags}"))
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
    let opened = session
        .select(folder)
        .await
        .with_context(|| format!("failed to open the IMAP folder {folder}"))?;
    // Without a keyword that sticks, every read would take the same messages again.
    let keeps_keywords = opened.permanent_flags.iter().any(|flag| match flag {
        async_imap::types::Flag::MayCreate => true,
        async_imap::types::Flag::Custom(name) => name == TAKEN,
        _ => false,
    });
    anyhow::ensure!(
        keeps_keywords,
        "the IMAP folder {folder} cannot keep the keyword {TAKEN}, which marks what was taken in: use a folder or server that keeps keywords"
    );
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
    skip: &HashSet<String>,
) -> anyhow::Result<Vec<Incoming>> {
    let mut uids: Vec<u32> = session
        .uid_search(format!("UNKEYWORD {TAKEN}"))
        .await
        .context("failed to search the IMAP folder")?
        .into_iter()
        .filter(|uid| !skip.contains(&uid.to_string()))
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
    let mut sizes: Vec<(u32, usize)> = session
        .uid_fetch(set(&uids), "(UID RFC822.SIZE)")
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .iter()
        // No size given: read as too large, its headers only.
        .filter_map(|f| Some((f.uid?, f.size.map_or(usize::MAX, |s| s as usize))))
        .collect();
    sizes.sort_unstable();
    let batch = within_budget(sizes);
    let (small, large): (Vec<u32>, Vec<u32>) = (
        batch
            .iter()
            .filter(|(_, whole)| *whole)
            .map(|(uid, _)| *uid)
            .collect(),
        batch
            .iter()
            .filter(|(_, whole)| !*whole)
            .map(|(uid, _)| *uid)
            .collect(),
    );
    let mut out = Vec::with_capacity(batch.len());
    for (list, query, whole) in [
        (small, "(UID BODY.PEEK[])", true),
        (large, "(UID BODY.PEEK[HEADER])", false),
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

/// The messages of a batch, oldest first, while their bytes stay within `BATCH_BYTES` (the
/// first always), each with whether it is read whole (else its headers only, counted as
/// 64 KiB).
fn within_budget<T>(sizes: Vec<(T, usize)>) -> Vec<(T, bool)> {
    let mut spent = 0usize;
    let mut batch = Vec::new();
    for (id, size) in sizes {
        let whole = size <= MAX_MESSAGE;
        let cost = if whole { size } else { 64 * 1024 };
        if !batch.is_empty() && spent + cost > BATCH_BYTES {
            break;
        }
        spent += cost;
        batch.push((id, whole));
    }
    batch
}

/// A Maildir file name's flags (`…:2,FS`), if any.
fn maildir_flags(name: &str) -> &str {
    name.rsplit_once(":2,").map_or("", |(_, flags)| flags)
}

fn maildir_untaken(
    path: &Path,
    limit: usize,
    skip: &HashSet<String>,
) -> anyhow::Result<Vec<Incoming>> {
    let mut names: Vec<(String, String)> = Vec::new();
    for sub in ["new", "cur"] {
        let dir = path.join(sub);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("failed to read {}", dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                || (sub == "cur" && maildir_flags(&name).contains('S'))
                || skip.contains(&format!("{sub}/{name}"))
            {
                continue;
            }
            names.push((sub.to_owned(), name));
        }
    }
    // Maildir names start with the delivery time: sorted, they are oldest first.
    names.sort_by(|a, b| a.1.cmp(&b.1));
    names.truncate(limit);
    let mut sizes = Vec::with_capacity(names.len());
    for (sub, name) in names {
        let file = path.join(&sub).join(&name);
        match std::fs::metadata(&file) {
            Ok(m) => sizes.push(((sub, name), m.len() as usize)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // taken meanwhile
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", file.display())),
        }
    }
    let mut out = Vec::new();
    for ((sub, name), whole) in within_budget(sizes) {
        let file = path.join(&sub).join(&name);
        let (raw, whole) = if whole {
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
    fn a_batch_reads_at_most_its_bytes_and_a_huge_message_as_its_headers() {
        let mb = 1024 * 1024;
        // Many messages just under the limit: a batch holds what fits in its bytes.
        let batch = within_budget((0..200).map(|i| (i, MAX_MESSAGE - 1)).collect());
        assert_eq!(batch.len(), BATCH_BYTES / (MAX_MESSAGE - 1));
        assert!(batch.iter().all(|(_, whole)| *whole));
        // One message larger than the whole budget is still read (its headers), alone first.
        let batch = within_budget(vec![(1, 100 * mb), (2, mb), (3, usize::MAX)]);
        assert_eq!(batch, vec![(1, false), (2, true), (3, false)]);
        assert_eq!(within_budget(vec![(1, 20 * mb)]), vec![(1, false)]);
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
        let found = maildir_untaken(&dir, 10, &HashSet::new()).expect("reads");
        let ids: Vec<&str> = found.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["new/1.a.host", "cur/2.b.host:2,F"]);
        assert!(found.iter().all(|m| m.whole));
        maildir_mark_taken(&dir, &[found[0].id.clone(), found[1].id.clone()]).expect("marks");
        assert!(
            maildir_untaken(&dir, 10, &HashSet::new())
                .expect("reads")
                .is_empty()
        );
        assert!(dir.join("cur/1.a.host:2,S").exists());
        assert!(dir.join("cur/2.b.host:2,FS").exists());
        assert!(maildir_mark_taken(&dir, &["../../etc/passwd".into()]).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
