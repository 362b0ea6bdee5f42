//! Scrubbing free text from crash reports: what a message, an exception value or a file path
//! may carry about a person or a machine is replaced by a placeholder. Applied to every string
//! we keep from an event; the structure around them is rebuilt from an allow-list (`event`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::{Captures, Regex};

enum Replace {
    With(&'static str),
    By(fn(&Captures<'_>) -> String),
}

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

use Replace::{By, With};

/// In order: tokens first (they can contain anything), then addresses, paths, numbers.
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        rule(
            r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            With("[jwt]"),
        ),
        rule(
            r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}",
            By(|c| format!("{} [key]", &c[1])),
        ),
        rule(
            r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}|\bAKIA[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_-]{30,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bxox[abprs]-[A-Za-z0-9-]{10,}",
            With("[key]"),
        ),
        rule(
            r"(?i)\b(api[_-]?key|secret|password|passwd|token)\s*[=:]\s*\S+",
            By(|c| format!("{}=[key]", &c[1])),
        ),
        rule(
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
            With("[email]"),
        ),
        // Home directories, names with spaces included: Windows up to the next separator.
        rule(
            r"(?i)\b[A-Z]:[\\/]+(?:Users|Documents and Settings)[\\/]+[^\\/\r\n]+",
            With("~"),
        ),
        rule(r"/(?:home|Users)/[^/\r\n]+", With("~")),
        rule(
            r"(?i)\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:local|lan|home|internal|localdomain|corp)\b",
            With("[host]"),
        ),
        rule(
            r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
            By(|c| {
                if c[0].parse::<Ipv4Addr>().is_ok() {
                    "[ip]".to_owned()
                } else {
                    c[0].to_owned()
                }
            }),
        ),
        // IPv6 candidates start at a word boundary (not inside `std::io`) and must parse.
        rule(
            r"(?i)\b[0-9a-f]{1,4}(?::[0-9a-f]{0,4}){2,7}(?:%\w+)?",
            By(|c| {
                let candidate = c[0].split('%').next().unwrap_or("");
                if candidate.parse::<Ipv6Addr>().is_ok() {
                    "[ip]".to_owned()
                } else {
                    c[0].to_owned()
                }
            }),
        ),
        // Card numbers start with 2-6 (Mastercard, Amex, Visa, Discover, …) and pass Luhn;
        // epoch milliseconds (1…) do not get mistaken for one.
        rule(
            r"\b[2-6](?:[ -]?\d){12,18}\b",
            By(|c| {
                if luhn(&c[0]) {
                    "[card]".to_owned()
                } else {
                    c[0].to_owned()
                }
            }),
        ),
    ]
});

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    digits.len() >= 13 && sum.is_multiple_of(10)
}

/// A short identifier-like value (release, environment, level, OS name): kept only if it is
/// made of safe characters, and then scrubbed like free text (`alice@example.com` is made of
/// safe characters), else dropped. Events and release health both go through here.
pub fn label(v: Option<&str>) -> Option<String> {
    v.filter(|s| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+@ /()".contains(&b))
    })
    .map(|s| scrub(s, &[]))
}

/// Scrubs one string; `also` are values known to be identifying in this report (its
/// hostname, its device name), removed wherever they appear.
pub fn scrub(text: &str, also: &[&str]) -> String {
    let mut out = text.to_owned();
    for needle in also.iter().filter(|n| n.len() >= 3) {
        out = out.replace(needle, "[host]");
    }
    for rule in RULES.iter() {
        if rule.pattern.is_match(&out) {
            out = match rule.replace {
                With(text) => rule
                    .pattern
                    .replace_all(&out, regex::NoExpand(text))
                    .into_owned(),
                By(f) => rule
                    .pattern
                    .replace_all(&out, |c: &Captures<'_>| f(c))
                    .into_owned(),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_are_replaced() {
        let cases = [
            ("mail alice@example.com now", "mail [email] now"),
            ("from 203.0.113.77:443", "from [ip]:443"),
            ("peer 2001:db8::8a2e:370:7334 left", "peer [ip] left"),
            ("peer fe80::1%eth0 left", "peer [ip] left"),
            ("open /home/alice/projects/x.json", "open ~/projects/x.json"),
            ("open /Users/alice/Library/x", "open ~/Library/x"),
            (
                r"open C:\Users\Alice Smith\AppData\x.txt",
                r"open ~\AppData\x.txt",
            ),
            ("open C:/Users/Alice Smith/x.txt", "open ~/x.txt"),
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
            ("host alices-macbook.local down", "host [host] down"),
            ("password=hunter2 in config", "password=[key] in config"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub(input, &[]), expected, "{input}");
        }
    }

    #[test]
    fn code_and_ordinary_numbers_survive() {
        for keep in [
            "std::io::Error: No such file or directory (os error 2)",
            "called `Option::unwrap()` on a `None` value",
            "index out of bounds: the len is 3 but the index is 10",
            "timestamp 1732700000000 overflow",
            "version 1.2.3 of crate foo",
            "a::b::c",
        ] {
            assert_eq!(scrub(keep, &[]), keep);
        }
    }

    #[test]
    fn the_reports_own_hostname_is_removed_everywhere() {
        assert_eq!(
            scrub("cannot reach build-box-7 today", &["build-box-7"]),
            "cannot reach [host] today"
        );
    }
}
