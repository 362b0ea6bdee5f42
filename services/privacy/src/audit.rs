//! The audit trail: every status change of every request, and every operator read of personal
//! data in clear, in one chain. Each event's link is an HMAC, under the deployment's audit-trail
//! key (a lookup key, wrapped under the master key: never in the database in clear), over the
//! previous link and the event's fields, so an edited, inserted or deleted event shows at the
//! first link that no longer matches, and someone who can write to the database cannot
//! recompute the chain after an edit. Events from before the chain was keyed keep their plain
//! SHA-256 links and may only precede the keyed ones.
//!
//! Deleting the newest events leaves a chain that is whole, so the head (the last event's
//! number and link) is kept beside it under a MAC of its own, written with every event. A
//! trail that ends before its recorded head was cut; an event added after a cut chains to the
//! recorded head, not to what is left, so the cut still shows. What the database alone cannot
//! show is an older head put back over a cut (a copy kept from before): for that, the privacy
//! sweep logs the head every few minutes and `privacy audit` prints it, and `privacy audit
//! --expect-head` checks that a head noted there is still in the trail.
//!
//! A trail from before the chain was keyed has plain SHA-256 links and no head. The server
//! seals it as it stands, once, at its next event or sweep: it records the head (which keyed
//! events then follow) and warns in the log. That warning should be seen once, after the
//! upgrade: someone who can write to the database could bring a trail back to that state, so
//! a seal at any other time means the trail was reset, and heads noted before no longer match.
//! No personal data is ever written here (an operator's reason is redacted).
//!
//! The trail is kept as long as what it records: an event about no request (an operator's
//! read, an account disabled) 3 years; a request's events until 3 years after its closing
//! event and its receipt is gone (`privacy.receipts` deletes it then), read from the checked
//! events themselves, so a receipt deleted by someone else takes nothing with it early. `prune`, in the privacy sweep, deletes the oldest run of
//! such events, never the newest, and only from a trail that checks, and records where the
//! trail now starts (the first event kept and the link it chains from) under a MAC: the rest
//! still verifies, and a cut beyond the start shows.
//!
//! Each row names its actor: the operator (`pexper-admin` sets `pexper.actor` on its
//! connections, from `PEXPER_OPERATOR` or the OS user), or `system` for the server's work.

use anyhow::Context;
use pexper_platform::crypto::{Keyring, hex, sha256};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::request::{PrivacyRequestId, Status};

const GENESIS: [u8; 32] = [0; 32];

/// One event as the chain covers it.
struct Event<'a> {
    request: Option<PrivacyRequestId>,
    event: &'a str,
    status: &'a str,
    detail: &'a str,
    actor: &'a str,
    at: OffsetDateTime,
}

impl Event<'_> {
    /// The link that follows `prev`: keyed, or the plain SHA-256 of events from before.
    fn link(&self, keyring: &Keyring, keyed: bool, prev: &[u8]) -> [u8; 32] {
        // Length-prefixed fields: no two different rows serialise alike. The actor is covered
        // when there is one; rows from before actors were recorded have none.
        let mut bytes = prev.to_vec();
        let request = self.request.map(|r| *r.0.as_bytes());
        let mut fields = vec![
            request.as_ref().map_or(&[][..], |r| r.as_slice()),
            self.event.as_bytes(),
            self.status.as_bytes(),
            self.detail.as_bytes(),
        ];
        let at = self.at.unix_timestamp_nanos().to_be_bytes();
        fields.push(&at);
        if !self.actor.is_empty() {
            fields.push(self.actor.as_bytes());
        }
        for field in fields {
            bytes.extend((field.len() as u64).to_be_bytes());
            bytes.extend(field);
        }
        if keyed {
            keyring.audit_mac(&[b"pexper/audit-event", &bytes])
        } else {
            sha256(&bytes)
        }
    }
}

