//! The session cookie, the CSRF token that goes with it, and where a request comes from.
//!
//! The cookie is `__Host-` prefixed (the browser keeps it to this origin, path `/`, HTTPS
//! only), `Secure`, `HttpOnly` and `SameSite=Lax`, and holds a random 256-bit token whose hash
//! alone is stored. A state-changing request of a signed-in person must also carry the
//! session's CSRF token (a MAC of the session token, so nothing more is stored) in the form
//! field `csrf` or the header `X-CSRF-Token`, and a browser must say it comes from our own
//! origin (`Origin`, `Sec-Fetch-Site`).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine as _;
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::http::{ApiError, origin_allowed};

use crate::store::{self, Session};
use time::OffsetDateTime;

pub const COOKIE: &str = "__Host-pexper-session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const CSRF_DOMAIN: &str = "account-csrf";

/// A request's live session, with the token it came with.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: Session,
    token: String,
}

impl SignedIn {
    /// The CSRF token of this session, for forms and for `GET /v1/account`.
    pub fn csrf(&self, platform: &Platform) -> String {
        csrf_of(platform, &self.token)
    }

    fn csrf_matches(&self, platform: &Platform, given: &str) -> bool {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(given)
            .is_ok_and(|tag| {
                platform
                    .keyring
                    .verify_token(CSRF_DOMAIN, self.token.as_bytes(), &tag)
            })
    }
}

/// The CSRF token of the session with this cookie token.
pub fn csrf_of(platform: &Platform, token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(platform.keyring.sign_token(CSRF_DOMAIN, token.as_bytes()))
}

/// The session token in the request's cookies, if any looks like one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie_values(headers, COOKIE)
        .next()
        .map(str::to_owned)
        .filter(|t| pexper_platform::crypto::is_token_shaped(t))
}

/// The request's live session, touched; `None` when there is no cookie or it has ended.
pub async fn signed_in(
    platform: &Platform,
    headers: &HeaderMap,
) -> Result<Option<SignedIn>, ApiError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let mut conn = platform.pool.acquire().await.map_err(anyhow::Error::from)?;
    let Some(session) = store::session(&mut conn, &token).await? else {
        return Ok(None);
    };
    store::touch(&mut conn, &session).await?;
    Ok(Some(SignedIn { session, token }))
}

/// Like `signed_in`, but a JSON 401 without a session.
pub async fn require(platform: &Platform, headers: &HeaderMap) -> Result<SignedIn, ApiError> {
    signed_in(platform, headers)
        .await?
        .ok_or_else(|| ApiError::client(StatusCode::UNAUTHORIZED, "not_signed_in", "sign in first"))
}

/// The origins our own pages post from: the public URL, and the website's.
fn own_origins(platform: &Platform) -> Vec<String> {
    let mut origins = platform.config.allowed_origins.clone();
    origins.push(platform.config.public_url.trim_end_matches('/').to_owned());
    origins
}

/// Whether a browser says this request comes from our own pages (see `origin_allowed`).
pub fn from_our_pages(platform: &Platform, headers: &HeaderMap) -> bool {
    // Our pages send no Referer (`Referrer-Policy: no-referrer`: tokens travel in some URLs),
    // and so a browser posts their forms with `Origin: null` — as a sandboxed frame on any
    // site would. Then only the browser's own `Sec-Fetch-Site` can say it is ours.
    if headers.get(header::ORIGIN).is_some_and(|o| o == "null") {
        return headers
            .get("sec-fetch-site")
            .is_some_and(|site| site == "same-origin");
    }
    origin_allowed(headers, &own_origins(platform))
}

pub fn forbidden_origin() -> ApiError {
    ApiError::client(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        "this request must come from a Pexper page",
    )
}

/// A state-changing request of a signed-in person: from our pages, with the session's CSRF
/// token (the form's `csrf` field, or the `X-CSRF-Token` header).
pub fn check_csrf(
    platform: &Platform,
    headers: &HeaderMap,
    signed_in: &SignedIn,
    form_token: Option<&str>,
) -> Result<(), ApiError> {
    if !from_our_pages(platform, headers) {
        return Err(forbidden_origin());
    }
    let given = form_token.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
    if given.is_some_and(|t| signed_in.csrf_matches(platform, t)) {
        return Ok(());
    }
    Err(csrf_refused())
}

/// The answer to a missing or wrong CSRF token.
pub fn csrf_refused() -> ApiError {
    ApiError::client(
        StatusCode::FORBIDDEN,
        "csrf_token_invalid",
        "missing or wrong CSRF token: reload the page and try again",
    )
}

