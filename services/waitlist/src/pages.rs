//! The small HTML pages people see after a form post or a click in an email.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

#[derive(Template)]
#[template(path = "pages/waitlist-pending.html")]
pub struct Pending;

#[derive(Template)]
#[template(path = "pages/waitlist-invalid-email.html")]
pub struct InvalidEmail {
    pub reason: String,
}

#[derive(Template)]
#[template(path = "pages/waitlist-confirmed.html")]
pub struct Confirmed {
    pub position: Option<i64>,
    pub bump: i64,
    pub referral_link: String,
}

#[derive(Template)]
#[template(path = "pages/waitlist-bad-token.html")]
pub struct BadToken {
    pub site_url: String,
}

#[derive(Template)]
#[template(path = "pages/unsubscribe.html")]
pub struct Unsubscribe {
    pub done: bool,
    pub action: String,
}

#[derive(Template)]
#[template(path = "pages/bad-link.html")]
pub struct BadLink;

/// Renders a page with a status. A template that fails to render is a bug in our code: it is
/// logged and answered with a plain 500 (the JSON-error layer leaves HTML alone).
pub fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "page failed to render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
