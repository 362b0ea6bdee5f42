//! DKIM signing (RFC 6376; Ed25519 from RFC 8463), relaxed/relaxed, over the message exactly
//! as it goes to the relay.
//!
//! Signing here rather than through lettre's `dkim` module, for two reasons. Speed: lettre
//! signs RSA with the pure-Rust `rsa` crate, about 1.4 ms of CPU per RSA-2048 signature on
//! this project's 2-core benchmark machine, more than everything else an email costs; ring
//! (rustls's provider here) takes 0.54 ms, and AWS-LC 0.29 ms, as fast as OpenSSL 3: both
//! have code for AVX-512 that ring lacks (issue 31). Coverage: lettre signs its header list,
//! where a multipart message's `Content-Type` is not kept, so it could not be signed; signing
//! the formatted bytes covers every header a receiver shows or acts on.

use anyhow::Context;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use secrecy::ExposeSecret;

/// The headers signed (their names as the signature lists them). `Content-Type` and
/// `MIME-Version` keep a relay from re-labelling the body; the `List-Unsubscribe` pair is what
/// the 2024 bulk-sender rules require signed. Each is signed once more than it appears (RFC
/// 6376 §8.15, "over-signing"), and the last three, which our mail never carries, are signed
/// absent: anyone who receives one of our emails and sends it on with a second `From` or
/// `Subject`, or with a `Reply-To` of their own, breaks the signature.
const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "reply-to",
    "cc",
    "sender",
];

/// The key and the identity a signature names: `d=` (the sender's domain) and `s=`.
pub struct Signer {
    selector: String,
    domain: String,
    key: Key,
    random: aws_lc_rs::rand::SystemRandom,
}

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// `key` is `ed25519:<base64 of the 32-byte seed>`, or an RSA key in PEM: PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`, `openssl genrsa -traditional`) or PKCS#8 (`BEGIN PRIVATE
    /// KEY`, what `openssl genpkey` and OpenSSL 3's `genrsa` write).
    pub fn new(selector: &str, key: &secrecy::SecretString, domain: &str) -> anyhow::Result<Self> {
        // A DNS name under `_domainkey`: a `;` or a space would break the tag list.
        anyhow::ensure!(
            selector.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            }),
            "PEXPER_DKIM_SELECTOR must be a DNS name (letters, digits, `-`, `_`, dots between), e.g. pexper2026"
        );
        let key = key.expose_secret();
        let key = match key.strip_prefix("ed25519:") {
            Some(seed) => {
                let seed = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(seed.trim())
                        .context("PEXPER_DKIM_KEY: the Ed25519 seed is not base64")?,
                );
                Key::Ed25519(
                    Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| {
                        anyhow::anyhow!("PEXPER_DKIM_KEY: an Ed25519 seed is 32 bytes")
                    })?,
                )
            }
            None => {
                let der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                    anyhow::anyhow!(
                        "PEXPER_DKIM_KEY is neither `ed25519:<seed>` nor an RSA key in PEM"
                    )
                })?;
                let pair = match &der {
                    PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
                    PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
                    _ => anyhow::bail!("PEXPER_DKIM_KEY: a PEM key for DKIM must be RSA"),
                }
                .map_err(|e| anyhow::anyhow!("PEXPER_DKIM_KEY is not a usable RSA key: {e}"))?;
                // Receivers treat shorter keys as unsigned (RFC 8301: at least 1024, 2048
                // recommended). AWS-LC refuses them as it parses (`TooSmall`); this holds
                // should it ever not.
                anyhow::ensure!(
                    pair.public_modulus_len() * 8 >= 2048,
                    "PEXPER_DKIM_KEY: an RSA key for DKIM needs at least 2048 bits"
                );
                // A small exponent (e = 3) opens the door to forged signatures that lax
                // verifiers accept. Every tool makes 65537, FIPS 186-4 asks for more than
                // 2^16, and ring refused less; AWS-LC takes any odd e from 3.
                let exponent =
                    aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key()).e;
                // Without leading zeros, three bytes or more is at least 65536; e is odd.
                anyhow::ensure!(
                    exponent.len() >= 3,
                    "PEXPER_DKIM_KEY: an RSA key for DKIM needs a public exponent of at least 65537"
                );
                Key::Rsa(pair)
            }
        };
        Ok(Self {
            selector: selector.to_owned(),
            domain: domain.to_owned(),
            key,
            random: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    /// Whether a signature takes well under a millisecond (Ed25519, or RSA of at most 2048
    /// bits: about 0.3 ms): cheap enough to make on an async worker. A 4096-bit RSA key takes
    /// about eight times as long.
    pub fn is_quick(&self) -> bool {
        match &self.key {
            Key::Rsa(pair) => pair.public_modulus_len() * 8 <= 2048,
            Key::Ed25519(_) => true,
        }
    }

    fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// The `DKIM-Signature` header field (ending in CRLF) to put before `message`, which is the
    /// whole message as it will be sent: its header, a blank line, its body. About 0.3 ms of
    /// CPU with RSA-2048 (`is_quick`; `Mailer::send` says where that is spent).
    pub fn sign(&self, message: &[u8], now: u64) -> anyhow::Result<Vec<u8>> {
        let split = find(message, b"\r\n\r\n").context("a message without a body")?;
        let (head, body) = (&message[..split + 2], &message[split + 4..]);
        let body_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &relaxed_body(body));
        let fields = fields(head);
        let mut signed = Vec::with_capacity(head.len());
        let mut names = Vec::new();
        for name in SIGNED_HEADERS {
            // From the last instance up, as a verifier takes them (RFC 6376 §5.4.2); then the
            // name once more, for an instance that is not there.
            for (_, value) in fields
                .iter()
                .rev()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                relaxed_field(&mut signed, name, value);
                names.push(*name);
            }
            names.push(*name);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let unsigned = format!(
            "v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={now}; h={};\r\n\tbh={};\r\n\tb=",
            self.algorithm(),
            self.domain,
            self.selector,
            names.join(":"),
            b64.encode(body_hash),
        );
        // The signature's own field is signed last, with an empty `b=` and without its CRLF.
        relaxed_field(&mut signed, "dkim-signature", unsigned.as_bytes());
        signed.truncate(signed.len() - 2);
        let signature = match &self.key {
            Key::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &self.random, &signed, &mut signature)
                    .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                signature
            }
            // RFC 8463: Ed25519 signs the SHA-256 hash of what RSA signs.
            Key::Ed25519(pair) => pair
                .try_sign(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &signed).as_ref())
                .map_err(|_| anyhow::anyhow!("Ed25519 signing failed"))?
                .as_ref()
                .to_vec(),
        };
        // The signature folded to lines of 72 characters (verifiers ignore whitespace inside
        // `b=`); the other tags' lines stay under RFC 5322's 998.
        let encoded = b64.encode(signature);
        let mut field = format!("DKIM-Signature: {unsigned}");
        for (i, chunk) in encoded.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                field.push_str("\r\n\t");
            }
            field.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        }
        field.push_str("\r\n");
        Ok(field.into_bytes())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The header's fields, each its name and its raw value (folds and all, without the final
