//! Access and portability: one machine-readable JSON document built from every registered
//! service's export, sealed under the person's key (so erasing them makes it unreadable), and
//! downloadable through a link that expires with it.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pexper_platform::Platform;
use pexper_platform::crypto::{Field, sha256};
use pexper_platform::http::ApiError;
use pexper_platform::person::{self, PersonId};
use sqlx::PgConnection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::request::PrivacyRequestId;

use crate::store::LINK_LIFETIME;

fn document_field(request: PrivacyRequestId) -> Field<'static> {
    Field {
        table: "privacy_export",
        column: "document_sealed",
        row: request.0,
    }
}

/// Builds and stores the export; returns the section names (for the audit trail) and the
/// document.
pub async fn build(
    platform: &Platform,
    conn: &mut PgConnection,
    request: PrivacyRequestId,
    person: PersonId,
) -> anyhow::Result<(String, Vec<u8>)> {
    let sections = platform
        .personal_data
        .export(conn, &platform.keyring, person)
        .await?;
    let names: Vec<String> = sections
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    let document = serde_json::json!({
        "format": "pexper-data-export/1",
        "generated_at": now.format(&Rfc3339).context("a formattable time")?,
        "request_id": request,
        "controller": "Pexper, privacy@pexper.com",
        "note": "Everything the Pexper website backend holds about you, one section per service. Your workflows, API keys and generated content never leave your device, so they are not here.",
        "sections": sections,
    });
    let key = person::data_key(conn, &platform.keyring, person)
        .await?
        .context("the person vanished")?;
    let document = serde_json::to_vec_pretty(&document)?;
    let sealed = key.seal(document_field(request), &document);
    sqlx::query(
        "INSERT INTO privacy_export (request_id, person_id, document_sealed, expires_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (request_id) DO UPDATE
         SET document_sealed = EXCLUDED.document_sealed, expires_at = EXCLUDED.expires_at",
    )
    .bind(request)
    .bind(person)
    .bind(sealed)
    .bind(now + LINK_LIFETIME)
    .execute(conn)
    .await
    .context("failed to store an export")?;
    Ok((names.join(","), document))
}

/// Download an access export.
#[utoipa::path(get, path = "/v1/privacy/exports/{token}", tag = "privacy",
    params(("token" = String, Path, description = "The token from the export email")),
    responses(
        (status = 200, description = "The export: one JSON document, a section per service", content_type = "application/json"),
        (status = 404, description = "Unknown link", body = pexper_wire::ErrorBody),
        (status = 410, description = "The link or the export has expired", body = pexper_wire::ErrorBody)))]
pub async fn download(
    State(platform): State<Platform>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let row: Option<(PrivacyRequestId, bool)> = sqlx::query_as(
        "SELECT request_id, expires_at > now() FROM privacy_token
         WHERE token_hash = $1 AND purpose = 'export'",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&platform.pool)
    .await?;
    let gone = || {
        ApiError::client(
            StatusCode::GONE,
            "expired",
            "this export has expired; ask again at privacy@pexper.com or on pexper.com",
        )
    };
    let Some((request, live)) = row else {
        return Err(ApiError::not_found("this link is not valid"));
    };
    if !live {
        return Err(gone());
    }
    let mut conn = platform.pool.acquire().await?;
    let stored: Option<(PersonId, Vec<u8>)> = sqlx::query_as(
        "SELECT person_id, document_sealed FROM privacy_export
         WHERE request_id = $1 AND expires_at > now()",
    )
    .bind(request)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((person, sealed)) = stored else {
        return Err(gone());
    };
    let Some(key) = person::data_key(&mut conn, &platform.keyring, person).await? else {
        return Err(gone());
    };
    let document = key
        .open(document_field(request), &sealed)
        .context("failed to open an export")?;
    tracing::info!(%request, "export downloaded");
    Ok(attachment(document))
}

/// An export as a download: `pexper-data-export.json`, never cached.
pub fn attachment(document: Vec<u8>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"pexper-data-export.json\""),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        document,
    )
        .into_response()
}
