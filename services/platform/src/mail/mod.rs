//! Mail: templates, the three delivery backends, and the job-side `deliver` step.
//!
//! Mail is only ever sent from the job queue (never inside a request). Each message's
//! Message-ID is derived from its job id, so a retry after a crash sends a message the
//! receiving side recognises as the same one, and a message already recorded as sent is not
//! sent again.

pub mod bounces;
mod dkim;
mod templates;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::crypto::Keyring;

use crate::address::EmailAddress;
use crate::config::Config;
use crate::jobs::{Job, JobError, SentEmail};
use crate::person::PersonId;

pub use templates::{EmailTemplate, MailClass, OperatorNotice, Rendered, paragraphs};

/// An email ready to go.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    pub to: EmailAddress,
    pub rendered: Rendered,
    /// `<job id@sender's domain>`: the same on every attempt of the job that sends it.
    pub message_id: String,
    /// The envelope sender's tag (`bounce_tag`): the job id and a MAC of it.
    pub bounce_tag: String,
    /// Extra headers, e.g. `List-Unsubscribe` (RFC 8058) on product email.
    pub headers: Vec<(&'static str, String)>,
}

/// A message the memory backend kept, for tests.
#[derive(Debug, Clone)]
pub struct CapturedEmail {
    pub to: String,
    pub message_id: String,
    pub raw: String,
}

/// Where mail goes, how it is signed, and how fast it may go.
#[derive(Clone, Debug)]
pub struct Mailer {
    transport: Transport,
    /// `None` when the relay signs (`PEXPER_DKIM=relay`) or nobody does (development).
    dkim: Option<Arc<dkim::Signer>>,
    pace: Option<Arc<Pace>>,
}

/// `PEXPER_MAIL_PER_SECOND`: sends start at least `interval` apart, across every job of the
/// process (a relay that limits its clients answers 4xx to more, and the jobs would back off).
#[derive(Debug)]
struct Pace {
    interval: std::time::Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    async fn wait_turn(&self) {
        let turn = {
            let mut next = self.next.lock().await;
            let turn = (*next).max(tokio::time::Instant::now());
            *next = turn + self.interval;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }
}

/// SMTP (production), `.eml` files (the development default), or memory (tests).
#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
    Memory(Arc<Mutex<Vec<CapturedEmail>>>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Smtp(_) => "Smtp",
            Transport::File(_) => "File",
            Transport::Memory(_) => "Memory",
        })
    }
}

/// A failed send, classified for the queue.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub permanent: bool,
    message: String,
}

impl From<SendError> for JobError {
    fn from(e: SendError) -> Self {
        let permanent = e.permanent;
        let error = anyhow::Error::new(e);
        if permanent {
            JobError::Permanent(error)
        } else {
            JobError::Retry(error)
        }
    }
}

/// The TLS that `url` asks for (implicit, or STARTTLS required or opportunistic), trusting
/// the CA certificate in the PEM file `ca` as well as the public roots.
fn tls_trusting(url: &str, ca: &std::path::Path) -> anyhow::Result<Tls> {
    let pem = std::fs::read(ca)
        .with_context(|| format!("PEXPER_SMTP_CA_FILE: failed to read {}", ca.display()))?;
    let url = url::Url::parse(url).context("PEXPER_SMTP_URL is not a valid SMTP URL")?;
    let host = url.host_str().context("PEXPER_SMTP_URL names no host")?;
    let parameters = TlsParameters::builder(host.to_owned())
        .add_root_certificate(
            Certificate::from_pem(&pem).context("PEXPER_SMTP_CA_FILE is not a PEM certificate")?,
        )
        .build_rustls()
        .context("failed to set up TLS for the SMTP relay")?;
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    Ok(match (url.scheme(), tls.as_deref()) {
        ("smtps", _) => Tls::Wrapper(parameters),
        (_, Some("required")) => Tls::Required(parameters),
        (_, Some("opportunistic")) => Tls::Opportunistic(parameters),
        _ => Tls::None,
    })
}

