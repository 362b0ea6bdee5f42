//! A letter to privacy@, read as the receiving server stored it: who sent it, when it
//! arrived, what it asks for and in which language, or why it is not a person's letter at all
//! (an auto-reply, a bounce, our own mail coming back). Nothing here touches the database or
//! the mailbox: the reader takes the `Letter` in as a request (issue 29).
//!
//! Only what the receiving server wrote is trusted for facts: the arrival time is its
//! topmost `Received` header, never the sender's `Date`; the DMARC verdict is its topmost
//! `Authentication-Results`, never one the sender put lower down. Either way, the emailed
//! verification link is what proves control of the address.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use time::OffsetDateTime;

use pexper_platform::crypto::sha256;
use pexper_platform::mail::bounces::header_values as headers;

use crate::request::Kind;

/// The most of a letter's text kept as the request's details (sealed under the person's key):
/// enough for any request, not a place to store attachments.
pub const MAX_TEXT: usize = 20_000;

/// A person's letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// What makes a letter delivered or read twice the same letter: the hash of its
    /// Message-ID with its sender and its text (so someone who learns a letter's Message-ID
    /// cannot make the real letter look like one read before), or of the whole message when
    /// it has no Message-ID.
    pub key: [u8; 32],
    /// Its Message-ID (without `<>`), for the acknowledgement's `In-Reply-To` and `References`.
    pub message_id: Option<String>,
    /// The Message-IDs it answers (`In-Reply-To`, then `References`; without `<>`): a reply
    /// to our acknowledgement names ours.
    pub replies_to: Vec<String>,
    /// The `From` address, as written (parsed and normalised by the intake).
    pub from: Option<String>,
    /// The receiving server's DMARC check failed for the sender's domain: taken in, marked.
    pub dmarc_failed: bool,
    /// The receiving server's DMARC check passed: the `From` is the sender's own, so we may
    /// quote its subject back and take it as the person's reply.
    pub dmarc_passed: bool,
    /// When the receiving server took it (its topmost `Received`); `None` if it wrote none.
    pub received_at: Option<OffsetDateTime>,
    pub subject: String,
    /// The text: the plain part, or the HTML part as text; at most `MAX_TEXT` characters.
    pub text: String,
    /// What it asks for; `None` when unclear (the operator classifies it).
    pub kind: Option<Kind>,
    /// The language it is written in, as far as its words tell (`en` when unclear).
    pub language: Language,
}

/// Why a message is not a person's letter: it gets no request and no reply (no mail loops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotALetter {
    /// An out-of-office or another automatic answer (`Auto-Submitted`, `X-Autoreply`, …).
    AutoReply,
    /// List or bulk mail (`Precedence: bulk|junk|list`, `List-Id`).
    Bulk,
    /// A delivery report or a complaint (`multipart/report`), or mail from a mailer daemon:
    /// the bounce mailbox's business.
    Report,
    /// Our own mail, come back (from our sending domain).
    Ours,
}

/// The languages of the EU's largest markets, whose words we recognise and in which an
/// acknowledgement can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    En,
    De,
    Fr,
    Es,
    It,
    Nl,
    Pl,
}

impl Language {
    pub const ALL: [Language; 7] = [
        Language::En,
        Language::De,
        Language::Fr,
        Language::Es,
        Language::It,
        Language::Nl,
        Language::Pl,
    ];

    pub fn parse(code: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.code() == code)
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::De => "de",
            Language::Fr => "fr",
            Language::Es => "es",
            Language::It => "it",
            Language::Nl => "nl",
            Language::Pl => "pl",
        }
    }
}

