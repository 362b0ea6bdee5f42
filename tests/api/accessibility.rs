//! Pages everyone can use: every page a person can meet, in each of its states, and every
//! email we send, checked by axe-core (WCAG 2.0 and 2.1, A and AA) in a real headless
//! Chromium, in the light and the dark colour scheme; a browser's refused or throttled form
//! post answered with a page; and a sign-in done with the keyboard alone.
//!
//! axe-core is pinned by `tests/a11y/package-lock.json`; `npm ci --prefix tests/a11y` installs
//! it (`.ci/run` does).

use std::path::PathBuf;

use pexper_tests::browser::{Browser, keys};
use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE};
use serde_json::{Value, json};

use crate::accounts::{PASSWORD, Session, form, open_account, signed_in};
use crate::waitlist::WAIT;

/// WCAG 2.0 and 2.1, levels A and AA: what the law across the EU (EN 301 549) and the ADA's
/// rule for the web ask for.
const TAGS: [&str; 4] = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

/// axe-core's script, or `None` (with a note) when it is not installed and not required.
fn axe_source() -> Option<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("a11y/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(_) => {
            assert!(
                std::env::var("PEXPER_REQUIRE_BROWSER").is_err(),
                "{} is missing: run `npm ci --prefix tests/a11y`",
                path.display()
            );
            eprintln!("skipped: run `npm ci --prefix tests/a11y` to check pages with axe-core");
            None
        }
    }
}

/// A browser with axe-core, showing one page after another at our server's address.
struct Checker {
    browser: Browser,
    axe: String,
}

impl Checker {
    async fn start(app: &TestApp) -> Option<Self> {
        let axe = axe_source()?;
        let browser = Browser::start().await?;
        // Every page is written into a page of ours, so its links resolve against our server.
        browser.goto(&app.url("/account/sign-in")).await;
        Some(Self { browser, axe })
    }

    /// Emulates `prefers-color-scheme: scheme`, and checks that the page sees it.
    async fn scheme(&self, scheme: &str) {
        self.browser
            .cdp(
                "Emulation.setEmulatedMedia",
                json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
            )
            .await;
        let seen = self
            .browser
            .script(&format!(
                "return matchMedia('(prefers-color-scheme: {scheme})').matches"
            ))
            .await;
        assert_eq!(seen, json!(true), "the page sees the {scheme} scheme");
    }

    /// Shows `html` as the document, with axe-core in it.
    async fn show(&self, html: &str) {
        self.browser
            .script_with(
                "document.open(); document.write(arguments[0]); document.close();",
                json!([html]),
            )
            .await;
        let loaded = self.browser.script("return typeof axe").await;
        if loaded != json!("object") {
            self.browser
                .script_with("(0, eval)(arguments[0]);", json!([self.axe]))
                .await;
        }
    }

    /// axe-core's WCAG A/AA violations on the document shown, one line each with the elements.
    async fn violations(&self) -> Vec<String> {
        let found = self
            .browser
            .script_async(
                r#"
                const done = arguments[arguments.length - 1];
                axe.run(document, {runOnly: {type: "tag", values: arguments[0]}, resultTypes: ["violations"]})
                    .then(r => done(r.violations.map(v => v.id + " (" + v.help + "): "
                        + v.nodes.map(n => n.target.join(" ") + " " + (n.failureSummary || "").replace(/\s+/g, " ")).join(" | "))))
                    .catch(e => done(["axe failed: " + e]));
                "#,
                json!([TAGS]),
            )
            .await;
        let mut found: Vec<String> = serde_json::from_value(found).unwrap();
        found.extend(self.faint_field_edges().await);
        found
    }

