//! The `?token=` of a link we emailed (a confirmation, a verification, a password reset):
//! one query type for every such page, so that each checks the token's shape the same way.

use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LinkToken {
    /// The token from the email's link. A missing, unknown, used or expired one gets a page
    /// saying the link does not work.
    #[param(required = true, pattern = "^[A-Za-z0-9_-]{43}$")]
    token: Option<String>,
}

impl LinkToken {
    /// The token, if it could be one of ours (`crypto::is_token_shaped`): anything else is
    /// refused before a lookup, and one that is echoed into a form's action needs no escaping.
    pub fn token(self) -> Option<String> {
        self.token.filter(|t| crate::crypto::is_token_shaped(t))
    }
}
