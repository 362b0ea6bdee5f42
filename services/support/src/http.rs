//! `POST /v1/support`: JSON from the website's `fetch`, or a plain HTML form post. Every valid
//! request gets the same answer; the acknowledgement with the reference goes by email, within
//! the address's daily budget of request-caused mail (the form must not flood an inbox).

use askama::Template;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::http::{ApiError, ApiJson, form_problem, origin_allowed, render_page};
use pexper_platform::jobs::{self, NewJob};
use pexper_platform::person;
use serde::{Deserialize, Serialize};

use crate::mail::Acknowledge;
use crate::store;

/// The longest message: a long letter, not a place to upload logs.
pub const MAX_MESSAGE: usize = 10_000;
pub const MAX_SUBJECT: usize = 200;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SupportBody {
    /// Where we answer.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// A line saying what it is about (at most 200 characters).
    #[schema(max_length = 200)]
    subject: Option<String>,
    /// What you need help with: at most 10,000 characters, not only spaces. Stored encrypted.
    #[schema(min_length = 1, max_length = 10000, pattern = "\\S")]
    message: String,
    /// Honeypot: hidden from people, filled by bots. A filled one gets the normal answer and
    /// nothing is stored or sent.
    website: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SupportAccepted {
    /// Always `received`.
    status: &'static str,
}

#[derive(Template)]
#[template(path = "pages/support-received.html")]
struct ReceivedPage;

/// Ask for help.
#[utoipa::path(post, path = "/v1/support", tag = "support",
    request_body(content(
        (SupportBody = "application/json"),
        (SupportBody = "application/x-www-form-urlencoded"))),
    responses(
        (status = 202, description = "Received; an acknowledgement with a reference is on its way (within the address's daily budget). A form post gets a small page", content(
            (SupportAccepted = "application/json"),
            (String = "text/html"))),
        (status = 400, description = "Not JSON", body = pexper_wire::ErrorBody),
        (status = 403, description = "A post from a site that is not ours", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = pexper_wire::ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = pexper_wire::ErrorBody),
        (status = 422, description = "Not a valid email address, an empty or over-long message, or an over-long subject, naming the field; a form post gets a page that says what to fix", content(
            (pexper_wire::ErrorBody = "application/json"),
            (String = "text/html"))),
        (status = 429, description = "Too many requests: `Retry-After`", body = pexper_wire::ErrorBody)))]
pub async fn create(
    State(platform): State<Platform>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    if !origin_allowed(&headers, &platform.config.allowed_origins) {
        return Err(ApiError::client(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "support requests are accepted from the Pexper website only",
        ));
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .starts_with("application/x-www-form-urlencoded");
    let back = (platform.config.site_url(), "Back to pexper.com");
    let invalid = |code: &'static str, reason: String| -> Result<Response, ApiError> {
        if is_form {
            return Ok(form_problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Something in the form needs fixing",
                &reason,
                back,
            ));
        }
        Err(ApiError::unprocessable(code, reason))
    };
    let body = if is_form {
        match axum::Form::<SupportBody>::from_request(request, &()).await {
            Ok(axum::Form(b)) => b,
            Err(e) => {
                return Ok(form_problem(
                    e.status(),
                    "The form did not arrive complete",
                    "It needs your email address and a message.",
                    back,
                ));
            }
        }
    } else {
        let ApiJson(b) = ApiJson::<SupportBody>::from_request(request, &()).await?;
        b
    };
    let email = match EmailAddress::parse(&body.email) {
        Ok(e) => e,
        Err(e) => return invalid("invalid_email", e.to_string()),
    };
    // "Says something" as the documented pattern `\S` means it (JSON Schema's, ECMA-262's
    // whitespace), not Rust's wider `char::is_whitespace`, which also counts U+0085.
    let message = body.message.trim_matches(is_schema_whitespace);
    if message.is_empty() || body.message.chars().count() > MAX_MESSAGE {
        return invalid(
            "invalid_message",
            format!("Please write your message, in at most {MAX_MESSAGE} characters."),
        );
    }
    let subject = body
        .subject
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if body
        .subject
        .as_deref()
        .is_some_and(|s| s.chars().count() > MAX_SUBJECT)
    {
        return invalid(
            "invalid_subject",
            format!("The subject can have at most {MAX_SUBJECT} characters."),
        );
    }
    // After the fields, so that a bot gets the answer a person with the same input would.
    if body
        .website
        .as_deref()
        .is_some_and(|w| !w.trim().is_empty())
    {
        tracing::info!("honeypot filled; ignored");
        return Ok(accepted(is_form));
    }
    let mut tx = platform.pool.begin().await?;
    let (id, person) = store::create(&mut tx, &platform.keyring, &email, subject, message).await?;
    let acknowledged = person::take_mail(&mut tx, person, person::MailBudget::Contact).await?;
    if acknowledged {
        jobs::enqueue(
            &mut tx,
            NewJob::new(&Acknowledge { request_id: id }).for_person(person),
        )
        .await?;
    }
    tx.commit().await?;
    if !acknowledged {
        platform
            .metrics
            .mail_budget_spent(person::MailBudget::Contact);
    }
    tracing::info!(request = %id, "support request received");
    Ok(accepted(is_form))
}

fn accepted(is_form: bool) -> Response {
    if is_form {
        return render_page(StatusCode::ACCEPTED, ReceivedPage);
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(SupportAccepted { status: "received" }),
    )
        .into_response()
}

/// Whitespace as JSON Schema's patterns know it (ECMA-262 `\s`): what the document's `\S`
/// for a message excludes.
fn is_schema_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_says_something_by_the_schema_s_own_whitespace() {
        for blank in ["", " \t\r\n", "\u{a0}\u{2003}\u{3000}\u{feff}"] {
            assert!(
                blank.trim_matches(super::is_schema_whitespace).is_empty(),
                "{blank:?}"
            );
        }
        // U+0085 is whitespace to Rust but not to ECMA-262's `\s`: a message that `\S` admits.
        assert!(
            !"\u{85}"
                .trim_matches(super::is_schema_whitespace)
                .is_empty()
        );
    }
}
