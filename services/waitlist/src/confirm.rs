//! The double opt-in link, `/v1/waitlist/confirm?token=…`. `GET` shows a Confirm button and
//! changes nothing: corporate mail scanners (Safe Links, Proofpoint, …) fetch every link in a
//! message as it arrives, and a GET that confirmed would let anyone sign a colleague up.
//! `POST` (the button) uses the token, once, and shows the person's place in line.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use pexper_platform::Platform;
use pexper_platform::http::{ApiError, LinkToken};
use pexper_platform::jobs::{self, NewJob};

use crate::emails::{self, Welcome};
use crate::pages;
use crate::store::{self, Confirmation};

fn bad_token(platform: &Platform) -> Response {
    pages::render(
        StatusCode::BAD_REQUEST,
        pages::BadToken {
            site_url: platform.config.site_url().to_owned(),
        },
    )
}

/// Shows the Confirm button (for a token that can still be used). Changes nothing.
#[utoipa::path(get, path = "/v1/waitlist/confirm", tag = "waitlist", params(LinkToken), responses(
    (status = 200, description = "A page with a Confirm button", content_type = "text/html"),
    (status = 400, description = "Missing, expired, used or unknown token: a friendly page", content_type = "text/html")))]
pub async fn page(
    State(platform): State<Platform>,
    Query(q): Query<LinkToken>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token() else {
        return Ok(bad_token(&platform));
    };
    if !store::token_is_usable(&platform.pool, &token).await? {
        return Ok(bad_token(&platform));
    }
    Ok(pages::render(
        StatusCode::OK,
        pages::Confirm {
            action: format!("/v1/waitlist/confirm?token={token}"),
        },
    ))
}

/// Confirms a signup (the token works once) and shows the person's place in line.
#[utoipa::path(post, path = "/v1/waitlist/confirm", tag = "waitlist", params(LinkToken), responses(
    (status = 200, description = "Confirmed: a page with the place in line and a referral link", content_type = "text/html"),
    (status = 400, description = "Missing, expired, used or unknown token: a friendly page", content_type = "text/html")))]
pub async fn confirm(
    State(platform): State<Platform>,
    Query(q): Query<LinkToken>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token() else {
        return Ok(bad_token(&platform));
    };
    let Confirmation::Confirmed { person } = confirm_signup(&platform, &token).await? else {
        return Ok(bad_token(&platform));
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

/// Confirms the token's signup and queues the welcome email, in one transaction.
async fn confirm_signup(platform: &Platform, token: &str) -> anyhow::Result<Confirmation> {
    let mut tx = platform.pool.begin().await?;
    let confirmation = store::confirm(&mut tx, &platform.keyring, token).await?;
    if let Confirmation::Confirmed { person } = confirmation {
        jobs::enqueue(&mut tx, NewJob::new(&Welcome {}).for_person(person)).await?;
        tx.commit().await?;
    }
    Ok(confirmation)
}
