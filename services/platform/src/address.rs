//! `EmailAddress`: an address that has been parsed and normalised once, at the edge.
//!
//! Normalisation (trim, Unicode NFC, lowercase; the domain in its IDNA ASCII form) makes the
//! blind index stable: `Ada@Example.com `, `ada@example.com`, `x@bücher.de` and
//! `x@xn--bcher-kva.de` each name one person. The syntax accepted is RFC 5321's dot-atom mailbox
//! with RFC 6531 UTF-8 local parts; quoted local parts and address literals are refused because
//! no real signup form needs them.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// RFC 5321 §4.5.3.1: 64 octets of local part, 255 of domain, 254 for a forward path.
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 253;
const MAX_TOTAL: usize = 254;
const MAX_LABEL: usize = 63;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("an email address is required")]
    Empty,
    #[error("the email address is too long")]
    TooLong,
    #[error("the email address needs exactly one @")]
    MissingAt,
    #[error("the part before the @ is not valid")]
    InvalidLocalPart,
    #[error("the domain after the @ is not valid")]
    InvalidDomain,
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        // As sent, before anything is normalised: `/openapi.json` states 254 characters of
        // what is sent, and lowercasing can make a string longer ("İ" becomes two
        // characters), so a megabyte-long field must be refused before it is copied. The
        // byte length first: no character has more than 4 bytes.
        if raw.len() > 4 * MAX_TOTAL || raw.chars().count() > MAX_TOTAL {
            return Err(EmailError::TooLong);
        }
        let normalised: String = raw.trim().nfc().collect::<String>().to_lowercase();
        if normalised.is_empty() {
            return Err(EmailError::Empty);
        }
        if normalised.len() > MAX_TOTAL {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = normalised.split_once('@').ok_or(EmailError::MissingAt)?;
        if domain.contains('@') {
            return Err(EmailError::MissingAt);
        }
        if local.is_empty() || local.len() > MAX_LOCAL || !is_dot_atom(local) {
            return Err(EmailError::InvalidLocalPart);
        }
        // UTS 46 processing: maps and validates an IDN, giving the A-label form mail uses.
        let domain = idna::domain_to_ascii(domain).map_err(|_| EmailError::InvalidDomain)?;
        if !is_domain(&domain) {
            return Err(EmailError::InvalidDomain);
        }
        let address = format!("{local}@{domain}");
        if address.len() > MAX_TOTAL {
            return Err(EmailError::TooLong);
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain, which is safe to log (crates.io does the same: the full address is PII).
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

/// Never print an address by accident: `{:?}` shows the domain only.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress(…@{})", self.domain())
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

fn is_dot_atom(s: &str) -> bool {
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
            })
    };
    // A top-level domain is never all digits; that rules out `1.2.3.4` posing as a domain.
    let tld_ok = labels
        .last()
        .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()));
    labels.iter().all(label_ok) && tld_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_case_space_and_unicode_form() {
        let a = EmailAddress::parse("  Ada.Lovelace@Example.COM ").expect("valid");
        assert_eq!(a.as_str(), "ada.lovelace@example.com");
        // "é" precomposed and decomposed normalise to the same address.
        let nfc = EmailAddress::parse("jos\u{e9}@b\u{fc}cher.de").expect("valid");
        let nfd = EmailAddress::parse("jose\u{301}@bu\u{308}cher.de").expect("valid");
        assert_eq!(nfc, nfd);
        // An IDN domain and its A-label are the same address.
        assert_eq!(nfc.as_str(), "jos\u{e9}@xn--bcher-kva.de");
        assert_eq!(
            EmailAddress::parse("jos\u{e9}@XN--BCHER-KVA.de").expect("valid"),
            nfc
        );
    }

    #[test]
    fn accepts_real_world_addresses() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "o'brien@example.ie",
            "用户@例子.广告",
            "x@xn--bcher-kva.de",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "   ",
            "plain",
            "@example.com",
            "a@",
            "a@@b.com",
            "a@b@c.com",
            "a..b@example.com",
            ".a@example.com",
            "a@localhost",
            "a@-bad.com",
            "a@bad-.com",
            "a@1.2.3.4",
            "a b@example.com",
            "a@exa mple.com",
            "\"quoted\"@example.com",
            "a@example..com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(
            EmailAddress::parse(&long_local),
            Err(EmailError::InvalidLocalPart)
        );
        let long = format!("a@{}.com", "b".repeat(260));
        assert_eq!(EmailAddress::parse(&long), Err(EmailError::TooLong));
        // A valid address of 251 characters, sent as 261: over the stated limit, however
        // trimmed.
        let address = format!(
            "{}@{}.{}.{}.com",
            "a".repeat(64),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60)
        );
        assert_eq!(address.len(), 251);
        assert!(EmailAddress::parse(&address).is_ok());
        let padded = format!("     {address}     ");
        assert_eq!(EmailAddress::parse(&padded), Err(EmailError::TooLong));
        // A field that grows when lowercased ("İ" is two characters in lower case) is
        // refused as sent, whatever its length, before it is copied.
        let growing = "\u{130}".repeat(255);
        assert_eq!(EmailAddress::parse(&growing), Err(EmailError::TooLong));
        let megabyte = "\u{130}".repeat(1 << 19);
        assert_eq!(EmailAddress::parse(&megabyte), Err(EmailError::TooLong));
    }

    #[test]
    fn debug_shows_only_the_domain() {
        let a = EmailAddress::parse("secret.person@example.com").expect("valid");
        assert_eq!(format!("{a:?}"), "EmailAddress(…@example.com)");
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_is_idempotent(raw in "\\PC{0,80}") {
            if let Ok(a) = EmailAddress::parse(&raw) {
                prop_assert_eq!(EmailAddress::parse(a.as_str()).expect("reparses"), a);
            }
        }
    }
}
