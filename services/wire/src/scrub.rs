//! The one scrubber: what text we did not write ourselves (an SMTP reply in a job error, a
//! panic message, a crash report's exception value) may say about a person, a secret or a
//! machine is replaced by a placeholder. The server's logs, the crash intake and the desktop's
//! panic hook all use it, so an address is recognised the same way everywhere.
//!
//! Two strengths:
//! * [`redact`]: secrets and personal data — keys and tokens, credentials in URLs, email
//!   addresses, IP addresses, card numbers. For the server's own logs, where a database host
//!   name is an operator's business, not a person's.
//! * [`scrub`]: all of that, and the machine — home directories (written `~`), local host
//!   names, and values the caller knows identify this report (its hostname, the user's name).
//!
//! It errs towards removing: `serde@1.0.2` is not an address, but `team@pexper.com` is, and
//! telling them apart is not worth a leak.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::{Captures, Regex};

enum Replace {
    With(&'static str),
    /// Decides from the match and the characters just before and after it.
    By(fn(&Captures<'_>, Around) -> String),
}

/// The characters next to a match (the `regex` crate has no look-around).
#[derive(Clone, Copy)]
struct Around {
    before: Option<char>,
    after: Option<char>,
}

impl Around {
    /// Whether the match is glued to a word on either side (`std::io`, `0xdead::`).
    fn inside_a_word(self) -> bool {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        word(self.before) || word(self.after)
    }
}

use Replace::{By, With};

struct Rule {
    pattern: Regex,
    replace: Replace,
}

fn rule(pattern: &str, replace: Replace) -> Rule {
    Rule {
        pattern: Regex::new(pattern).expect("a valid scrubber pattern"),
        replace,
    }
}

/// `placeholder` if `candidate` parses as a `T`, else the matched text unchanged.
fn if_parses<T: std::str::FromStr>(candidate: &str, matched: &str, placeholder: &str) -> String {
    match candidate.parse::<T>() {
        Ok(_) => placeholder.to_owned(),
        Err(_) => matched.to_owned(),
    }
}

/// Secrets and personal data, in order: tokens first (they can contain anything), then
/// credentials and addresses, provider keys, then numbers.
static PERSONAL: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        rule(
            r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            With("[jwt]"),
        ),
        rule(
            r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}",
            By(|c, _| format!("{} [key]", &c[1])),
        ),
        rule(
            r"(?i)\b(api[_-]?key|secret|password|passwd|token)\s*[=:]\s*\S+",
            By(|c, _| format!("{}=[key]", &c[1])),
        ),
        // `postgres://user:password@host`: before addresses, or `password@host` would be
        // taken for one and the user name left behind.
        rule(
            r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@",
            By(|c, _| format!("{}[redacted]@", &c[1])),
        ),
        // Any local part (quoted-string forms aside), internationalised domains included; the
        // last label is letters only, so `crate@1.2.3` is not an address.
        rule(
            r#"[^\s<>()\[\],;:@"']+@(?:[\w-]+\.)+[^\W\d_]{2,}"#,
            With("[email]"),
        ),
        // Provider keys by their prefix: after addresses, or a domain label such as
        // `rk-00000-a` would be taken for one and the address around it left with its `@`.
        rule(
            r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}|\bAKIA[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_-]{30,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bxox[abprs]-[A-Za-z0-9-]{10,}",
            With("[key]"),
        ),
        // Anything with two colons among hex digits, not glued to a word, is a candidate;
        // `Ipv6Addr` decides, so `std::io` and `a::b::c` stay. Before IPv4, which would
        // otherwise take the tail of `::ffff:192.0.2.1` and leave the rest.
        rule(
            r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f.]*(?:%\w+)?",
            By(|c, around| {
                let candidate = c[0].split('%').next().unwrap_or("");
                if around.inside_a_word() {
                    c[0].to_owned()
                } else {
                    if_parses::<Ipv6Addr>(candidate, &c[0], "[ip]")
                }
            }),
        ),
        rule(
            r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
            By(|c, _| if_parses::<Ipv4Addr>(&c[0], &c[0], "[ip]")),
        ),
        // Card numbers start with 2-6 (Mastercard, Amex, Visa, Discover, …) and pass Luhn;
        // epoch milliseconds (1…) are not mistaken for one.
        rule(
            r"\b[2-6](?:[ -]?\d){12,18}\b",
            By(|c, _| {
                if luhn(&c[0]) {
                    "[card]".to_owned()
                } else {
                    c[0].to_owned()
                }
            }),
        ),
    ]
});