fn head_mac(keyring: &Keyring, seq: i64, hash: &[u8], at: OffsetDateTime) -> [u8; 32] {
    keyring.audit_mac(&[
        b"pexper/audit-head",
        &seq.to_be_bytes(),
        hash,
        &at.unix_timestamp_nanos().to_be_bytes(),
    ])
}

fn start_mac(keyring: &Keyring, seq: i64, prev: &[u8], at: OffsetDateTime) -> [u8; 32] {
    keyring.audit_mac(&[
        b"pexper/audit-start",
        &seq.to_be_bytes(),
        prev,
        &at.unix_timestamp_nanos().to_be_bytes(),
    ])
}

/// Where the trail starts, as recorded when it was last pruned: the first event kept, the
/// link it chains from, when, and the MAC (not yet checked).
async fn recorded_start(
    conn: &mut PgConnection,
) -> anyhow::Result<Option<(i64, Vec<u8>, OffsetDateTime, Vec<u8>)>> {
    sqlx::query_as("SELECT seq, prev_hash, at, mac FROM privacy_audit_start")
        .fetch_optional(conn)
        .await
        .context("failed to read where the audit trail starts")
}

/// How long an event is kept at least: and a request's events, 3 years from its closing event.
const KEEP: time::Duration = time::Duration::days(3 * 365 + 1);

