//! `pexper-admin privacy`: requests that came by email, the queue, handling, the SLA, and the
//! audit trail's check.

use anyhow::Context;
use clap::Subcommand;
use pexper_platform::Config;
use pexper_platform::address::EmailAddress;
use pexper_privacy::PrivacyRequestId;
use pexper_privacy::admin;
use pexper_privacy::request::{Jurisdiction, Kind, Status};
use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::reveal::Reveal;
use crate::{keyring, output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take in a request that arrived by email; the person gets an acknowledgement with a
    /// verification link.
    Intake {
        #[arg(long)]
        email: String,
        #[arg(long)]
        kind: Kind,
        #[arg(long, default_value_t = Jurisdiction::Other)]
        jurisdiction: Jurisdiction,
        /// When it arrived (YYYY-MM-DD or RFC 3339; default now): the due date counts from it.
        #[arg(long)]
        received_at: Option<String>,
        /// What they asked, in their words (stored encrypted).
        #[arg(long)]
        note: Option<String>,
        /// Where it came from; only `email` is taken in by hand.
        #[arg(long, value_parser = ["email"], default_value = "email")]
        source: String,
    },
    /// The queue, soonest due first.
    List {
        /// Only open requests past their due date.
        #[arg(long)]
        overdue: bool,
        /// Only open requests due within this many days.
        #[arg(long, value_name = "DAYS")]
        due_within: Option<i64>,
        #[arg(long)]
        status: Option<Status>,
    },
    /// One request: what the person wrote, its audit trail.
    Show {
        id: PrivacyRequestId,
        #[command(flatten)]
        reveal: Reveal,
    },
    /// Erase someone without their clicking a link (a child's data found out, abuse): the same
    /// deletion as a verified request, confirmed to the address; the audit trail records who
    /// and why.
    Erase {
        #[arg(long)]
        email: String,
        /// Why: recorded in the audit trail with your name (addresses in it are redacted).
        #[arg(long)]
        reason: String,
    },
    /// Take a verified request in hand (access and deletion: run their processing again).
    Process { id: PrivacyRequestId },
    /// Close a request as done; the note is emailed to the person.
    Complete {
        id: PrivacyRequestId,
        #[arg(long)]
        note: String,
        /// For a correction of the address: the address to store instead (refused, with
        /// nothing changed, if it is another person's).
        #[arg(long)]
        new_email: Option<String>,
    },
    /// End the restriction of processing a completed restriction request set.
    Lift { id: PrivacyRequestId },
    /// Name the right an emailed request asks for when it was not recognised (`unclassified`);
    /// a verified access, portability or deletion request then runs by itself.
    Classify {
        id: PrivacyRequestId,
        #[arg(long)]
        kind: Kind,
    },
    /// Refuse a request; the reason is emailed to the person.
    Reject {
        id: PrivacyRequestId,
        #[arg(long)]
        reason: String,
    },
    /// Open, due soon, overdue; median days to close and share closed on time (90 days).
    Sla,
    /// Check the audit trail: every event's link and the recorded head. Note the head it
    /// prints (`SEQ:HASH`) somewhere the database cannot reach, and pass it back later.
    Audit {
        /// A head noted earlier, as `SEQ:HASH`: that event must still be in the trail, so
        /// events after it were neither cut nor rewritten.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
    /// The record of processing (GDPR Art. 30), from every service's declared tables:
    /// Markdown (what PRIVACY.md holds), or the declarations themselves as JSON.
    Processing {
        /// `markdown`, or `json` (as `--json` gives).
        #[arg(long, value_enum, default_value_t = Format::Markdown)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Markdown,
    Json,
}

/// `privacy processing`: needs no database.
pub fn processing(json: bool, config: &Config) {
    let services = pexper_server::all_services();
    let tables: Vec<(&str, &[pexper_platform::data_map::Table])> =
        services.iter().map(|s| (s.name(), s.tables())).collect();
    let rules = pexper_server::personal_data(config).retention();
    if json {
        let mut value: serde_json::Map<String, serde_json::Value> = tables
            .iter()
            .map(|(name, tables)| (name.to_string(), json!(tables)))
            .collect();
        let rules: Vec<_> = rules
            .iter()
            .map(|r| json!({"rule": r.name, "keeps": r.keeps}))
            .collect();
        value.insert("retention".into(), json!(rules));
        output::object(true, &serde_json::Value::Object(value));
    } else {
        output::say(&pexper_platform::data_map::processing_record(
            &tables, &rules,
        ));
    }
}

/// `SEQ:HASH`, as `privacy audit` prints a head (the hash in hex).
fn parse_head(s: &str) -> anyhow::Result<(i64, Vec<u8>)> {
    let bad = || anyhow::anyhow!("--expect-head takes SEQ:HASH (the head `privacy audit` printed)");
    let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
    let hash = (0..hash.len())
        .step_by(2)
        .map(|i| {
            hash.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|h| h.len() == 32)
        .ok_or_else(bad)?;
    Ok((seq.parse().map_err(|_| bad())?, hash))
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
fn parse_instant(s: &str) -> anyhow::Result<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let date = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .with_context(|| format!("`{s}` is neither YYYY-MM-DD nor an RFC 3339 time"))?;
    Ok(date.midnight().assume_utc())
}

pub async fn run(
    json: bool,
    config: &Config,
    pool: &PgPool,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::Intake {
            email,
            kind,
            jurisdiction,
            received_at,
            note,
            source: _,
        } => {
            let email = EmailAddress::parse(&email).context("--email is not a valid address")?;
            let received_at = match received_at {
                Some(s) => parse_instant(&s)?,
                None => OffsetDateTime::now_utc(),
            };
            anyhow::ensure!(
                received_at <= OffsetDateTime::now_utc(),
                "--received-at is in the future"
            );
            let id = admin::intake(
                pool,
                &keyring(config, pool).await?,
                &email,
                kind,
                jurisdiction,
                received_at,
                note,
            )
            .await?;
            let row = admin::find(pool, id)
                .await?
                .context("the request vanished")?;
            output::object(json, &serde_json::to_value(row)?);
        }
        Command::List {
            overdue,
            due_within,
            status,
        } => {
            let rows = admin::list(pool, status, overdue, due_within).await?;
            output::rows(
                json,
                &["id", "kind", "status", "received_at", "due_at", "days_left"],
                &rows,
                |r| {
                    vec![
                        r.id.to_string(),
                        r.kind.to_string(),
                        r.status.to_string(),
                        r.received_at.date().to_string(),
                        r.due_at.date().to_string(),
                        match r.days_left {
                            Some(d) if d < 0 => format!("overdue {}d", -d),
                            Some(d) => d.to_string(),
                            None => "-".into(),
                        },
                    ]
                },
            );
        }
        Command::Show { id, reveal } => {
            let row = admin::find(pool, id)
                .await?
                .with_context(|| format!("no privacy request {id}"))?;
            let email = reveal
                .record(config, pool, Some(id), || {
                    format!("the address of the person of request {id}")
                })
                .await?;
            let mut value = serde_json::to_value(&row)?;
            let private =
                admin::private_parts(pool, &keyring(config, pool).await?, &row, email).await?;
            if let (Some(v), Some(p)) = (value.as_object_mut(), private.as_object()) {
                v.extend(p.clone());
            }
            value["audit"] = serde_json::to_value(admin::audit_of(pool, id).await?)?;
            output::object(json, &value);
        }
        Command::Erase { email, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            let email = EmailAddress::parse(&email).context("--email is not a valid address")?;
            let id = admin::erase(pool, &keyring(config, pool).await?, &email, &reason)
                .await?
                .context("nobody is known by that address: nothing to erase")?;
            output::object(
                json,
                &json!({"id": id, "status": Status::Verified, "erasure": "queued"}),
            );
        }
        Command::Process { id } => {
            admin::process(pool, &keyring(config, pool).await?, id).await?;
            output::object(json, &json!({"id": id, "processing": true}));
        }
        Command::Complete {
            id,
            note,
            new_email,
        } => {
            anyhow::ensure!(!note.trim().is_empty(), "--note must say what was done");
            let new_email = new_email
                .map(|e| EmailAddress::parse(&e).context("--new-email is not a valid address"))
                .transpose()?;
            let keyring = keyring(config, pool).await?;
            let closed =
                admin::close(pool, &keyring, id, true, note.trim(), new_email.as_ref()).await?;
            if let Some(person) = closed.objected {
                pexper_waitlist::admin::unsubscribe(pool, person).await?;
            }
            output::object(json, &json!({"id": id, "status": Status::Completed}));
        }
        Command::Classify { id, kind } => {
            admin::classify(pool, &keyring(config, pool).await?, id, kind).await?;
            output::object(json, &json!({"id": id, "kind": kind}));
        }
        Command::Lift { id } => {
            admin::lift_restriction(pool, &keyring(config, pool).await?, id).await?;
            output::object(json, &json!({"id": id, "restriction": "lifted"}));
        }
        Command::Reject { id, reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            admin::close(
                pool,
                &keyring(config, pool).await?,
                id,
                false,
                reason.trim(),
                None,
            )
            .await?;
            output::object(json, &json!({"id": id, "status": Status::Rejected}));
        }
        Command::Processing { format } => processing(json || format == Format::Json, config),
        Command::Sla => {
            output::object(json, &serde_json::to_value(admin::sla(pool).await?)?);
        }
        Command::Audit { expect_head } => {
            let keyring = keyring(config, pool).await?;
            let expect = expect_head.as_deref().map(parse_head).transpose()?;
            let check = admin::verify_audit(pool, &keyring, expect).await?;
            output::object(json, &serde_json::to_value(&check)?);
            if let Some(problem) = &check.problem {
                anyhow::bail!("the audit trail is not intact: {problem}");
            }
        }
    }
    Ok(())
}
