//! "My account": what the backend holds for the signed-in person — read from every service's
//! own export, so the page and an access export can never disagree — and what they can do
//! with it: resend a licence, sign out elsewhere, change the password, download their data,
//! delete it all.

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pexper_platform::Platform;
use pexper_platform::http::ApiError;
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::AccountsState;
use crate::http::{busy, change_password, client_of, end_session, password_context, too_many};
use crate::pages::{self, render, see_other};
use crate::password::{Busy, Checked, Password};
use crate::session::{self, SignedIn};
use crate::store::{self, SessionInfo};
use crate::throttle::Attempt;
use zeroize::Zeroizing;

/// A purchase as the account shows it (from the payments export).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Purchase {
    #[schema(value_type = uuid::Uuid)]
    pub id: uuid::Uuid,
    pub product: String,
    /// Minor units (cents).
    pub amount: i64,
    pub currency: String,
    /// `paid`, `refunded`, `disputed`, …
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `active` or `revoked`; none before payment.
    pub license_status: Option<String>,
    /// The signed licence key, for the desktop app.
    pub license: Option<String>,
}

/// A privacy request (from the privacy export).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrivacyRequest {
    pub kind: String,
    pub status: String,
    #[schema(format = DateTime)]
    pub received_at: String,
    #[schema(format = DateTime)]
    pub due_at: String,
}

/// A notice of a change to the privacy policy (from the privacy export).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyNotice {
    pub version: String,
    pub status: String,
    #[schema(format = DateTime)]
    pub notified_at: Option<String>,
}

/// An email we sent (from the platform's export).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailSent {
    /// Which email, e.g. `purchase-receipt`.
    pub email: String,
    #[schema(format = DateTime)]
    pub sent_at: String,
}

/// The waitlist entry (from the waitlist export).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitlistPlace {
    /// `pending`, `confirmed`, `invited`, …
    pub status: String,
    /// The place in line, while waiting.
    pub position: Option<i64>,
    pub subscribed: bool,
}

/// The signed-in person's account.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    #[schema(format = Email)]
    pub email: String,
    pub waitlist: Option<WaitlistPlace>,
    pub purchases: Vec<Purchase>,
    pub privacy_requests: Vec<PrivacyRequest>,
    pub policy_notices: Vec<PolicyNotice>,
    pub emails_sent: Vec<EmailSent>,
    pub sessions: Vec<SessionInfo>,
    /// Send it as `X-CSRF-Token` (or the form field `csrf`) with state-changing requests.
    pub csrf_token: String,
}

fn part<T: serde::de::DeserializeOwned + Default>(value: Option<&serde_json::Value>) -> T {
    value
        .filter(|v| !v.is_null())
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

async fn view(platform: &Platform, signed_in: &SignedIn) -> Result<AccountView, ApiError> {
    let person = signed_in.session.person_id;
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let sections = platform
        .personal_data
        .export(&mut conn, &platform.keyring, person)
        .await?;
    let email = person::email(&mut conn, &platform.keyring, person)
        .await?
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    let sessions = store::sessions(&mut conn, signed_in.session.account_id).await?;
    Ok(AccountView {
        email,
        waitlist: sections
            .get("waitlist")
            .filter(|v| !v.is_null())
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        purchases: part(sections.pointer("/payments/purchases")),
        privacy_requests: part(sections.pointer("/privacy_requests/requests")),
        policy_notices: part(sections.pointer("/privacy_requests/policy_notices")),
        emails_sent: part(sections.pointer("/email/emails_sent")),
        sessions,
        csrf_token: signed_in.csrf(platform),
    })
}

/// The signed-in person's account.
#[utoipa::path(get, path = "/v1/account", tag = "accounts", responses(
    (status = 200, description = "The address, waitlist place, purchases and licences, privacy requests, policy notices, emails sent, sessions, and the session's CSRF token", body = AccountView),
    (status = 401, description = "Not signed in", body = pexper_wire::ErrorBody),
    (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn get_account(
    State(platform): State<Platform>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let signed_in = session::require(&platform, &headers).await?;
    let view = view(&platform, &signed_in).await?;
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(view),
    )
        .into_response())
}

#[derive(askama::Template)]
#[template(path = "pages/account.html")]
struct AccountPage {
    view: AccountView,
    current_session: uuid::Uuid,
    /// Whether the password was typed recently enough for export and deletion.
    recently_confirmed: bool,
    notice: Option<Notice>,
}

