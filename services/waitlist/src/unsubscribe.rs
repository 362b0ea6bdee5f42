//! One-click unsubscribe (RFC 8058). The token is the person's id with a MAC under the token
//! lookup key: it needs no table and works for as long as the person exists, across rotations
//! of the master key (which re-wrap the lookup key and leave it unchanged).
//! `GET` only shows a button (mail scanners follow links); `POST` unsubscribes at once, with
//! any body (RFC 8058's is `List-Unsubscribe=One-Click`) and no cookie.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pexper_platform::Platform;
use pexper_platform::crypto::Keyring;
use pexper_platform::http::ApiError;
use pexper_platform::person::PersonId;
use serde::Deserialize;
use uuid::Uuid;

use crate::pages;

const DOMAIN: &str = "unsubscribe";

/// A verified unsubscribe token: parsing checks the MAC, so holding one means it is genuine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeToken(PersonId);

impl UnsubscribeToken {
    /// `v1.<person id>.<mac>`.
    pub fn issue(keyring: &Keyring, person: PersonId) -> String {
        let mac = keyring.sign_token(DOMAIN, person.0.as_bytes());
        format!("v1.{}.{}", person.0.simple(), URL_SAFE_NO_PAD.encode(mac))
    }

    /// Links mailed before the token key became a lookup key carry the master version they
    /// were signed under (`v<n>`); the MAC alone decides, so any version number is read.
    pub fn verify(keyring: &Keyring, token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        parts.next()?.strip_prefix('v')?.parse::<u32>().ok()?;
        let person = Uuid::try_parse(parts.next()?).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
        if parts.next().is_some() {
            return None;
        }
        keyring
            .verify_token(DOMAIN, person.as_bytes(), &mac)
            .then_some(Self(PersonId(person)))
    }

    pub fn person(&self) -> PersonId {
        self.0
    }
}

/// The link in every waitlist email's footer and `List-Unsubscribe` header.
pub fn url(platform: &Platform, person: PersonId) -> String {
    format!(
        "{}/v1/unsubscribe?token={}",
        platform.config.public_url,
        UnsubscribeToken::issue(&platform.keyring, person)
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TokenQuery {
    /// The token from the email's link. Without one, the page says the link does not work.
    #[param(required = true, min_length = 1, max_length = 128)]
    token: Option<String>,
}

impl TokenQuery {
    /// The token, if it is genuine.
    fn verify(&self, keyring: &Keyring) -> Option<UnsubscribeToken> {
        UnsubscribeToken::verify(keyring, self.token.as_deref()?)
    }
}

/// Shows the unsubscribe button. Changes nothing.
#[utoipa::path(get, path = "/v1/unsubscribe", tag = "waitlist", params(TokenQuery), responses(
    (status = 200, description = "A page with an Unsubscribe button", content_type = "text/html"),
    (status = 400, description = "No token, or not a genuine one", content_type = "text/html")))]
pub async fn page(State(platform): State<Platform>, Query(q): Query<TokenQuery>) -> Response {
    let Some(token) = q.verify(&platform.keyring) else {
        return pages::render(StatusCode::BAD_REQUEST, pages::BadLink);
    };
    pages::render(
        StatusCode::OK,
        pages::Unsubscribe {
            done: false,
            // Re-issued from the verified person, not echoed: nothing of the request's own
            // query string goes into the page.
            action: format!(
                "/v1/unsubscribe?token={}",
                UnsubscribeToken::issue(&platform.keyring, token.person())
            ),
        },
    )
}

/// Unsubscribes at once (RFC 8058 one-click: body `List-Unsubscribe=One-Click`, no cookie).
#[utoipa::path(post, path = "/v1/unsubscribe", tag = "waitlist", params(TokenQuery), responses(
    (status = 200, description = "Unsubscribed", content_type = "text/html"),
    (status = 400, description = "No token, or not a genuine one", content_type = "text/html")))]
pub async fn unsubscribe(
    State(platform): State<Platform>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let Some(token) = q.verify(&platform.keyring) else {
        return Ok(pages::render(StatusCode::BAD_REQUEST, pages::BadLink));
    };
    crate::store::unsubscribe(&platform.pool, token.person()).await?;
    tracing::info!("unsubscribed");
    Ok(pages::render(
        StatusCode::OK,
        pages::Unsubscribe {
            done: true,
            action: String::new(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pexper_platform::crypto::MasterKeys;

    fn ring() -> Keyring {
        Keyring::new(&MasterKeys::parse(&MasterKeys::generate_encoded().into()).expect("key"))
    }

    #[test]
    fn tokens_verify_only_as_issued_and_only_under_their_key() {
        let ring = ring();
        let person = PersonId(Uuid::new_v4());
        let token = UnsubscribeToken::issue(&ring, person);
        assert_eq!(
            UnsubscribeToken::verify(&ring, &token).map(|t| t.person()),
            Some(person)
        );
        assert!(UnsubscribeToken::verify(&self::ring(), &token).is_none());
        let other = PersonId(Uuid::new_v4());
        let forged = token.replace(
            &person.0.simple().to_string(),
            &other.0.simple().to_string(),
        );
        assert!(UnsubscribeToken::verify(&ring, &forged).is_none());
        for bad in [
            "",
            "v1",
            "v1.x.y",
            &format!("{token}.extra"),
            &token[..token.len() - 2],
        ] {
            assert!(UnsubscribeToken::verify(&ring, bad).is_none(), "{bad}");
        }
    }
}
