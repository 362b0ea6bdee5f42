//! The privacy endpoints people use: the request form's `POST`, and the verification link
//! (`GET` shows a button and changes nothing — mail scanners follow links; `POST` verifies).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::http::{ApiError, ApiJson, LinkToken, render_page};
use pexper_platform::person;

use crate::store::{self, LinkState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::intake::{self, Verification};
use crate::request::{Jurisdiction, Kind};
use crate::store::NewRequest;

/// Longest free text we take: enough for any correction, not a place to upload documents.
const MAX_DETAILS: usize = 5000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PrivacyRequestBody {
    /// The address the request is about; the verification email goes there.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// The right being exercised.
    #[schema(value_type = Kind)]
    kind: String,
    /// The legal deadline can make the due date sooner. Default: `other`.
    #[schema(value_type = Option<Jurisdiction>)]
    jurisdiction: Option<String>,
    /// What to correct, restrict or object to (at most 5,000 characters). Stored encrypted.
    #[schema(max_length = 5000)]
    details: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestAccepted {
    /// Always `pending_verification`.
    status: &'static str,
}

/// Make a privacy request (GDPR/CCPA).
#[utoipa::path(post, path = "/v1/privacy/requests", tag = "privacy",
    request_body = PrivacyRequestBody,
    responses(
        (status = 202, description = "Received; a verification email is on its way, within the address's daily budget of three (the same answer whether or not we know the address, and whatever the budget)", body = RequestAccepted),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a valid address, kind or jurisdiction, or details too long", body = pexper_wire::ErrorBody),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn create(
    State(platform): State<Platform>,
    ApiJson(body): ApiJson<PrivacyRequestBody>,
) -> Result<(StatusCode, axum::Json<RequestAccepted>), ApiError> {
    let email = EmailAddress::parse(&body.email)
        .map_err(|e| ApiError::unprocessable("invalid_email", e.to_string()))?;
    let kind = Kind::parse(&body.kind)
        .filter(|k| Kind::ASKABLE.contains(k))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_kind",
                format!(
                    "kind must be one of {}",
                    Kind::ASKABLE.map(Kind::as_str).join(", ")
                ),
            )
        })?;
    let jurisdiction = match body.jurisdiction.as_deref() {
        None => Jurisdiction::default(),
        Some(j) => Jurisdiction::parse(j).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_jurisdiction",
                "jurisdiction must be gdpr, ccpa or other",
            )
        })?,
    };
    if body
        .details
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DETAILS)
    {
        return Err(ApiError::unprocessable(
            "details_too_long",
            "details must be at most 5000 characters",
        ));
    }
    let mut tx = platform.pool.begin().await?;
    let person = person::find_or_create(&mut tx, &platform.keyring, &email).await?;
    let new = NewRequest {
        kind,
        jurisdiction,
        source: "web",
        details: body.details,
        received_at: OffsetDateTime::now_utc(),
    };
    let id = intake::take_in(
        &mut tx,
        &platform.keyring,
        person,
        &new,
        intake::Acknowledge::WithinBudget,
    )
    .await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    tracing::info!(request = %id, kind = kind.as_str(), "privacy request received");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RequestAccepted {
            status: "pending_verification",
        }),
    ))
}

fn invalid_link() -> Response {
    render_page(
        StatusCode::BAD_REQUEST,
        VerifyPage {
            state: "invalid",
            action: String::new(),
            automatic: false,
        },
    )
}

#[derive(Template)]
#[template(path = "pages/privacy-verify.html")]
struct VerifyPage {
    /// `ask`, `verified`, `used` or `invalid`.
    state: &'static str,
    action: String,
    automatic: bool,
}

/// The page of a link that was used already: it verifies nothing more (400, as for any link
/// that no longer works), and says the request is confirmed.
fn used_link() -> Response {
    render_page(
        StatusCode::BAD_REQUEST,
        VerifyPage {
            state: "used",
            action: String::new(),
            automatic: false,
        },
    )
}

/// Shows the confirmation button, or says the link was used. Changes nothing.
#[utoipa::path(get, path = "/v1/privacy/verify", tag = "privacy", params(LinkToken), responses(
    (status = 200, description = "A page with a Confirm button", content_type = "text/html"),
    (status = 400, description = "Missing, unknown, used or expired link; for a used one, the page says the request is confirmed already", content_type = "text/html")))]
pub async fn verify_page(
    State(platform): State<Platform>,
    Query(q): Query<LinkToken>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token() else {
        return Ok(invalid_link());
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    Ok(match store::verify_link(&mut conn, &token).await? {
        LinkState::Usable => render_page(
            StatusCode::OK,
            VerifyPage {
                state: "ask",
                action: format!("/v1/privacy/verify?token={token}"),
                automatic: false,
            },
        ),
        LinkState::Used => used_link(),
        LinkState::Invalid => invalid_link(),
    })
}

/// Verifies the request: access and deletion then run by themselves.
#[utoipa::path(post, path = "/v1/privacy/verify", tag = "privacy", params(LinkToken), responses(
    (status = 200, description = "Verified", content_type = "text/html"),
    (status = 400, description = "Missing, unknown, used or expired link; for a used one, the page says the request is confirmed already", content_type = "text/html")))]
pub async fn verify(
    State(platform): State<Platform>,
    Query(q): Query<LinkToken>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token() else {
        return Ok(invalid_link());
    };
    let mut tx = platform.pool.begin().await?;
    let outcome = intake::verify(&mut tx, &platform.keyring, &token).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    Ok(match outcome {
        Verification::Verified { kind } => {
            tracing::info!(kind = kind.as_str(), "privacy request verified");
            render_page(
                StatusCode::OK,
                VerifyPage {
                    state: "verified",
                    action: String::new(),
                    automatic: kind.is_automatic(),
                },
            )
        }
        Verification::Invalid => {
            let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
            match store::verify_link(&mut conn, &token).await? {
                LinkState::Used => used_link(),
                _ => invalid_link(),
            }
        }
    })
}
