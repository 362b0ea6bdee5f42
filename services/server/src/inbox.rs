//! The mailboxes the server reads by itself (issue 29): privacy@, whose letters become
//! privacy requests (`pexper_privacy::inbox`), and the bounce address, whose reports suppress
//! addresses (`mail::bounces`). A recurring job (`mail.inbox`, one replica at a time) and
//! `pexper-admin mail inbox --once` both run `read_once`.
//!
//! Messages are taken in batches: a batch's messages are committed in one transaction (each
//! under a savepoint of its own, so one that fails is left for the next run and the rest go
//! on), and only then marked taken in the mailbox. A crash between the two reads the batch
//! again, and each message's key (`privacy_letter`, `mail_report`) makes it the same. A
//! message a person still has to read (no sender, too large, our own notices) is marked
//! taken but left unread. A run reads each message once, even from a mailbox that forgets
//! its marks, and a mailbox that fails does not stop the other from being read.

use pexper_platform::crypto::Keyring;
use pexper_platform::jobs::{BackgroundJob, Job, JobError, JobRegistry, NewJob};
use pexper_platform::mail::bounces::{self, Applied, ReportKind};
use pexper_platform::mailbox::{Incoming, Mailbox};
use pexper_platform::{Config, Platform, Service};
use pexper_privacy::inbox::Taken;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// Messages per transaction: enough to make commits cheap, few enough that a slow mailbox
/// shows progress.
const BATCH: usize = 200;

/// The service that reads the mailboxes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbox;

impl Service for Inbox {
    fn name(&self) -> &'static str {
        "inbox"
    }

    fn jobs(&self) -> JobRegistry<Platform> {
        JobRegistry::new().register::<ReadMailboxes>()
    }

    fn recurring(&self) -> Vec<NewJob> {
        vec![NewJob::new(&ReadMailboxes {})]
    }
}

/// The recurring read of the privacy@ and bounce mailboxes (nothing when neither is set).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadMailboxes {}

impl BackgroundJob for ReadMailboxes {
    const KIND: &'static str = "mail.inbox";
    type Context = Platform;

    async fn run(self, platform: Platform, _job: &Job) -> Result<(), JobError> {
        let run = read_once(&platform.config, &platform.pool, &platform.keyring).await?;
        let applied = [
            ("hard_bounce", run.bounces.hard_bounces),
            ("soft_bounce", run.bounces.soft_bounces),
            ("complaint", run.bounces.complaints),
        ];
        for (kind, n) in applied.into_iter().filter(|(_, n)| *n > 0) {
            platform.metrics.mail_reports_applied(kind, n);
        }
        if run.letters.messages + run.bounces.messages > 0 {
            tracing::info!(letters = ?run.letters, bounces = ?run.bounces, "mailboxes read");
        }
        Ok(())
    }
}

/// What one read of the mailboxes did.
#[derive(Debug, Default, Serialize)]
pub struct InboxRun {
    pub letters: LetterRun,
    pub bounces: BounceRun,
}

/// What became of the messages in the privacy@ mailbox.
#[derive(Debug, Default, Serialize)]
pub struct LetterRun {
    pub messages: u64,
    pub requests: u64,
    /// Of `requests`: the right was unclear; the operator is told.
    pub unclassified: u64,
    /// Taken in before (delivered twice, or read again after a crash).
    pub again: u64,
    pub replies: u64,
    /// Auto-replies, bulk mail, reports and our own mail: no request, no answer.
    pub not_letters: u64,
    pub no_sender: u64,
    /// Left in the mailbox for the next run (the error is logged).
    pub failed: u64,
}

/// What became of the messages in the bounce mailbox (and of `mail bounces PATH`).
#[derive(Debug, Default, Serialize)]
pub struct BounceRun {
    pub messages: u64,
    pub not_reports: u64,
    pub already_seen: u64,
    pub unmatched: u64,
    pub hard_bounces: u64,
    pub soft_bounces: u64,
    pub complaints: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Letters,
    Bounces,
}

/// What reading needs: the database, the keys, and the domain we send from (mail from it
/// is ours, come back; our Message-IDs carry it).
struct Reader<'a> {
    pool: &'a PgPool,
    keyring: &'a Keyring,
    domain: String,
}

