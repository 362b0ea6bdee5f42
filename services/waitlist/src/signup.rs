//! `POST /v1/waitlist`: JSON from the website's `fetch`, or a plain HTML form post.
//!
//! Every valid address gets the same answer and the same queued work, whether it is new,
//! pending, confirmed or unsubscribed: the reply never tells anyone whether an address is known.

use std::sync::{Arc, OnceLock};

use axum::Extension;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::batch::Batcher;
use pexper_platform::http::{ApiError, ApiJson, form_problem};
use pexper_platform::jobs::NewJob;
use pexper_platform::person::{NewPerson, PersonId};
use serde::{Deserialize, Serialize};

use crate::emails::SignupMail;
use crate::{pages, store};

/// A signup, as the website sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignupRequest {
    /// The address to add; normalised (trim, NFC, lowercase) before anything else.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// Where the form sits, e.g. `homepage`: 1 to 32 letters, digits, `-` or `_`, stored
    /// lower-cased. Anything else is refused (422): it is a label, never free text.
    /// Empty is the same as absent.
    #[schema(pattern = "^[A-Za-z0-9_-]{0,32}$", max_length = 32)]
    source: Option<String>,
    /// A referral code from someone's link (`?ref=…` on pexper.com), as given. An unknown code
    /// is accepted and credits no one.
    /// Empty is the same as absent (a form's empty hidden field).
    #[serde(rename = "ref")]
    #[schema(pattern = "^[A-Za-z0-9_-]{0,32}$", max_length = 32)]
    referral: Option<String>,
    /// Honeypot: hidden from people, filled by bots. A filled one gets the normal answer and
    /// nothing is stored or sent.
    website: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignupAccepted {
    /// Always `pending_confirmation`.
    status: &'static str,
}

/// Join the waitlist (double opt-in).
#[utoipa::path(post, path = "/v1/waitlist", tag = "waitlist",
    request_body(content(
        (SignupRequest = "application/json"),
        (SignupRequest = "application/x-www-form-urlencoded"))),
    responses(
        (status = 202, description = "Accepted; a confirmation email is on its way, within the address's daily budget of three (same answer for every valid address, whatever the budget). A form post gets a small page", content(
            (SignupAccepted = "application/json"),
            (String = "text/html"))),
        (status = 303, description = "Form post, with a thank-you URL configured"),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 403, description = "A post from a site that is not ours", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a valid email address, or a `source` or `ref` outside `[A-Za-z0-9_-]{1,32}`, naming the field; a form post gets a page that says what to fix", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn signup(
    State(platform): State<Platform>,
    Extension(signups): Extension<Signups>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    if !pexper_platform::http::origin_allowed(&headers, &platform.config.allowed_origins) {
        return Err(ApiError::client(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "signups are accepted from the Pexper website only",
        ));
    }
    let is_form = content_type(&headers).starts_with("application/x-www-form-urlencoded");
    let body = if is_form {
        match axum::Form::<SignupRequest>::from_request(request, &()).await {
            Ok(axum::Form(b)) => b,
            Err(e) => {
                return Ok(form_problem(
                    e.status(),
                    "The form did not arrive complete",
                    "It needs your email address.",
                    back(&platform),
                ));
            }
        }
    } else {
        let ApiJson(b) = ApiJson::<SignupRequest>::from_request(request, &()).await?;
        b
    };

    let email = match EmailAddress::parse(&body.email) {
        Ok(e) => e,
        Err(e) if is_form => {
            return Ok(form_problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "That address does not look right",
                &e.to_string(),
                back(&platform),
            ));
        }
        Err(e) => return Err(ApiError::unprocessable("invalid_email", e.to_string())),
    };
    let source = match Slug::given(body.source.as_deref()) {
        Ok(s) => s.map(Slug::lowercase),
        Err(()) => return Ok(invalid_field(&platform, is_form, "source")),
    };
    let referral = match Slug::given(body.referral.as_deref()) {
        Ok(r) => r,
        Err(()) => return Ok(invalid_field(&platform, is_form, "ref")),
    };
    // Checked after the fields, so that a bot gets the answer a person with the same input
    // would: the contract (`/openapi.json`) holds whatever the honeypot says.
    if body
        .website
        .as_deref()
        .is_some_and(|w| !w.trim().is_empty())
    {
        tracing::info!("honeypot filled; ignored");
        return Ok(accepted(&platform, is_form));
    }
    sign_up(
        &platform,
        &signups,
        &email,
        source.as_ref().map(Slug::as_str),
        referral.as_ref().map(Slug::as_str),
    )
    .await?;
    tracing::info!(
        email = %pexper_platform::telemetry::email_tag(&platform.keyring, &email),
        domain = email.domain(),
        "signup queued"
    );
    Ok(accepted(&platform, is_form))
}