/// Deletes the oldest events past their retention (see the module's documentation) and
/// records where the trail now starts. Returns how many went. A trail that does not check is
/// left whole for `privacy audit` to show.
///
/// What is due is read from the checked events themselves (their times are under the MAC):
/// an event naming no request, once 3 years old; a request's events, once its closing event
/// (completed, rejected, expired) is 3 years old and its receipt is gone. A receipt deleted by
/// someone else, before its time, takes nothing with it. The table is locked against every
/// writer while this runs, so nothing checked can change before it is deleted.
pub async fn prune(pool: &PgPool, keyring: &Keyring) -> anyhow::Result<u64> {
    // Cheap: nothing can be due while the oldest event is younger than the period.
    let oldest: Option<OffsetDateTime> = sqlx::query_scalar("SELECT min(at) FROM privacy_audit")
        .fetch_one(pool)
        .await
        .context("failed to read the audit trail")?;
    let horizon = OffsetDateTime::now_utc() - KEEP;
    if oldest.is_none_or(|at| at >= horizon) {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    sqlx::query("LOCK TABLE privacy_audit IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let rows = read_trail(&mut tx).await?;
    let start = checked_start(&mut tx, keyring, &rows).await?;
    let whole = matches!(tip(&mut tx, keyring).await?, Tip::Whole { .. });
    let Ok(start) = start else {
        return Ok(0);
    };
    if !whole || first_break(&rows, keyring, &start).is_some() {
        return Ok(0);
    }
    let receipts: std::collections::HashSet<PrivacyRequestId> =
        sqlx::query_scalar("SELECT id FROM privacy_request")
            .fetch_all(&mut *tx)
            .await
            .context("failed to read the requests")?
            .into_iter()
            .collect();
    // When each request closed, as its own events say.
    let mut closed: std::collections::HashMap<PrivacyRequestId, OffsetDateTime> =
        std::collections::HashMap::new();
    for row in &rows {
        let terminal = [Status::Completed, Status::Rejected, Status::Expired]
            .iter()
            .any(|s| s.as_str() == row.3);
        if let (Some(request), true) = (row.1, terminal) {
            closed.insert(request, row.6);
        }
    }
    let due = |row: &Row| match row.1 {
        None => row.6 < horizon,
        Some(request) => {
            !receipts.contains(&request) && closed.get(&request).is_some_and(|at| *at < horizon)
        }
    };
    // The oldest run of due events, never the newest event (the recorded head names it).
    let cut = rows[..rows.len().saturating_sub(1)]
        .iter()
        .take_while(|row| due(row))
        .count();
    if cut == 0 {
        return Ok(0);
    }
    let first_kept = &rows[cut];
    let deleted = sqlx::query("DELETE FROM privacy_audit WHERE seq < $1")
        .bind(first_kept.0)
        .execute(&mut *tx)
        .await
        .context("failed to prune the audit trail")?
        .rows_affected();
    anyhow::ensure!(
        deleted == cut as u64,
        "the audit trail changed while it was pruned: nothing was pruned"
    );
    let at = now_micros()?;
    sqlx::query(
        "INSERT INTO privacy_audit_start (seq, prev_hash, at, mac) VALUES ($1, $2, $3, $4)
         ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, prev_hash = excluded.prev_hash,
                                         at = excluded.at, mac = excluded.mac",
    )
    .bind(first_kept.0)
    .bind(&first_kept.7)
    .bind(at)
    .bind(start_mac(keyring, first_kept.0, &first_kept.7, at).as_slice())
    .execute(&mut *tx)
    .await
    .context("failed to record where the audit trail starts")?;
    tx.commit().await?;
    Ok(cut as u64)
}

/// The link the trail's first event must chain from: nothing (`GENESIS`) for a trail never
/// pruned, else the recorded start's, whose MAC must check and whose event must come first.
async fn checked_start(
    conn: &mut PgConnection,
    keyring: &Keyring,
    rows: &[Row],
) -> anyhow::Result<Result<Vec<u8>, String>> {
    Ok(match recorded_start(conn).await? {
        None => Ok(GENESIS.to_vec()),
        Some((seq, prev, at, mac)) => {
            if start_mac(keyring, seq, &prev, at).as_slice() != mac.as_slice() {
                Err(
                    "the recorded start of the trail does not check: it was written without \
                     the key"
                        .to_owned(),
                )
            } else if rows.first().map(|r| r.0) != Some(seq) {
                // Pruning never takes the newest event: a start with no events after it means
                // the events were deleted.
                Err(format!(
                    "the trail was pruned to start at event {seq} but starts at {}: events \
                     were deleted from its beginning",
                    rows.first()
                        .map_or("no event".to_owned(), |r| format!("event {}", r.0))
                ))
            } else {
                Ok(prev)
            }
        }
    })
}

/// Now, to the microsecond: what Postgres stores, so a MAC can be recomputed from the row.
fn now_micros() -> anyhow::Result<OffsetDateTime> {
    let at = OffsetDateTime::now_utc();
    Ok(at.replace_nanosecond(at.nanosecond() / 1000 * 1000)?)
}

/// Appends an event, in the caller's transaction. `detail` must hold no personal data
/// (counts, ids, reasons chosen from a list).
pub async fn record(
    conn: &mut PgConnection,
    keyring: &Keyring,
    request: PrivacyRequestId,
    event: &str,
    status: Status,
    detail: &str,
) -> anyhow::Result<()> {
    append(conn, keyring, Some(request), event, status.as_str(), detail).await
}

/// Records that the operator read personal data in clear (`what`, with no address in it),
/// and why; the reason is redacted of anything that looks like an address or a token.
pub async fn record_read(
    conn: &mut PgConnection,
    keyring: &Keyring,
    request: Option<PrivacyRequestId>,
    what: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let reason = pexper_platform::telemetry::redact(reason.trim());
    append(
        conn,
        keyring,
        request,
        "read",
        "",
        &format!("{what}; reason: {reason}"),
    )
    .await
}

/// Records an operator's action on something that is not a privacy request (an account
/// disabled, its sessions ended), and why; `what` names ids only, the reason is redacted.
pub async fn record_action(
    conn: &mut PgConnection,
    keyring: &Keyring,
    event: &str,
    what: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let reason = pexper_platform::telemetry::redact(reason.trim());
    append(
        conn,
        keyring,
        None,
        event,
        "",
        &format!("{what}; reason: {reason}"),
    )
    .await
}

/// Takes the audit trail's lock, held to the end of the transaction: one writer at a time.
/// A transaction that will write an event and lock requests takes it first, before any
/// request row: otherwise one that holds a row and waits for the trail deadlocks with one
/// that holds the trail and waits for the row (a verification beside a running erasure).
pub async fn lock(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('privacy_audit', 0))")
        .execute(conn)
        .await
        .context("failed to lock the audit trail")?;
    Ok(())
}

async fn append(
    conn: &mut PgConnection,
    keyring: &Keyring,
    request: Option<PrivacyRequestId>,
    event: &str,
    status: &str,
    detail: &str,
) -> anyhow::Result<()> {
    // One writer at a time, so each row chains to the true head.
    lock(conn).await?;
    let prev = match tip(conn, keyring).await? {
        Tip::Whole { hash, .. } => hash,
        Tip::Unkeyed { seq, hash } => {
            warn_sealed(seq, &hash);
            hash
        }
        Tip::Empty => GENESIS.to_vec(),
        // Chained to the recorded head (or to nothing): the new event does not follow the
        // last one left, so the cut or the forgery still shows after it.
        Tip::Cut { head } => head,
        Tip::Forged => GENESIS.to_vec(),
    };
    let actor: String = sqlx::query_scalar(
        "SELECT coalesce(nullif(current_setting('pexper.actor', true), ''), 'system')",
    )
    .fetch_one(&mut *conn)
    .await?;
    let at = now_micros()?;
    let hash = Event {
        request,
        event,
        status,
        detail,
        actor: &actor,
        at,
    }
    .link(keyring, true, &prev);
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO privacy_audit
             (request_id, event, status, detail, actor, at, prev_hash, hash, keyed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)
         RETURNING seq",
    )
    .bind(request)
    .bind(event)
    .bind(status)
    .bind(detail)
    .bind(&actor)
    .bind(at)
    .bind(&prev)
    .bind(hash.as_slice())
    .fetch_one(&mut *conn)
    .await
    .context("failed to append to the audit trail")?;
    record_head(conn, keyring, seq, &hash).await
}