/// What the last form of the account page did, shown in that form's section: done (a status),
/// or a problem with the form or with one of its fields.
#[derive(Debug, Clone, Copy)]
pub struct Notice {
    /// The `id` of the section whose form it answers.
    section: &'static str,
    /// The field (its input's `id`) the problem is about.
    field: Option<&'static str>,
    text: &'static str,
    done: bool,
}

impl Notice {
    fn done(section: &'static str, text: &'static str) -> Self {
        Self {
            section,
            field: None,
            text,
            done: true,
        }
    }

    fn problem(section: &'static str, text: &'static str) -> Self {
        Self {
            section,
            field: None,
            text,
            done: false,
        }
    }

    fn about(section: &'static str, field: &'static str, text: &'static str) -> Self {
        Self {
            section,
            field: Some(field),
            text,
            done: false,
        }
    }
}

impl AccountPage {
    /// The notice of the section `id` that is not about a field.
    fn notice_in(&self, id: &str) -> Option<&Notice> {
        self.notice
            .as_ref()
            .filter(|n| n.section == id && n.field.is_none())
    }

    /// The problem with the field `id`, if any (`account-field.html` asks).
    fn about(&self, id: &str) -> Option<&'static str> {
        self.notice.filter(|n| n.field == Some(id)).map(|n| n.text)
    }

    /// Whether the page answers a form with a problem.
    fn invalid_any(&self) -> bool {
        self.notice.is_some_and(|n| !n.done)
    }

    fn amount(&self, p: &Purchase) -> String {
        pexper_payments::format_amount(p.amount, &p.currency)
    }

    /// The day of an RFC 3339 time.
    fn date<'a>(&self, rfc3339: &'a str) -> &'a str {
        rfc3339.get(..10).unwrap_or(rfc3339)
    }
}

async fn page(
    platform: &Platform,
    signed_in: &SignedIn,
    status: StatusCode,
    notice: Option<Notice>,
) -> Result<Response, ApiError> {
    let view = view(platform, signed_in).await?;
    Ok(page_of(view, signed_in, status, notice))
}

/// The account page of a view already read.
fn page_of(
    view: AccountView,
    signed_in: &SignedIn,
    status: StatusCode,
    notice: Option<Notice>,
) -> Response {
    let mut response = render(
        status,
        AccountPage {
            view,
            current_session: signed_in.session.id.0,
            recently_confirmed: recently_confirmed(signed_in),
            notice,
        },
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The account page; without a session, on to sign-in.
#[utoipa::path(get, path = "/account", tag = "accounts", responses(
    (status = 200, description = "The account page", content_type = "text/html"),
    (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String)))))]
pub async fn account_page(
    State(platform): State<Platform>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(signed_in) = session::signed_in(&platform, &headers).await? else {
        return Ok(see_other("/account/sign-in"));
    };
    page(&platform, &signed_in, StatusCode::OK, None).await
}

/// The sign-up form.
#[utoipa::path(get, path = "/account/sign-up", tag = "accounts", responses(
    (status = 200, description = "The sign-up form", content_type = "text/html")))]
pub async fn sign_up_page() -> Response {
    render(
        StatusCode::OK,
        pages::SignUp {
            error: pages::FormError::none(),
            email: String::new(),
        },
    )
}

/// The sign-in form.
#[utoipa::path(get, path = "/account/sign-in", tag = "accounts", responses(
    (status = 200, description = "The sign-in form", content_type = "text/html")))]
pub async fn sign_in_page() -> Response {
    render(
        StatusCode::OK,
        pages::SignIn {
            error: pages::FormError::none(),
            email: String::new(),
        },
    )
}

/// The form that asks for a password-reset link.
#[utoipa::path(get, path = "/account/password-reset", tag = "accounts", responses(
    (status = 200, description = "The form", content_type = "text/html")))]
pub async fn reset_request_page() -> Response {
    render(
        StatusCode::OK,
        pages::ResetRequest {
            error: pages::FormError::none(),
        },
    )
}

/// Each signed-in form as the document states it, with its own fields only: they are all read
/// as one `ActionForm` (which takes every field any of them has, and ignores the rest), so
/// these types are for the document alone.
#[allow(dead_code)]
mod forms {
    /// A form with nothing but the session's CSRF token.
    #[derive(utoipa::ToSchema)]
    pub struct Csrf {
        /// The session's CSRF token (from the account page).
        #[schema(min_length = 1, max_length = 64)]
        csrf: String,
    }