/// Reads `raw`. `our_domain` is the domain we send from: mail from it is ours, come back.
/// A message that does not parse as mail at all is still a letter, with no sender and no
/// kind: the operator sees it, nothing is skipped silently.
pub fn read(raw: &[u8], our_domain: &str) -> Result<Letter, NotALetter> {
    let key = sha256(raw);
    let Some(message) = MessageParser::default().parse(raw) else {
        return Ok(Letter {
            key,
            message_id: None,
            replies_to: Vec::new(),
            from: None,
            dmarc_failed: false,
            dmarc_passed: false,
            received_at: None,
            subject: String::new(),
            text: truncated(&String::from_utf8_lossy(raw)),
            kind: None,
            language: Language::En,
        });
    };
    if let Some(why) = not_a_letter(&message, our_domain) {
        return Err(why);
    }
    let subject = message.subject().unwrap_or_default().trim().to_owned();
    let text = truncated(&body(&message));
    let (kind, language) = classify(&subject, &text);
    let from = message
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .map(str::to_owned);
    let dmarc = dmarc_verdict(&message);
    Ok(Letter {
        key: match message.message_id() {
            Some(id) => sha256(
                [id, from.as_deref().unwrap_or_default(), &text]
                    .join("\0")
                    .as_bytes(),
            ),
            None => key,
        },
        message_id: message.message_id().map(str::to_owned),
        replies_to: [message.in_reply_to(), message.references()]
            .into_iter()
            .filter_map(|h| h.as_text_list())
            .flatten()
            .map(|id| id.trim_matches(['<', '>', ' ']).to_owned())
            .collect(),
        from,
        dmarc_failed: dmarc.as_deref() == Some("fail"),
        dmarc_passed: dmarc.as_deref() == Some("pass"),
        received_at: received_at(&message),
        subject,
        text,
        kind,
        language,
    })
}

fn truncated(text: &str) -> String {
    text.trim().chars().take(MAX_TEXT).collect()
}

