//! The page a browser gets instead of a JSON error: a form post (or a link opened in a tab)
//! that is refused, throttled or cannot be served right now is answered with a page that says
//! what happened in plain words, what to do, and links back to where the person came from.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::state::Service;
pub use crate::state::{Back, FormPage};

/// Whether a request comes from a browser that shows the answer as a page: a form post, or
/// a navigation (a link opened, a form sent: `Sec-Fetch-Mode: navigate`, which every current
/// browser sends and no script can). Scripts and API clients send neither.
pub fn wants_page(headers: &HeaderMap) -> bool {
    let value = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let content_type = value(header::CONTENT_TYPE.as_str()).to_ascii_lowercase();
    content_type.starts_with("application/x-www-form-urlencoded")
        || content_type.starts_with("multipart/form-data")
        || value("sec-fetch-mode") == "navigate"
}

/// Where each service's error pages send people back to.
#[derive(Debug, Clone)]
pub struct BackLinks {
    forms: Vec<FormPage>,
    /// The website, for forms that live there (the waitlist's, support's).
    site: String,
}

impl BackLinks {
    pub fn new(services: &[std::sync::Arc<dyn Service>], site: &str) -> Self {
        Self {
            forms: services
                .iter()
                .flat_map(|s| s.form_pages())
                .copied()
                .collect(),
            site: site.to_owned(),
        }
    }

    /// The link back from an error on `path?query`: what the service that has the form or
    /// the emailed link names (for a link, our own path with the link's token: never a path
    /// as the request spelled it, which could be `//elsewhere.example`); else the website.
    fn of(&self, path: &str, query: Option<&str>) -> (String, String) {
        let form = self.forms.iter().find(|f| f.posts_to == path);
        let href = match form.map(|f| f.back) {
            Some(Back::Page(page)) => Some(page.to_owned()),
            Some(Back::ThisLink) => query
                .and_then(|q| q.split('&').find(|p| p.starts_with("token=")))
                .map(|token| format!("{path}?{token}")),
            None => None,
        };
        match (href, form) {
            (Some(href), Some(form)) => (href, form.label.to_owned()),
            _ => (self.site.clone(), "Back to pexper.com".to_owned()),
        }
    }
}

#[derive(askama::Template)]
#[template(path = "pages/error.html")]
struct ErrorPage {
    heading: &'static str,
    advice: String,
    back: (String, String),
}

/// What to say for an error `status` with the JSON error's `code`; `wait` is `Retry-After`.
fn words(status: StatusCode, code: &str, message: &str, wait: u64) -> (&'static str, String) {
    let seconds = if wait == 1 {
        "1 second".to_owned()
    } else {
        format!("{wait} seconds")
    };
    match (status, code) {
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts") => (
            "Too many sign-in attempts",
            format!("To keep the account safe, please wait {seconds} before you try again."),
        ),
        (StatusCode::TOO_MANY_REQUESTS, _) => (
            "Too many requests",
            format!("We had too many requests from your connection. Please try again in {seconds}."),
        ),
        (StatusCode::SERVICE_UNAVAILABLE, _) => (
            "We are busy right now",
            format!("Please send it again in {seconds}."),
        ),
        (StatusCode::FORBIDDEN, "forbidden_origin") => (
            "This form came from another website",
            "To keep you safe we only take this form from Pexper's own pages. If you meant to send it, open the page below and send it from there.".to_owned(),
        ),
        (StatusCode::FORBIDDEN, "csrf_token_invalid") => (
            "This page has expired",
            "The form was older than your sign-in, or came from elsewhere. Open the page again and send the form from there.".to_owned(),
        ),
        (StatusCode::UNAUTHORIZED, _) => (
            "You are not signed in",
            "Please sign in, then try again.".to_owned(),
        ),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => (
            "That is more than we can take",
            "What you sent is larger than this form accepts. Please shorten it and send it again.".to_owned(),
        ),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::BAD_REQUEST, _) => (
            "The form did not arrive as we sent it",
            "Please open the form again and send it from there.".to_owned(),
        ),
        (StatusCode::UNPROCESSABLE_ENTITY, _) => ("Something in the form needs fixing", sentence(message)),
        (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, _) => (
            "There is nothing here",
            "The address may be mistyped, or the page has moved.".to_owned(),
        ),
        (StatusCode::REQUEST_TIMEOUT, _) => (
            "That took too long",
            "Please try again in a moment.".to_owned(),
        ),
        (StatusCode::GONE, _) => ("This link has expired", sentence(message)),
        (StatusCode::FORBIDDEN, _) => ("This is not allowed", sentence(message)),
        (s, _) if s.is_client_error() => ("That did not work", sentence(message)),
        _ => (
            "Something went wrong on our side",
            "Please try again in a few minutes.".to_owned(),
        ),
    }
}

