//! Bounces and complaints, as they come back to the envelope sender: delivery status
//! notifications (RFC 3464, `multipart/report; report-type=delivery-status`) and complaint
//! feedback reports (RFC 5965 ARF, `report-type=feedback-report`), read from a maildir or an
//! mbox (`pexper-admin mail bounces PATH`).
//!
//! A hard bounce (status 5.x.x) suppresses the address; a soft one (4.x.x, or `delayed`) is
//! counted on the message it is about; a complaint suppresses the address (the caller also
//! unsubscribes the person). Each report is applied once, however often the mailbox is read.
//!
//! The message a report is about is found by the envelope sender it came back to
//! (`bounces+<job id>.<MAC>@…`, see `mail::bounce_tag`), or, for a complaint or a soft bounce,
//! by the Message-ID in the headers it returns, and must be in our email history; the address is that message's recipient. A
//! report about no message we sent, or naming a recipient other than the one we sent it to,
//! is counted as unmatched and changes nothing: a forged report cannot silence anyone.

use std::path::Path;

use anyhow::Context;
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::address::EmailAddress;
use crate::crypto::{Keyring, sha256};
use crate::person::{self, PersonId};
use crate::suppression::{self, Reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    HardBounce,
    SoftBounce,
    Complaint,
}

impl ReportKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::HardBounce => "hard_bounce",
            Self::SoftBounce => "soft_bounce",
            Self::Complaint => "complaint",
        }
    }
}

/// What one report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// SHA-256 of the report's own Message-ID (or of the whole report without one).
    pub key: [u8; 32],
    pub kind: ReportKind,
    /// The address it is about, as the report names it.
    pub recipient: Option<String>,
    /// The addresses it came back to (candidates for our bounce address, `bounces+<tag>@…`,
    /// whose MAC `apply` checks).
    pub sent_back_to: Vec<String>,
    /// The job named by the Message-ID of the message it returns, if any.
    pub returned_job: Option<Uuid>,
}

/// Every message in a maildir (a directory with `cur/` and `new/`) or an mbox file.
pub fn read_mailbox(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let open = || format!("failed to read {}", path.display());
    if path.is_dir() {
        mail_parser::mailbox::maildir::MessageIterator::new(path.to_path_buf())
            .with_context(open)?
            .map(|m| m.map(|m| m.contents().to_vec()))
            .collect::<Result<_, _>>()
            .with_context(open)
    } else {
        let file = std::io::BufReader::new(std::fs::File::open(path).with_context(open)?);
        mail_parser::mailbox::mbox::MessageIterator::new(file)
            .map(|m| m.map(|m| m.contents().to_vec()))
            .collect::<Result<_, _>>()
            .with_context(open)
    }
}

