//! The account pages' templates (`templates/pages/account-*.html`): plain forms that work
//! without JavaScript, with labels, autocomplete hints, and errors announced (`role="alert"`).

use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;

pub use pexper_platform::http::render_page as render;

#[derive(Template)]
#[template(path = "pages/account-sign-up.html")]
pub struct SignUp {
    pub error: Option<String>,
    pub email: String,
}

#[derive(Template)]
#[template(path = "pages/account-sign-in.html")]
pub struct SignIn {
    pub error: Option<String>,
    pub email: String,
}

#[derive(Template)]
#[template(path = "pages/account-reset-request.html")]
pub struct ResetRequest {
    pub error: Option<String>,
}

/// The reset link's page: `ask` (the form), `done` or `invalid`.
#[derive(Template)]
#[template(path = "pages/account-new-password.html")]
pub struct NewPassword {
    pub state: &'static str,
    pub action: String,
    pub error: Option<String>,
}

/// The verification link's page: `ask` (the form for the account's password), `verified`
/// or `invalid`.
#[derive(Template)]
#[template(path = "pages/account-verify.html")]
pub struct Verify {
    pub state: &'static str,
    pub action: String,
    pub error: Option<String>,
}

/// A short answer: what happened, and where to go next.
#[derive(Template)]
#[template(path = "pages/account-message.html")]
pub struct Message {
    pub heading: &'static str,
    pub message: String,
    pub link: Option<(&'static str, &'static str)>,
}

pub fn message(
    status: StatusCode,
    heading: &'static str,
    message: impl Into<String>,
    link: Option<(&'static str, &'static str)>,
) -> Response {
    render(
        status,
        Message {
            heading,
            message: message.into(),
            link,
        },
    )
}

/// A `303 See Other` to one of our pages.
pub fn see_other(location: &'static str) -> Response {
    use axum::response::IntoResponse;
    (
        StatusCode::SEE_OTHER,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response()
}