async fn record_head(
    conn: &mut PgConnection,
    keyring: &Keyring,
    seq: i64,
    hash: &[u8],
) -> anyhow::Result<()> {
    let at = now_micros()?;
    sqlx::query(
        "INSERT INTO privacy_audit_head (seq, hash, at, mac) VALUES ($1, $2, $3, $4)
         ON CONFLICT (one) DO UPDATE
         SET seq = excluded.seq, hash = excluded.hash, at = excluded.at, mac = excluded.mac",
    )
    .bind(seq)
    .bind(hash)
    .bind(at)
    .bind(head_mac(keyring, seq, hash, at).as_slice())
    .execute(conn)
    .await
    .context("failed to record the audit trail's head")?;
    Ok(())
}

/// Where the trail ends, judged against its recorded head.
enum Tip {
    /// No events, no head.
    Empty,
    /// The recorded head names the last event (as far as anything in the database can tell).
    Whole { seq: i64, hash: Vec<u8> },
    /// Events but no head, and none of them keyed: a trail from before keying, not yet sealed.
    Unkeyed { seq: i64, hash: Vec<u8> },
    /// The head checks but names something other than the last event (its link is kept).
    Cut { head: Vec<u8> },
    /// The head is missing although keyed events exist (one is written with each), or its
    /// MAC does not check: written without the key.
    Forged,
}

/// The head as recorded: event number, link, when, and its MAC (not yet checked).
async fn recorded_head(
    conn: &mut PgConnection,
) -> anyhow::Result<Option<(i64, Vec<u8>, OffsetDateTime, Vec<u8>)>> {
    sqlx::query_as("SELECT seq, hash, at, mac FROM privacy_audit_head")
        .fetch_optional(conn)
        .await
        .context("failed to read the audit trail's head")
}

