//! Licence keys: the one format the payments service signs and the desktop app verifies
//! offline, so the two can never disagree about it.
//!
//! A licence is `PEXPER1.<claims>.<signature>`: the claims are JSON in unpadded base64url, the
//! signature is Ed25519 over the ASCII bytes of `PEXPER1.<claims>` (the prefix is signed too,
//! so a future format cannot be confused with this one). The claims name no person: a licence
//! says which product it unlocks and when it was issued, nothing about who bought it.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "PEXPER1";

/// What a licence asserts. Deliberately free of personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseClaims {
    /// The licence's id (a UUID), which `POST /v1/licenses/validate` looks up.
    pub id: String,
    /// The product it unlocks, e.g. `pexper`.
    pub product: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; `None` for a perpetual licence (a one-time purchase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The signing key's id (see [`key_id`]), so a verifier can tell "signed by a key I do not
    /// have" from "forged".
    pub key_id: String,
    /// Test-mode purchases (Stripe `livemode: false`) issue test licences.
    pub livemode: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("this is not a Pexper licence key")]
    Malformed,
    #[error("this licence was signed by another key ({0})")]
    UnknownKey(String),
    #[error("this licence's signature does not match its contents")]
    BadSignature,
}

/// A short, stable id for a public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public: &VerifyingKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(public.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs `claims` into a licence string. Ed25519 signatures are deterministic: the same claims
/// and key always give the same licence.
pub fn sign(claims: &LicenseClaims, key: &SigningKey) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialize");
    let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Verifies a licence with only the public key: no network, no clock (the caller decides what
/// an expiry means; Pexper never locks anyone out of their own workflows).
pub fn verify(license: &str, public: &VerifyingKey) -> Result<LicenseClaims, LicenseError> {
    let license = license.trim();
    let (signed, signature) = license.rsplit_once('.').ok_or(LicenseError::Malformed)?;
    let (prefix, claims) = signed.split_once('.').ok_or(LicenseError::Malformed)?;
    if prefix != PREFIX {
        return Err(LicenseError::Malformed);
    }
    let claims: LicenseClaims = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(LicenseError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(LicenseError::Malformed)?;
    if claims.key_id != key_id(public) {
        return Err(LicenseError::UnknownKey(claims.key_id));
    }
    public
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| LicenseError::BadSignature)?;
    Ok(claims)
}

/// The id a licence string claims, unverified: for finding its row, which then holds the
/// licence to compare with.
pub fn claimed_id(license: &str) -> Option<String> {
    let (_, claims) = license.trim().split_once('.')?;
    let (claims, _) = claims.split_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(claims).ok()?;
    serde_json::from_slice::<LicenseClaims>(&json)
        .ok()
        .map(|c| c.id)
}

/// Parses the `public_key` of [`PublicKey`] (standard base64 of the 32 raw bytes).
pub fn parse_public_key(encoded: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(encoded.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// `GET /v1/licenses/public-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicKey {
    /// Always `Ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, standard base64.
    pub public_key: String,
    /// The id licences signed with it carry in `key_id`.
    pub key_id: String,
}

impl PublicKey {
    pub fn new(public: &VerifyingKey) -> Self {
        Self {
            algorithm: "Ed25519".to_owned(),
            public_key: STANDARD.encode(public.as_bytes()),
            key_id: key_id(public),
        }
    }
}

/// `POST /v1/licenses/validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ValidateRequest {
    /// `PEXPER1.<claims>.<signature>`, both parts unpadded base64url.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^PEXPER1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
    )]
    pub license: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ValidateResponse {
    pub valid: bool,
    /// `active` or `revoked` (a refund or a lost dispute revokes a licence).
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims(key: &SigningKey) -> LicenseClaims {
        LicenseClaims {
            id: "0193a7c0-0000-7000-8000-000000000001".into(),
            product: "pexper".into(),
            issued_at: 1_795_000_000,
            expires_at: None,
            key_id: key_id(&key.verifying_key()),
            livemode: true,
        }
    }

    #[test]
    fn a_signed_licence_verifies_with_the_public_key_alone() {
        let key = key(7);
        let license = sign(&claims(&key), &key);
        assert!(license.starts_with("PEXPER1."));
        assert_eq!(verify(&license, &key.verifying_key()), Ok(claims(&key)));
        assert_eq!(
            verify(&format!("  {license}\n"), &key.verifying_key()),
            Ok(claims(&key))
        );
    }

    #[test]
    fn another_key_or_a_changed_claim_does_not_verify() {
        let key = key(7);
        let license = sign(&claims(&key), &key);
        assert!(matches!(
            verify(&license, &self::key(8).verifying_key()),
            Err(LicenseError::UnknownKey(_))
        ));

        // Same key id, other claims: a forger who edits the payload.
        let mut forged = claims(&key);
        forged.product = "pexper-enterprise".into();
        let forged_payload = sign(&forged, &self::key(9))
            .split('.')
            .nth(1)
            .expect("claims part")
            .to_owned();
        let parts: Vec<&str> = license.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&tampered, &key.verifying_key()),
            Err(LicenseError::BadSignature)
        );
        for junk in ["", "PEXPER1", "PEXPER1.x.y", "PEXPER2.a.b", "a.b.c.d"] {
            assert!(verify(junk, &key.verifying_key()).is_err(), "{junk}");
        }
    }

    #[test]
    fn the_published_public_key_parses_back() {
        let key = key(3);
        let published = PublicKey::new(&key.verifying_key());
        assert_eq!(
            parse_public_key(&published.public_key),
            Some(key.verifying_key())
        );
        assert_eq!(published.key_id.len(), 16);
    }
}
