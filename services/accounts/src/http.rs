//! The account API: JSON for the website's scripts, and the same endpoints take the pages'
//! plain form posts (answered with pages and redirects). Sign-up, sign-in and reset answer
//! the same whether or not an address has an account.

use std::net::IpAddr;

use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::http::{ApiError, ApiJson, ClientIp, LinkToken, client_key};
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::mail::{DecideReset, SendAlreadyRegistered, SendPasswordChanged, SendVerification};
use crate::pages::{self, render};
use crate::password::{Busy, Checked, Password};
use crate::session::{self, SignedIn};
use crate::throttle::Attempt;
use crate::{AccountsState, store};

/// A body that came as JSON or as a form post.
struct Input<T> {
    form: bool,
    body: T,
}

/// Reads a JSON or form body; a form that does not parse gets `on_bad_form`'s page.
async fn read<T: DeserializeOwned>(
    request: Request,
    on_bad_form: impl FnOnce() -> Response,
) -> Result<Input<T>, Response> {
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        return match axum::Form::<T>::from_request(request, &()).await {
            Ok(axum::Form(body)) => Ok(Input { form, body }),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(
                    ApiError::client(e.status(), "payload_too_large", e.body_text())
                        .into_response(),
                )
            }
            Err(_) => Err(on_bad_form()),
        };
    }
    match ApiJson::<T>::from_request(request, &()).await {
        Ok(ApiJson(body)) => Ok(Input { form, body }),
        Err(e) => Err(e.into_response()),
    }
}

