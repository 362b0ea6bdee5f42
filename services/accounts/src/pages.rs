//! The account pages' templates (`templates/pages/account-*.html`): plain forms that work
//! without JavaScript, with labels and autocomplete hints; an error stands next to the field
//! it is about, which is marked invalid, described by it, and focused.

use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;

pub use pexper_platform::http::render_page as render;

/// What is wrong with a form post, in a sentence: about one field, or the form as a whole.
#[derive(Debug, Clone, Default)]
pub struct FormError(Option<(Option<&'static str>, String)>);

impl FormError {
    pub fn none() -> Self {
        Self(None)
    }

    /// An error about the field `name` (its input's `name` and `id`).
    pub fn field(name: &'static str, message: &str) -> Self {
        Self(Some((Some(name), pexper_platform::http::sentence(message))))
    }

    /// An error about the whole form, shown above it.
    pub fn form(message: &str) -> Self {
        Self(Some((None, pexper_platform::http::sentence(message))))
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The message, when it is about the field `name`.
    pub fn about(&self, name: &str) -> Option<&str> {
        match &self.0 {
            Some((Some(field), message)) if *field == name => Some(message),
            _ => None,
        }
    }

    /// The message, when it is about the whole form.
    pub fn general(&self) -> Option<&str> {
        match &self.0 {
            Some((None, message)) => Some(message),
            _ => None,
        }
    }
}

#[derive(Template)]
#[template(path = "pages/account-sign-up.html")]
pub struct SignUp {
    pub error: FormError,
    pub email: String,
}

#[derive(Template)]
#[template(path = "pages/account-sign-in.html")]
pub struct SignIn {
    pub error: FormError,
    pub email: String,
}

#[derive(Template)]
#[template(path = "pages/account-reset-request.html")]
pub struct ResetRequest {
    pub error: FormError,
}

/// The reset link's page: `ask` (the form), `done` or `invalid`.
#[derive(Template)]
#[template(path = "pages/account-new-password.html")]
pub struct NewPassword {
    pub state: &'static str,
    pub action: String,
    pub error: FormError,
}

/// The verification link's page: `ask` (the form for the account's password), `verified`
/// or `invalid`.
#[derive(Template)]
#[template(path = "pages/account-verify.html")]
pub struct Verify {
    pub state: &'static str,
    pub action: String,
    pub error: FormError,
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