fn not_a_letter(message: &Message<'_>, our_domain: &str) -> Option<NotALetter> {
    let first = |name: &str| {
        headers(message, name)
            .into_iter()
            .next()
            .map(|v| v.to_ascii_lowercase())
    };
    // RFC 3834: anything but `no` was sent by a machine.
    if first("Auto-Submitted").is_some_and(|v| !v.starts_with("no"))
        || ["X-Autoreply", "X-Autorespond", "X-Autoresponder"]
            .iter()
            .any(|h| first(h).is_some())
    {
        return Some(NotALetter::AutoReply);
    }
    if first("Precedence")
        .is_some_and(|v| ["bulk", "junk", "list", "auto_reply"].contains(&v.as_str()))
        || first("List-Id").is_some()
    {
        return Some(NotALetter::Bulk);
    }
    let is_report = message.parts[0].content_type().is_some_and(|t| {
        t.ctype().eq_ignore_ascii_case("multipart")
            && t.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let from = message
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let local = from.split('@').next().unwrap_or_default();
    // An empty envelope sender (`Return-Path: <>`) is a bounce's mark.
    if is_report
        || ["mailer-daemon", "postmaster"].contains(&local)
        || first("Return-Path").is_some_and(|v| v.trim() == "<>")
    {
        return Some(NotALetter::Report);
    }
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    if !our_domain.is_empty() && domain.eq_ignore_ascii_case(our_domain) {
        return Some(NotALetter::Ours);
    }
    None
}

/// The DMARC verdict (`pass`, `fail`, `none`, …) in the topmost `Authentication-Results`,
/// the receiving server's own; `None` when it gives none.
fn dmarc_verdict(message: &Message<'_>) -> Option<String> {
    let value = headers(message, "Authentication-Results")
        .into_iter()
        .next()?
        .to_ascii_lowercase();
    let (_, after) = value.split_once("dmarc=")?;
    Some(
        after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect(),
    )
}

/// The date of the topmost `Received` header: when our receiving server took the letter.
fn received_at(message: &Message<'_>) -> Option<OffsetDateTime> {
    let value = headers(message, "Received").into_iter().next()?;
    let date = value.rsplit_once(';')?.1.trim();
    let parsed = mail_parser::DateTime::parse_rfc822(date)?;
    OffsetDateTime::from_unix_timestamp(parsed.to_timestamp()).ok()
}

/// The letter's text: its plain part, else its HTML part as text, else nothing.
fn body(message: &Message<'_>) -> String {
    if let Some(text) = message.body_text(0) {
        return text.into_owned();
    }
    message
        .parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Html(html) => Some(mail_parser::decoders::html::html_to_text(html)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Words that ask for each right, in each language, lower-case; a word matches at the start
/// of a word of the letter (`löschen` matches `Löschung`'s stem `lösch`).
const WORDS: &[(Kind, Language, &[&str])] = &[
    (
        Kind::Deletion,
        Language::En,
        &[
            "delete",
            "deletion",
            "erase",
            "erasure",
            "remove my",
            "forget me",
        ],
    ),
    (
        Kind::Deletion,
        Language::De,
        &["lösch", "loesch", "entfern"],
    ),
    (
        Kind::Deletion,
        Language::Fr,
        &["supprim", "effac", "suppression"],
    ),
    (
        Kind::Deletion,
        Language::Es,
        &[
            "borrar",
            "borrado",
            "eliminar",
            "eliminación",
            "supresión",
            "suprimir",
        ],
    ),
    (
        Kind::Deletion,
        Language::It,
        &["cancellare", "cancellazione", "eliminare", "eliminazione"],
    ),
    (Kind::Deletion, Language::Nl, &["verwijder", "wissen"]),
    (
        Kind::Deletion,
        Language::Pl,
        &["usunąć", "usunięcie", "usuń", "usuniecie", "usunac"],
    ),
    (
        Kind::Access,
        Language::En,
        &[
            "access",
            "copy of",
            "what data",
            "what personal data",
            "subject access",
        ],
    ),
    (
        Kind::Access,
        Language::De,
        &["auskunft", "kopie", "welche daten"],
    ),
    (
        Kind::Access,
        Language::Fr,
        &["accès", "acces", "copie", "quelles données"],
    ),
    (
        Kind::Access,
        Language::Es,
        &["acceso", "copia", "qué datos"],
    ),
    (
        Kind::Access,
        Language::It,
        &["accesso", "copia", "quali dati"],
    ),
    (
        Kind::Access,
        Language::Nl,
        &["inzage", "kopie", "welke gegevens"],
    ),
    (
        Kind::Access,
        Language::Pl,
        &["dostęp", "dostep", "kopia", "kopię", "jakie dane"],
    ),
    (
        Kind::Portability,
        Language::En,
        &["portability", "portable", "machine-readable"],
    ),
    (
        Kind::Portability,
        Language::De,
        &[
            "übertragbarkeit",
            "datenübertragbarkeit",
            "uebertragbarkeit",
        ],
    ),
    (
        Kind::Portability,
        Language::Fr,
        &["portabilité", "portabilite"],
    ),
    (Kind::Portability, Language::Es, &["portabilidad"]),
    (
        Kind::Portability,
        Language::It,
        &["portabilità", "portabilita"],
    ),
    (
        Kind::Portability,
        Language::Nl,
        &["overdraagbaarheid", "dataportabiliteit"],
    ),
    (
        Kind::Portability,
        Language::Pl,
        &["przenoszenie", "przenoszenia"],
    ),
    (
        Kind::Correction,
        Language::En,
        &["correct", "rectif", "update my", "wrong"],
    ),
    (
        Kind::Correction,
        Language::De,
        &["berichtig", "korrigier", "falsch"],
    ),
    (Kind::Correction, Language::Fr, &["rectif", "corrig"]),
    (Kind::Correction, Language::Es, &["rectific", "corregir"]),
    (Kind::Correction, Language::It, &["rettific", "correggere"]),
    (
        Kind::Correction,
        Language::Nl,
        &["rectific", "corrigeren", "verbeter"],
    ),
    (Kind::Correction, Language::Pl, &["sprostow", "poprawi"]),
    (Kind::Restriction, Language::En, &["restrict"]),
    (
        Kind::Restriction,
        Language::De,
        &["einschränk", "einschraenk"],
    ),
    (Kind::Restriction, Language::Fr, &["limitation", "limiter"]),
    (
        Kind::Restriction,
        Language::Es,
        &["limitación", "limitacion", "limitar"],
    ),
    (
        Kind::Restriction,
        Language::It,
        &["limitazione", "limitare"],
    ),
    (Kind::Restriction, Language::Nl, &["beperking", "beperken"]),
    (
        Kind::Restriction,
        Language::Pl,
        &["ograniczeni", "ograniczyć"],
    ),
    (
        Kind::Objection,
        Language::En,
        &["object to", "objection", "i object"],
    ),
    (
        Kind::Objection,
        Language::De,
        &["widerspruch", "widersprech"],
    ),
    (
        Kind::Objection,
        Language::Fr,
        &["opposition", "m'oppose", "je m’oppose"],
    ),
    (
        Kind::Objection,
        Language::Es,
        &["oposición", "oposicion", "me opongo"],
    ),
    (
        Kind::Objection,
        Language::It,
        &["opposizione", "mi oppongo"],
    ),
    (Kind::Objection, Language::Nl, &["bezwaar"]),
    (Kind::Objection, Language::Pl, &["sprzeciw"]),
    (
        Kind::OptOutOfSale,
        Language::En,
        &[
            "do not sell",
            "don't sell",
            "opt out of sale",
            "opt-out of sale",
            "sale of my",
        ],
    ),
];

/// Words that say which language a letter is in, when the words for a right do not.
const LANGUAGE_WORDS: &[(Language, &[&str])] = &[
    (Language::En, &["the", "my", "please", "data", "and"]),
    (Language::De, &["ich", "meine", "bitte", "daten", "und"]),
    (Language::Fr, &["je", "mes", "données", "vous", "merci"]),
    (
        Language::Es,
        &["mis", "datos", "por favor", "gracias", "solicito"],
    ),
    (
        Language::It,
        &["miei", "dati", "per favore", "grazie", "chiedo"],
    ),
    (
        Language::Nl,
        &["mijn", "gegevens", "graag", "bedankt", "verzoek"],
    ),
    (Language::Pl, &["moje", "moich", "dane", "danych", "proszę"]),
];

/// The words of `text`, lower-case, for matching at word starts.
fn words(text: &str) -> String {
    format!(
        " {} ",
        text.to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Whether `needle` starts a word of `haystack` (as made by `words`).
fn starts_a_word(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        haystack[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric())
    })
}

/// The right a letter asks for, and its language. The subject counts twice: people name what
/// they want there. A tie between rights is unclear (`None`): the operator decides, with the
/// request already on the clock.
pub fn classify(subject: &str, text: &str) -> (Option<Kind>, Language) {
    let (subject, text) = (words(subject), words(text));
    let mut scores: Vec<(Kind, usize)> = Vec::new();
    let mut languages: Vec<(Language, usize)> = Vec::new();
    for (kind, language, needles) in WORDS {
        // German and Dutch join words: the stem of `Datenlöschung` is inside it.
        let found = |haystack: &str, needle: &str| match language {
            Language::De | Language::Nl => haystack.contains(needle),
            _ => starts_a_word(haystack, needle),
        };
        let n: usize = needles
            .iter()
            .map(|w| 2 * usize::from(found(&subject, w)) + usize::from(found(&text, w)))
            .sum();
        add(&mut scores, *kind, n);
        add(&mut languages, *language, n);
    }
    for (language, needles) in LANGUAGE_WORDS {
        let all = format!("{subject}{text}");
        let n = needles
            .iter()
            .filter(|w| all.contains(&format!(" {w} ")))
            .count();
        add(&mut languages, *language, n);
    }
    (best(&scores), best(&languages).unwrap_or(Language::En))
}

/// Adds `n` to `key`'s count.
fn add<K: PartialEq>(counts: &mut Vec<(K, usize)>, key: K, n: usize) {
    if n == 0 {
        return;
    }
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, total)) => *total += n,
        None => counts.push((key, n)),
    }
}

/// The key with the highest count, if no other has it too.
fn best<K: Copy>(counts: &[(K, usize)]) -> Option<K> {
    let top = counts.iter().map(|(_, n)| *n).max()?;
    let mut at_top = counts.iter().filter(|(_, n)| *n == top);
    let first = at_top.next()?.0;
    at_top.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "pexper.com";

    fn mail(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}")
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    const RECEIVED: &str = "Received: from mx.example.net (mx.example.net [192.0.2.1])\r\n\tby mail.pexper.com (Postfix) with ESMTPS id 4F2A1;\r\n\tSat, 5 Dec 2026 09:30:00 +0000\r\nReceived: from laptop by mx.example.net; Fri, 4 Dec 2026 23:59:00 -0800";

    #[test]
    fn a_plain_english_deletion_request_is_read_with_its_arrival_from_our_server() {
        let raw = mail(
            &format!(
                "{RECEIVED}\r\nAuthentication-Results: mail.pexper.com; dmarc=pass header.from=example.net\r\nFrom: Ann Example <ann@example.net>\r\nTo: privacy@pexper.com\r\nSubject: Please delete my data\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a1@example.net>"
            ),
            "Hello,\nplease delete my account and all my data.\nAnn",
        );
        let letter = read(&raw, OURS).expect("a letter");
        assert_eq!(letter.from.as_deref(), Some("ann@example.net"));
        assert_eq!(letter.kind, Some(Kind::Deletion));
        assert_eq!(letter.language, Language::En);
        assert!(!letter.dmarc_failed);
        assert_eq!(letter.message_id.as_deref(), Some("a1@example.net"));
        assert_eq!(
            letter.received_at,
            Some(time::macros::datetime!(2026-12-05 09:30:00 UTC)),
            "our server's Received, not the sender's Date"
        );
        assert!(letter.text.contains("all my data"));
    }

    #[test]
    fn a_german_access_request_in_quoted_printable_latin_1_is_understood() {
        let raw = mail(
            &format!(
                "{RECEIVED}\r\nFrom: =?ISO-8859-1?Q?J=FCrgen?= <juergen@example.de>\r\nSubject: =?ISO-8859-1?Q?Auskunftsersuchen_nach_Art._15_DSGVO?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
            ),
            "Sehr geehrte Damen und Herren,\n\nich bitte um Auskunft =FCber meine Daten und eine Kopie.\n\nMit freundlichen Gr=FC=DFen",
        );
        let letter = read(&raw, OURS).expect("a letter");
        assert_eq!(letter.kind, Some(Kind::Access));
        assert_eq!(letter.language, Language::De);
        assert!(letter.text.contains("über meine Daten"), "{}", letter.text);
    }

    #[test]
    fn an_html_only_letter_is_read_as_text() {
        let raw = mail(
            &format!(
                "{RECEIVED}\r\nFrom: marie@example.fr\r\nSubject: Demande\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8"
            ),
            "<html><body><p>Bonjour, je souhaite la <b>suppression</b> de mes donn&eacute;es.</p></body></html>",
        );
        let letter = read(&raw, OURS).expect("a letter");
        assert_eq!(letter.kind, Some(Kind::Deletion));
        assert_eq!(letter.language, Language::Fr);
        assert!(letter.text.contains("suppression"), "{}", letter.text);
        assert!(!letter.text.contains("<b>"));
    }

    #[test]
    fn each_language_s_words_for_deletion_and_access_are_understood() {
        for (subject, kind, language) in [
            ("Borrar mis datos", Kind::Deletion, Language::Es),
            ("Cancellare i miei dati", Kind::Deletion, Language::It),
            (
                "Verwijderen van mijn gegevens",
                Kind::Deletion,
                Language::Nl,
            ),
            ("Proszę usunąć moje dane", Kind::Deletion, Language::Pl),
            ("Datenlöschung", Kind::Deletion, Language::De),
            (
                "Solicitud de acceso a mis datos",
                Kind::Access,
                Language::Es,
            ),
            (
                "Richiesta di accesso ai miei dati",
                Kind::Access,
                Language::It,
            ),
            ("Verzoek om inzage", Kind::Access, Language::Nl),
            ("Prośba o dostęp do danych", Kind::Access, Language::Pl),
            (
                "Do not sell my personal information",
                Kind::OptOutOfSale,
                Language::En,
            ),
        ] {
            let (found, lang) = classify(subject, "");
            assert_eq!(found, Some(kind), "{subject}");
            assert_eq!(lang, language, "{subject}");
        }
    }

    #[test]
    fn an_unclear_letter_is_left_for_the_operator() {
        assert_eq!(classify("Question", "Hi, how do you use my data?").0, None);
        assert_eq!(
            classify("", "Delete my account, but first send me a copy of my data").0,
            None,
            "two rights at once: the operator decides"
        );
    }

    #[test]
    fn machines_bounces_lists_and_our_own_mail_are_not_letters() {
        let with = |extra: &str, from: &str| {
            read(
                &mail(
                    &format!("{RECEIVED}\r\nFrom: {from}\r\nSubject: Re: delete{extra}"),
                    "delete",
                ),
                OURS,
            )
        };
        assert_eq!(
            with("\r\nAuto-Submitted: auto-replied", "ann@example.net"),
            Err(NotALetter::AutoReply)
        );
        assert_eq!(
            with("\r\nX-Autoreply: yes", "ann@example.net"),
            Err(NotALetter::AutoReply)
        );
        assert_eq!(
            with("\r\nPrecedence: bulk", "news@example.net"),
            Err(NotALetter::Bulk)
        );
        assert_eq!(
            with("", "MAILER-DAEMON@mx.example.net"),
            Err(NotALetter::Report)
        );
        assert_eq!(with("", "privacy@pexper.com"), Err(NotALetter::Ours));
        assert!(with("\r\nAuto-Submitted: no", "ann@example.net").is_ok());
        let dsn = mail(
            &format!(
                "{RECEIVED}\r\nFrom: postmaster@mx.example.net\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b"
            ),
            "--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\nStatus: 5.1.1\n--b--",
        );
        assert_eq!(read(&dsn, OURS), Err(NotALetter::Report));
    }

    #[test]
    fn only_our_server_s_dmarc_verdict_counts_and_a_failed_one_is_marked() {
        let verdict = |results: &str| {
            read(
                &mail(
                    &format!("{RECEIVED}\r\n{results}\r\nFrom: ann@example.net\r\nSubject: delete"),
                    "x",
                ),
                OURS,
            )
            .expect("a letter")
        };
        let failed = |results: &str| {
            let letter = verdict(results);
            assert!(!(letter.dmarc_failed && letter.dmarc_passed));
            (letter.dmarc_failed, letter.dmarc_passed)
        };
        assert_eq!(
            failed(
                "Authentication-Results: mail.pexper.com; dmarc=fail (p=reject) header.from=example.net"
            ),
            (true, false)
        );
        // A sender cannot clear its own failure with a header of its own, lower down, nor
        // pass where our server said nothing.
        assert_eq!(
            failed(
                "Authentication-Results: mail.pexper.com; dmarc=fail\r\nAuthentication-Results: forged; dmarc=pass"
            ),
            (true, false)
        );
        assert_eq!(
            failed(
                "Authentication-Results: mail.pexper.com; dkim=pass\r\nAuthentication-Results: forged; dmarc=pass"
            ),
            (false, false)
        );
        assert_eq!(
            failed(
                "Authentication-Results: mail.pexper.com; dmarc=pass\r\nAuthentication-Results: forged; dmarc=fail"
            ),
            (false, true)
        );
        assert_eq!(
            failed("Authentication-Results: mail.pexper.com; dmarc=passed-not"),
            (false, false)
        );
    }

    #[test]
    fn the_same_letter_twice_has_one_key_and_a_letter_without_an_id_is_keyed_by_its_bytes() {
        let one = mail(
            &format!(
                "{RECEIVED}\r\nFrom: ann@example.net\r\nMessage-ID: <same@example.net>\r\nSubject: delete"
            ),
            "x",
        );
        let again = mail(
            &format!(
                "Received: by relay; Sat, 5 Dec 2026 09:31:00 +0000\r\n{RECEIVED}\r\nFrom: ann@example.net\r\nMessage-ID: <same@example.net>\r\nSubject: delete"
            ),
            "x",
        );
        assert_eq!(
            read(&one, OURS).expect("a letter").key,
            read(&again, OURS).expect("a letter").key
        );
        // Someone who learned the Message-ID cannot make another letter look like it.
        let impostor = mail(
            &format!(
                "{RECEIVED}\r\nFrom: mallory@example.org\r\nMessage-ID: <same@example.net>\r\nSubject: delete"
            ),
            "x",
        );
        let other_words = mail(
            &format!(
                "{RECEIVED}\r\nFrom: ann@example.net\r\nMessage-ID: <same@example.net>\r\nSubject: delete"
            ),
            "y",
        );
        for different in [impostor, other_words] {
            assert_ne!(
                read(&one, OURS).expect("a letter").key,
                read(&different, OURS).expect("a letter").key
            );
        }
        let anonymous = mail(
            &format!("{RECEIVED}\r\nFrom: ann@example.net\r\nSubject: delete"),
            "x",
        );
        assert_eq!(
            read(&anonymous, OURS).expect("a letter").key,
            sha256(&anonymous)
        );
    }

    #[test]
    fn a_message_that_is_not_mail_is_still_a_letter_for_the_operator() {
        let letter = read(b"\xff\xfe garbage without headers", OURS).expect("a letter");
        assert_eq!(letter.kind, None);
        assert_eq!(letter.from, None);
    }
}
