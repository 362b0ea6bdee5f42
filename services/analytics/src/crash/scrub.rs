//! Strings from crash reports: free text goes through the one scrubber
//! (`pexper_wire::scrub`), with the values the report itself says identify the machine;
//! short labels are kept only if made of safe characters.

/// Scrubs one string; `also` are values known to be identifying in this report (its hostname,
/// its device name), removed wherever they appear.
pub fn scrub(text: &str, also: &[&str]) -> String {
    let known: Vec<(&str, &str)> = also.iter().map(|value| (*value, "[host]")).collect();
    pexper_wire::scrub::scrub(text, &known)
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