/// Reads both mailboxes until nothing is left untaken.
pub async fn read_once(
    config: &Config,
    pool: &PgPool,
    keyring: &Keyring,
) -> anyhow::Result<InboxRun> {
    let mut run = InboxRun::default();
    let reader = Reader {
        pool,
        keyring,
        domain: pexper_platform::mail::sender(config)?
            .email
            .domain()
            .to_owned(),
    };
    let mut failed = None;
    for (url, which) in [
        (&config.privacy_mailbox, Which::Letters),
        (&config.bounce_mailbox, Which::Bounces),
    ] {
        if let Some(url) = url {
            let result = match Mailbox::open(url, &config.imap).await {
                Ok(mut mailbox) => {
                    let result = drain(&reader, &mut mailbox, which, &mut run).await;
                    mailbox.close().await;
                    result
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                failed.get_or_insert(e.context(match which {
                    Which::Letters => "reading the privacy@ mailbox failed",
                    Which::Bounces => "reading the bounce mailbox failed",
                }));
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(run),
    }
}

async fn drain(
    reader: &Reader<'_>,
    mailbox: &mut Mailbox,
    which: Which,
    run: &mut InboxRun,
) -> anyhow::Result<()> {
    // Every message read this run, taken or failed, is not read again until the next run:
    // one that fails stays in the mailbox without holding the rest up, and a mailbox that
    // forgets a mark cannot spin this loop.
    let mut read: std::collections::HashSet<String> = Default::default();
    loop {
        let batch: Vec<Incoming> = mailbox.untaken(BATCH, &read).await?;
        if batch.is_empty() {
            return Ok(());
        }
        read.extend(batch.iter().map(|m| m.id.clone()));
        let (mut done, mut for_a_person) = (Vec::new(), Vec::new());
        let mut tx = reader.pool.begin().await?;
        for message in &batch {
            let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
            match take(reader, &mut savepoint, message, which, run).await {
                Ok(person_reads) => {
                    savepoint.commit().await?;
                    if person_reads || !message.whole {
                        for_a_person.push(message.id.clone());
                    } else {
                        done.push(message.id.clone());
                    }
                }
                Err(e) => {
                    savepoint.rollback().await?;
                    tracing::warn!(error = %pexper_platform::telemetry::redact(&format!("{e:#}")), "a message could not be taken in; it stays for the next run");
                    match which {
                        Which::Letters => run.letters.failed += 1,
                        Which::Bounces => run.bounces.failed += 1,
                    }
                }
            }
        }
        tx.commit().await?;
        mailbox.mark_taken(&done, true).await?;
        mailbox.mark_taken(&for_a_person, false).await?;
    }
}

/// Takes one message in; true when a person still has to read it in the mailbox.
async fn take(
    reader: &Reader<'_>,
    conn: &mut PgConnection,
    message: &Incoming,
    which: Which,
    run: &mut InboxRun,
) -> anyhow::Result<bool> {
    let (keyring, domain) = (reader.keyring, reader.domain.as_str());
    match which {
        Which::Letters => {
            let taken =
                pexper_privacy::inbox::take_in(conn, keyring, &message.raw, message.whole, domain)
                    .await?;
            let letters = &mut run.letters;
            letters.messages += 1;
            let person_reads = taken.for_a_person();
            match taken {
                Taken::Request(_, kind) => {
                    letters.requests += 1;
                    if kind == pexper_privacy::request::Kind::Unclassified {
                        letters.unclassified += 1;
                    }
                }
                Taken::Again => letters.again += 1,
                Taken::Reply(_) => letters.replies += 1,
                Taken::NotALetter(_) => letters.not_letters += 1,
                Taken::NoSender => letters.no_sender += 1,
            }
            Ok(person_reads)
        }
        Which::Bounces => {
            take_bounce(conn, keyring, domain, &message.raw, &mut run.bounces).await?;
            Ok(false)
        }
    }
}

/// Applies one message from the bounce mailbox, in the caller's transaction: a complaint
/// also unsubscribes its person from the waitlist's product email.
pub async fn take_bounce(
    conn: &mut PgConnection,
    keyring: &Keyring,
    domain: &str,
    raw: &[u8],
    run: &mut BounceRun,
) -> anyhow::Result<()> {
    run.messages += 1;
    let Some(report) = bounces::parse(raw) else {
        run.not_reports += 1;
        return Ok(());
    };
    match bounces::apply(conn, keyring, domain, &report).await? {
        Applied::AlreadySeen => run.already_seen += 1,
        Applied::Unmatched => run.unmatched += 1,
        Applied::Done(ReportKind::HardBounce, _) => run.hard_bounces += 1,
        Applied::Done(ReportKind::SoftBounce, _) => run.soft_bounces += 1,
        Applied::Done(ReportKind::Complaint, person) => {
            run.complaints += 1;
            if let Some(person) = person {
                pexper_waitlist::admin::unsubscribe(&mut *conn, person).await?;
            }
        }
    }
    Ok(())
}
