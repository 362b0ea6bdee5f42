//! The one error type of every handler, and the guarantee that every error answer — ours,
//! axum's rejections, the body limit, the timeout, the rate limiter — has a body: a JSON error, or a page for a browser.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pexper_wire::ErrorBody;
use serde::de::DeserializeOwned;

use crate::telemetry::redact;

/// A handler error. Client errors carry a stable code and a message for people; internal
/// errors log their cause chain (redacted) and answer a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                code,
                message,
            } => {
                let mut res = json_error(status, code, &message);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    res.extensions_mut().insert(crate::metrics::Limit(code));
                }
                res
            }
            ApiError::Internal(error) if crate::outage::database_unreachable(&error) => {
                tracing::warn!(error = %redact(&format!("{error:#}")), "database unavailable");
                let timed_out = crate::outage::pool_timed_out(&error);
                let mut res = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "we cannot store anything right now; please try again in a moment",
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                if timed_out {
                    res.extensions_mut()
                        .insert(crate::metrics::PoolTimedOut("request"));
                }
                res
            }
            ApiError::Internal(error) => {
                tracing::error!(error = %redact(&format!("{error:#}")), "internal error");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "something went wrong on our side; please try again later",
                )
            }
        }
    }
}

/// `axum::Json`, with rejections answered as JSON errors (400 malformed, 415 wrong type,
/// 413 too large, 422 wrong shape).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = match &rejection {
        JsonRejection::JsonSyntaxError(_) => "malformed_json",
        JsonRejection::JsonDataError(_) => "invalid_request",
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ => "bad_request",
    };
    ApiError::client(status, code, rejection.body_text())
}

/// The stable code for an error status that reached us without a JSON body.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Middleware: every error answer gets a body people and programs can read. A browser's form
/// post or navigation (`error_page::wants_page`) gets an HTML page; anything else the standard
/// JSON error body. What a handler answered as a page stays; its status and headers
/// (`Retry-After`) always stay.
pub async fn error_bodies(
    links: std::sync::Arc<super::error_page::BackLinks>,
    request: Request,
    next: Next,
) -> Response {
    let page = super::error_page::wants_page(request.headers()).then(|| {
        let uri = request.uri();
        (uri.path().to_owned(), uri.query().map(str::to_owned))
    });
    let mut response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // The same address answers a browser with a page and a script with JSON: a cache must
    // keep them apart.
    response.headers_mut().append(
        header::VARY,
        HeaderValue::from_static("sec-fetch-mode, content-type"),
    );
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/html") {
        return response;
    }
    let is_json = content_type.starts_with("application/json");
    if is_json && page.is_none() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let (code, message) = if is_json {
        // Ours, and small: a handler's `ErrorBody`.
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (code_for(status).to_owned(), String::new()),
        }
    } else {
        (code_for(status).to_owned(), untyped_message(&mut parts))
    };
    if let Some((path, query)) = page {
        return super::error_page::render(&links, &path, query.as_deref(), parts, &code, &message);
    }
    let body =
        serde_json::to_vec(&ErrorBody::new(code, message)).expect("an error body serialises");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The message for an error status that reached us without a body (a 404 from the router, a
/// 413 from the body limit, a 429 from the rate limiter, …); sets a 429's `Retry-After`.
fn untyped_message(parts: &mut axum::http::response::Parts) -> String {
    match parts.status {
        StatusCode::NOT_FOUND => "no such endpoint".to_owned(),
        StatusCode::TOO_MANY_REQUESTS => {
            // The limiter rounds its wait down to whole seconds; `Retry-After: 0` would invite
            // the client straight back, so the least we ask is one second.
            let after = parts
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                .max(1);
            parts
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(after));
            parts.headers.remove("x-ratelimit-after");
            format!("too many requests; retry after {after} seconds")
        }
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
        StatusCode::REQUEST_TIMEOUT => "the request took too long".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    }
}
