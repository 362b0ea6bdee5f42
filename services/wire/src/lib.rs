//! Types that cross the wire between the Pexper backend and its clients (the website, the
//! desktop app, scripts). This crate depends on serde alone so that the desktop client and
//! other tools can speak the API without compiling a web server or a database driver.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
///
/// `code` is stable and meant for programs; `message` is for people and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// The answer of `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `"ok"` or `"unavailable"`.
    pub status: String,
}

#[cfg(feature = "analytics")]
pub mod analytics;
#[cfg(feature = "license")]
pub mod license;
#[cfg(feature = "scrub")]
pub mod scrub;