/// The `Set-Cookie` that starts a session.
pub fn set_cookie(token: &str) -> HeaderValue {
    let max_age = store::SESSION_ABSOLUTE.whole_seconds();
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
    ))
    .expect("a token is header-safe")
}

/// The `Set-Cookie` that forgets it.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-pexper-session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
    )
}

/// A label for the list of sessions, from the User-Agent's browser and system families only
/// ("Firefox on Linux"); the User-Agent itself is never stored.
pub fn device_label(headers: &HeaderMap) -> String {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Order matters: Edge and Opera say Chrome too, Chrome says Safari too.
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(marker, _)| ua.contains(marker))
    .map_or("A browser", |(_, name)| *name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(marker, _)| ua.contains(marker))
    .map(|(_, name)| *name);
    match system {
        Some(system) => format!("{browser} on {system}"),
        None => browser.to_owned(),
    }
}

/// The cookie that marks a browser which has signed in to an address before (`throttle`).
pub const DEVICE_COOKIE: &str = "__Host-pexper-device";
const DEVICE_DOMAIN: &str = "account-device";
/// A device cookie lasts half a year from its browser's last sign-in.
const DEVICE_MAX_AGE: time::Duration = time::Duration::days(182);

/// The message a device cookie's MAC covers: the address it was earned for, the version of
/// the password it was earned with (when it was set: a new password voids every device
/// cookie, so one earned by someone who knew the old password is no use), and its nonce.
fn device_message(address: &EmailAddress, password_set: OffsetDateTime, nonce: &str) -> String {
    format!(
        "{}\n{}\n{nonce}",
        address.as_str(),
        password_set.unix_timestamp_nanos() / 1000
    )
}

/// The nonce of the request's device cookie, if it has one that this server made for
/// `address` and its password as it is now (a MAC under the token key: a cookie cannot be
/// made up, nor moved to another address, nor outlive a password change).
pub fn device_of(
    platform: &Platform,
    headers: &HeaderMap,
    address: &EmailAddress,
    password_set: OffsetDateTime,
) -> Option<String> {
    cookie_values(headers, DEVICE_COOKIE).find_map(|value| {
        let (nonce, tag) = value.split_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        (pexper_platform::crypto::is_token_shaped(nonce)
            && platform.keyring.verify_token(
                DEVICE_DOMAIN,
                device_message(address, password_set, nonce).as_bytes(),
                &tag,
            ))
        .then(|| nonce.to_owned())
    })
}

/// The `Set-Cookie` of a device cookie for `address` and its password as set at
/// `password_set` (a new one unless `nonce` is given).
pub fn device_cookie(
    platform: &Platform,
    address: &EmailAddress,
    password_set: OffsetDateTime,
    nonce: Option<&str>,
) -> HeaderValue {
    let nonce = nonce.map_or_else(pexper_platform::crypto::random_token, str::to_owned);
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(platform.keyring.sign_token(
        DEVICE_DOMAIN,
        device_message(address, password_set, &nonce).as_bytes(),
    ));
    let max_age = DEVICE_MAX_AGE.whole_seconds();
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={nonce}.{tag}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("a token and base64 are header-safe")
}

/// Every value of the cookie `name` the request carries.
fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().expect("header"));
        h
    }

    #[test]
    fn a_device_label_names_only_the_browser_and_system_families() {
        let label = |ua: &str| device_label(&with("user-agent", ua));
        assert_eq!(
            label("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"),
            "Firefox on Linux"
        );
        assert_eq!(
            label(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"
            ),
            "Edge on Windows"
        );
        assert_eq!(
            label(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
            ),
            "Safari on iOS"
        );
        assert_eq!(label(""), "A browser");
    }

    #[test]
    fn only_the_session_cookie_is_read_and_only_when_token_shaped() {
        let token = pexper_platform::crypto::random_token();
        let h = with("cookie", &format!("theme=dark; {COOKIE}={token}; other=1"));
        assert_eq!(cookie_token(&h), Some(token));
        assert_eq!(
            cookie_token(&with("cookie", &format!("{COOKIE}=short"))),
            None
        );
        assert_eq!(cookie_token(&with("cookie", "pexper-session=x")), None);
    }

    #[test]
    fn the_cookie_has_every_flag_the_prefix_needs() {
        let c = set_cookie("t");
        let c = c.to_str().expect("ascii");
        for part in [
            "__Host-pexper-session=t",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Domain"), "a __Host- cookie has no Domain: {c}");
    }
}