async fn tip(conn: &mut PgConnection, keyring: &Keyring) -> anyhow::Result<Tip> {
    let last: Option<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT seq, hash, keyed FROM privacy_audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .context("failed to read the audit trail")?;
    let head = recorded_head(conn).await?;
    Ok(match (head, last) {
        (None, None) => Tip::Empty,
        (None, Some((seq, hash, false))) => {
            let keyed: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM privacy_audit WHERE keyed)")
                    .fetch_one(&mut *conn)
                    .await?;
            if keyed {
                Tip::Forged
            } else {
                Tip::Unkeyed { seq, hash }
            }
        }
        (None, Some(_)) => Tip::Forged,
        (Some((seq, hash, at, mac)), last) => {
            if head_mac(keyring, seq, &hash, at).as_slice() != mac.as_slice() {
                Tip::Forged
            } else if last.is_some_and(|(s, h, _)| s == seq && h == hash) {
                Tip::Whole { seq, hash }
            } else {
                Tip::Cut { head: hash }
            }
        }
    })
}

/// Logs the head (the privacy sweep's, every few minutes): the log is an anchor outside the
/// database, to pass to `privacy audit --expect-head`. A trail from before keying is sealed
/// here; one that no longer ends at its recorded head is logged as an error.
pub async fn log_head(pool: &PgPool, keyring: &Keyring) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    match tip(&mut tx, keyring).await? {
        Tip::Whole { seq, hash } => {
            tracing::info!(seq, head = %hex(&hash), "audit trail head")
        }
        Tip::Unkeyed { seq, hash } => {
            record_head(&mut tx, keyring, seq, &hash).await?;
            tx.commit().await?;
            warn_sealed(seq, &hash);
        }
        Tip::Empty => {}
        Tip::Cut { .. } | Tip::Forged => tracing::error!(
            "the audit trail does not end at its recorded head: run `pexper-admin privacy audit`"
        ),
    }
    Ok(())
}

fn warn_sealed(seq: i64, hash: &[u8]) {
    tracing::warn!(
        seq,
        head = %hex(hash),
        "audit trail from before keying sealed as it stands: expected once, after the upgrade \
         that keyed it; at any other time the trail was reset in the database"
    );
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub seq: i64,
    pub request_id: Option<PrivacyRequestId>,
    pub event: String,
    pub status: String,
    pub detail: String,
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One request's events, oldest first.
pub async fn of_request(pool: &PgPool, request: PrivacyRequestId) -> anyhow::Result<Vec<Entry>> {
    sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, actor, at FROM privacy_audit
         WHERE request_id = $1 ORDER BY seq",
    )
    .bind(request)
    .fetch_all(pool)
    .await
    .context("failed to read the audit trail")
}

/// The result of checking the whole chain and its recorded head.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub events: u64,
    /// The first event whose link does not follow from its predecessor and its own fields or,
    /// when the trail was cut, the first event missing from it.
    pub broken_at: Option<i64>,
    /// The head as recorded, when its MAC checks: note it, and `--expect-head` it later.
    pub head: Option<Head>,
    /// What is wrong, in words; `None` when the trail is intact.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

type Row = (
    i64,
    Option<PrivacyRequestId>,
    String,
    String,
    String,
    String,
    OffsetDateTime,
    Vec<u8>,
    Vec<u8>,
    bool,
);

fn event_of(row: &Row) -> Event<'_> {
    let (_, request, event, status, detail, actor, at, ..) = row;
    Event {
        request: *request,
        event,
        status,
        detail,
        actor,
        at: *at,
    }
}

/// The first event that does not follow, and why. Plain SHA-256 links (from before keying)
/// are accepted before every keyed one only: the head, under its MAC, covers where they end.
fn first_break(rows: &[Row], keyring: &Keyring, start: &[u8]) -> Option<(i64, String)> {
    let mut prev = start.to_vec();
    let mut seen_keyed = false;
    for row in rows {
        let (seq, prev_hash, hash, keyed) = (row.0, &row.7, &row.8, row.9);
        if !keyed && seen_keyed {
            return Some((
                seq,
                format!(
                    "event {seq} has a plain SHA-256 link after keyed ones: the trail was \
                     rewritten there"
                ),
            ));
        }
        let expected = event_of(row).link(keyring, keyed, &prev);
        if *prev_hash != prev || hash.as_slice() != expected.as_slice() {
            return Some((
                seq,
                format!(
                    "event {seq} does not follow from the one before it: an event was edited, \
                     inserted or deleted there, or the trail was cut before it"
                ),
            ));
        }
        seen_keyed |= keyed;
        prev = hash.clone();
    }
    None
}