/// How many batches of signups are written at once (each holds a pooled connection). One:
/// what arrives while a batch commits waits for the next, so batches are as large as the load
/// makes them. Measured at 32 connections on 2 cores, in the same runs: one writer stored 33%
/// more signups a second than two, and two 37% more than four. A process's one writer still
/// stores thousands a second; replicas each have their own.
const SIGNUP_WRITERS: usize = 1;
/// The most signups one statement writes.
const SIGNUPS_PER_BATCH: usize = 64;

/// This router's signups, written in batches (`pexper_platform::batch`): signups that arrive
/// while others are being stored go together in the next statement and commit. The batcher
/// starts with the first signup, over the pool of the platform it comes with.
#[derive(Debug, Clone, Default)]
pub struct Signups(Arc<OnceLock<Batcher<store::Signup, PersonId>>>);

impl Signups {
    fn batcher(&self, platform: &Platform) -> &Batcher<store::Signup, PersonId> {
        self.0.get_or_init(|| {
            let platform = platform.clone();
            let job = NewJob::new(&SignupMail::default());
            Batcher::new(SIGNUP_WRITERS, SIGNUPS_PER_BATCH, move |batch| {
                let (platform, job) = (platform.clone(), job.clone());
                async move { store::sign_up(&platform.pool, &platform.keyring, batch, &job).await }
            })
        })
    }
}

/// Records a signup and queues its email (one statement with the signups around it, see
/// `store::sign_up`), then wakes this process's idle workers: the job is written without a
/// `NOTIFY`, which would take Postgres's global notify lock at every signup's commit.
async fn sign_up(
    platform: &Platform,
    signups: &Signups,
    email: &EmailAddress,
    source: Option<&str>,
    referral: Option<&str>,
) -> anyhow::Result<()> {
    let signup = store::Signup {
        person: NewPerson::new(&platform.keyring, email),
        source: source.map(str::to_owned),
        referral: referral.map(str::to_owned),
        job_payload: NewJob::new(&SignupMail::for_address(&platform.keyring, email))
            .payload()
            .clone(),
    };
    signups.batcher(platform).write(signup).await?;
    platform.job_wake.committed();
    Ok(())
}

fn accepted(platform: &Platform, is_form: bool) -> Response {
    if !is_form {
        return (
            StatusCode::ACCEPTED,
            axum::Json(SignupAccepted {
                status: "pending_confirmation",
            }),
        )
            .into_response();
    }
    match &platform.config.waitlist_thank_you_url {
        Some(url) => Redirect::to(url).into_response(),
        None => pages::render(StatusCode::ACCEPTED, pages::Pending),
    }
}

/// Where a waitlist form's error page links back to: the website, which has the form.
fn back(platform: &Platform) -> (&str, &'static str) {
    (platform.config.site_url(), "Back to pexper.com")
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A short label from a fixed alphabet (`[A-Za-z0-9_-]{1,32}`): a form's `source`, a referral
/// code. Never free text, so nothing a person typed can hide in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slug(String);

impl Slug {
    const MAX: usize = 32;

    /// A field as given: empty is the same as absent (a form's empty hidden field).
    fn given(field: Option<&str>) -> Result<Option<Self>, ()> {
        field.filter(|s| !s.is_empty()).map(Self::parse).transpose()
    }

    fn parse(s: &str) -> Result<Self, ()> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(Self(s.to_owned())) } else { Err(()) }
    }

    /// Sources are case-insensitive labels (`Homepage` is `homepage`); referral codes are not.
    fn lowercase(self) -> Self {
        Self(self.0.to_ascii_lowercase())
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

/// A field outside its alphabet: 422 naming it, as JSON or as the form's error page.
fn invalid_field(platform: &Platform, is_form: bool, field: &'static str) -> Response {
    let reason = format!("`{field}` must be 1 to 32 letters, digits, `-` or `_`");
    if is_form {
        // A hidden field of the website's form, changed: nothing the person typed.
        return form_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The form did not arrive as we sent it",
            "Please open the page again and send the form from there.",
            back(platform),
        );
    }
    let code = if field == "source" {
        "invalid_source"
    } else {
        "invalid_ref"
    };
    ApiError::unprocessable(code, reason).into_response()
}
