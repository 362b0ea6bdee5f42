//! Email templates: one folder per email under `templates/emails/` with `subject.txt`,
//! `body.txt` and `body.html`, over the shared layouts in `templates/layouts/`. askama checks
//! them at compile time and escapes the HTML bodies.

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What kind of mail an email is, which decides who may still get it (`allows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailClass {
    /// What a person's own action asked for just now: a confirmation link, a receipt, an
    /// answer to their privacy request. Stopped only by a hard bounce (that address takes no
    /// mail); a complaint about our product email, or an unsubscribe before an erasure, does
    /// not stop us answering what they ask of us.
    Requested,
    /// Product news and invitations: only to the subscribed, with one-click unsubscribe and
    /// the postal address; stopped by any suppression.
    Product,
    /// Legal notices (a change of the privacy policy): to everyone we have a relationship
    /// with, unsubscribed or not, but stopped by any suppression (bounced, complained, erased).
    Notice,
    /// To the operator's own address: never stopped.
    Operator,
}

impl MailClass {
    /// Whether mail of this class goes to an address suppressed for `reason` (if any).
    pub fn allows(self, reason: Option<crate::suppression::Reason>) -> bool {
        use crate::suppression::Reason::*;
        match (self, reason) {
            (_, None) | (Self::Operator, _) => true,
            (Self::Requested, Some(reason)) => reason != Bounced,
            (Self::Product | Self::Notice, Some(_)) => false,
        }
    }
}

/// The paragraphs of an operator's text (separated by blank lines), for an HTML body.
pub fn paragraphs(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// An email's data, and how it renders.
pub trait EmailTemplate {
    /// The folder name under `templates/emails/`, recorded in the person's email history.
    const NAME: &'static str;
    const CLASS: MailClass;
    fn render(&self) -> Result<Rendered, askama::Error>;
}

/// Implements `EmailTemplate` for a struct from its template folder. The templates see the
/// struct as `m`.
///
/// ```ignore
/// email_template!(Welcome, "welcome", Product, "emails/welcome/subject.txt", …);
/// ```
#[macro_export]
macro_rules! email_template {
    ($ty:ident, $name:tt, $class:ident, $subject:tt, $text:tt, $html:tt) => {
        const _: () = {
            #[derive(::askama::Template)]
            #[template(path = $subject)]
            struct Subject<'a> {
                m: &'a $ty,
            }
            #[derive(::askama::Template)]
            #[template(path = $text)]
            struct Text<'a> {
                m: &'a $ty,
            }
            #[derive(::askama::Template)]
            #[template(path = $html)]
            struct Html<'a> {
                m: &'a $ty,
            }
            impl $crate::mail::EmailTemplate for $ty {
                const NAME: &'static str = $name;
                const CLASS: $crate::mail::MailClass = $crate::mail::MailClass::$class;
                fn render(&self) -> ::std::result::Result<$crate::mail::Rendered, ::askama::Error> {
                    use ::askama::Template as _;
                    // A subject is one line: a template's trailing newline must not fold a header.
                    let subject = Subject { m: self }.render()?;
                    Ok($crate::mail::Rendered {
                        subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
                        text: Text { m: self }.render()?,
                        html: Html { m: self }.render()?,
                    })
                }
            }
        };
    };
}

/// A note to the operator address (privacy reminders and the like).
#[derive(Debug, Clone)]
pub struct OperatorNotice {
    pub title: String,
    pub lines: Vec<String>,
}

crate::email_template!(
    OperatorNotice,
    "operator-notice",
    Operator,
    "emails/operator-notice/subject.txt",
    "emails/operator-notice/body.txt",
    "emails/operator-notice/body.html"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_stopped_by_exactly_the_suppressions_it_should_be() {
        use crate::suppression::Reason::{self, *};
        let reasons: [Option<Reason>; 4] =
            [None, Some(Unsubscribed), Some(Bounced), Some(Complained)];
        let allowed = |class: MailClass| reasons.map(|r| class.allows(r));
        assert_eq!(allowed(MailClass::Requested), [true, true, false, true]);
        assert_eq!(allowed(MailClass::Product), [true, false, false, false]);
        assert_eq!(allowed(MailClass::Notice), [true, false, false, false]);
        assert_eq!(allowed(MailClass::Operator), [true, true, true, true]);
    }

    #[test]
    fn operator_notice_renders_escaped_html_and_plain_text() {
        let r = OperatorNotice {
            title: "Request <b>due</b> in 3 days".into(),
            lines: vec!["Request 42 & friends".into()],
        }
        .render()
        .expect("renders");
        assert_eq!(r.subject, "[Pexper] Request <b>due</b> in 3 days");
        assert!(
            r.html
                .contains("Request &#60;b&#62;due&#60;/b&#62; in 3 days")
                || r.html.contains("Request &lt;b&gt;due&lt;/b&gt; in 3 days"),
            "{}",
            r.html
        );
        assert!(
            r.html.contains("42 &#38; friends") || r.html.contains("42 &amp; friends"),
            "{}",
            r.html
        );
        assert!(
            r.text.contains("Request <b>due</b> in 3 days\n"),
            "{}",
            r.text
        );
        assert!(r.text.contains("Request 42 & friends"), "{}", r.text);
        assert!(
            r.text.contains("Sent to the operator address"),
            "{}",
            r.text
        );
    }
}