pub fn busy() -> Response {
    let mut response = ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "we are handling many sign-ins right now; please try again in a moment",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

/// Too many password attempts: come back in `seconds` (at least 1).
pub fn too_many(seconds: u64) -> Response {
    let mut response = ApiError::client(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed sign-ins: try again in {seconds} seconds"),
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits"),
    );
    response
}

/// The origin check every unauthenticated form post of ours makes (login CSRF, and posts
/// from other sites).
fn refused_origin(platform: &Platform, headers: &HeaderMap) -> Option<Response> {
    (!session::from_our_pages(platform, headers))
        .then(|| session::forbidden_origin().into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewAccount {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckEmail {
    /// Always `check_your_email`.
    status: &'static str,
}

fn check_your_email(form: bool, heading: &'static str, message: &str) -> Response {
    if form {
        return pages::message(StatusCode::ACCEPTED, heading, message, None);
    }
    (
        StatusCode::ACCEPTED,
        Json(CheckEmail {
            status: "check_your_email",
        }),
    )
        .into_response()
}

/// Create an account: the address only. The password is chosen on the page the emailed link
/// opens, so it belongs to whoever reads the mail at the address — never to someone who only
/// typed it (an account pre-hijack: a stranger's password waiting for the owner's click).
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts",
    request_body(content(
        (NewAccount = "application/json"),
        (NewAccount = "application/x-www-form-urlencoded"))),
    responses(
        (status = 202, description = "The same answer whether or not the address has an account: a new one gets a link to a page where the password is chosen, a known one a note saying so (within the address's daily budget of such emails). A form post gets a page", content(
            (CheckEmail = "application/json"),
            (String = "text/html"))),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 403, description = "Posted from a page that is not ours", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a valid address; a form post gets the form again with the reason", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn create_account(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(refused) = refused_origin(&platform, request.headers()) {
        return Ok(refused);
    }
    let bad_form = || {
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::SignUp {
                error: pages::FormError::field("email", "Please give an email address."),
                email: String::new(),
            },
        )
    };
    let Input { form, body } = match read::<NewAccount>(request, bad_form).await {
        Ok(input) => input,
        Err(response) => return Ok(response),
    };
    let email = match EmailAddress::parse(&body.email) {
        Ok(email) => email,
        Err(e) if form => {
            return Ok(render(
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::SignUp {
                    error: pages::FormError::field("email", &e.to_string()),
                    email: String::new(),
                },
            ));
        }
        Err(e) => return Err(ApiError::unprocessable("invalid_email", e.to_string())),
    };
    let mut tx = platform.pool.begin().await?;
    let person = person::find_or_create(&mut tx, &platform.keyring, &email).await?;
    let job = match store::account_of(&mut tx, person).await? {
        Some(_) => NewJob::new(&SendAlreadyRegistered {}),
        None => {
            let signup = store::create_signup(&mut tx, person).await?;
            NewJob::new(&SendVerification { signup })
        }
    };
    let mailed = person::take_mail(&mut tx, person, person::MailBudget::Access).await?;
    if mailed {
        jobs::enqueue(&mut tx, job.for_person(person)).await?;
    }
    tx.commit().await.map_err(anyhow::Error::from)?;
    if !mailed {
        platform
            .metrics
            .mail_budget_spent(person::MailBudget::Access);
    }
    tracing::info!("account sign-up received");
    Ok(check_your_email(
        form,
        "Check your email",
        "If this address can open an account, a link to choose your password is on its way. It works for 2 days.",
    ))
}

fn verify_page_of(
    status: StatusCode,
    state: &'static str,
    action: String,
    error: Option<String>,
) -> Response {
    render(
        status,
        pages::Verify {
            state,
            action,
            error: error.map_or_else(pages::FormError::none, |e| {
                pages::FormError::field("password", &e)
            }),
        },
    )
}

fn invalid_signup_link() -> Response {
    verify_page_of(StatusCode::BAD_REQUEST, "invalid", String::new(), None)
}

/// Shows the form where the password is chosen. Changes nothing (mail scanners follow links).
#[utoipa::path(get, path = "/v1/accounts/verify", tag = "accounts", params(LinkToken), responses(
    (status = 200, description = "A form for the account's password", content_type = "text/html"),
    (status = 400, description = "Missing, unknown, used or expired link", content_type = "text/html"),
    (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn verify_page(
    State(platform): State<Platform>,
    Query(q): Query<LinkToken>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token() else {
        return Ok(invalid_signup_link());
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    if store::signup_person(&mut conn, &token).await?.is_none() {
        return Ok(invalid_signup_link());
    }
    Ok(verify_page_of(
        StatusCode::OK,
        "ask",
        format!("/v1/accounts/verify?token={token}"),
        None,
    ))
}

/// Opens the account with the password chosen here (the link works once).
#[utoipa::path(post, path = "/v1/accounts/verify", tag = "accounts", params(LinkToken),
    request_body(content((NewPasswordForm = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The account is open: a page that says to sign in, and this browser's device cookie (`__Host-pexper-device`); the address's count of failed sign-ins is cleared", content_type = "text/html",
            headers(("Set-Cookie" = String, description = "The device cookie"))),
        (status = 400, description = "Missing, unknown, used or expired link", content_type = "text/html"),
        (status = 403, description = "Posted from a page that is not ours", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A password too short, too long or too easy to guess: the form again, with advice", content_type = "text/html"),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody),
        (status = 503, description = "Too many passwords being checked: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn verify(
    State(platform): State<Platform>,
    Extension(state): Extension<AccountsState>,
    Query(q): Query<LinkToken>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(refused) = refused_origin(&platform, request.headers()) {
        return Ok(refused);
    }
    let Some(token) = q.token() else {
        return Ok(invalid_signup_link());
    };
    let again = |error: String| {
        verify_page_of(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ask",
            format!("/v1/accounts/verify?token={token}"),
            Some(error),
        )
    };
    let body = match new_password_form(request).await? {
        Ok(body) => body,
        Err(()) => return Ok(again("Please choose a password.".into())),
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let Some(person) = store::signup_person(&mut conn, &token).await? else {
        return Ok(invalid_signup_link());
    };
    let context = password_context(&mut conn, &platform, person).await?;
    drop(conn);
    let hash = match new_password_hash(&platform, &state, body.password, context, again).await? {
        Ok(hash) => hash,
        Err(page) => return Ok(page),
    };
    let mut tx = platform.pool.begin().await?;
    let Some((account, person, password_set)) =
        store::complete_signup(&mut tx, &token, &hash).await?
    else {
        return Ok(invalid_signup_link());
    };
    let device = mailbox_proven(&platform, &mut tx, person, password_set).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    tracing::info!(%account, "account opened");
    let mut response = verify_page_of(StatusCode::OK, "verified", String::new(), None);
    response
        .headers_mut()
        .extend(device.map(|d| (header::SET_COOKIE, d)));
    Ok(response)
}

/// Someone followed a link mailed to `person` and set the password: the address's count of
/// strangers' guesses is cleared, and this browser gets its device cookie (`throttle`). The
/// cookie to set, if the person still has an address.
async fn mailbox_proven(
    platform: &Platform,
    conn: &mut sqlx::PgConnection,
    person: person::PersonId,
    password_set: OffsetDateTime,
) -> anyhow::Result<Option<HeaderValue>> {
    let Some(address) = person::email(conn, &platform.keyring, person).await? else {
        return Ok(None);
    };
    crate::throttle::clear_address(platform, conn, &address).await?;
    Ok(Some(session::device_cookie(
        platform,
        &address,
        password_set,
        None,
    )))
}

/// Judges a new password and hashes it, on the hashing threads; `Err` is the page to answer
/// with: `again` with the reason it is too weak, or "busy".
async fn new_password_hash(
    platform: &Platform,
    state: &AccountsState,
    raw: String,
    context: Vec<String>,
    again: impl FnOnce(String) -> Response,
) -> Result<Result<String, Response>, ApiError> {
    Ok(
        match state
            .hasher(platform)?
            .hash_new(Zeroizing::new(raw), context)
            .await
        {
            Ok(judged) => judged?.map_err(|weak| again(weak.to_string())),
            Err(Busy) => Err(busy()),
        },
    )
}

/// The address of `person` and its local part: a new password must not be guessable from
/// them.
pub async fn password_context(
    conn: &mut sqlx::PgConnection,
    platform: &Platform,
    person: person::PersonId,
) -> anyhow::Result<Vec<String>> {
    let address = person::email(conn, &platform.keyring, person)
        .await?
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    let local = address.split('@').next().unwrap_or_default().to_owned();
    Ok(vec![address, local])
}

/// A page's form with one new password (the verification link's and the reset link's):
/// `Err(())` when it did not come as that form, for the page to ask again.
async fn new_password_form(request: Request) -> Result<Result<NewPasswordForm, ()>, ApiError> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a form post (application/x-www-form-urlencoded)",
        ));
    }
    match axum::Form::<NewPasswordForm>::from_request(request, &()).await {
        Ok(axum::Form(body)) => Ok(Ok(body)),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::client(
            e.status(),
            "payload_too_large",
            e.body_text(),
        )),
        Err(_) => Ok(Err(())),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(max_length = 128)]
    password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignedInBody {
    /// Send it as `X-CSRF-Token` with every state-changing request of this session.
    csrf_token: String,
}

/// The client address, for the in-memory throttle only (`throttle`): never stored or logged.
pub fn client_of(platform: &Platform, request: &Request) -> Option<IpAddr> {
    ClientIp::new(platform.config.trusted_proxies.clone())
        .resolve(request)
        .map(client_key)
}

/// Sign in.
#[utoipa::path(post, path = "/v1/sessions", tag = "accounts",
    request_body(content(
        (Credentials = "application/json"),
        (Credentials = "application/x-www-form-urlencoded"))),
    responses(
        (status = 201, description = "Signed in: the session cookie (`__Host-pexper-session`, `Secure`, `HttpOnly`, `SameSite=Lax`) and the session's CSRF token", body = SignedInBody,
            headers(("Set-Cookie" = String, description = "The session cookie, and the device cookie `__Host-pexper-device` (`Secure`, `HttpOnly`, `SameSite=Strict`, 182 days; until the password changes): this browser's later attempts are counted apart from strangers'"))),
        (status = 303, description = "A form post, signed in: on to `/account`",
            headers(("Set-Cookie" = String, description = "The session cookie and the device cookie"), ("Location" = String, description = "`/account`"))),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 401, description = "Wrong address or password (one answer for both, in the same time); a form post gets the form again", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 403, description = "Posted from a page that is not ours, or a disabled account (a form post gets the form again, saying so)", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a valid address, a password over 128 characters, or a form without its fields", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 429, description = "Too many failed sign-ins for this address or from this client (delays grow with each failure), or too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn sign_in(
    State(platform): State<Platform>,
    Extension(state): Extension<AccountsState>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(refused) = refused_origin(&platform, request.headers()) {
        return Ok(refused);
    }
    let client = client_of(&platform, &request);
    let headers = request.headers().clone();
    let bad_form = || {
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::SignIn {
                error: pages::FormError::form("Please give your email address and password."),
                email: String::new(),
            },
        )
    };
    let Input { form, body } = match read::<Credentials>(request, bad_form).await {
        Ok(input) => input,
        Err(response) => return Ok(response),
    };
    let wrong = |email: &str| {
        if form {
            return render(
                StatusCode::UNAUTHORIZED,
                pages::SignIn {
                    error: pages::FormError::field(
                        "password",
                        "That email address and password do not match an account.",
                    ),
                    email: email.to_owned(),
                },
            );
        }
        ApiError::client(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "that email address and password do not match an account",
        )
        .into_response()
    };
    let email = match EmailAddress::parse(&body.email) {
        Ok(email) => email,
        Err(e) => {
            if form {
                return Ok(render(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    pages::SignIn {
                        error: pages::FormError::field("email", &e.to_string()),
                        email: String::new(),
                    },
                ));
            }
            return Ok(ApiError::unprocessable("invalid_email", e.to_string()).into_response());
        }
    };
    // Over-long as typed: no account's password, refused before it is normalised or counted.
    if crate::password::too_long_as_typed(&body.password) {
        if form {
            return Ok(render(
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::SignIn {
                    error: pages::FormError::field(
                        "password",
                        "A password can have at most 128 characters.",
                    ),
                    email: email.as_str().to_owned(),
                },
            ));
        }
        return Ok(ApiError::unprocessable(
            "password_too_long",
            "a password can have at most 128 characters",
        )
        .into_response());
    }
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let account = match person::find(&mut conn, &platform.keyring, &email).await? {
        Some(person) => store::account_of(&mut conn, person).await?,
        None => None,
    };
    let attempt = match Attempt::reserve(
        &platform,
        &state.clients,
        &mut conn,
        &headers,
        client,
        &email,
        account.as_ref().map(|a| a.password_changed_at),
    )
    .await?
    {
        Ok(attempt) => attempt,
        Err(wait) => return Ok(too_many(wait)),
    };
    // Not hashed while the connection waits: it goes back to the pool for the hash's length.
    drop(conn);
    let checked = match Password::given(&body.password) {
        // Over-long once normalised: no account's password, and not worth a hash.
        None => Checked::Wrong,
        Some(password) => {
            let stored = account.as_ref().map(|a| a.password_hash.clone());
            match state.hasher(&platform)?.check(password, stored).await {
                Ok(checked) => checked?,
                Err(Busy) => {
                    attempt.undo(&state.clients, &platform).await?;
                    return Ok(busy());
                }
            }
        }
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let account = match (checked, account) {
        (Checked::Wrong, _) | (_, None) => {
            tracing::info!("sign-in refused");
            return Ok(wrong(email.as_str()));
        }
        (Checked::RightRehashed(new), Some(account)) => {
            store::upgrade_hash(&mut conn, account.id, &account.password_hash, &new).await?;
            account
        }
        (Checked::Right, Some(account)) => account,
    };
    if account.disabled_at.is_some() {
        if form {
            return Ok(render(
                StatusCode::FORBIDDEN,
                pages::SignIn {
                    error: pages::FormError::form(
                        "This account is disabled. Write to privacy@pexper.com and we will help.",
                    ),
                    email: email.as_str().to_owned(),
                },
            ));
        }
        return Ok(ApiError::client(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account is disabled; write to privacy@pexper.com",
        )
        .into_response());
    }
    attempt.succeeded(&state.clients, &mut conn).await?;
    let (session, token) =
        store::create_session(&mut conn, account.id, &session::device_label(&headers)).await?;
    tracing::info!(account = %account.id, %session, "signed in");
    let cookie = session::set_cookie(&token);
    // This browser has now signed in to this address: its later attempts are its own.
    let device = session::device_cookie(
        &platform,
        &email,
        account.password_changed_at,
        attempt.device.as_deref(),
    );
    let mut response = if form {
        pages::see_other("/account")
    } else {
        (
            StatusCode::CREATED,
            Json(SignedInBody {
                csrf_token: session::csrf_of(&platform, &token),
            }),
        )
            .into_response()
    };
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response.headers_mut().append(header::SET_COOKIE, device);
    Ok(response)
}

/// Sign out.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "accounts",
    params(("X-CSRF-Token" = String, Header, description = "The session's CSRF token")),
    responses(
        (status = 204, description = "Signed out; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "Clears the session cookie"))),
        (status = 401, description = "Not signed in", body = pexper_wire::ErrorBody),
        (status = 403, description = "From a page that is not ours, or without the session's CSRF token", body = pexper_wire::ErrorBody),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn sign_out(
    State(platform): State<Platform>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let signed_in = session::require(&platform, &headers).await?;
    session::check_csrf(&platform, &headers, &signed_in, None)?;
    end_session(&platform, &signed_in).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session::clear_cookie())],
    )
        .into_response())
}

pub async fn end_session(platform: &Platform, signed_in: &SignedIn) -> Result<(), ApiError> {
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    store::end_session(&mut conn, signed_in.session.id).await?;
    tracing::info!(session = %signed_in.session.id, "signed out");
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResetRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Ask for a password-reset link.
#[utoipa::path(post, path = "/v1/accounts/password-reset", tag = "accounts",
    request_body(content(
        (ResetRequest = "application/json"),
        (ResetRequest = "application/x-www-form-urlencoded"))),
    responses(
        (status = 202, description = "The same answer whether or not the address has an account; one that has gets a link valid for an hour (within its daily budget of such emails). A form post gets a page", content(
            (CheckEmail = "application/json"),
            (String = "text/html"))),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 403, description = "Posted from a page that is not ours", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a valid address; a form post gets the form again", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn request_reset(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(refused) = refused_origin(&platform, request.headers()) {
        return Ok(refused);
    }
    let invalid = |reason: String| {
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::ResetRequest {
                error: pages::FormError::field("email", &reason),
            },
        )
    };
    let Input { form, body } = match read::<ResetRequest>(request, || {
        invalid("Please give the address of your account.".into())
    })
    .await
    {
        Ok(input) => input,
        Err(response) => return Ok(response),
    };
    let email = match EmailAddress::parse(&body.email) {
        Ok(email) => email,
        Err(e) if form => return Ok(invalid(e.to_string())),
        Err(e) => return Err(ApiError::unprocessable("invalid_email", e.to_string())),
    };
    // Whether the address has an account is decided by the job: this request does the same
    // work, one INSERT and its commit, for every address.
    let decide = DecideReset {
        email_index: person::email_index(&platform.keyring, &email).to_vec(),
        requested_at: OffsetDateTime::now_utc(),
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    jobs::enqueue(&mut conn, NewJob::new(&decide)).await?;
    tracing::info!("password reset asked for");
    Ok(check_your_email(
        form,
        "Check your email",
        "If this address has an account, a link to choose a new password is on its way. It works for an hour.",
    ))
}

fn new_password_page(
    status: StatusCode,
    state: &'static str,
    token: &str,
    error: Option<String>,
) -> Response {
    render(
        status,
        pages::NewPassword {
            state,
            action: format!("/v1/accounts/password-reset/confirm?token={token}"),
            error: error.map_or_else(pages::FormError::none, |e| {
                pages::FormError::field("password", &e)
            }),
        },
    )
}

/// Shows the form for a new password. Changes nothing.
#[utoipa::path(get, path = "/v1/accounts/password-reset/confirm", tag = "accounts", params(LinkToken), responses(
    (status = 200, description = "A form for the new password", content_type = "text/html"),
    (status = 400, description = "Missing, unknown, used or expired link", content_type = "text/html"),
    (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn reset_page(
    State(platform): State<Platform>,
    Query(q): Query<LinkToken>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token() else {
        return Ok(new_password_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "",
            None,
        ));
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    if store::reset_account(&mut conn, &token).await?.is_none() {
        return Ok(new_password_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "",
            None,
        ));
    }
    Ok(new_password_page(StatusCode::OK, "ask", &token, None))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewPasswordForm {
    /// 12 to 128 characters of anything, counted as typed and again once NFKC-normalised;
    /// common or easily guessed passwords are refused with advice.
    #[schema(min_length = 12, max_length = 128)]
    password: String,
}

/// Sets the new password (the link works once), ends every session, and tells the person.
#[utoipa::path(post, path = "/v1/accounts/password-reset/confirm", tag = "accounts", params(LinkToken),
    request_body(content((NewPasswordForm = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Changed: a page that says to sign in, and this browser's device cookie (`__Host-pexper-device`); the address's count of failed sign-ins is cleared", content_type = "text/html",
            headers(("Set-Cookie" = String, description = "The device cookie"))),
        (status = 400, description = "Missing, unknown, used or expired link", content_type = "text/html"),
        (status = 403, description = "Posted from a page that is not ours", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Not a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "A password too short, too long or too easy to guess: the form again, with advice", content_type = "text/html")))]
pub async fn reset(
    State(platform): State<Platform>,
    Extension(state): Extension<AccountsState>,
    Query(q): Query<LinkToken>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(refused) = refused_origin(&platform, request.headers()) {
        return Ok(refused);
    }
    let Some(token) = q.token() else {
        return Ok(new_password_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "",
            None,
        ));
    };
    let again = |error: String| {
        new_password_page(StatusCode::UNPROCESSABLE_ENTITY, "ask", &token, Some(error))
    };
    let body = match new_password_form(request).await? {
        Ok(body) => body,
        Err(()) => return Ok(again("Please type a new password.".into())),
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let Some(account) = store::reset_account(&mut conn, &token).await? else {
        return Ok(new_password_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "",
            None,
        ));
    };
    let Some(account) = store::account(&mut conn, account).await? else {
        return Ok(new_password_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "",
            None,
        ));
    };
    let context = password_context(&mut conn, &platform, account.person_id).await?;
    drop(conn);
    let hash = match new_password_hash(&platform, &state, body.password, context, again).await? {
        Ok(hash) => hash,
        Err(page) => return Ok(page),
    };
    let mut tx = platform.pool.begin().await?;
    if store::use_reset(&mut tx, &token).await?.is_none() {
        return Ok(new_password_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "",
            None,
        ));
    }
    let password_set = change_password(&mut tx, account.id, account.person_id, &hash, None).await?;
    let device = mailbox_proven(&platform, &mut tx, account.person_id, password_set).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    tracing::info!(account = %account.id, "password reset");
    let mut response = new_password_page(StatusCode::OK, "done", "", None);
    response
        .headers_mut()
        .extend(device.map(|d| (header::SET_COOKIE, d)));
    Ok(response)
}

/// Stores a new password hash, ends every session but `keep`, and queues the email that says
/// so, in the caller's transaction; returns when the password was set (its version).
pub async fn change_password(
    conn: &mut sqlx::PgConnection,
    account: store::AccountId,
    person: person::PersonId,
    hash: &str,
    keep: Option<store::SessionId>,
) -> anyhow::Result<OffsetDateTime> {
    let set = store::set_password(conn, account, hash).await?;
    let ended = store::end_sessions(conn, account, keep).await?;
    jobs::enqueue(
        conn,
        NewJob::new(&SendPasswordChanged {
            at: OffsetDateTime::now_utc(),
        })
        .for_person(person),
    )
    .await?;
    tracing::info!(%account, sessions_ended = ended, "password changed");
    Ok(set)
}