    #[derive(utoipa::ToSchema)]
    pub struct ConfirmPassword {
        #[schema(min_length = 1, max_length = 64)]
        csrf: String,
        /// The account's password.
        #[schema(max_length = 128)]
        password: String,
    }

    #[derive(utoipa::ToSchema)]
    pub struct ChangePassword {
        #[schema(min_length = 1, max_length = 64)]
        csrf: String,
        /// The current password.
        #[schema(max_length = 128)]
        password: String,
        /// The new one: 12 to 128 characters, not easily guessed.
        #[schema(min_length = 12, max_length = 128)]
        new_password: String,
    }

    #[derive(utoipa::ToSchema)]
    pub struct ResendLicence {
        #[schema(min_length = 1, max_length = 64)]
        csrf: String,
        /// The purchase (of this account) whose licence to send again.
        purchase: uuid::Uuid,
    }

    #[derive(utoipa::ToSchema)]
    pub struct Delete {
        #[schema(min_length = 1, max_length = 64)]
        csrf: String,
        /// The word `delete`, typed in the box.
        #[schema(pattern = "^delete$", max_length = 16)]
        confirm: String,
    }
}

/// The fields every signed-in form carries; each action adds its own.
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    /// The session's CSRF token.
    #[serde(default)]
    csrf: String,
    /// The password (to confirm it, or the current one when changing it).
    #[serde(default)]
    password: String,
    /// A new password (changing it): 12 to 128 characters, not easily guessed.
    #[serde(default)]
    new_password: String,
    /// The purchase whose licence to send again.
    #[serde(default)]
    purchase: Option<uuid::Uuid>,
    /// Deleting: must be `delete`.
    #[serde(default)]
    confirm: String,
}

impl ActionForm {
    /// What is wrong with the form as the document states it, if anything.
    fn problem(&self) -> Option<&'static str> {
        let over = |s: &str, n: usize| s.chars().count() > n;
        if over(&self.csrf, 64) {
            return Some("The form's token is not one of ours.");
        }
        if over(&self.password, 128) || over(&self.new_password, 128) {
            return Some("A password can have at most 128 characters.");
        }
        if over(&self.confirm, 16) {
            return Some("To delete everything, type delete in the box.");
        }
        None
    }
}

/// A signed-in form post: the session, and its form once its fields, its origin and its CSRF
/// token are checked. A form that is not as documented is refused whoever sends it; a
/// well-formed one without a session goes on to sign-in.
async fn signed_in_form(
    platform: &Platform,
    request: Request,
) -> Result<Result<(SignedIn, ActionForm, Sender), Response>, ApiError> {
    let headers = request.headers().clone();
    let client = client_of(platform, &request);
    let refuse = |reason: &str| {
        pages::message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The form did not arrive as we need it",
            reason,
            Some(("/account", "Back to your account")),
        )
    };
    let form = match axum::Form::<ActionForm>::from_request(request, &()).await {
        Ok(axum::Form(form)) => form,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::client(
                e.status(),
                "payload_too_large",
                e.body_text(),
            ));
        }
        Err(e) if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            return Err(ApiError::client(
                e.status(),
                "unsupported_media_type",
                "expected a form post (application/x-www-form-urlencoded)",
            ));
        }
        Err(_) => return Ok(Err(refuse("Please use the form on your account page."))),
    };
    if let Some(problem) = form.problem() {
        return Ok(Err(refuse(problem)));
    }
    // Every one of our forms carries its token: one without is not ours, whoever sends it.
    if form.csrf.is_empty() {
        return Err(session::csrf_refused());
    }
    let Some(signed_in) = session::signed_in(platform, &headers).await? else {
        return Ok(Err(see_other("/account/sign-in")));
    };
    session::check_csrf(platform, &headers, &signed_in, Some(&form.csrf))?;
    Ok(Ok((signed_in, form, Sender { headers, client })))
}

/// Who sent a signed-in form: its browser's headers (cookies) and its client, for the count of
/// password attempts.
struct Sender {
    headers: HeaderMap,
    client: Option<std::net::IpAddr>,
}

