//! The support section of an export (every request with what was written and answered), and
//! erasure (the requests and their replies go).

use std::collections::BTreeMap;

use anyhow::Context;
use pexper_platform::crypto::Keyring;
use pexper_platform::person::PersonId;
use pexper_platform::personal_data::{ErasureSummary, PersonalData, RetentionRule, rfc3339};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::store::{self, Status, SupportRequestId};

#[derive(Debug, Clone, Copy, Default)]
pub struct SupportData;

impl PersonalData for SupportData {
    fn section(&self) -> &'static str {
        "support"
    }

    async fn export(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<serde_json::Value> {
        let rows: Vec<(
            SupportRequestId,
            String,
            Status,
            OffsetDateTime,
            Option<OffsetDateTime>,
        )> = sqlx::query_as(
            "SELECT id, reference, status, created_at, closed_at FROM support_request
                 WHERE person_id = $1 ORDER BY created_at",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await
        .context("failed to export support requests")?;
        let mut requests = Vec::with_capacity(rows.len());
        for (id, reference, status, created, closed) in rows {
            let opened = store::open(conn, keyring, id, person).await?;
            requests.push(serde_json::json!({
                "id": id,
                "reference": reference,
                "status": status,
                "created_at": rfc3339(created),
                "closed_at": closed.map(rfc3339),
                "subject": opened.subject,
                "message": opened.message,
                "replies": opened.replies,
            }));
        }
        Ok(serde_json::json!({ "requests": requests }))
    }

    fn holds(&self) -> Option<&'static str> {
        Some("SELECT person_id FROM support_request")
    }

    fn retention(&self) -> Vec<RetentionRule> {
        vec![RetentionRule {
            name: "support.closed",
            keeps: "a support request and our replies: 1 year after it was closed, last \
                    answered, or (never answered) received",
            due: "SELECT count(*) FROM support_request
                  WHERE coalesce(closed_at, CASE WHEN status = 'answered' THEN updated_at END,
                                 created_at)
                        < now() - interval '1 year'"
                .into(),
            apply: "DELETE FROM support_request
                    WHERE coalesce(closed_at, CASE WHEN status = 'answered' THEN updated_at END,
                                   created_at)
                          < now() - interval '1 year'"
                .into(),
        }]
    }

    async fn erase(
        &self,
        conn: &mut PgConnection,
        _keyring: &Keyring,
        person: PersonId,
    ) -> anyhow::Result<ErasureSummary> {
        let requests = sqlx::query("DELETE FROM support_request WHERE person_id = $1")
            .bind(person)
            .execute(conn)
            .await
            .context("failed to delete support requests")?
            .rows_affected();
        Ok(ErasureSummary {
            section: "support",
            removed: BTreeMap::from([("support_requests", requests)]),
            kept: vec![],
        })
    }
}
