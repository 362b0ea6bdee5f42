//! Licences: issued once per paid purchase, signed with Ed25519 so the desktop app verifies
//! them offline with the published public key; revoked by a full refund, a lost dispute or an
//! operator. `POST /v1/licenses/validate` answers for online checks.

use anyhow::Context;
use axum::extract::State;
use pexper_platform::Platform;
use pexper_platform::crypto::Keyring;
use pexper_platform::http::{ApiError, ApiJson};
use pexper_wire::license::{self, LicenseClaims, PublicKey, ValidateRequest, ValidateResponse};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::PurchaseId;

/// Issues the purchase's licence unless it has one. `true` if this call issued it.
pub async fn issue(
    conn: &mut PgConnection,
    platform: &Platform,
    purchase: PurchaseId,
    product: &str,
    livemode: bool,
) -> anyhow::Result<bool> {
    let key = &platform.license_key;
    let id = Uuid::now_v7();
    // Whole seconds: the claims carry Unix seconds, and the row should say the same.
    let issued_at = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let claims = LicenseClaims {
        id: id.to_string(),
        product: product.to_owned(),
        issued_at: issued_at.unix_timestamp(),
        expires_at: None,
        key_id: license::key_id(&key.verifying_key()),
        livemode,
    };
    let token = license::sign(&claims, key);
    let inserted = sqlx::query(
        "INSERT INTO license (id, purchase_id, token_sealed, product, issued_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT ON CONSTRAINT license_purchase_id_key DO NOTHING",
    )
    .bind(id)
    .bind(purchase)
    .bind(seal_token(&platform.keyring, id, &token))
    .bind(product)
    .bind(issued_at)
    .execute(conn)
    .await
    .context("failed to store a licence")?;
    Ok(inserted.rows_affected() == 1)
}

/// A licence key as stored: sealed under the records key, as it is a credential for the product
/// and outlives its buyer's erasure (`seal`).
fn seal_token(keyring: &Keyring, id: Uuid, token: &str) -> Vec<u8> {
    crate::seal::seal(keyring, "license", "token_sealed", id, &token)
}

/// Opens a stored licence key.
pub fn open_token(keyring: &Keyring, id: Uuid, sealed: Option<&[u8]>) -> anyhow::Result<String> {
    crate::seal::open(keyring, "license", "token_sealed", id, sealed)
}

/// The Ed25519 public key licences are signed with.
#[utoipa::path(get, path = "/v1/licenses/public-key", tag = "licenses",
    responses((status = 200, description = "The licence verification key", body = PublicKey)))]
pub async fn public_key(State(platform): State<Platform>) -> axum::Json<PublicKey> {
    axum::Json(PublicKey::new(&platform.license_key.verifying_key()))
}

/// Is this licence ours, and is it still active?
#[utoipa::path(post, path = "/v1/licenses/validate", tag = "licenses",
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "A licence we signed: active, or revoked by a refund, a lost dispute or an operator", body = ValidateResponse),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a licence we signed", body = pexper_wire::ErrorBody),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn validate(
    State(platform): State<Platform>,
    ApiJson(request): ApiJson<ValidateRequest>,
) -> Result<axum::Json<ValidateResponse>, ApiError> {
    let claims = license::verify(&request.license, &platform.license_key.verifying_key())
        .map_err(|e| ApiError::unprocessable("invalid_license", e.to_string()))?;
    let id = Uuid::parse_str(&claims.id)
        .map_err(|_| ApiError::unprocessable("invalid_license", "malformed licence id"))?;
    let revoked: Option<bool> =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM license WHERE id = $1")
            .bind(id)
            .fetch_optional(&platform.pool)
            .await?;
    // Signed by us but not on record cannot happen short of a lost database: fail closed.
    let active = revoked == Some(false);
    Ok(axum::Json(ValidateResponse {
        valid: active,
        status: if active { "active" } else { "revoked" }.to_owned(),
    }))
}