macro_rules! signed_in_form {
    ($platform:expr, $request:expr) => {
        match signed_in_form(&$platform, $request).await? {
            Ok(triple) => triple,
            Err(response) => return Ok(response),
        }
    };
}

/// Checks the session's account password, counted like a sign-in (`throttle`): a stolen
/// session cannot be used to guess the password behind it. `Err` is the page to answer with;
/// a wrong password is told next to the field `field` of the section `section`.
async fn confirm_password(
    platform: &Platform,
    state: &AccountsState,
    signed_in: &SignedIn,
    sender: &Sender,
    given: &str,
    (section, field): (&'static str, &'static str),
) -> Result<Result<(), Response>, ApiError> {
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let account = store::account(&mut conn, signed_in.session.account_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a session's account vanished"))?;
    let address = person::email(&mut conn, &platform.keyring, signed_in.session.person_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a session's person has no address"))?;
    let attempt = match Attempt::reserve(
        platform,
        &state.clients,
        &mut conn,
        &sender.headers,
        sender.client,
        &address,
        Some(account.password_changed_at),
    )
    .await?
    {
        Ok(attempt) => attempt,
        Err(wait) => return Ok(Err(too_many(wait))),
    };
    drop(conn);
    let checked = match Password::given(given) {
        None => Checked::Wrong,
        Some(password) => match state
            .hasher(platform)?
            .check(password, Some(account.password_hash))
            .await
        {
            Ok(checked) => checked?,
            Err(Busy) => {
                attempt.undo(&state.clients, platform).await?;
                return Ok(Err(busy()));
            }
        },
    };
    if checked == Checked::Wrong {
        return Ok(Err(page(
            platform,
            signed_in,
            StatusCode::UNAUTHORIZED,
            Some(Notice::about(section, field, "That is not your password.")),
        )
        .await?));
    }
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    attempt.succeeded(&state.clients, &mut conn).await?;
    Ok(Ok(()))
}

/// Sign out (a form post).
#[utoipa::path(post, path = "/account/sign-out", tag = "accounts",
    request_body(content((forms::Csrf = "application/x-www-form-urlencoded"))),
    responses(
        (status = 303, description = "Signed out (or not signed in): on to `/account/sign-in`", headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 403, description = "From a page that is not ours, or without the session's CSRF token", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A field longer than documented, or a purchase that is not an id: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn sign_out_form(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    let (signed_in, _, _) = signed_in_form!(platform, request);
    end_session(&platform, &signed_in).await?;
    let mut response = see_other("/account/sign-in");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    Ok(response)
}

/// Sign out every other browser.
#[utoipa::path(post, path = "/account/sessions/end-others", tag = "accounts",
    request_body(content((forms::Csrf = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Done: the account page, saying so", content_type = "text/html"),
        (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String))),
        (status = 403, description = "From a page that is not ours, or without the session's CSRF token", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A field longer than documented, or a purchase that is not an id: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn end_other_sessions(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    let (signed_in, _, _) = signed_in_form!(platform, request);
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let ended = store::end_sessions(
        &mut conn,
        signed_in.session.account_id,
        Some(signed_in.session.id),
    )
    .await?;
    drop(conn);
    tracing::info!(sessions_ended = ended, "other sessions ended");
    page(
        &platform,
        &signed_in,
        StatusCode::OK,
        Some(Notice::done(
            "sessions",
            "Every other browser is signed out.",
        )),
    )
    .await
}

/// Change the password (the current one is needed).
#[utoipa::path(post, path = "/account/password", tag = "accounts",
    request_body(content((forms::ChangePassword = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Changed: every other session ended, an email sent; the account page, saying so, with a new device cookie for this browser (the new password voids the old ones)", content_type = "text/html",
            headers(("Set-Cookie" = String, description = "The device cookie"))),
        (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String))),
        (status = 401, description = "The current password is wrong: the account page, saying so", content_type = "text/html"),
        (status = 403, description = "From a page that is not ours, or without the session's CSRF token", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "The new password is too short, too long or too easy to guess (the account page, saying why), or a field longer than documented", content_type = "text/html"),
        (status = 429, description = "Too many requests, or too many wrong passwords for this address (counted with sign-ins): `Retry-After`", body = pexper_wire::ErrorBody),
        (status = 503, description = "Too many passwords being checked: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn change_password_form(
    State(platform): State<Platform>,
    Extension(state): Extension<AccountsState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (signed_in, form, sender) = signed_in_form!(platform, request);
    if let Err(response) = confirm_password(
        &platform,
        &state,
        &signed_in,
        &sender,
        &form.password,
        ("password", "current-password"),
    )
    .await?
    {
        return Ok(response);
    }
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let context = password_context(&mut conn, &platform, signed_in.session.person_id).await?;
    drop(conn);
    let judged = match state
        .hasher(&platform)?
        .hash_new(Zeroizing::new(form.new_password), context)
        .await
    {
        Ok(judged) => judged?,
        Err(Busy) => return Ok(busy()),
    };
    let hash = match judged {
        Ok(hash) => hash,
        Err(weak) => {
            let reason: &'static str = match weak {
                crate::password::Weak::TooShort => "The new password needs at least 12 characters.",
                crate::password::Weak::TooLong => {
                    "The new password can have at most 128 characters."
                }
                crate::password::Weak::Guessable(_) => {
                    "The new password is too easy to guess: add another word or two."
                }
            };
            return page(
                &platform,
                &signed_in,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(Notice::about("password", "new-password", reason)),
            )
            .await;
        }
    };
    let mut tx = platform.pool.begin().await?;
    let password_set = change_password(
        &mut tx,
        signed_in.session.account_id,
        signed_in.session.person_id,
        &hash,
        Some(signed_in.session.id),
    )
    .await?;
    let address = person::email(&mut tx, &platform.keyring, signed_in.session.person_id).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    let mut response = page(
        &platform,
        &signed_in,
        StatusCode::OK,
        Some(Notice::done(
            "password",
            "Your password is changed, and every other browser is signed out.",
        )),
    )
    .await?;
    // The new password voids every device cookie; this browser keeps being a known one.
    if let Some(address) = address {
        response.headers_mut().append(
            header::SET_COOKIE,
            session::device_cookie(&platform, &address, password_set, None),
        );
    }
    Ok(response)
}

/// Email a purchase's licence again (a new receipt; within the address's daily budget).
#[utoipa::path(post, path = "/account/licences/resend", tag = "accounts",
    request_body(content((forms::ResendLicence = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The account page, saying whether the receipt is on its way or the day's budget of such emails is spent", content_type = "text/html"),
        (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String))),
        (status = 403, description = "From a page that is not ours, or without the session's CSRF token", body = pexper_wire::ErrorBody),
        (status = 404, description = "No purchase of this account with an active licence", content_type = "text/html"),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A field longer than documented, or a purchase that is not an id: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn resend_licence(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    let (signed_in, form, _) = signed_in_form!(platform, request);
    let view = view(&platform, &signed_in).await?;
    let Some(purchase) = view
        .purchases
        .iter()
        .find(|p| Some(p.id) == form.purchase && p.license_status.as_deref() == Some("active"))
        .map(|p| p.id)
    else {
        return Ok(page_of(
            view,
            &signed_in,
            StatusCode::NOT_FOUND,
            Some(Notice::problem(
                "purchases",
                "That purchase has no licence to send.",
            )),
        ));
    };
    let person = signed_in.session.person_id;
    let mut tx = platform.pool.begin().await?;
    let sent = person::take_mail(&mut tx, person, person::MailBudget::Owner).await?;
    if sent {
        jobs::enqueue(
            &mut tx,
            NewJob::new(&pexper_payments::SendReceipt {
                purchase_id: pexper_payments::PurchaseId(purchase),
            })
            .for_person(person),
        )
        .await?;
    }
    tx.commit().await.map_err(anyhow::Error::from)?;
    if !sent {
        platform
            .metrics
            .mail_budget_spent(person::MailBudget::Owner);
    }
    let notice = if sent {
        Notice::done(
            "purchases",
            "Your licence is on its way in a new receipt email.",
        )
    } else {
        Notice::problem(
            "purchases",
            "We have sent this address as many emails as we do in a day. Please try again tomorrow.",
        )
    };
    // The view read above is still true: a resend changes no purchase.
    Ok(page_of(view, &signed_in, StatusCode::OK, Some(notice)))
}

/// Confirm the password, for export and deletion (valid for 10 minutes).
#[utoipa::path(post, path = "/account/confirm-password", tag = "accounts",
    request_body(content((forms::ConfirmPassword = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Confirmed: the account page, with export and deletion open", content_type = "text/html"),
        (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String))),
        (status = 401, description = "Wrong password: the account page, saying so", content_type = "text/html"),
        (status = 403, description = "From a page that is not ours, or without the session's CSRF token", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A field longer than documented, or a purchase that is not an id: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests, or too many wrong passwords for this address (counted with sign-ins): `Retry-After`", body = pexper_wire::ErrorBody),
        (status = 503, description = "Too many passwords being checked: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn confirm_password_form(
    State(platform): State<Platform>,
    Extension(state): Extension<AccountsState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut signed_in, form, sender) = signed_in_form!(platform, request);
    if let Err(response) = confirm_password(
        &platform,
        &state,
        &signed_in,
        &sender,
        &form.password,
        ("your-data", "data-password"),
    )
    .await?
    {
        return Ok(response);
    }
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    store::reauthenticated(&mut conn, signed_in.session.id).await?;
    drop(conn);
    signed_in.session.reauthenticated_at = OffsetDateTime::now_utc();
    page(
        &platform,
        &signed_in,
        StatusCode::OK,
        Some(Notice::done(
            "your-data",
            "Thank you. For the next 10 minutes you can download or delete your data.",
        )),
    )
    .await
}

fn recently_confirmed(signed_in: &SignedIn) -> bool {
    OffsetDateTime::now_utc() - signed_in.session.reauthenticated_at < store::REAUTH_WINDOW
}

/// The page that asks for the password again, unless it was typed in the last 10 minutes.
async fn without_fresh_password(
    platform: &Platform,
    signed_in: &SignedIn,
) -> Result<Option<Response>, ApiError> {
    if recently_confirmed(signed_in) {
        return Ok(None);
    }
    page(
        platform,
        signed_in,
        StatusCode::FORBIDDEN,
        Some(Notice::problem(
            "your-data",
            "Please confirm your password first.",
        )),
    )
    .await
    .map(Some)
}

/// Download everything we hold about you: the access export, at once.
#[utoipa::path(post, path = "/account/export", tag = "accounts",
    request_body(content((forms::Csrf = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The export: one JSON document, a section per service (a privacy request of source `account`, audited)", content_type = "application/json"),
        (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String))),
        (status = 403, description = "From a page that is not ours, without the session's CSRF token, or the password not confirmed in the last 10 minutes (a page saying so)", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A field longer than documented, or a purchase that is not an id: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn export(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    let (signed_in, _, _) = signed_in_form!(platform, request);
    if let Some(refused) = without_fresh_password(&platform, &signed_in).await? {
        return Ok(refused);
    }
    let document =
        pexper_privacy::self_service::export(&platform, signed_in.session.person_id).await?;
    tracing::info!("self-service export downloaded");
    Ok(pexper_privacy::self_service::attachment(document))
}

/// Delete the account and everything we hold about you.
#[utoipa::path(post, path = "/account/delete", tag = "accounts",
    request_body(content((forms::Delete = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Deletion started (a privacy request of source `account`, audited): signed out, a page saying a confirmation email follows", content_type = "text/html",
            headers(("Set-Cookie" = String))),
        (status = 303, description = "Not signed in: on to `/account/sign-in`", headers(("Location" = String))),
        (status = 403, description = "From a page that is not ours, without the session's CSRF token, or the password not confirmed in the last 10 minutes (a page saying so)", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "The box saying `delete` was not filled in (the account page, saying so), or a field longer than documented", content_type = "text/html"),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn delete(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    let (signed_in, form, _) = signed_in_form!(platform, request);
    if let Some(refused) = without_fresh_password(&platform, &signed_in).await? {
        return Ok(refused);
    }
    if form.confirm.trim() != "delete" {
        return page(
            &platform,
            &signed_in,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(Notice::about(
                "your-data",
                "confirm",
                "To delete everything, type delete in the box.",
            )),
        )
        .await;
    }
    let mut tx = platform.pool.begin().await?;
    let request =
        pexper_privacy::self_service::erase(&mut tx, &platform, signed_in.session.person_id)
            .await?;
    // The sessions go now; the account with the rest of the erasure, moments later.
    store::end_sessions(&mut tx, signed_in.session.account_id, None).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    tracing::info!(%request, "self-service deletion started");
    let mut response = pages::message(
        StatusCode::OK,
        "Your account and data are being deleted",
        "Everything we hold about you is being erased now. A last email confirms it; after that we keep nothing that can reach you.",
        None,
    );
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    Ok(response)
}