/// Reads one message as a report; `None` if it is neither a delivery status notification nor
/// a complaint report (replies, auto-responders and the like land in the same mailbox).
pub fn parse(raw: &[u8]) -> Option<Report> {
    let message = MessageParser::default().parse(raw)?;
    let key = match message.message_id() {
        Some(id) => sha256(id.as_bytes()),
        None => sha256(raw),
    };
    // The envelope sender the report came back to, as the receiving side recorded it.
    let mut sent_back_to: Vec<String> = ["Delivered-To", "X-Original-To", "To"]
        .iter()
        .flat_map(|name| header_values(&message, name))
        .flat_map(|value| {
            value
                .split(',')
                .map(|a| a.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut kind = None;
    let mut recipient = None;
    let mut returned_job = None;
    for part in &message.parts {
        if is(part, "message", "delivery-status") {
            let fields = fields(&String::from_utf8_lossy(part.contents()));
            let status = field(&fields, "Status").unwrap_or_default();
            let action = field(&fields, "Action")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let hard = status.starts_with('5') || (action == "failed" && !status.starts_with('4'));
            kind = Some(if hard {
                ReportKind::HardBounce
            } else {
                ReportKind::SoftBounce
            });
            recipient = recipient.or(field(&fields, "Final-Recipient").map(address_of));
        } else if is(part, "message", "feedback-report") {
            let fields = fields(&String::from_utf8_lossy(part.contents()));
            kind = Some(ReportKind::Complaint);
            recipient = recipient.or(field(&fields, "Original-Rcpt-To").map(address_of));
        } else if is(part, "text", "rfc822-headers") {
            let headers = fields(&String::from_utf8_lossy(part.contents()));
            returned_job =
                returned_job.or(field(&headers, "Message-ID").and_then(job_of_message_id));
            // The returned message's own envelope sender, as its receiver recorded it: a
            // mailbox provider's complaint comes to a feedback address, with the original.
            sent_back_to.extend(field(&headers, "Return-Path").map(str::to_owned));
        } else if let PartType::Message(nested) = &part.body {
            returned_job = returned_job.or(nested.message_id().and_then(job_of_message_id));
            sent_back_to.extend(
                nested
                    .header_raw("Return-Path")
                    .map(|r| r.trim().to_owned()),
            );
        }
    }
    Some(Report {
        key,
        kind: kind?,
        recipient,
        sent_back_to,
        returned_job,
    })
}

fn is(part: &MessagePart<'_>, ctype: &str, subtype: &str) -> bool {
    part.content_type().is_some_and(|t| {
        t.ctype().eq_ignore_ascii_case(ctype)
            && t.subtype().is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

/// Every value of a top-level header, topmost first, as written with its folding undone.
/// The receiving server's own headers are the topmost: what a sender wrote lies below them.
pub fn header_values(message: &Message<'_>, name: &str) -> Vec<String> {
    message.parts[0]
        .headers
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|h| {
            let raw = message
                .raw_message
                .get(h.offset_start as usize..h.offset_end as usize)?;
            let raw = std::str::from_utf8(raw).ok()?;
            Some(raw.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect()
}

/// `Name: value` fields (RFC 5322 style, folded lines joined), in order; repeated blocks
/// (one per recipient) simply follow each other.
fn fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `rfc822; someone@example.com` (or a bare address) → the address.
fn address_of(value: &str) -> String {
    let value = value.rsplit(';').next().unwrap_or(value);
    value.trim().trim_matches(['<', '>']).to_owned()
}

/// `<job id@domain>` → the job id.
fn job_of_message_id(id: &str) -> Option<Uuid> {
    Uuid::try_parse(id.trim().trim_matches(['<', '>']).split('@').next()?).ok()
}

/// What applying a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Read before: nothing done again.
    AlreadySeen,
    /// Not about a message we sent (or not about its recipient): recorded, nothing else.
    Unmatched,
    /// Applied; a complaint names the person to unsubscribe, when we know them.
    Done(ReportKind, Option<PersonId>),
}

/// Applies a report once: records it, then suppresses the address (hard bounce, complaint) or
/// counts a soft bounce on its message. `domain` is the sender's, which Message-IDs carry.
pub async fn apply(
    conn: &mut PgConnection,
    keyring: &Keyring,
    domain: &str,
    report: &Report,
) -> anyhow::Result<Applied> {
    // The message: by the bounce address it came back to, whose MAC only our mail carries.
    // A complaint (sent by a mailbox provider to our feedback address, not the bounce
    // address) may name it by the Message-ID of the message it returns; that id is no secret,
    // so such a complaint only unsubscribes from product email, and a hard bounce, which
    // stops all mail, needs the bounce address.
    let by_bounce_address = report
        .sent_back_to
        .iter()
        .find_map(|a| crate::mail::job_of_bounce_address(keyring, a));
    let job = match report.kind {
        ReportKind::HardBounce => by_bounce_address,
        ReportKind::SoftBounce | ReportKind::Complaint => by_bounce_address.or(report.returned_job),
    };
    let message_id = job.map(|job| format!("<{job}@{domain}>"));
    let sent_to: Option<PersonId> = match &message_id {
        Some(id) => {
            sqlx::query_scalar("SELECT person_id FROM email_event WHERE message_id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    // Only a report about a message we sent, and only about that message's recipient: anyone
    // can mail a made-up report to the bounce address naming someone else, and a report
    // trusted for its own `Final-Recipient` would cut that person off from all our email.
    let address = match sent_to {
        Some(person) => person::email(conn, keyring, person).await?,
        None => None,
    };
    let names_another = report
        .recipient
        .as_deref()
        .and_then(|r| EmailAddress::parse(r).ok())
        .is_some_and(|named| Some(&named) != address.as_ref());
    let address = address.filter(|_| !names_another);
    let kind = if address.is_some() {
        report.kind.as_str()
    } else {
        "unmatched"
    };
    let new: Option<bool> = sqlx::query_scalar(
        "INSERT INTO mail_report (report_hash, kind) VALUES ($1, $2)
         ON CONFLICT DO NOTHING RETURNING true",
    )
    .bind(report.key.as_slice())
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    if new.is_none() {
        return Ok(Applied::AlreadySeen);
    }
    let Some(address) = address else {
        return Ok(Applied::Unmatched);
    };
    match report.kind {
        ReportKind::HardBounce => {
            suppression::suppress(conn, keyring, &address, Reason::Bounced).await?
        }
        // A complaint found only by the Message-ID it returns (no secret) unsubscribes from
        // product email (the caller does that) but does not suppress legal notices: only one
        // that came back to our MAC'd bounce address does.
        ReportKind::Complaint if by_bounce_address.is_some() => {
            suppression::suppress(conn, keyring, &address, Reason::Complained).await?
        }
        ReportKind::Complaint => {}
        ReportKind::SoftBounce => {
            sqlx::query(
                "UPDATE email_event SET soft_bounces = soft_bounces + 1 WHERE message_id = $1",
            )
            .bind(&message_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(Applied::Done(report.kind, sent_to))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "0192f3a4-5b6c-7d8e-9f01-23456789abcd";
    const TAG: &str = "0192f3a4-5b6c-7d8e-9f01-23456789abcd.0011223344556677";

    fn dsn(status: &str, action: &str) -> String {
        format!(
            "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+{TAG}@pexper.com\r\n\
             Message-ID: <dsn-{status}@mx.example.net>\r\nSubject: Undelivered Mail\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; mx.example.net\r\n\r\n\
             Final-Recipient: rfc822; gone@example.net\r\nAction: {action}\r\nStatus: {status}\r\n\r\n\
             --b\r\nContent-Type: text/rfc822-headers\r\n\r\n\
             Message-ID: <{JOB}@pexper.com>\r\nSubject: Welcome\r\n\r\n--b--\r\n"
        )
    }

    #[test]
    fn delivery_status_notifications_are_hard_or_soft_by_their_status() {
        let hard = parse(dsn("5.1.1", "failed").as_bytes()).expect("a report");
        assert_eq!(hard.kind, ReportKind::HardBounce);
        assert_eq!(hard.recipient.as_deref(), Some("gone@example.net"));
        assert_eq!(hard.sent_back_to, [format!("bounces+{TAG}@pexper.com")]);
        assert_eq!(hard.returned_job, Some(Uuid::parse_str(JOB).expect("uuid")));
        let soft = parse(dsn("4.2.2", "delayed").as_bytes()).expect("a report");
        assert_eq!(soft.kind, ReportKind::SoftBounce);
        assert_ne!(hard.key, soft.key);
    }

    #[test]
    fn a_complaint_names_its_message_through_the_attached_original() {
        let arf = format!(
            "From: feedback@isp.example\r\nTo: abuse@pexper.com\r\nMessage-ID: <arf-1@isp.example>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
             --b\r\nContent-Type: message/feedback-report\r\n\r\n\
             Feedback-Type: abuse\r\nUser-Agent: isp/1.0\r\nVersion: 1\r\n\r\n\
             --b\r\nContent-Type: message/rfc822\r\n\r\n\
             From: hello@pexper.com\r\nTo: reader@example.net\r\nMessage-ID: <{JOB}@pexper.com>\r\n\
             Subject: News\r\n\r\nNews.\r\n--b--\r\n"
        );
        let report = parse(arf.as_bytes()).expect("a report");
        assert_eq!(report.kind, ReportKind::Complaint);
        assert_eq!(
            report.recipient, None,
            "no Original-Rcpt-To: found through the message"
        );
        assert_eq!(
            report.returned_job,
            Some(Uuid::parse_str(JOB).expect("uuid"))
        );
    }

    #[test]
    fn other_mail_is_not_a_report() {
        let reply = b"From: someone@example.net\r\nTo: bounces+x@pexper.com\r\nSubject: Re: hi\r\n\r\nThanks!\r\n";
        assert_eq!(parse(reply), None);
    }
}