async fn read_trail(conn: &mut PgConnection) -> anyhow::Result<Vec<Row>> {
    sqlx::query_as(
        "SELECT seq, request_id, event, status, detail, actor, at, prev_hash, hash, keyed
         FROM privacy_audit ORDER BY seq",
    )
    .fetch_all(conn)
    .await
    .context("failed to read the audit trail")
}

/// Checks every link, then the recorded head against the last event; and, if given, that the
/// event `expect` names (a head noted earlier) is still in the trail with that link.
pub async fn verify(
    pool: &PgPool,
    keyring: &Keyring,
    expect: Option<(i64, Vec<u8>)>,
) -> anyhow::Result<Verification> {
    let mut tx = pool.begin().await?;
    // One snapshot for the trail and its head.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows = read_trail(&mut tx).await?;
    let recorded = recorded_head(&mut tx).await?;
    let mut check = Verification {
        events: rows.len() as u64,
        broken_at: None,
        head: None,
        problem: None,
    };
    match checked_start(&mut tx, keyring, &rows).await? {
        Ok(start) => {
            if let Some((seq, problem)) = first_break(&rows, keyring, &start) {
                fail(&mut check, seq, problem);
            }
        }
        Err(problem) => fail(&mut check, rows.first().map_or(0, |r| r.0), problem),
    }
    let end = rows.last().map_or(0, |r| r.0);
    match recorded {
        None if rows.is_empty() => {}
        None => fail(
            &mut check,
            end + 1,
            "no head is recorded for a trail that has events: a trail from before keying gets \
             its first at the next sweep or event; otherwise the newest events and the head \
             were deleted"
                .into(),
        ),
        Some((seq, hash, at, mac)) => {
            if head_mac(keyring, seq, &hash, at).as_slice() != mac.as_slice() {
                fail(
                    &mut check,
                    end + 1,
                    "the recorded head's MAC does not check: it was written without the key".into(),
                );
            } else {
                let ends_there = rows.last().is_some_and(|r| r.0 == seq && r.8 == hash);
                if !ends_there {
                    fail(
                        &mut check,
                        (end + 1).min(seq),
                        format!(
                            "the trail ends at event {end} but its head was recorded at event \
                             {seq}: events were deleted from its end, or it was rewritten"
                        ),
                    );
                }
                check.head = Some(Head {
                    seq,
                    hash: hex(&hash),
                    recorded_at: at,
                });
            }
        }
    }
    // Every request's receipt is an event: a request none names lost its events (the whole
    // trail, say, with its head).
    let unrecorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM privacy_request r
         WHERE NOT EXISTS (SELECT 1 FROM privacy_audit a WHERE a.request_id = r.id)",
    )
    .fetch_one(&mut *tx)
    .await
    .context("failed to match requests to the trail")?;
    if unrecorded > 0 {
        fail(
            &mut check,
            end + 1,
            format!(
                "{unrecorded} privacy requests have no event in the trail: events were deleted"
            ),
        );
    }
    if let Some((seq, hash)) = expect
        && !rows.iter().any(|r| r.0 == seq && r.8 == hash)
    {
        fail(
            &mut check,
            seq,
            format!(
                "event {seq} is not in the trail with the link you noted: the trail was cut or \
                 rewritten since"
            ),
        );
    }
    Ok(check)
}

/// Records the first problem found: where, and what.
fn fail(check: &mut Verification, at: i64, problem: String) {
    if check.problem.is_none() {
        check.broken_at = Some(at);
        check.problem = Some(problem);
    }
}