/// What identifies a machine: home directories (names with spaces included) and host names
/// on a local network.
static MACHINE: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        rule(
            r"(?i)\b[A-Z]:[\\/]+(?:Users|Documents and Settings)[\\/]+[^\\/\r\n]+",
            With("~"),
        ),
        rule(r"/(?:home|Users)/[^/\r\n]+", With("~")),
        rule(
            r"(?i)\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:local|lan|home|internal|localdomain|corp)\b",
            With("[host]"),
        ),
    ]
});

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2 == 1, d * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => d,
        })
        .sum();
    digits.len() >= 13 && sum.is_multiple_of(10)
}

fn apply(rules: &[Rule], text: String) -> String {
    rules.iter().fold(text, |text, rule| {
        if !rule.pattern.is_match(&text) {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for found in rule.pattern.captures_iter(&text) {
            let whole = found.get(0).expect("a match has a whole");
            out.push_str(&text[last..whole.start()]);
            match rule.replace {
                With(placeholder) => out.push_str(placeholder),
                By(decide) => {
                    let around = Around {
                        before: text[..whole.start()].chars().next_back(),
                        after: text[whole.end()..].chars().next(),
                    };
                    out.push_str(&decide(&found, around));
                }
            }
            last = whole.end();
        }
        out.push_str(&text[last..]);
        out
    })
}

/// Removes secrets and personal data.
pub fn redact(text: &str) -> String {
    apply(&PERSONAL, text.to_owned())
}

/// Removes secrets, personal data and what identifies the machine. `known` are values this
/// report is known to hold and their placeholders (the home directory as `~`, the user's name,
/// the hostname); they are replaced last, so a user name inside an address takes the whole
/// address with it, and only when at least three characters long (a shorter one would maul
/// ordinary words).
pub fn scrub(text: &str, known: &[(&str, &str)]) -> String {
    let mut out = apply(&MACHINE, redact(text));
    for (value, placeholder) in known.iter().filter(|(v, _)| v.chars().count() >= 3) {
        out = out.replace(value, placeholder);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn canaries_are_replaced() {
        let cases = [
            ("mail alice@example.com now", "mail [email] now"),
            ("mail <josé.ñ@exämple.com>", "mail <[email]>"),
            // A domain label that looks like a provider key (proptest found it).
            ("mail a@rk-00000-a-.aa now", "mail [email] now"),
            ("from 203.0.113.77:443", "from [ip]:443"),
            ("peer 2001:db8::8a2e:370:7334 left", "peer [ip] left"),
            ("peer fe80::1%eth0 left", "peer [ip] left"),
            (
                "loopback ::1 and ::ffff:192.0.2.1",
                "loopback [ip] and [ip]",
            ),
            ("key sk-proj-AbCdEf0123456789xyz failed", "key [key] failed"),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws [key]"),
            (
                "Authorization: Bearer abc.def-ghi_jkl123",
                "Authorization: Bearer [key]",
            ),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.sig_nature-x",
                "jwt [jwt]",
            ),
            ("card 4111 1111 1111 1111 declined", "card [card] declined"),
            ("card 4242-4242-4242-4242", "card [card]"),
            ("password=hunter2 in config", "password=[key] in config"),
            (
                "550 5.1.1 <alice.smith@example.com>: Recipient address rejected from 203.0.113.9 and 2001:db8::1",
                "550 5.1.1 <[email]>: Recipient address rejected from [ip] and [ip]",
            ),
            (
                "connect to postgres://pexper:hunter2@db.internal/pexper failed",
                "connect to postgres://[redacted]@db.internal/pexper failed",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
        }
    }

    #[test]
    fn a_report_loses_the_machine_too() {
        let cases = [
            ("open /home/alice/projects/x.json", "open ~/projects/x.json"),
            ("open /Users/alice/Library/x", "open ~/Library/x"),
            (
                r"open C:\Users\Alice Smith\AppData\x.txt",
                r"open ~\AppData\x.txt",
            ),
            ("open C:/Users/Alice Smith/x.txt", "open ~/x.txt"),
            ("host alices-macbook.local down", "host [host] down"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub(input, &[]), expected, "{input}");
        }
        assert_eq!(
            scrub(
                "cannot reach build-box-7 today",
                &[("build-box-7", "[host]")]
            ),
            "cannot reach [host] today"
        );
        assert_eq!(
            scrub(
                "alice wrote to alice@example.org from /srv/alice",
                &[("alice", "[user]"), ("/srv/alice", "~")]
            ),
            "[user] wrote to [email] from /srv/[user]",
            "the address goes whole; known values go after the patterns"
        );
        assert_eq!(scrub("al is here", &[("al", "[user]")]), "al is here");
        assert_eq!(
            redact("open /home/alice/x at db.internal"),
            "open /home/alice/x at db.internal",
            "the server's logs keep paths and hosts"
        );
    }

    #[test]
    fn code_and_ordinary_numbers_survive() {
        for keep in [
            "std::io::Error: No such file or directory (os error 2)",
            "called `Option::unwrap()` on a `None` value",
            "index out of bounds: the len is 3 but the index is 10",
            "timestamp 1732700000000 overflow",
            "version 1.2.3 of crate foo",
            "serde@1.0.228 and a::b::c",
            "job failed: connection refused (os error 111) after 3 attempts",
        ] {
            assert_eq!(scrub(keep, &[]), keep);
        }
    }

    /// Text around a planted value: words, punctuation and spaces, never `@`, `:` or digits
    /// (which could join the value and make it something else).
    fn filler() -> impl Strategy<Value = String> {
        "[a-zA-Z ,.!?()-]{0,30}".prop_map(|s| format!(" {s} "))
    }

    fn email() -> impl Strategy<Value = String> {
        (
            "[a-zA-Z0-9._%+-]{1,20}|[a-zé]{1,8}\\.[a-zñ]{1,8}",
            "[a-z0-9-]{1,15}(\\.[a-z0-9-]{1,10}){0,2}",
            "[a-z]{2,10}",
        )
            .prop_map(|(local, domain, tld)| format!("{local}@{domain}.{tld}"))
    }

    proptest! {
        #[test]
        fn no_email_address_survives(before in filler(), address in email(), after in filler()) {
            let out = redact(&format!("{before}{address}{after}"));
            prop_assert!(!out.contains('@'), "{out}");
            prop_assert!(out.contains("[email]"), "{out}");
        }

        #[test]
        fn no_ipv4_address_survives(before in filler(), ip in any::<[u8; 4]>(), after in filler()) {
            let ip = Ipv4Addr::from(ip).to_string();
            let out = redact(&format!("{before}{ip}{after}"));
            prop_assert!(!out.contains(&ip), "{out}");
        }

        #[test]
        fn no_ipv6_address_survives(before in filler(), ip in any::<[u16; 8]>(), after in filler()) {
            let ip = Ipv6Addr::from(ip).to_string();
            let out = redact(&format!("{before}{ip}{after}"));
            prop_assert!(!out.contains(&ip), "{ip} in {out}");
            prop_assert!(out.contains("[ip]"), "{out}");
        }

        #[test]
        fn scrubbing_twice_changes_nothing_more(text in "\\PC{0,80}") {
            let once = scrub(&text, &[]);
            prop_assert_eq!(scrub(&once, &[]), once.clone());
        }

        #[test]
        fn prose_without_digits_or_at_signs_is_left_alone(text in "[a-zA-Z ,.!?'()-]{0,120}") {
            prop_assert_eq!(redact(&text), text.clone());
        }
    }
}
