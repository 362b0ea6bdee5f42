//! The privacy section of an export (the person's own requests), and what erasing a person
//! does to them: the requests lose their link, their words and their exports; a receipt (kind,
//! dates, outcome status) and the audit trail stay, as proof we answered.

use std::collections::BTreeMap;

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::person::{self, PersonId};
use pexper_platform::personal_data::{ErasureSummary, PersonalData, RetentionRule, rfc3339};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::request::PrivacyRequestId;
use crate::store::{details_field, outcome_field};

#[derive(Debug, Clone, Copy, Default)]
pub struct PrivacyData;

/// A request as the export gives it.
#[derive(sqlx::FromRow)]
struct RequestRow {
    id: PrivacyRequestId,
    kind: String,
    jurisdiction: String,
    source: String,
    status: String,
    received_at: OffsetDateTime,
    due_at: OffsetDateTime,
    verify_by: OffsetDateTime,
    verified_at: Option<OffsetDateTime>,
    acknowledgement_held_at: Option<OffsetDateTime>,
    closed_at: Option<OffsetDateTime>,
    details_sealed: Option<Vec<u8>>,
    outcome_sealed: Option<Vec<u8>>,
}

impl PersonalData for PrivacyData {
    fn section(&self) -> &'static str {
        "privacy_requests"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let rows: Vec<RequestRow> = sqlx::query_as(
            "SELECT id, kind::text, jurisdiction::text, source, status::text, received_at, due_at,
                    verify_by, verified_at, acknowledgement_held_at, closed_at, details_sealed,
                    outcome_sealed
             FROM privacy_request WHERE person_id = $1 ORDER BY received_at",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to export privacy requests")?;
        let key = person::data_key(conn, keyring, person).await?;
        let open = |field, sealed: Option<Vec<u8>>| -> anyhow::Result<Option<String>> {
            Ok(match (&key, sealed) {
                (Some(key), Some(sealed)) => Some(key.open_string(field, &sealed)?),
                _ => None,
            })
        };
        let mut requests = Vec::with_capacity(rows.len());
        for row in rows {
            // What was done with the request, as the audit trail has it (the operator's
            // reasons redacted there already; who they are is not the person's data).
            let events: Vec<(String, String, String, OffsetDateTime)> = sqlx::query_as(
                "SELECT event, status, detail, at FROM privacy_audit
                 WHERE request_id = $1 ORDER BY seq",
            )
            .bind(row.id)
            .fetch_all(&mut *conn)
            .await
            .context("failed to export a request's events")?;
            let events: Vec<serde_json::Value> = events
                .into_iter()
                .map(|(event, status, detail, at)| {
                    serde_json::json!({
                        "event": event, "status": status, "detail": detail, "at": rfc3339(at),
                    })
                })
                .collect();
            requests.push(serde_json::json!({
                "id": row.id,
                "kind": row.kind,
                "jurisdiction": row.jurisdiction,
                "source": row.source,
                "status": row.status,
                "received_at": rfc3339(row.received_at),
                "due_at": rfc3339(row.due_at),
                "verify_by": rfc3339(row.verify_by),
                "verified_at": row.verified_at.map(rfc3339),
                // Set while its acknowledgement waits for the address's mail budget.
                "acknowledgement_held_since": row.acknowledgement_held_at.map(rfc3339),
                "closed_at": row.closed_at.map(rfc3339),
                "details": open(details_field(row.id), row.details_sealed)?,
                "outcome": open(outcome_field(row.id), row.outcome_sealed)?,
                "events": events,
            }));
        }
        let notices = crate::policy::notices_of(conn, person).await?;
        Ok(serde_json::json!({ "requests": requests, "policy_notices": notices }))
    }

    fn holds(&self) -> Option<&'static str> {
        // An unverified request that expired holds nobody: it was never shown to be theirs.
        Some(
            "SELECT person_id FROM privacy_request WHERE person_id IS NOT NULL AND status <> 'expired'",
        )
    }

    fn retention(&self) -> Vec<RetentionRule> {
        vec![
            RetentionRule {
                name: "privacy.policy_notices",
                keeps: "who was told of a policy change, and when: 3 years, as proof we told them",
                due: "SELECT count(*) FROM policy_notice WHERE queued_at < now() - interval '3 years'"
                    .into(),
                apply: "DELETE FROM policy_notice WHERE queued_at < now() - interval '3 years'"
                    .into(),
            },
            RetentionRule {
                name: "privacy.unverified",
                keeps: "a request never verified: its words and its link to the person end when it expires (7 days)",
                due: "SELECT count(*) FROM privacy_request
                      WHERE status = 'expired' AND (person_id IS NOT NULL OR details_sealed IS NOT NULL)".into(),
                apply: "UPDATE privacy_request SET person_id = NULL, details_sealed = NULL, updated_at = now()
                        WHERE status = 'expired' AND (person_id IS NOT NULL OR details_sealed IS NOT NULL)".into(),
            },
            RetentionRule {
                name: "privacy.letter_subjects",
                keeps: "a letter's subject and Message-ID, to reply to it: until its request is confirmed, expires or is erased",
                due: "SELECT count(*) FROM privacy_letter l
                      WHERE l.reply_sealed IS NOT NULL AND NOT EXISTS (
                          SELECT 1 FROM privacy_request r
                          WHERE r.id = l.request_id AND r.status = 'received' AND r.person_id IS NOT NULL)".into(),
                apply: "UPDATE privacy_letter l SET reply_sealed = NULL
                        WHERE l.reply_sealed IS NOT NULL AND NOT EXISTS (
                          SELECT 1 FROM privacy_request r
                          WHERE r.id = l.request_id AND r.status = 'received' AND r.person_id IS NOT NULL)".into(),
            },
            RetentionRule {
                name: "privacy.receipts",
                keeps: "a closed request (kind, dates, status, the person's link): 3 years after it closed, the proof we answered (its audit events, 3 years after it closed, once it is gone: audit::prune)",
                due: "SELECT count(*) FROM privacy_request WHERE closed_at < now() - interval '3 years'".into(),
                apply: "DELETE FROM privacy_request WHERE closed_at < now() - interval '3 years'".into(),
            },
        ]
    }

    async fn erase(
        &self,
        conn: &mut PgConnection,
        _keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        let exports = sqlx::query("DELETE FROM privacy_export WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await
            .context("failed to delete exports")?
            .rows_affected();
        // Unlinked first, then their links: a mail job writing a link locks the request and
        // writes none for an unlinked one (`store::new_token`), so none outlives this.
        let unlinked: Vec<PrivacyRequestId> = sqlx::query_scalar(
            "UPDATE privacy_request
             SET person_id = NULL, details_sealed = NULL, outcome_sealed = NULL, updated_at = now()
             WHERE person_id = $1
             RETURNING id",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to unlink privacy requests")?;
        let requests = unlinked.len() as u64;
        let links = sqlx::query("DELETE FROM privacy_token WHERE request_id = ANY($1)")
            .bind(&unlinked)
            .execute(&mut *conn)
            .await
            .context("failed to delete links")?
            .rows_affected();
        let letters = sqlx::query(
            "UPDATE privacy_letter SET reply_sealed = NULL
             WHERE request_id = ANY($1) AND reply_sealed IS NOT NULL",
        )
        .bind(&unlinked)
        .execute(&mut *conn)
        .await
        .context("failed to forget letters' subjects")?
        .rows_affected();
        let notices = sqlx::query("DELETE FROM policy_notice WHERE person_id = $1")
            .bind(person)
            .execute(&mut *conn)
            .await
            .context("failed to delete policy notices")?
            .rows_affected();
        Ok(ErasureSummary {
            section: self.section(),
            removed: BTreeMap::from([
                ("request_links", requests),
                ("exports", exports),
                ("link_tokens", links),
                ("letter_subjects", letters),
                ("policy_notices", notices),
            ]),
            kept: vec![format!(
                "{requests} request receipt(s) — kind, dates, status — and their audit trail, without personal data"
            )],
        })
    }
}