impl Mailer {
    /// SMTP when `PEXPER_SMTP_URL` is set (`smtp://…?tls=required` for STARTTLS, `smtps://…`
    /// for implicit TLS, both over rustls), otherwise `.eml` files in the outbox directory.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let transport = match &config.smtp_url {
            Some(url) => {
                let url = url.expose_secret();
                let mut relay = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("PEXPER_SMTP_URL is not a valid SMTP URL")?
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    // A connection for each job that may be sending at once.
                    .pool_config(PoolConfig::new().max_size(config.job_concurrency as u32));
                if let Some(ca) = &config.smtp_ca_file {
                    relay = relay.tls(tls_trusting(url, ca)?);
                }
                Transport::Smtp(relay.build())
            }
            None => {
                let dir = config.outbox_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("failed to create {}", dir.display()))?;
                Transport::File(AsyncFileTransport::new(dir))
            }
        };
        let dkim = match &config.dkim {
            crate::config::DkimSigning::Sign { selector, key } => Some(Arc::new(
                dkim::Signer::new(selector, key, sender(config)?.email.domain())?,
            )),
            crate::config::DkimSigning::Relay | crate::config::DkimSigning::Unsigned => None,
        };
        let pace = config.mail_per_second.map(|n| {
            Arc::new(Pace {
                interval: std::time::Duration::from_secs(1) / n,
                next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            })
        });
        Ok(Self {
            transport,
            dkim,
            pace,
        })
    }

    /// Keeps messages in memory, for tests of code that sends mail.
    pub fn memory() -> (Self, Arc<Mutex<Vec<CapturedEmail>>>) {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let mailer = Self {
            transport: Transport::Memory(sink.clone()),
            dkim: None,
            pace: None,
        };
        (mailer, sink)
    }

    pub async fn send(&self, from: &Mailbox, email: &OutgoingEmail) -> Result<(), SendError> {
        // Building, formatting and a quick signature (about 0.3 ms of CPU with RSA-2048) run
        // here, on the async worker: a hand-off to the blocking pool and back cost the drain
        // 5–15% of its speed in thread switches on two cores (issue 31). Requests wait for
        // little of it: while four or more are in flight, one job runs at a time
        // (`jobs::Foreground`).
        // A slow signature (RSA above 2048 bits) still goes to the blocking pool.
        let (envelope, raw) = if self.dkim.as_deref().is_none_or(dkim::Signer::is_quick) {
            let formatting =
                std::panic::AssertUnwindSafe(|| formatted(from, email, self.dkim.as_deref()));
            std::panic::catch_unwind(formatting).map_err(|_| SendError {
                // A panic would panic again on every retry.
                permanent: true,
                message: "formatting the message panicked".to_owned(),
            })??
        } else {
            let (from, email, dkim) = (from.clone(), email.clone(), self.dkim.clone());
            tokio::task::spawn_blocking(move || formatted(&from, &email, dkim.as_deref()))
                .await
                .map_err(|e| SendError {
                    permanent: e.is_panic(),
                    message: format!("formatting the message stopped: {e}"),
                })??
        };
        if let Some(pace) = &self.pace {
            pace.wait_turn().await;
        }
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send_raw(&envelope, &raw)
                    .await
                    .map(drop)
                    .map_err(|e| SendError {
                        // 5xx replies will not change on retry; anything else (4xx, network, TLS
                        // handshake, timeout) might.
                        permanent: e.is_permanent(),
                        message: format!("SMTP delivery failed: {e}"),
                    })
            }
            Transport::File(file) => {
                file.send_raw(&envelope, &raw)
                    .await
                    .map(drop)
                    .map_err(|e| SendError {
                        permanent: false,
                        message: format!("writing the .eml file failed: {e}"),
                    })
            }
            Transport::Memory(sink) => {
                sink.lock().expect("mail sink lock").push(CapturedEmail {
                    to: email.to.as_str().to_owned(),
                    message_id: email.message_id.clone(),
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                });
                Ok(())
            }
        }
    }
}

/// The message as it goes to the relay, with its DKIM signature first when we sign, and the
/// envelope to send it in.
fn formatted(
    from: &Mailbox,
    email: &OutgoingEmail,
    dkim: Option<&dkim::Signer>,
) -> Result<(lettre::address::Envelope, Vec<u8>), SendError> {
    let message = build(from, email).map_err(|e| SendError {
        permanent: true,
        message: format!("could not build the message: {e:#}"),
    })?;
    let mut raw = message.formatted();
    if let Some(dkim) = dkim {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut signed = dkim.sign(&raw, now).map_err(|e| SendError {
            permanent: false,
            message: format!("DKIM signing failed: {e:#}"),
        })?;
        signed.append(&mut raw);
        raw = signed;
    }
    Ok((message.envelope().clone(), raw))
}

fn build(from: &Mailbox, email: &OutgoingEmail) -> anyhow::Result<Message> {
    let to: Mailbox = email
        .to
        .as_str()
        .parse()
        .context("recipient is not a mailbox")?;
    let envelope = lettre::address::Envelope::new(
        Some(bounce_address(from, &email.bounce_tag)?),
        vec![to.email.clone()],
    )?;
    let mut builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(email.rendered.subject.clone())
        .message_id(Some(email.message_id.clone()))
        .envelope(envelope);
    for (name, value) in &email.headers {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(name),
            value.clone(),
        ));
    }
    Ok(builder.multipart(MultiPart::alternative_plain_html(
        email.rendered.text.clone(),
        email.rendered.html.clone(),
    ))?)
}