/// A developer's message as a sentence: capital first letter, full stop, no backticks.
pub fn sentence(message: &str) -> String {
    let plain = message.replace('`', "");
    let mut chars = plain.trim().chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return "Please check what you typed and send it again.".to_owned(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// The page for a form post that cannot be taken as it is: what is wrong, in a sentence, and
/// a link back to the form.
pub fn form_problem(
    status: StatusCode,
    heading: &'static str,
    reason: &str,
    (href, label): (&str, &str),
) -> Response {
    super::render_page(
        status,
        ErrorPage {
            heading,
            advice: sentence(reason),
            back: (href.to_owned(), label.to_owned()),
        },
    )
}

/// The page for an error answer whose JSON body said `code` and `message`. Its status and
/// headers (`Retry-After`) stay.
pub fn render(
    links: &BackLinks,
    path: &str,
    query: Option<&str>,
    mut parts: axum::http::response::Parts,
    code: &str,
    message: &str,
) -> Response {
    let wait = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let (heading, advice) = words(parts.status, code, message, wait);
    let page = ErrorPage {
        heading,
        advice,
        back: links.of(path, query),
    };
    let rendered = super::render_page(parts.status, page);
    let (page_parts, body) = rendered.into_parts();
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        parts.headers.remove(&name);
        if let Some(v) = page_parts.headers.get(&name) {
            parts.headers.insert(name, v.clone());
        }
    }
    parts.headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_link_is_a_named_page_this_link_or_the_website_never_the_path_as_sent() {
        let links = BackLinks {
            forms: vec![
                FormPage {
                    posts_to: "/form",
                    back: Back::Page("/the-form"),
                    label: "Back",
                },
                FormPage {
                    posts_to: "/link",
                    back: Back::ThisLink,
                    label: "Again",
                },
            ],
            site: "https://pexper.com".to_owned(),
        };
        let of = |path, query| links.of(path, query).0;
        assert_eq!(of("/form", None), "/the-form");
        assert_eq!(of("/link", Some("a=1&token=t0k&b=2")), "/link?token=t0k");
        assert_eq!(
            of("/link", None),
            "https://pexper.com",
            "a link without its token"
        );
        assert_eq!(
            of("//evil.example/x", Some("token=t")),
            "https://pexper.com"
        );
        assert_eq!(of("/elsewhere", Some("token=t")), "https://pexper.com");
    }

    #[test]
    fn developer_messages_become_sentences() {
        assert_eq!(
            sentence("`ref` must be 1 to 32 letters"),
            "Ref must be 1 to 32 letters."
        );
        assert_eq!(sentence("Fine."), "Fine.");
    }

    /// Every error a form post can meet, from a handler, the database or the limits, comes
    /// back as a page with its status and `Retry-After`; a script's stays JSON.
    #[tokio::test]
    async fn every_error_answer_to_a_form_post_is_a_page_and_a_script_s_stays_json() {
        use axum::body::{Body, to_bytes};
        use axum::http::Request;
        use tower::ServiceExt;

        let links = std::sync::Arc::new(BackLinks {
            forms: vec![FormPage {
                posts_to: "/form",
                back: Back::Page("/the-form"),
                label: "Back to the form",
            }],
            site: "https://pexper.com".to_owned(),
        });
        let app = |status: StatusCode| {
            let links = links.clone();
            axum::Router::new()
                .route(
                    "/form",
                    axum::routing::post(move || async move {
                        let mut res =
                            crate::http::ApiError::client(status, "busy", "busy").into_response();
                        res.headers_mut()
                            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("7"));
                        res
                    }),
                )
                .layer(axum::middleware::from_fn(move |request, next| {
                    super::super::error::error_bodies(links.clone(), request, next)
                }))
        };
        use axum::response::IntoResponse;
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::PAYLOAD_TOO_LARGE,
        ] {
            for (content_type, page) in [
                ("application/x-www-form-urlencoded", true),
                ("application/json", false),
            ] {
                let request = Request::post("/form")
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::empty())
                    .expect("a request");
                let res = app(status).oneshot(request).await.expect("an answer");
                assert_eq!(res.status(), status);
                assert_eq!(res.headers()[header::RETRY_AFTER], "7", "{status}");
                let kind = res.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .expect("ascii")
                    .to_owned();
                let body = to_bytes(res.into_body(), 1 << 20).await.expect("a body");
                let body = String::from_utf8(body.to_vec()).expect("utf-8");
                if page {
                    assert!(kind.starts_with("text/html"), "{status}: {kind}");
                    assert!(body.contains("<title>") && body.contains("<h1"), "{body}");
                    assert!(body.contains("href=\"/the-form\""), "{body}");
                } else {
                    assert!(kind.starts_with("application/json"), "{status}: {kind}");
                }
            }
        }
    }

    #[test]
    fn forms_and_navigations_want_pages_and_scripts_do_not() {
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().expect("a header value"));
            h
        };
        assert!(wants_page(&with(
            "content-type",
            "application/x-www-form-urlencoded"
        )));
        assert!(wants_page(&with(
            "content-type",
            "multipart/form-data; boundary=x"
        )));
        assert!(wants_page(&with("sec-fetch-mode", "navigate")));
        // What a script says it accepts is not a page in a browser.
        assert!(!wants_page(&with(
            "accept",
            "text/html,application/xhtml+xml"
        )));
        assert!(!wants_page(&with("content-type", "application/json")));
        assert!(!wants_page(&with("accept", "*/*")));
        assert!(!wants_page(&with("sec-fetch-mode", "cors")));
    }
}
