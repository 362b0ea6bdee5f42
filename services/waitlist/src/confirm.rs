//! `GET /v1/waitlist/confirm?token=…`: the double opt-in click.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use pexper_platform::Platform;
use pexper_platform::http::ApiError;
use serde::Deserialize;

use crate::store::{self, Confirmation};
use crate::{emails, pages};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConfirmQuery {
    /// The token from the confirmation email.
    token: Option<String>,
}

/// Confirms a signup and shows the person's place in line.
#[utoipa::path(get, path = "/v1/waitlist/confirm", tag = "waitlist", params(ConfirmQuery), responses(
    (status = 200, description = "Confirmed: a page with the place in line and a referral link", content_type = "text/html"),
    (status = 400, description = "Expired, used or unknown token: a friendly page", content_type = "text/html")))]
pub async fn confirm(
    State(platform): State<Platform>,
    Query(q): Query<ConfirmQuery>,
) -> Result<Response, ApiError> {
    let bad = || {
        pages::render(
            StatusCode::BAD_REQUEST,
            pages::BadToken {
                site_url: platform.config.site_url().to_owned(),
            },
        )
    };
    let Some(token) = q.token.filter(|t| !t.is_empty() && t.len() <= 128) else {
        return Ok(bad());
    };
    let Confirmation::Confirmed { person } = store::confirm(&platform, &token).await? else {
        return Ok(bad());
    };
    tracing::info!("waitlist signup confirmed");
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let position = store::position(&mut conn, person, platform.config.referral_bump).await?;
    let entry = store::entry(&mut conn, person).await?;
    Ok(pages::render(
        StatusCode::OK,
        pages::Confirmed {
            position,
            bump: platform.config.referral_bump,
            referral_link: emails::referral_link(
                &platform,
                entry.and_then(|e| e.referral_code).as_deref().unwrap_or(""),
            ),
        },
    ))
}