/// The envelope sender (Return-Path) of a message: `bounces+<tag>@<sender's domain>`, where
/// the tag names the sending job (`bounce_tag`), so a bounce delivered there names the very
/// message it is about (VERP), even when the report itself does not (`bounces::read`).
fn bounce_address(from: &Mailbox, tag: &str) -> anyhow::Result<lettre::Address> {
    let domain = from.email.domain();
    format!("bounces+{tag}@{domain}")
        .parse()
        .context("the bounce address is not an address")
}

const BOUNCE_DOMAIN: &str = "bounce-address";
/// Bytes of the bounce tag's MAC: 64 bits, in 16 hex digits (an address's local part has room
/// for 64 characters: `bounces+`, a job id, a dot and these are 61).
const BOUNCE_MAC_BYTES: usize = 8;

/// `<job id>.<MAC of it>`: a job id alone is no secret (it is the Message-ID every recipient
/// sees), so a report sent to a bounce address is believed only with the MAC that only our
/// mail carries.
pub fn bounce_tag(keyring: &Keyring, job: Uuid) -> String {
    let mac = keyring.sign_token(BOUNCE_DOMAIN, job.as_bytes());
    format!("{job}.{}", crate::crypto::hex(&mac[..BOUNCE_MAC_BYTES]))
}

