//! Sentry's envelope framing, parsed by hand (sentry-types' parser refuses unknown items, and
//! unknown items must never make us refuse an envelope):
//!
//! ```text
//! Envelope = HeaderLine { "\n" ItemHeaderLine "\n" Payload } [ "\n" ]
//! ```
//!
//! Each header is one line of JSON. An item's payload is `length` bytes when its header says
//! so, else it runs to the next newline or the end.

use serde::Deserialize;

#[derive(Debug, PartialEq, Eq)]
pub struct Item<'a> {
    pub kind: String,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the envelope header is not a JSON object")]
    Header,
    #[error("an item header is not a JSON object with a type")]
    ItemHeader,
    #[error("an item is shorter than its length")]
    Truncated,
}

#[derive(Deserialize)]
struct ItemHeader {
    #[serde(rename = "type")]
    kind: String,
    length: Option<usize>,
}

/// Splits `body` into its items (the envelope header is checked, then ignored: it can hold
/// `trace` and other data we do not keep).
pub fn parse(body: &[u8]) -> Result<Vec<Item<'_>>, FramingError> {
    let (header, mut rest) = split_line(body);
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(header)
        .map_err(|_| FramingError::Header)?;
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (line, after) = split_line(rest);
        if line.iter().all(u8::is_ascii_whitespace) {
            rest = after;
            continue; // Trailing newlines.
        }
        let header: ItemHeader =
            serde_json::from_slice(line).map_err(|_| FramingError::ItemHeader)?;
        let (payload, after) = match header.length {
            Some(n) => {
                if after.len() < n {
                    return Err(FramingError::Truncated);
                }
                let (payload, after) = after.split_at(n);
                (payload, after.strip_prefix(b"\n").unwrap_or(after))
            }
            None => split_line(after),
        };
        items.push(Item {
            kind: header.kind,
            payload,
        });
        rest = after;
    }
    Ok(items)
}

/// The bytes up to the first `\n`, and those after it.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(items: &[Item<'_>]) -> Vec<String> {
        items.iter().map(|i| i.kind.clone()).collect()
    }

    #[test]
    fn items_with_and_without_length_and_unknown_types_are_read() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n\
{\"type\":\"attachment\",\"length\":10}\n\xef\xbb\xbfHello\r\n\n\
{\"type\":\"event\",\"length\":41}\n{\"message\":\"hello world\",\"level\":\"error\"}\n\
{\"type\":\"something_new\"}\n{\"whatever\":1}\n\
{\"type\":\"session\"}\n{\"sid\":\"x\"}";
        let items = parse(body).expect("parses");
        assert_eq!(
            kinds(&items),
            ["attachment", "event", "something_new", "session"]
        );
        assert_eq!(
            items[1].payload,
            b"{\"message\":\"hello world\",\"level\":\"error\"}"
        );
        assert_eq!(items[3].payload, b"{\"sid\":\"x\"}");
    }

    #[test]
    fn an_empty_envelope_and_trailing_newlines_are_fine_and_garbage_is_not() {
        assert_eq!(parse(b"{}").expect("parses"), []);
        assert_eq!(parse(b"{}\n\n\n").expect("parses"), []);
        assert_eq!(parse(b"not json\n"), Err(FramingError::Header));
        assert_eq!(
            parse(b"{}\n{\"length\":2}\nab"),
            Err(FramingError::ItemHeader)
        );
        assert_eq!(
            parse(b"{}\n{\"type\":\"event\",\"length\":99}\nab"),
            Err(FramingError::Truncated)
        );
    }
}
