//! Personal data planted in analytics events and crash reports: none of it may reach a table
//! or a log line.

pub const EMAIL: &str = "alice.canary@example.org";
pub const IPV4: &str = "198.51.100.23";
pub const IPV6: &str = "2001:db8:85a3::8a2e:370:7334";
pub const LINUX_HOME: &str = "/home/alice/";
pub const MAC_HOME: &str = "/Users/alice/";
pub const WINDOWS_HOME: &str = r"C:\Users\Alice Smith\";
pub const API_KEY: &str = "sk-canary0123456789abcdefXYZ";
pub const CARD: &str = "4111 1111 1111 1111";
pub const HOSTNAME: &str = "alices-macbook-pro";
pub const RELEASE: &str = "pexper@9.9.9";

/// Every canary in one sentence, as an error message might carry them.
pub fn sentence() -> String {
    format!(
        "cannot sync {LINUX_HOME}notes.txt ({MAC_HOME}x, {WINDOWS_HOME}AppData\\x) for {EMAIL} \
         from {IPV4} / {IPV6} on {HOSTNAME} with {API_KEY}, card {CARD}"
    )
}

/// What must not be found, case-insensitively, in a dump or a log.
pub const NEEDLES: &[&str] = &[
    "alice",
    "198.51.100.23",
    // The IPv6 address in every textual form: compressed, in full, and the /64 a rate limiter
    // keys a client by.
    "8a2e:370:7334",
    "8a2e:0370:7334",
    "2001:db8:85a3",
    "2001:0db8:85a3",
    "sk-canary",
    "4111 1111 1111 1111",
    "4111111111111111",
    "macbook",
];

/// The needles found in `haystack`.
pub fn found(haystack: &str) -> Vec<&'static str> {
    let lower = haystack.to_lowercase();
    NEEDLES
        .iter()
        .copied()
        .filter(|n| lower.contains(n))
        .collect()
}
