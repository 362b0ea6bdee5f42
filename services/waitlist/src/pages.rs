//! The small HTML pages people see after a form post or a click in an email.

use askama::Template;

#[derive(Template)]
#[template(path = "pages/waitlist-pending.html")]
pub struct Pending;

#[derive(Template)]
#[template(path = "pages/waitlist-confirm.html")]
pub struct Confirm {
    pub action: String,
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

pub use pexper_platform::http::render_page as render;