    /// WCAG 1.4.11, which axe-core does not check: a text field's edge must stand out from
    /// what is around it at 3:1 at least, or people with low vision cannot find the field.
    async fn faint_field_edges(&self) -> Vec<String> {
        let found = self
            .browser
            .script(
                r#"
                const rgb = c => c.match(/[\d.]+/g).map(Number);
                const luminance = c => {
                    const [r, g, b] = rgb(c).slice(0, 3).map(v => {
                        v /= 255;
                        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
                    });
                    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
                };
                const ratio = (a, b) => {
                    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
                    return (hi + 0.05) / (lo + 0.05);
                };
                const behind = el => {
                    for (let e = el.parentElement; e; e = e.parentElement) {
                        const c = getComputedStyle(e).backgroundColor;
                        if (rgb(c).length < 4 || rgb(c)[3] > 0) return c;
                    }
                    return "rgb(255, 255, 255)";
                };
                const faint = [];
                for (const input of document.querySelectorAll("input:not([type=hidden])")) {
                    const edge = getComputedStyle(input).borderTopColor;
                    const r = ratio(edge, behind(input));
                    if (r < 3) faint.push("non-text-contrast (a field's edge must stand out at 3:1): #" + input.id + " " + edge + " is " + r.toFixed(2) + ":1");
                }
                return faint;
                "#,
            )
            .await;
        serde_json::from_value(found).unwrap()
    }
}

/// A form's fields, as posted.
type Fields<'a> = &'a [(&'a str, &'a str)];

/// Pages to check: each state's name and its HTML, as the server answered it.
#[derive(Default)]
struct Pages(Vec<(String, String)>);

impl Pages {
    /// Keeps `res` (which must be an HTML page with `status`) as the state `name`.
    async fn keep(&mut self, name: &str, res: reqwest::Response, status: u16) {
        assert_eq!(res.status(), status, "{name}");
        let content_type = res.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{name}: {content_type}"
        );
        self.0.push((name.to_owned(), res.text().await.unwrap()));
    }

    async fn get(&mut self, app: &TestApp, name: &str, url: &str, status: u16) {
        let res = app
            .client
            .get(url)
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        self.keep(name, res, status).await;
    }

    /// A form post from our own pages, without a session.
    async fn post(
        &mut self,
        app: &TestApp,
        name: &str,
        url: &str,
        fields: &[(&str, &str)],
        status: u16,
    ) {
        self.post_from(app.address.clone(), app, name, url, fields, status)
            .await;
    }

    /// A form post from the website's pages (the waitlist's and support's forms).
    async fn post_from_site(
        &mut self,
        app: &TestApp,
        name: &str,
        url: &str,
        fields: &[(&str, &str)],
        status: u16,
    ) {
        self.post_from(
            "https://pexper.com".to_owned(),
            app,
            name,
            url,
            fields,
            status,
        )
        .await;
    }

    async fn post_from(
        &mut self,
        origin: String,
        app: &TestApp,
        name: &str,
        url: &str,
        fields: &[(&str, &str)],
        status: u16,
    ) {
        let res = app
            .client
            .post(url)
            .header("origin", origin)
            .form(fields)
            .send()
            .await
            .unwrap();
        self.keep(name, res, status).await;
    }
}

async fn account_page(app: &TestApp, session: &Session) -> reqwest::Response {
    app.client
        .get(app.url("/account"))
        .header(COOKIE, &session.cookie)
        .send()
        .await
        .unwrap()
}

/// The newest mail to `to` whose subject says `subject`.
async fn mail(app: &TestApp, to: &str, subject: &str) -> smtp::ReceivedMail {
    eventually(WAIT, subject, || async {
        app.smtp.received().into_iter().rev().find(|m| {
            m.to.iter().any(|t| t.contains(to)) && m.header("Subject").unwrap().contains(subject)
        })
    })
    .await
}

