//! The licence, verified on the device with the server's Ed25519 public key: no request is
//! made. Expiry and a clock that went back are reported, never enforced: Pexper does not lock
//! anyone out of their own workflows.
//!
//! The key is built in (`PEXPER_LICENSE_PUBLIC_KEY` at build time) or configured; a build
//! without one may fetch it once from the server (`fetch_public_key`), through the egress
//! module and its log, and keeps it in the settings.

use anyhow::Context;
use pexper_wire::license::{self, LicenseClaims, LicenseError, PublicKey, VerifyingKey};

use crate::egress::{Egress, Purpose, Request};

/// The key the release build was made with (`PEXPER_LICENSE_PUBLIC_KEY` at build time), if any.
pub const BUILT_IN_KEY: Option<&str> = option_env!("PEXPER_LICENSE_PUBLIC_KEY");

/// How much a clock may go back before it is flagged.
const CLOCK_SLACK: i64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Valid(LicenseClaims),
    /// Past its expiry date: the app keeps working, updates may not.
    Expired(LicenseClaims),
    Invalid(LicenseError),
    /// No key to check against (not built in, not configured).
    NoKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// The device's clock is well behind a time it has already seen.
    pub clock_went_back: bool,
}

pub fn public_key(configured: Option<&str>) -> Option<VerifyingKey> {
    configured
        .or(BUILT_IN_KEY)
        .and_then(license::parse_public_key)
}

/// Asks the server for its public key (`GET /v1/licenses/public-key`) and returns it as
/// standard base64, once it parses as an Ed25519 key whose id matches the one published.
pub fn fetch_public_key(server_url: &str, egress: &Egress) -> anyhow::Result<String> {
    let res = egress.send(Request {
        purpose: Purpose::License,
        method: "GET",
        url: format!("{server_url}/v1/licenses/public-key"),
        content_type: None,
        body: vec![],
        key: None,
        headers: vec![],
    })?;
    anyhow::ensure!(res.status == 200, "the server answered {}", res.status);
    let published: PublicKey =
        serde_json::from_slice(&res.body).context("the server's answer is not a public key")?;
    let key = (published.algorithm == "Ed25519")
        .then(|| license::parse_public_key(&published.public_key))
        .flatten()
        .context("the server's key is not an Ed25519 public key")?;
    anyhow::ensure!(
        license::key_id(&key) == published.key_id,
        "the server's key does not match its id"
    );
    Ok(published.public_key)
}

/// Checks `text` at time `now` (Unix seconds), given the latest time the app has seen.
pub fn check(text: &str, key: Option<&VerifyingKey>, now: i64, last_seen: i64) -> Check {
    let clock_went_back = last_seen - now > CLOCK_SLACK;
    let status = match key {
        None => Status::NoKey,
        Some(key) => match license::verify(text, key) {
            Err(e) => Status::Invalid(e),
            Ok(claims) if claims.expires_at.is_some_and(|e| e < now.max(last_seen)) => {
                Status::Expired(claims)
            }
            Ok(claims) => Status::Valid(claims),
        },
    };
    Check {
        status,
        clock_went_back,
    }
}