/// CRLF). `head` ends in CRLF.
fn fields(head: &[u8]) -> Vec<(&str, &[u8])> {
    let mut fields: Vec<(&str, &[u8])> = Vec::new();
    let mut start = 0;
    while start < head.len() {
        // A field ends at a CRLF not followed by whitespace (a fold).
        let mut end = start;
        loop {
            match find(&head[end..], b"\r\n") {
                Some(i) => end += i,
                None => {
                    end = head.len();
                    break;
                }
            }
            if matches!(head.get(end + 2), Some(b' ' | b'\t')) {
                end += 2;
            } else {
                break;
            }
        }
        let line = &head[start..end];
        if let Some(colon) = line.iter().position(|&c| c == b':')
            && let Ok(name) = std::str::from_utf8(&line[..colon])
        {
            fields.push((name.trim_end(), &line[colon + 1..]));
        }
        start = end + 2;
    }
    fields
}

/// Appends `name:value\r\n` in relaxed form (RFC 6376 §3.4.2): the name in lower case, the
/// value unfolded, each run of whitespace one space, none at either end.
fn relaxed_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend(name.bytes().map(|c| c.to_ascii_lowercase()));
    out.push(b':');
    let mut space = false;
    let mut started = false;
    for &c in value {
        match c {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = true,
            c => {
                if space && started {
                    out.push(b' ');
                }
                space = false;
                started = true;
                out.push(c);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The body in relaxed form (RFC 6376 §3.4.4): no whitespace at a line's end, each run of it
/// one space, no empty lines at the end, and a final CRLF unless the body is empty.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut space = false;
    let mut lines = body.split(|&c| c == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if lines.peek().is_none() && line.is_empty() {
            break; // what follows the last CRLF
        }
        for &c in line {
            if c == b' ' || c == b'\t' {
                space = true;
            } else {
                if space {
                    out.push(b' ');
                }
                space = false;
                out.push(c);
            }
        }
        space = false;
        out.extend_from_slice(b"\r\n");
    }
    while out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    if out == b"\r\n" {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_relaxed_as_rfc_6376_says() {
        // RFC 6376 §3.4.6's example body.
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(
            relaxed_body(b"no final line break"),
            b"no final line break\r\n"
        );
    }

    #[test]
    fn a_selector_is_a_dns_name_and_a_key_is_one_we_can_sign_with() {
        let seed = secrecy::SecretString::from(format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        ));
        for good in ["pexper2026", "mail.2026-12_a"] {
            assert!(Signer::new(good, &seed, "pexper.com").is_ok(), "{good}");
        }
        for bad in ["", "a;b", "s1; d=evil.example", "a..b", "sel ", ".a"] {
            let err = Signer::new(bad, &seed, "pexper.com").expect_err(bad);
            assert!(
                err.to_string().contains("PEXPER_DKIM_SELECTOR"),
                "{bad}: {err}"
            );
        }
        for bad in [
            "ed25519:not base64!",
            "ed25519:AAAA",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "secret",
        ] {
            let err =
                Signer::new("s1", &secrecy::SecretString::from(bad), "pexper.com").expect_err(bad);
            assert!(err.to_string().contains("PEXPER_DKIM_KEY"), "{bad}: {err}");
        }
        // RSA (testdata/README): a short key, a small exponent and a key of another kind are
        // refused, each for its reason; an exponent above 65537 is taken.
        for (pem, reason) in [
            (include_str!("testdata/rsa1024.pem"), "TooSmall"),
            (
                include_str!("testdata/rsa2048-e3.pem"),
                "exponent of at least 65537",
            ),
            (
                include_str!("testdata/rsa2048-e65535.pem"),
                "exponent of at least 65537",
            ),
            (include_str!("testdata/p256.pem"), "not a usable RSA key"),
        ] {
            let err = Signer::new("s1", &secrecy::SecretString::from(pem), "pexper.com")
                .expect_err(reason);
            assert!(err.to_string().contains(reason), "{reason}: {err}");
        }
        let key = secrecy::SecretString::from(include_str!("testdata/rsa2048-e65539.pem"));
        assert!(Signer::new("s1", &key, "pexper.com").is_ok());
    }

    /// Signs a message with two `To` fields; returns what a verifier hashes (the bottom `To`
    /// first, then our field without its `b=`), the signature, and the `h=` tag's list.
    fn signed_with(signer: &Signer) -> (String, Vec<u8>, String) {
        let message = b"From: a@pexper.com\r\nTo: first\r\nTo:  second \r\n\r\nHi\r\n";
        let field = String::from_utf8(signer.sign(message, 1).expect("signed")).expect("ASCII");
        let tags = field.strip_prefix("DKIM-Signature: ").expect("the field");
        let at = tags.rfind("b=").expect("b=") + 2;
        let data = format!(
            "from:a@pexper.com\r\nto:second\r\nto:first\r\ndkim-signature:{}",
            tags[..at].replace("\r\n\t", " ")
        );
        let signature = base64::engine::general_purpose::STANDARD
            .decode(tags[at..].split_whitespace().collect::<String>())
            .expect("base64");
        let listed = tags
            .split("h=")
            .nth(1)
            .and_then(|h| h.split(';').next())
            .expect("h=")
            .to_owned();
        (data, signature, listed)
    }

    // Both checked with ring, an implementation other than the one that signed.

    #[test]
    fn repeated_headers_are_signed_from_the_bottom_up_and_once_more_absent() {
        let seed = [7u8; 32];
        let key = secrecy::SecretString::from(format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(seed)
        ));
        let (data, signature, listed) =
            signed_with(&Signer::new("s1", &key, "pexper.com").expect("a signer"));
        assert_eq!(
            listed,
            "from:from:to:to:to:subject:date:message-id:mime-version:content-type:\
             list-unsubscribe:list-unsubscribe-post:reply-to:cc:sender"
        );
        let public = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("a key");
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            ring::signature::KeyPair::public_key(&public).as_ref(),
        )
        .verify(
            ring::digest::digest(&ring::digest::SHA256, data.as_bytes()).as_ref(),
            &signature,
        )
        .expect("verifies over the bottom-up order");
    }

    #[test]
    fn an_rsa_signature_is_pkcs1_v1_5_with_sha_256_over_what_a_verifier_hashes() {
        let pem = include_str!("testdata/rsa2048-e65539.pem");
        let (data, signature, _) = signed_with(
            &Signer::new("s1", &secrecy::SecretString::from(pem), "pexper.com").expect("a signer"),
        );
        let der =
            rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        let public =
            ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("a key");
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            ring::signature::KeyPair::public_key(&public).as_ref(),
        )
        .verify(data.as_bytes(), &signature)
        .expect("verifies as rsa-sha256");
    }

    #[test]
    fn header_fields_are_relaxed_as_rfc_6376_says() {
        // RFC 6376 §3.4.6's example header.
        let head = b"A: X\r\nB : Y\t\r\n\tZ  \r\n";
        let fields = fields(head);
        let mut out = Vec::new();
        for (name, value) in &fields {
            relaxed_field(&mut out, name, value);
        }
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n");
    }
}