/// The job a bounce address (`bounces+<job id>.<MAC>@…`) names, if it is one of ours: its MAC
/// checks out.
pub fn job_of_bounce_address(keyring: &Keyring, address: &str) -> Option<Uuid> {
    let local = address.trim().trim_matches(['<', '>']).split('@').next()?;
    let (job, mac) = local.strip_prefix("bounces+")?.split_once('.')?;
    let job = Uuid::try_parse(job).ok()?;
    let mac = (0..mac.len())
        .step_by(2)
        .map(|i| {
            mac.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    (mac.len() == BOUNCE_MAC_BYTES
        && keyring.verify_token_prefix(BOUNCE_DOMAIN, job.as_bytes(), &mac))
    .then_some(job)
}

/// The Message-ID of the email a job sends: the same on every attempt of that job.
pub fn message_id(job: &Job, from: &Mailbox) -> String {
    let domain = from.email.domain();
    format!("<{}@{}>", job.id.0, domain)
}

/// Renders `email` and delivers it from `job` (see `deliver`): what a job handler calls.
/// `headers` are extra header lines (RFC 8058's List-Unsubscribe pair on product email).
pub async fn send_template<T: EmailTemplate>(
    platform: &crate::Platform,
    conn: &mut PgConnection,
    job: &Job,
    person: Option<PersonId>,
    to: EmailAddress,
    email: &T,
    headers: Vec<(&'static str, String)>,
) -> Result<(), JobError> {
    send_template_checked(platform, conn, job, person, to, email, headers, None).await
}

/// `send_template`, for a job whose own statement has already asked the database what
/// `deliver` would ask before sending (`Checked`).
#[allow(clippy::too_many_arguments)]
pub async fn send_template_checked<T: EmailTemplate>(
    platform: &crate::Platform,
    conn: &mut PgConnection,
    job: &Job,
    person: Option<PersonId>,
    to: EmailAddress,
    email: &T,
    headers: Vec<(&'static str, String)>,
    checked: Option<Checked>,
) -> Result<(), JobError> {
    let outgoing = OutgoingEmail {
        to,
        rendered: email.render().map_err(|e| JobError::Permanent(e.into()))?,
        message_id: message_id(job, &platform.mail_from),
        bounce_tag: bounce_tag(&platform.keyring, job.id.0),
        headers,
    };
    deliver(
        platform,
        conn,
        job,
        person,
        T::NAME,
        T::CLASS,
        outgoing,
        checked,
    )
    .await
}

/// What `deliver` asks the database before a send, asked by a job's own statement instead
/// (the signup email's read, issue 31: a round trip less for each email): whether the email
/// with `message_id` is recorded as sent, and how the address whose suppression key is
/// `address_hash` is suppressed. Used only if both name the email being sent.
#[derive(Debug, Clone)]
pub struct Checked {
    pub message_id: String,
    pub address_hash: crate::crypto::BlindIndex,
    pub already: bool,
    pub suppressed: Option<crate::suppression::Reason>,
}

/// Sends one email from a job: skips it if this job already sent it (its Message-ID is
/// recorded) or if the address is suppressed for mail of its `class`, sends, and has the job's
/// finish record it in the person's email history under `template` (`jobs::SentEmail`).
/// `checked` answers the first two questions if it is about this very email and address.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    platform: &crate::Platform,
    conn: &mut PgConnection,
    job: &Job,
    person: Option<PersonId>,
    template: &'static str,
    class: MailClass,
    email: OutgoingEmail,
    checked: Option<Checked>,
) -> Result<(), JobError> {
    let address_hash = crate::suppression::hash(&platform.keyring, &email.to);
    let (already, reason) = match checked {
        Some(c) if c.message_id == email.message_id && c.address_hash == address_hash => {
            (c.already, c.suppressed)
        }
        // Both questions in one round trip: at a thousand emails a second, each one counts.
        // (The signup email's read asks them the same way: waitlist's `decided_signup_mail`.)
        _ => {
            sqlx::query_as::<_, (bool, Option<crate::suppression::Reason>)>(
                "SELECT EXISTS (SELECT 1 FROM email_event WHERE message_id = $1),
                        (SELECT reason FROM email_suppression WHERE address_hash = $2)",
            )
            .bind(&email.message_id)
            .bind(address_hash.as_slice())
            .fetch_one(&mut *conn)
            .await?
        }
    };
    if already || job.has_sent() {
        return Ok(());
    }
    if class != MailClass::Operator && !class.allows(reason) {
        tracing::info!(template, reason = ?reason, "not sent: the address is suppressed");
        if let Some(reason) = reason {
            platform.metrics.mail_not_sent(reason.as_str());
        }
        return Ok(());
    }
    // A restriction of processing stops what is not needed: product email.
    if class == MailClass::Product
        && let Some(person) = person
        && !crate::person::may_process(conn, person, crate::person::Purpose::ProductEmail).await?
    {
        tracing::info!(template, "not sent: processing is restricted");
        platform.metrics.mail_not_sent("restricted");
        return Ok(());
    }
    if let Err(e) = platform.mailer.send(&platform.mail_from, &email).await {
        platform.metrics.mail_failed(template, e.permanent);
        return Err(e.into());
    }
    platform.metrics.mail_sent(template);
    if let Some(person) = person {
        job.note_sent(SentEmail {
            person,
            template,
            message_id: email.message_id,
        });
    }
    Ok(())
}

/// Parses `PEXPER_MAIL_FROM`.
pub fn sender(config: &Config) -> anyhow::Result<Mailbox> {
    config
        .mail_from
        .parse()
        .context("PEXPER_MAIL_FROM is not a mailbox like `Pexper <hello@pexper.com>`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_address_names_its_job_only_with_our_mac() {
        let master = crate::crypto::MasterKeys::parse(&secrecy::SecretString::from(
            crate::crypto::MasterKeys::generate_encoded(),
        ))
        .expect("a key");
        let keyring = Keyring::new(&master);
        let job = Uuid::now_v7();
        let tag = bounce_tag(&keyring, job);
        let address = format!("bounces+{tag}@pexper.com");
        assert!(address.split('@').next().expect("local").len() <= 64);
        assert_eq!(job_of_bounce_address(&keyring, &address), Some(job));
        assert_eq!(
            job_of_bounce_address(&keyring, &format!("<{address}>")),
            Some(job)
        );
        // The job id alone (what every Message-ID shows), another job's MAC, a changed digit,
        // or another deployment's key: not ours.
        for forged in [
            format!("bounces+{job}@pexper.com"),
            format!("bounces+{}.{}@pexper.com", Uuid::now_v7(), &tag[37..]),
            format!(
                "bounces+{}{}@pexper.com",
                &tag[..tag.len() - 1],
                if tag.ends_with('0') { '1' } else { '0' }
            ),
            format!("bounces+{job}.00@pexper.com"),
        ] {
            assert_eq!(job_of_bounce_address(&keyring, &forged), None, "{forged}");
        }
        let other = Keyring::new(
            &crate::crypto::MasterKeys::parse(&secrecy::SecretString::from(
                crate::crypto::MasterKeys::generate_encoded(),
            ))
            .expect("a key"),
        );
        assert_eq!(job_of_bounce_address(&other, &address), None);
    }

    #[tokio::test]
    async fn the_mail_ceiling_spaces_sends_across_concurrent_jobs() {
        // 100 a second: eleven sends from four jobs at once take at least 100 ms (the first
        // goes at once), however they interleave.
        let pace = Arc::new(Pace {
            interval: std::time::Duration::from_millis(10),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        });
        let started = std::time::Instant::now();
        let mut jobs = tokio::task::JoinSet::new();
        for job in 0..4 {
            let pace = pace.clone();
            jobs.spawn(async move {
                for _ in 0..(if job == 0 { 2 } else { 3 }) {
                    pace.wait_turn().await;
                }
            });
        }
        while jobs.join_next().await.is_some() {}
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }
}