/// Every page state a person can reach, from the server as it answers them.
async fn every_page_state(app: &TestApp) -> Pages {
    let mut pages = Pages::default();
    let url = |path: &str| app.url(path);

    // The account's forms, empty and with each error a person can make.
    for path in [
        "/account/sign-up",
        "/account/sign-in",
        "/account/password-reset",
    ] {
        pages.get(app, path, &url(path), 200).await;
    }
    let posts: [(&str, &str, Fields, u16); 7] = [
        (
            "sign-up: not an address",
            "/v1/accounts",
            &[("email", "not an address")],
            422,
        ),
        (
            "sign-up: sent",
            "/v1/accounts",
            &[("email", "new.person@example.com")],
            202,
        ),
        (
            "sign-in: not an address",
            "/v1/sessions",
            &[("email", "x"), ("password", "p")],
            422,
        ),
        (
            "sign-in: wrong password",
            "/v1/sessions",
            &[
                ("email", "nobody@example.com"),
                ("password", "not the password"),
            ],
            401,
        ),
        (
            "sign-in: no fields",
            "/v1/sessions",
            &[("nothing", "")],
            422,
        ),
        (
            "reset: not an address",
            "/v1/accounts/password-reset",
            &[("email", "x")],
            422,
        ),
        (
            "reset: sent",
            "/v1/accounts/password-reset",
            &[("email", "nobody@example.com")],
            202,
        ),
    ];
    for (name, path, fields, status) in posts {
        pages.post(app, name, &url(path), fields, status).await;
    }

    // The verification link's page: the form, a weak password, done, used.
    let email = "reader@example.com";
    assert_eq!(
        app.client
            .post(url("/v1/accounts"))
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let link = mail(app, email, "open your Pexper account")
        .await
        .link(&url("/v1/accounts/verify?token="));
    pages.get(app, "verify link", &link, 200).await;
    pages
        .post(
            app,
            "verify link: weak password",
            &link,
            &[("password", "password")],
            422,
        )
        .await;
    pages
        .post(
            app,
            "verify link: open",
            &link,
            &[("password", PASSWORD)],
            200,
        )
        .await;
    pages.get(app, "verify link: used", &link, 400).await;

    // The reset link's page.
    pages
        .post(
            app,
            "reset: sent to an account",
            &url("/v1/accounts/password-reset"),
            &[("email", email)],
            202,
        )
        .await;
    let link = mail(app, email, "Choose a new password")
        .await
        .link(&url("/v1/accounts/password-reset/confirm?token="));
    pages.get(app, "reset link", &link, 200).await;
    pages
        .post(
            app,
            "reset link: weak password",
            &link,
            &[("password", "short")],
            422,
        )
        .await;
    pages
        .post(
            app,
            "reset link: done",
            &link,
            &[("password", PASSWORD)],
            200,
        )
        .await;
    pages.get(app, "reset link: used", &link, 400).await;

    // The account page with a purchase, and the answer of each of its forms.
    let checkout = Checkout::new(email);
    let res = stripe::deliver(
        &app.client,
        &app.address,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!(res.status(), 200);
    let session = signed_in(app, email, PASSWORD).await;
    pages
        .keep("account", account_page(app, &session).await, 200)
        .await;
    let view: Value = app
        .client
        .get(url("/v1/account"))
        .header(COOKIE, &session.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let purchase = view["purchases"][0]["id"]
        .as_str()
        .expect("the purchase")
        .to_owned();
    let posts: [(&str, &str, Fields, u16); 7] = [
        (
            "account: licence resent",
            "/account/licences/resend",
            &[("purchase", &purchase)],
            200,
        ),
        (
            "account: no such licence",
            "/account/licences/resend",
            &[("purchase", "00000000-0000-0000-0000-000000000000")],
            404,
        ),
        (
            "account: others signed out",
            "/account/sessions/end-others",
            &[],
            200,
        ),
        (
            "account: wrong current password",
            "/account/password",
            &[
                ("password", "not my password"),
                ("new_password", "seven quiet rivers bend past old mills"),
            ],
            401,
        ),
        (
            "account: weak new password",
            "/account/password",
            &[("password", PASSWORD), ("new_password", "password1234")],
            422,
        ),
        (
            "account: delete not typed",
            "/account/delete",
            &[("confirm", "no")],
            422,
        ),
        (
            "account: form too long",
            "/account/delete",
            &[("confirm", &"d".repeat(40))],
            422,
        ),
    ];
    for (name, path, fields, status) in posts {
        pages
            .keep(name, form(app, &session, path, fields).await, status)
            .await;
    }
    // Ten minutes after the password was typed, export and deletion ask for it again.
    sqlx::query("UPDATE account_session SET reauthenticated_at = now() - interval '1 hour'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    pages
        .keep(
            "account: confirm first",
            form(app, &session, "/account/export", &[]).await,
            403,
        )
        .await;
    pages
        .keep(
            "account: not my password",
            form(
                app,
                &session,
                "/account/confirm-password",
                &[("password", "not my password")],
            )
            .await,
            401,
        )
        .await;
    pages
        .keep(
            "account: password confirmed",
            form(
                app,
                &session,
                "/account/confirm-password",
                &[("password", PASSWORD)],
            )
            .await,
            200,
        )
        .await;

    // The waitlist: the pages after its form on the website, and behind its emailed links.
    let joiner = "joiner@example.com";
    pages
        .post_from_site(
            app,
            "waitlist: joined (empty ref)",
            &url("/v1/waitlist"),
            &[("email", joiner), ("ref", "")],
            202,
        )
        .await;
    pages
        .post_from_site(
            app,
            "waitlist: not an address",
            &url("/v1/waitlist"),
            &[("email", "joiner")],
            422,
        )
        .await;
    pages
        .post_from_site(
            app,
            "waitlist: bad ref",
            &url("/v1/waitlist"),
            &[("email", joiner), ("ref", "not a ref!")],
            422,
        )
        .await;
    let link = mail(app, joiner, "Confirm")
        .await
        .link(&url("/v1/waitlist/confirm?token="));
    pages.get(app, "waitlist: confirm link", &link, 200).await;
    pages
        .post_from_site(app, "waitlist: confirmed", &link, &[], 200)
        .await;
    pages
        .get(app, "waitlist: used confirm link", &link, 400)
        .await;
    let unsubscribe = mail(app, joiner, "You're #")
        .await
        .header("List-Unsubscribe")
        .unwrap();
    let unsubscribe = unsubscribe
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    pages.get(app, "unsubscribe link", &unsubscribe, 200).await;
    pages
        .post(
            app,
            "unsubscribed",
            &unsubscribe,
            &[("List-Unsubscribe", "One-Click")],
            200,
        )
        .await;
    pages
        .get(
            app,
            "unsubscribe: bad link",
            &url("/v1/unsubscribe?token=nope"),
            400,
        )
        .await;

    // Support's form on the website.
    pages
        .post_from_site(
            app,
            "support: received",
            &url("/v1/support"),
            &[("email", joiner), ("message", "Hello")],
            202,
        )
        .await;
    pages
        .post_from_site(
            app,
            "support: empty message",
            &url("/v1/support"),
            &[("email", joiner), ("message", " ")],
            422,
        )
        .await;

    // A privacy request's verification link: the form, confirmed, used, unknown.
    let res = app
        .client
        .post(url("/v1/privacy/requests"))
        .json(&json!({"email": joiner, "kind": "access"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let link = mail(app, joiner, "privacy request")
        .await
        .link(&url("/v1/privacy/verify?token="));
    pages.get(app, "privacy link", &link, 200).await;
    pages
        .post(app, "privacy link: confirmed", &link, &[], 200)
        .await;
    pages.get(app, "privacy link: used", &link, 400).await;
    pages
        .get(
            app,
            "privacy link: unknown",
            &url("/v1/privacy/verify?token=nope"),
            400,
        )
        .await;

    // Refused and throttled: each error page.
    let res = app
        .client
        .post(url("/v1/sessions"))
        .header("origin", "https://evil.example")
        .form(&[("email", email), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    pages.keep("error: another site", res, 403).await;
    let res = app
        .client
        .post(url("/v1/waitlist"))
        .form(&[("email", "x".repeat(2 * 1024 * 1024))])
        .send()
        .await
        .unwrap();
    pages.keep("error: too large", res, 413).await;
    pages
        .get(app, "error: no such page", &url("/nowhere"), 404)
        .await;
    let too_many = loop {
        let res = app
            .client
            .post(url("/v1/sessions"))
            .header("origin", &app.address)
            .form(&[("email", email), ("password", "a wrong guess")])
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            break res;
        }
        assert_eq!(res.status(), 401);
    };
    pages.keep("error: too many sign-ins", too_many, 429).await;

    // Deletion, last: it ends the session.
    pages
        .keep(
            "account: deleting",
            form(app, &session, "/account/delete", &[("confirm", "delete")]).await,
            200,
        )
        .await;
    pages
}

/// The emails no page state sends: an operator's answers and notices, the product mail, a
/// known address signing up again, acknowledgements held back by a spent budget.
async fn the_other_emails(app: &TestApp) {
    use crate::privacy::{cli, sweep_once_more};
    let dir = tempdir::TempDir::new();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // An account's address signs up again. An account of its own: the page states' reader
    // deletes theirs, and whether its erasure has run by now depends on the job worker.
    let again = "again@example.com";
    open_account(app, again).await;
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .json(&json!({"email": again}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // A confirmed, subscribed member: invited, and sent the product news and a policy change.
    let page = crate::waitlist::join(app, "member@example.com", json!({})).await;
    assert!(page.contains("?ref="), "confirmed");
    app.queue_drained().await;
    cli(app, &["waitlist", "invite", "--count", "5", "--json"]);
    crate::product_email::broadcast(&app.cli_vars(), dir.path(), "News from Pexper", false);
    let effective = (time::OffsetDateTime::now_utc().date() + time::Duration::days(45)).to_string();
    let summary = file("summary.txt", "What changes.");
    cli(
        app,
        &[
            "policy",
            "announce",
            "--version",
            "2027-05",
            "--effective",
            &effective,
            "--summary-file",
            &summary,
            "--json",
        ],
    );
    // Support answered by the operator.
    app.queue_drained().await;
    let reference = cli(app, &["support", "list", "--json"])[0]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = file("reply.txt", "Here is how.");
    cli(
        app,
        &[
            "support",
            "reply",
            &reference,
            "--body-file",
            &reply,
            "--json",
        ],
    );
    // A correction: verified (the operator is told), then completed (the person is told).
    let asker = "asker@example.com";
    let res = app
        .client
        .post(app.url("/v1/privacy/requests"))
        .json(&json!({"email": asker, "kind": "correction", "details": "My name"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let link = mail(app, asker, "please confirm")
        .await
        .link(&app.url("/v1/privacy/verify?token="));
    assert_eq!(app.client.post(&link).send().await.unwrap().status(), 200);
    let id = cli(app, &["privacy", "list", "--status", "verified", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cli(
        app,
        &["privacy", "complete", &id, "--note", "Corrected.", "--json"],
    );
    // Three requests spend an address's budget; the fourth's acknowledgement is held, and sent.
    let held = "held@example.com";
    for kind in ["access", "objection", "restriction", "deletion"] {
        let res = app
            .client
            .post(app.url("/v1/privacy/requests"))
            .json(&json!({"email": held, "kind": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    sweep_once_more(app).await;
    mail(app, held, "please confirm them").await;
    // A letter to privacy@, in German: answered as a reply, in German.
    let read = crate::inbox::read_letter(
        app,
        "Authentication-Results: mx.pexper.com; dmarc=pass header.from=example.de\r\n\
         From: brief@example.de\r\nTo: privacy@pexper.com\r\nSubject: Bitte meine Daten loeschen\r\n\
         Message-ID: <brief@example.de>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Bitte l\u{f6}schen Sie mein Konto und alle meine Daten.\r\n",
    );
    assert_eq!(read["letters"]["requests"], 1, "{read}");
    mail(app, "brief@example.de", "Re: Bitte meine Daten loeschen").await;
    app.queue_drained().await;
}

/// Whether `subject` is what the subject template `template` renders to: its text around
/// the `{{ … }}` values, in order; either branch of an `{% if %}`.
fn renders_to(template: &str, subject: &str) -> bool {
    let template = template.trim();
    let branches: Vec<String> = match template.split_once("{% if ") {
        None => vec![template.to_owned()],
        Some((before, rest)) => {
            let (_, rest) = rest.split_once("%}").unwrap();
            let (yes, rest) = rest.split_once("{% else %}").unwrap();
            let (no, after) = rest.split_once("{% endif %}").unwrap();
            vec![
                format!("{before}{yes}{after}"),
                format!("{before}{no}{after}"),
            ]
        }
    };
    branches.iter().any(|branch| {
        let pieces: Vec<&str> = branch
            .split("{{")
            .enumerate()
            .map(|(i, p)| {
                if i == 0 {
                    p
                } else {
                    p.split_once("}}").unwrap().1
                }
            })
            .collect();
        let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
        if pieces.len() == 1 {
            return subject == first;
        }
        if subject.len() < first.len() + last.len()
            || !subject.starts_with(first)
            || !subject.ends_with(last)
        {
            return false;
        }
        let mut rest = &subject[first.len()..subject.len() - last.len()];
        for piece in &pieces[1..pieces.len() - 1] {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    })
}

/// The email templates (`templates/emails/*`) that no subject of `sent` came from.
fn templates_not_sent(sent: &[String]) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates/emails");
    let mut missing: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|template| {
            let subject = std::fs::read_to_string(template.join("subject.txt")).unwrap();
            !sent.iter().any(|s| renders_to(&subject, s))
        })
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    missing.sort();
    missing
}

#[test]
fn a_subject_is_matched_to_the_template_it_came_from() {
    let welcome = "You're #{{ m.position }} on the Pexper waitlist";
    assert!(renders_to(welcome, "You're #12 on the Pexper waitlist"));
    assert!(!renders_to(
        welcome,
        "Confirm your place on the Pexper waitlist"
    ));
    assert!(renders_to("{{ m.subject }}", "Anything"));
    let outcome = "{% if m.completed %}Your privacy request is complete{% else %}About your privacy request{% endif %}";
    assert!(renders_to(outcome, "About your privacy request"));
    assert!(!renders_to(outcome, "About your privacy request, again"));
    assert!(!renders_to(
        "We received your privacy request: please confirm it",
        "We received your privacy requests: please confirm them"
    ));
}

#[tokio::test]
async fn every_page_state_and_every_email_meets_wcag_2_1_aa_in_light_and_dark() {
    let app = spawn_app().await;
    let Some(checker) = Checker::start(&app).await else {
        return;
    };
    let pages = every_page_state(&app).await;
    the_other_emails(&app).await;
    let emails: Vec<(String, String)> = app
        .smtp
        .received()
        .iter()
        .map(|m| {
            (
                format!("email: {}", m.header("Subject").unwrap()),
                m.part("text/html").expect("an HTML part"),
            )
        })
        .collect();
    let subjects: Vec<String> = emails
        .iter()
        .map(|(name, _)| name["email: ".len()..].to_owned())
        .collect();
    // `product-update` renders to any subject: the broadcast's must be there itself.
    assert!(
        subjects.iter().any(|s| s == "News from Pexper"),
        "{subjects:?}"
    );
    assert_eq!(
        templates_not_sent(&subjects),
        Vec::<String>::new(),
        "every email template is checked"
    );

    eprintln!(
        "checking {} page states and {} emails, in two schemes",
        pages.0.len(),
        emails.len()
    );
    let mut failures = Vec::new();
    for scheme in ["light", "dark"] {
        checker.scheme(scheme).await;
        for (name, html) in pages.0.iter().chain(&emails) {
            checker.show(html).await;
            for violation in checker.violations().await {
                failures.push(format!("{name} ({scheme}): {violation}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} WCAG violations:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // On a phone's 320 px the account page, tables and all, is no wider than the screen.
    checker
        .browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            // Not `mobile`: a phone's browser would widen its viewport to fit a wider page.
            json!({"width": 320, "height": 640, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    for name in ["account", "account: password confirmed"] {
        let html = &pages.0.iter().find(|(n, _)| n == name).unwrap().1;
        checker.show(html).await;
        let width = checker
            .browser
            .script("return [document.documentElement.scrollWidth, innerWidth]")
            .await;
        assert_eq!(
            width[1],
            json!(320),
            "{name}: the phone's width is emulated"
        );
        assert!(
            width[0].as_u64().unwrap() <= 320,
            "{name} at 320 px is {} px wide",
            width[0]
        );
    }
    checker
        .browser
        .cdp("Emulation.clearDeviceMetricsOverride", json!({}))
        .await;

    // The check sees what it should: the sign-in page with its links too faint, its fields'
    // edges as faint as they once were, and a field without its label fails it.
    let sign_in = &pages
        .0
        .iter()
        .find(|(name, _)| name == "/account/sign-in")
        .unwrap()
        .1;
    let broken = sign_in
        .replace(
            "</style>",
            "  nav.links a { color: #b0b0b0; } input { border-color: #b5b5ae; }\n</style>",
        )
        .replace("<label for=\"password\">Password</label>", "");
    checker.scheme("light").await;
    checker.show(&broken).await;
    let found = checker.violations().await;
    for rule in ["color-contrast", "label", "non-text-contrast"] {
        assert!(
            found.iter().any(|v| v.starts_with(rule)),
            "axe misses {rule}: {found:?}"
        );
    }
}

/// The browser's view of a page: its title, its one heading, and where its links go.
async fn page_outline(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let content_type = res.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/html"),
        "{status}: {content_type}"
    );
    (status, res.text().await.unwrap())
}

fn between<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let start = html
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in {html}"))
        + open.len();
    let end = start + html[start..].find(close).unwrap();
    &html[start..end]
}

#[tokio::test]
async fn a_browser_s_refused_or_throttled_form_post_gets_a_page_that_says_what_to_do_and_links_back()
 {
    let defaults = AppOptions::default();
    let app = spawn_app_with(AppOptions {
        http: pexper_platform::http::HttpOptions {
            burst: 3,
            replenish: std::time::Duration::from_secs(30),
            ..defaults.http.clone()
        },
        ..defaults
    })
    .await;
    let url = |path: &str| app.url(path);

    // From another site: 403, with the way back to our own form.
    let res = app
        .client
        .post(url("/v1/accounts"))
        .header("origin", "https://evil.example")
        .form(&[("email", "a@example.com")])
        .send()
        .await
        .unwrap();
    let (status, html) = page_outline(res).await;
    assert_eq!(status, 403);
    assert_eq!(
        between(&html, "<title>", "</title>"),
        "This form came from another website — Pexper"
    );
    assert!(between(&html, "<h1", "</h1>").contains("This form came from another website"));
    assert!(html.contains("href=\"/account/sign-up\""), "{html}");

    // Sent as a file upload where a plain form is expected: 415.
    let res = app
        .client
        .post(url("/v1/sessions"))
        .header(CONTENT_TYPE, "multipart/form-data; boundary=b")
        .body("--b\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@example.com\r\n--b--\r\n")
        .send()
        .await
        .unwrap();
    let (status, html) = page_outline(res).await;
    assert_eq!(status, 415);
    assert!(html.contains("href=\"/account/sign-in\""), "{html}");

    // Larger than the waitlist form takes: 413, back to the website where its form is.
    let res = app
        .client
        .post(url("/v1/waitlist"))
        .form(&[("email", "x".repeat(2 * 1024 * 1024))])
        .send()
        .await
        .unwrap();
    let (status, html) = page_outline(res).await;
    assert_eq!(status, 413);
    assert!(html.contains("href=\"https://pexper.com\""), "{html}");

    // Over the per-client limit: 429 with Retry-After, and the wait in words.
    let res = loop {
        let res = app
            .client
            .post(url("/v1/accounts/password-reset"))
            .header("origin", &app.address)
            .form(&[("email", "a@example.com")])
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            break res;
        }
    };
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    let (_, html) = page_outline(res).await;
    assert!(
        html.contains(&format!("try again in {wait} second")),
        "{html}"
    );
    assert!(html.contains("href=\"/account/password-reset\""), "{html}");

    // An emailed link's page, opened while limited: back to the link itself, token and all;
    // a path spelled to look like another site's gets the website instead.
    for (path, back) in [
        (
            "/v1/privacy/verify?token=abc&x=1",
            "/v1/privacy/verify?token=abc",
        ),
        ("//evil.example/x?token=abc", "https://pexper.com"),
    ] {
        let res = app
            .client
            .get(url(path))
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        let (status, html) = page_outline(res).await;
        assert!(status == 429 || status == 404, "{path}: {status}");
        assert!(html.contains(&format!("href=\"{back}\"")), "{path}: {html}");
    }

    // A script gets the same refusal as JSON.
    let res = app
        .client
        .post(url("/v1/accounts/password-reset"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn a_person_signs_in_with_the_keyboard_alone_and_errors_take_the_focus() {
    let app = spawn_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let email = "keys@example.com";
    open_account(&app, email).await;
    let focused = || async {
        browser
            .script("const e = document.activeElement; return e.id || e.tagName")
            .await
    };
    browser.goto(&app.url("/account/sign-in")).await;
    // From the top of the page: Tab to the address, type; Tab to the password, type a wrong
    // one; Enter sends the form.
    browser.press(keys::TAB).await;
    assert_eq!(focused().await, json!("email"));
    browser.press(email).await;
    browser.press(keys::TAB).await;
    assert_eq!(focused().await, json!("password"));
    browser.press("not the password").await;
    browser.press(keys::ENTER).await;
    browser
        .wait_for_text("#password-error", "do not match")
        .await;
    // The answer puts the focus on the field the error is about, which says so.
    assert_eq!(focused().await, json!("password"));
    let described = browser
        .script("const e = document.activeElement; return [e.getAttribute('aria-invalid'), e.getAttribute('aria-describedby')]")
        .await;
    assert_eq!(described, json!(["true", "password-error"]));
    let title = browser.script("return document.title").await;
    assert!(title.as_str().unwrap().starts_with("Error: "), "{title}");
    browser.press(PASSWORD).await;
    browser.press(keys::ENTER).await;
    browser.wait_for_text("#address", email).await;
    assert!(browser.current_url().await.ends_with("/account"));

    // On the account page a form's answer stands in its own section and takes the focus: a
    // success is a status, a wrong password an error at its field.
    let role_of_focused = || async {
        browser
            .script("const e = document.activeElement; return [e.id, e.getAttribute('role'), e.closest('section') && e.closest('section').getAttribute('aria-labelledby')]")
            .await
    };
    browser.click("#end-others").await;
    browser
        .wait_for_text("#notice", "Every other browser")
        .await;
    assert_eq!(
        role_of_focused().await,
        json!(["notice", "status", "sessions-heading"])
    );
    browser.fill("#current-password", "not my password").await;
    browser
        .fill("#new-password", "seven quiet rivers bend past old mills")
        .await;
    browser
        .click("form[action='/account/password'] button")
        .await;
    browser
        .wait_for_text("#current-password-error", "not your password")
        .await;
    assert_eq!(focused().await, json!("current-password"));
    let title = browser.script("return document.title").await;
    assert!(title.as_str().unwrap().starts_with("Error: "), "{title}");
    // Ten minutes on, the export asks for the password first: a problem with the form, an
    // alert in its section.
    sqlx::query("UPDATE account_session SET reauthenticated_at = now() - interval '1 hour'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    browser.click("#export").await;
    browser
        .wait_for_text("#notice", "confirm your password first")
        .await;
    assert_eq!(
        role_of_focused().await,
        json!(["notice", "alert", "data-heading"])
    );
}
