//! Output for people (aligned tables) and for scripts (`--json`).
//!
//! Much of what is shown was typed by strangers (support messages, request details, crash
//! types): every line printed goes through `say`, which shows control characters as escapes,
//! so a message cannot move the operator's cursor, retitle their window or write their
//! clipboard (an OSC 52 sequence) — in a table or in `--json`, whose encoder escapes C0 but
//! not DEL or the C1 controls (U+0080–U+009F, 8-bit CSI and OSC among them).

use std::fmt::Write as _;

use serde::Serialize;

/// Prints one line (it may hold line breaks and tabs), with every other control character
/// escaped as `\u001b` (inside a JSON string, where they can only be in `--json`, that is
/// the same character to a parser).
pub fn say(text: &str) {
    println!("{}", escape_controls(text));
}

/// The same, to standard error.
pub fn warn(text: &str) {
    eprintln!("{}", escape_controls(text));
}

fn escape_controls(text: &str) -> String {
    escape(text, |c| c == '\n' || c == '\t')
}

/// Escapes what a terminal would act on, or show otherwise than it is, but for what `keep`
/// allows: control characters (C0, DEL, C1), bidirectional overrides, isolates and marks
/// (they make text read differently from what it is: "Trojan Source"), and Unicode's line
/// and paragraph separators.
fn escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let invisible = matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        );
        if (c.is_control() || invisible) && !keep(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A table cell, on one line whatever it holds: a line break in a stranger's text must not
/// start a row of its own.
fn cell(text: &str) -> String {
    escape(text, |_| false)
}

/// Prints rows as an aligned table, or as a JSON array with `--json`.
pub fn rows<T: Serialize>(
    json: bool,
    headers: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) {
    if json {
        say(&serde_json::to_string_pretty(rows).expect("rows serialise"));
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| cells(row).iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: Vec<String>| {
        row.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    say(&line(headers.iter().map(|h| h.to_uppercase()).collect()));
    for row in cells {
        say(&line(row));
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

/// Prints one object: `key: value` lines, or a JSON object with `--json`.
pub fn object(json: bool, value: &serde_json::Value) {
    if json {
        say(&serde_json::to_string_pretty(value).expect("value serialises"));
        return;
    }
    if let Some(map) = value.as_object() {
        let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, v) in map {
            let shown = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // A value of several lines goes on indented, so that none of its lines can pass
            // for a `key  value` line of its own.
            let indent = format!("\n{:width$}  ", "");
            say(&format!("{k:<width$}  {}", shown.replace('\n', &indent)));
        }
    } else {
        say(&value.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_as_escapes_and_line_breaks_kept() {
        // OSC 52 (set the clipboard), 8-bit CSI, DEL; a line break and a tab stay.
        let typed = "hi\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{9b}2J\u{7f}\u{202e}\nnext\tline";
        assert_eq!(cell("one\ntwo\u{2028}three"), "one\\u000atwo\\u2028three");
        let shown = escape_controls(typed);
        assert_eq!(
            shown,
            "hi\\u001b]52;c;cm0gLXJmIH4=\\u0007\\u009b2J\\u007f\\u202e\nnext\tline"
        );
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        );
        // In JSON, the escape is the same character to a parser.
        let json = serde_json::to_string(&typed).expect("serialises");
        let escaped = escape_controls(&json);
        assert_eq!(
            serde_json::from_str::<String>(&escaped).expect("still JSON"),
            typed
        );
    }
}
