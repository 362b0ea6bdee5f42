//! The waitlist, black-box: signups over HTTP (JSON and form posts), the confirmation email
//! over a real SMTP server, confirmation pages, places and referrals, and concurrency.

use std::time::Duration;

use pexper_tests::*;
use serde_json::{Value, json};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn signup(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/waitlist"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Signs up and confirms `email`; returns the confirmation page's HTML.
pub(crate) async fn join(app: &TestApp, email: &str, extra: Value) -> String {
    let mut body = json!({ "email": email });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    assert_eq!(signup(app, body).await.status(), 202);
    let recipient = format!("<{email}>");
    let confirm = eventually(WAIT, "the confirmation email", || async {
        app.smtp.received().into_iter().find(|m| {
            m.to.contains(&recipient) && m.header("Subject").unwrap().starts_with("Confirm")
        })
    })
    .await;
    let url = confirm.link(&app.url("/v1/waitlist/confirm?token="));
    let res = app.client.post(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

#[tokio::test]
async fn signup_sends_a_confirmation_whose_link_shows_the_place_in_line() {
    let app = spawn_app().await;
    let res = signup(
        &app,
        json!({"email": "  Ada@Example.COM ", "source": "homepage"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "pending_confirmation"})
    );

    let mail = app.smtp.wait_for(1, WAIT).await;
    let confirm = &mail[0];
    assert_eq!(confirm.to, vec!["<ada@example.com>"]);
    assert_eq!(
        confirm.header("Subject").unwrap(),
        "Confirm your place on the Pexper waitlist"
    );
    assert!(
        confirm
            .part("text/html")
            .unwrap()
            .contains("Confirm my place")
    );
    // The confirmation is transactional: no List-Unsubscribe, but the footer links to the page.
    assert!(confirm.header("List-Unsubscribe").is_none());
    assert!(confirm.link(&app.url("/v1/unsubscribe?token=")).len() > 40);

    let url = confirm.link(&app.url("/v1/waitlist/confirm?token="));
    // Opening the link (as a mail scanner does) shows a button and changes nothing.
    for _ in 0..2 {
        let res = app.client.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        assert!(res.text().await.unwrap().contains("id=\"confirm\""));
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM waitlist_entry WHERE status = 'pending'")
            .await,
        1,
        "a GET confirms nothing"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM waitlist_token WHERE used_at IS NULL")
            .await,
        1
    );
    let res = app.client.post(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let page = res.text().await.unwrap();
    assert!(page.contains("id=\"position\">#1<"), "{page}");
    assert!(page.contains("https://pexper.com/?ref="), "{page}");

    // The welcome email is product email: one-click unsubscribe headers (RFC 8058).
    let mail = app.smtp.wait_for(2, WAIT).await;
    let welcome = &mail[1];
    assert_eq!(
        welcome.header("Subject").unwrap(),
        "You're #1 on the Pexper waitlist"
    );
    let list = welcome.header("List-Unsubscribe").unwrap();
    assert!(
        list.starts_with(&format!("<{}", app.url("/v1/unsubscribe?token="))),
        "{list}"
    );
    assert_eq!(
        welcome.header("List-Unsubscribe-Post").unwrap(),
        "List-Unsubscribe=One-Click"
    );
    // No tracking: no images, no rewritten links.
    assert!(!welcome.part("text/html").unwrap().contains("<img"));

    // The link is single-use; an unknown or missing token gets the same friendly page, on
    // the page and from the button.
    for bad in [
        url.clone(),
        app.url("/v1/waitlist/confirm?token=forged"),
        app.url("/v1/waitlist/confirm"),
    ] {
        for res in [
            app.client.get(&bad).send().await.unwrap(),
            app.client.post(&bad).send().await.unwrap(),
        ] {
            assert_eq!(res.status(), 400, "{bad}");
            assert!(
                res.text()
                    .await
                    .unwrap()
                    .contains("This link does not work any more")
            );
        }
    }
}

#[tokio::test]
async fn repeat_signups_answer_byte_identically_and_mail_at_most_once_per_ten_minutes() {
    let app = spawn_app().await;
    let new = signup(&app, json!({"email": "grace@example.com"})).await;
    let (status, headers, body) = (
        new.status(),
        new.headers().clone(),
        new.bytes().await.unwrap(),
    );
    app.smtp.wait_for(1, WAIT).await;
    for variant in ["GRACE@example.com", "  grace@EXAMPLE.com\t"] {
        let again = signup(&app, json!({"email": variant})).await;
        assert_eq!(again.status(), status);
        assert_eq!(
            again.headers().get("content-type"),
            headers.get("content-type")
        );
        assert_eq!(again.bytes().await.unwrap(), body, "{variant}");
    }
    app.queue_drained().await;
    assert_eq!(
        app.smtp.received().len(),
        1,
        "one email for three signups within 10 minutes"
    );
    let people: i64 = sqlx::query_scalar("SELECT count(*) FROM person")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(people, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_gets_three_contact_emails_a_day_and_no_fourth() {
    // The contact budget (`take_request_mail`): the waitlist's confirmation and support's
    // acknowledgements, three a day together, whoever typed the address.
    let app = spawn_app().await;
    let email = "contact.budget@example.net";
    assert_eq!(signup(&app, json!({"email": email})).await.status(), 202);
    app.smtp.wait_for(1, WAIT).await;
    for n in 1..=3 {
        let res = app
            .client
            .post(app.url("/v1/support"))
            .json(&json!({"email": email, "message": format!("Question {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "every request is taken, mailed or not");
    }
    app.queue_drained().await;
    let subjects: Vec<String> = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.to.contains(&format!("<{email}>")))
        .map(|m| m.header("Subject").unwrap())
        .collect();
    assert_eq!(
        subjects.len(),
        3,
        "the confirmation and two acknowledgements: {subjects:?}"
    );
    assert!(subjects[0].contains("Confirm your place"), "{subjects:?}");
    assert_eq!(app.count("support_request").await, 3);
}

#[tokio::test]
async fn invalid_addresses_get_422_and_a_filled_honeypot_stores_and_sends_nothing() {
    let app = spawn_app().await;
    for bad in ["", "not-an-email", "a@b", "a@@example.com"] {
        let res = signup(&app, json!({"email": bad})).await;
        assert_eq!(res.status(), 422, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_email");
    }
    let res = signup(
        &app,
        json!({"email": "bot@example.com", "website": "http://spam.example"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "pending_confirmation"})
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT (SELECT count(*) FROM person) + (SELECT count(*) FROM job)")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    // Email is only ever sent by a job: with none queued, none can go out.
    assert_eq!(rows, 0, "nothing stored, nothing queued");
    assert!(app.smtp.received().is_empty());
}

#[tokio::test]
async fn source_is_lower_cased_and_a_source_or_ref_outside_the_alphabet_is_refused_by_name() {
    let app = spawn_app().await;
    // The first signup a newcomer tried answered 500: capitals passed the check, not the table's.
    let res = signup(
        &app,
        json!({"email": "new.user@example.com", "source": "Homepage", "ref": "AbC-_9"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let form = |body: &'static str| {
        app.client
            .post(app.url("/v1/waitlist"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(
        form("email=web%40example.com&source=Web")
            .await
            .unwrap()
            .status(),
        202
    );
    let sources: Vec<String> =
        sqlx::query_scalar("SELECT source FROM waitlist_entry ORDER BY source")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(sources, ["homepage", "web"]);

    let long = "a".repeat(33);
    for (field, value, code) in [
        ("source", "two words", "invalid_source"),
        ("source", long.as_str(), "invalid_source"),
        ("source", "caf\u{e9}", "invalid_source"),
        ("source", "x\u{0}", "invalid_source"),
        ("ref", "../etc", "invalid_ref"),
    ] {
        let res = signup(&app, json!({"email": "x@example.com", field: value})).await;
        assert_eq!(res.status(), 422, "{field}={value:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{field}={value:?}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "the message names the field: {body}"
        );
    }
    let page = form("email=x%40example.com&source=no+spaces")
        .await
        .unwrap();
    assert_eq!(page.status(), 422);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("open the page again and send the form"),
        "a hidden field changed: nothing the person typed to fix"
    );
    let garbled = form("website=").await.unwrap();
    assert_eq!(garbled.status(), 422, "a form without an address");
    assert!(
        garbled.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(app.count("person").await, 2, "nothing refused was stored");
    // Empty is the same as absent: a form's hidden field left empty.
    for field in ["source", "ref"] {
        let res = signup(&app, json!({"email": "x@example.com", field: ""})).await;
        assert_eq!(res.status(), 202, "{field} empty");
    }
}

#[tokio::test]
async fn form_posts_are_accepted_only_from_allowed_origins() {
    let app = spawn_app().await;
    let post = |origin: Option<&'static str>, site: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/v1/waitlist"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("email=form%40example.com&website=");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        req.send()
    };
    let ok = post(Some("https://pexper.com"), Some("cross-site"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(ok.text().await.unwrap().contains("Check your inbox"));

    for (origin, site) in [
        (Some("https://evil.example"), None),
        (None, Some("cross-site")),
    ] {
        let res = post(origin, site).await.unwrap();
        assert_eq!(res.status(), 403, "{origin:?} {site:?}");
        let page = res.text().await.unwrap();
        assert!(
            page.contains("This form came from another website"),
            "{page}"
        );
    }
    let invalid = app
        .client
        .post(app.url("/v1/waitlist"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://pexper.com")
        .body("email=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);
    assert!(
        invalid
            .text()
            .await
            .unwrap()
            .contains("does not look right")
    );
}

#[tokio::test]
async fn a_form_post_goes_to_the_configured_thank_you_page() {
    let app = spawn_app_with(AppOptions {
        vars: vec![(
            "PEXPER_WAITLIST_THANK_YOU_URL",
            "https://pexper.com/thanks".into(),
        )],
        ..AppOptions::default()
    })
    .await;
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=thanks%40example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://pexper.com/thanks");
}

#[tokio::test]
async fn each_confirmed_referral_moves_the_referrer_up() {
    let app = spawn_app_with(AppOptions {
        vars: vec![("PEXPER_REFERRAL_BUMP", "2".into())],
        ..AppOptions::default()
    })
    .await;
    assert!(
        join(&app, "first@example.com", json!({}))
            .await
            .contains("#1<")
    );
    assert!(
        join(&app, "second@example.com", json!({}))
            .await
            .contains("#2<")
    );
    let third = join(&app, "third@example.com", json!({})).await;
    assert!(third.contains("#3<"), "{third}");
    let code = third
        .split("?ref=")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    // A friend of the third joins with the link and confirms: the third moves up 2 places.
    let friend = join(&app, "friend@example.com", json!({ "ref": code })).await;
    assert!(friend.contains("#4<"), "{friend}");
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let positions: Vec<(String, i64)> = {
        let mut out = Vec::new();
        for email in [
            "first@example.com",
            "second@example.com",
            "third@example.com",
            "friend@example.com",
        ] {
            let e = pexper_platform::address::EmailAddress::parse(email).unwrap();
            let id = pexper_platform::person::find(&mut conn, &app.platform.keyring, &e)
                .await
                .unwrap()
                .unwrap();
            let p = pexper_waitlist::position(&mut conn, id, 2)
                .await
                .unwrap()
                .unwrap();
            out.push((email.to_owned(), p));
        }
        out
    };
    assert_eq!(
        positions.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        vec![2, 3, 1, 4],
        "{positions:?}"
    );
}

#[tokio::test]
async fn the_database_holds_no_address_in_clear_after_signups() {
    let app = spawn_app().await;
    join(&app, "dump.canary@example.com", json!({})).await;
    signup(&app, json!({"email": "pending.canary@example.org"})).await;
    app.smtp.wait_for(3, WAIT).await;
    app.queue_drained().await;
    let dump = app.db.dump();
    assert!(dump.contains("COPY public.waitlist_entry"));
    for needle in ["dump.canary", "pending.canary", "example.org"] {
        assert!(!dump.contains(needle), "{needle} in the dump");
    }
}

#[tokio::test]
async fn a_burst_of_signups_from_one_client_meets_429() {
    let app = spawn_app_with(AppOptions {
        http: pexper_platform::http::HttpOptions::default(),
        ..AppOptions::default()
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(
            signup(&app, json!({"email": format!("burst{i}@example.com")}))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 202);
}

#[tokio::test]
async fn no_log_line_holds_an_address_or_a_token() {
    let server = ServerProcess::start("trace").await;
    let (base, smtp) = (server.base.clone(), server.smtp.clone());
    let client = reqwest::Client::new();
    let address = "log.canary.person@example.com";
    let res = client
        .post(format!("{base}/v1/waitlist"))
        .json(&json!({"email": address}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let invalid = client
        .post(format!("{base}/v1/waitlist"))
        .json(&json!({"email": "bad.canary@@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);
    let mail = smtp.wait_for(1, WAIT).await;
    let confirm = mail[0].link(&format!("{base}/v1/waitlist/confirm?token="));
    let unsubscribe = mail[0].link(&format!("{base}/v1/unsubscribe?token="));
    assert_eq!(client.get(&confirm).send().await.unwrap().status(), 200);
    assert_eq!(client.post(&confirm).send().await.unwrap().status(), 200);
    smtp.wait_for(2, WAIT).await;
    assert_eq!(
        client
            .post(&unsubscribe)
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let log = server.stop().await;
    assert!(log.contains("signup queued"), "the log is captured: {log}");
    let confirm_token = confirm.split("token=").nth(1).unwrap();
    let unsubscribe_token = unsubscribe.split("token=").nth(1).unwrap();
    for needle in [
        "log.canary",
        "bad.canary",
        confirm_token,
        unsubscribe_token,
        "127.0.0.1:",
    ] {
        let hit = log
            .lines()
            .find(|l| l.contains(needle) && !l.contains("listening"));
        assert!(hit.is_none(), "{needle} in a log line: {hit:?}");
    }
}

#[tokio::test]
async fn the_confirm_and_unsubscribe_pages_work_in_a_real_browser() {
    let app = spawn_app().await;
    let Some(browser) = browser::Browser::start().await else {
        return;
    };
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");

    assert_eq!(
        signup(&app, json!({"email": "browser@example.com"}))
            .await
            .status(),
        202
    );
    let mail = app.smtp.wait_for(1, WAIT).await;
    let confirm = mail[0].link(&app.url("/v1/waitlist/confirm?token="));
    browser.goto(&confirm).await;
    assert!(
        browser
            .screenshot(&shots.join("waitlist-confirm.png"))
            .await
            > 5_000
    );
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM waitlist_entry")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap()
    };
    assert_eq!(
        status().await,
        "pending",
        "opening the link confirmed nothing"
    );
    browser.click("#confirm").await;
    assert_eq!(browser.text("#position").await, "#1");
    assert_eq!(status().await, "confirmed", "the button confirmed");
    assert!(
        browser
            .text("#referral-link")
            .await
            .starts_with("https://pexper.com/?ref=")
    );
    assert!(
        browser
            .screenshot(&shots.join("waitlist-confirmed.png"))
            .await
            > 5_000
    );

    let mail = app.smtp.wait_for(2, WAIT).await;
    let header = mail[1].header("List-Unsubscribe").unwrap();
    let unsubscribe = header.trim_start_matches('<').trim_end_matches('>');
    browser.goto(unsubscribe).await;
    assert!(browser.screenshot(&shots.join("unsubscribe.png")).await > 5_000);
    let subscribed = || async {
        sqlx::query_scalar::<_, bool>("SELECT subscribed FROM waitlist_entry")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap()
    };
    assert!(subscribed().await, "opening the page changed nothing");
    browser.click("#unsubscribe").await;
    assert_eq!(browser.text("#done").await, "You're unsubscribed");
    assert!(browser.screenshot(&shots.join("unsubscribed.png")).await > 5_000);
    assert!(!subscribed().await, "the button unsubscribed");

    let profile = browser.profile();
    assert!(
        !browser::processes_naming(&profile).is_empty(),
        "Chromium runs with its profile named on its command line"
    );
    drop(browser);
    eventually(Duration::from_secs(30), "Chromium to be gone", || async {
        browser::processes_naming(&profile).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_expired_confirmation_link_gets_a_friendly_page_and_confirms_nothing() {
    let app = spawn_app().await;
    signup(&app, json!({"email": "late@example.com"})).await;
    let mail = app.smtp.wait_for(1, WAIT).await;
    let url = mail[0].link(&app.url("/v1/waitlist/confirm?token="));
    sqlx::query("UPDATE waitlist_token SET expires_at = now() - interval '1 second'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    for res in [
        app.client.get(&url).send().await.unwrap(),
        app.client.post(&url).send().await.unwrap(),
    ] {
        assert_eq!(res.status(), 400);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(res.text().await.unwrap().contains("sign up again"));
    }
    let status: String = sqlx::query_scalar("SELECT status FROM waitlist_entry")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_signups_of_one_address_make_one_entry_and_one_email() {
    let app = spawn_app().await;
    // Five addresses, each signed up sixteen times at once, written two ways that normalise
    // alike: the race between looking an address up and inserting it is run many times.
    let addresses: Vec<String> = (0..5).map(|i| format!("twice{i}@example.com")).collect();
    for address in &addresses {
        let sends = (0..16).map(|i| {
            let (client, url) = (app.client.clone(), app.url("/v1/waitlist"));
            let email = if i % 2 == 0 {
                address.to_uppercase()
            } else {
                format!(" {address} ")
            };
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({ "email": email }))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        });
        for status in join_all(sends).await {
            assert_eq!(status, 202);
        }
    }
    app.queue_drained().await;
    assert_eq!(app.count("person").await, 5);
    assert_eq!(app.count("waitlist_entry").await, 5);
    let mails = app.smtp.received();
    for address in &addresses {
        let to = vec![format!("<{address}>")];
        assert_eq!(
            mails.iter().filter(|m| m.to == to).count(),
            1,
            "one confirmation to {address}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_confirmation_link_pressed_many_times_at_once_confirms_once() {
    let app = spawn_app().await;
    assert_eq!(
        signup(&app, json!({"email": "eager@example.com"}))
            .await
            .status(),
        202
    );
    let mail = app.smtp.wait_for(1, WAIT).await;
    let url = mail[0].link(&app.url("/v1/waitlist/confirm?token="));
    let presses = (0..8).map(|_| {
        let (client, url) = (app.client.clone(), url.clone());
        tokio::spawn(async move { client.post(url).send().await.unwrap().status().as_u16() })
    });
    let mut statuses = join_all(presses).await;
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 400, 400, 400, 400, 400, 400, 400],
        "one press confirms"
    );
    app.queue_drained().await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM waitlist_entry WHERE confirm_seq IS NOT NULL")
            .await,
        1
    );
    let welcomes = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.header("Subject").unwrap().starts_with("You're #"))
        .count();
    assert_eq!(welcomes, 1, "one welcome email");
}

/// The waitlist's routes without its jobs: what a signup wrote stays as it was written.
struct SignupsOnly;

impl pexper_platform::Service for SignupsOnly {
    fn name(&self) -> &'static str {
        "waitlist"
    }

    fn routes(&self) -> utoipa_axum::router::OpenApiRouter<pexper_platform::Platform> {
        pexper_platform::Service::routes(&pexper_waitlist::Waitlist)
    }
}

/// Signups that arrive while others are being stored go together (`pexper_platform::batch`):
/// one statement and one commit for many, each signup's person, entry and job in the same
/// one, and each answered only once it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signups_arriving_together_are_committed_together_each_with_its_job() {
    let app = spawn_app_with(AppOptions {
        services: vec![std::sync::Arc::new(SignupsOnly)],
        ..AppOptions::default()
    })
    .await;
    // The first signups' statements wait for this lock, so the rest arrive while they do.
    let other = app.db.pool().await;
    let lock = TableLock::take(&other, "person").await;
    let sends: Vec<_> = (0..32)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/v1/waitlist"));
            tokio::spawn(async move {
                let body = json!({ "email": format!("together{i}@example.com") });
                client.post(url).json(&body).send().await.unwrap().status()
            })
        })
        .collect();
    lock.until_someone_waits(&other).await;
    let foreground = app.platform.foreground.clone();
    eventually(WAIT, "all 32 signups in flight", || {
        let in_flight = foreground.in_flight();
        async move { (in_flight == 32).then_some(()) }
    })
    .await;
    // They are in flight from their first byte; give the last ones time to reach the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count("waitlist_entry").await, 0, "nothing answered yet");
    lock.release().await;
    for status in join_all(sends).await {
        assert_eq!(status, 202);
    }

    // Answered means stored: every signup is there the moment the last answer is in.
    assert_eq!(app.count("waitlist_entry").await, 32);
    let transactions = app
        .scalar("SELECT count(DISTINCT xmin::text) FROM waitlist_entry")
        .await;
    assert!(
        transactions <= 8,
        "32 signups in {transactions} transactions"
    );
    let with_their_job = app
        .scalar(
            "SELECT count(*) FROM waitlist_entry e
             JOIN person p ON p.id = e.person_id AND p.xmin::text = e.xmin::text
             JOIN job j ON j.person_id = e.person_id AND j.xmin::text = e.xmin::text
             WHERE j.kind = 'waitlist.signup_mail'",
        )
        .await;
    assert_eq!(with_their_job, 32);
}

/// A new address's confirmation is decided by its signup (the budget taken, the entry marked,
/// the token's hash stored), and its job only reads; an address known before (here from a
/// support request) is decided by its job. Either way: a first attempt the relay refuses for
/// now (451) is followed by one that sends a link that works, and the day's contact budget
/// pays once for the confirmation, not once per attempt. The new address's decision is the
/// signup's own transaction's (its person, entry and token written together), and the job's
/// attempt wrote none of them.
#[tokio::test]
async fn a_confirmation_refused_for_now_is_sent_again_with_a_working_link_and_paid_for_once() {
    let app = spawn_app().await;
    let known = "known.before@example.net";
    let res = app
        .client
        .post(app.url("/v1/support"))
        .json(&json!({"email": known, "message": "Is there a Linux build?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    app.smtp.wait_for(1, WAIT).await;
    app.queue_drained().await;
    app.smtp.reject_transiently(Some("@example.net"));
    for address in ["new.here@example.net", known] {
        assert_eq!(signup(&app, json!({"email": address})).await.status(), 202);
    }
    refused_for_now(&app, 2).await;
    let written_with_the_person: bool = sqlx::query_scalar(
        "SELECT bool_and(e.xmin = p.xmin AND t.xmin = p.xmin)
         FROM person p JOIN waitlist_entry e ON e.person_id = p.id
         JOIN waitlist_token t ON t.person_id = p.id
         WHERE NOT EXISTS (SELECT 1 FROM support_request r WHERE r.person_id = p.id)",
    )
    .fetch_one(&app.platform.pool)
    .await
    .unwrap();
    assert!(written_with_the_person);
    retry_now(&app).await;
    app.queue_drained().await;
    // The known address's budget paid for its acknowledgement too.
    for (address, budget_spent) in [("new.here@example.net", 1), (known, 2)] {
        let recipient = format!("<{address}>");
        let confirmations: Vec<_> = app
            .smtp
            .received()
            .into_iter()
            .filter(|m| m.to.contains(&recipient))
            .filter(|m| m.header("Subject").unwrap().starts_with("Confirm"))
            .collect();
        assert_eq!(confirmations.len(), 1, "{address}");
        let url = confirmations[0].link(&app.url("/v1/waitlist/confirm?token="));
        assert_eq!(app.client.post(&url).send().await.unwrap().status(), 200);
        let mut conn = app.platform.pool.acquire().await.unwrap();
        let email = pexper_platform::address::EmailAddress::parse(address).unwrap();
        let person = pexper_platform::person::find(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap()
            .unwrap();
        let (status, spent): (String, i32) = sqlx::query_as(
            "SELECT e.status, p.request_mail_count
             FROM waitlist_entry e JOIN person p ON p.id = e.person_id WHERE p.id = $1",
        )
        .bind(person)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(status, "confirmed", "{address}");
        assert_eq!(spent, budget_spent, "{address}: its contact emails today");
    }
}

/// Waits until `n` signup email jobs have had an attempt refused for now (the relay's
/// `reject_transiently`), holding each back from its next attempt as soon as it waits for it,
/// so that what the test changes next is not raced by a retry.
async fn refused_for_now(app: &TestApp, n: i64) {
    eventually(WAIT, "attempts refused", || async {
        sqlx::query(
            "UPDATE job SET run_at = now() + interval '1 hour'
             WHERE kind = 'waitlist.signup_mail' AND status = 'queued' AND attempts >= 1",
        )
        .execute(&app.platform.pool)
        .await
        .unwrap();
        let held = app
            .scalar(
                "SELECT count(*) FROM job WHERE kind = 'waitlist.signup_mail'
                 AND status = 'queued' AND run_at > now() + interval '30 minutes'",
            )
            .await;
        (held == n).then_some(())
    })
    .await;
}

/// The relay takes mail again, and the jobs waiting for their next attempt run now.
async fn retry_now(app: &TestApp) {
    app.smtp.reject_transiently(None);
    sqlx::query("UPDATE job SET run_at = now() WHERE status = 'queued'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
}

async fn execute(app: &TestApp, sql: &'static str) {
    sqlx::query(sql).execute(&app.platform.pool).await.unwrap();
}

/// Ten minutes between signup emails count from when one was sent, not from the signup that
/// asked for it: when the queue is behind (here: the first email waits for a relay that
/// refused it for now, and its signup is made to look 11 minutes old), a later signup sends
/// nothing while the first email is still to go, nor just after it went.
#[tokio::test]
async fn ten_minutes_between_signup_emails_count_from_the_sending_when_the_queue_is_behind() {
    let app = spawn_app().await;
    let address = json!({"email": "behind@example.net"});
    let back_dated =
        "UPDATE waitlist_entry SET last_signup_mail_at = now() - interval '11 minutes'";
    app.smtp.reject_transiently(Some("behind@"));
    assert_eq!(signup(&app, address.clone()).await.status(), 202);
    refused_for_now(&app, 1).await;
    execute(&app, back_dated).await;
    assert_eq!(signup(&app, address.clone()).await.status(), 202);
    // The second signup's job ran, and found the first email still to go: it is done.
    eventually(WAIT, "the second signup's job run", || async {
        let waiting = app
            .scalar("SELECT count(*) FROM job WHERE attempts = 0 OR status = 'running'")
            .await;
        (waiting == 0).then_some(())
    })
    .await;
    assert_eq!(app.count("job").await, 1, "the second signup sent nothing");
    retry_now(&app).await;
    app.smtp.wait_for(1, WAIT).await;
    app.queue_drained().await;
    execute(&app, back_dated).await;
    assert_eq!(signup(&app, address).await.status(), 202);
    app.queue_drained().await;
    // (Not the budget: a retry after midnight rightly pays the new day's.)
    assert_eq!(app.smtp.received().len(), 1);
}

/// A signup email job that runs on a later UTC day than its signup (a queue that was behind at
/// midnight, or a retry) pays for its email from that day's budget: with the day's three spent
/// already, it sends nothing. And a confirmation whose link expired meanwhile goes out with
/// the link renewed, whether decided today or on an earlier day.
#[tokio::test]
async fn a_signup_email_sent_on_a_later_day_pays_that_day_and_carries_a_live_link() {
    let app = spawn_app().await;
    app.smtp.reject_transiently(Some("@example.net"));
    let addresses = [
        "spent@example.net",
        "late@example.net",
        "expired@example.net",
    ];
    for address in addresses {
        assert_eq!(signup(&app, json!({"email": address})).await.status(), 202);
    }
    refused_for_now(&app, 3).await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let mut people = Vec::new();
    for address in addresses {
        let email = pexper_platform::address::EmailAddress::parse(address).unwrap();
        let person = pexper_platform::person::find(&mut conn, &app.platform.keyring, &email)
            .await
            .unwrap()
            .unwrap();
        people.push(person);
    }
    let [spent, late, _] = people[..] else {
        unreachable!()
    };
    // The first two were decided (and paid for) yesterday; today, three contact emails went
    // to the first already. Every link has expired.
    sqlx::query(
        "UPDATE waitlist_entry SET last_signup_mail_at = now() - interval '1 day'
         WHERE person_id = ANY ($1)",
    )
    .bind([spent, late])
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("UPDATE person SET request_mail_day = request_mail_day - 1 WHERE id = $1;")
        .bind(late)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE person SET request_mail_count = 3 WHERE id = $1")
        .bind(spent)
        .execute(&mut *conn)
        .await
        .unwrap();
    execute(
        &app,
        "UPDATE waitlist_token SET expires_at = now() - interval '1 second'",
    )
    .await;
    retry_now(&app).await;
    app.queue_drained().await;
    let mail = app.smtp.received();
    let mut to: Vec<&str> = mail.iter().map(|m| m.to[0].as_str()).collect();
    to.sort();
    assert_eq!(to, ["<expired@example.net>", "<late@example.net>"]);
    for m in &mail {
        let url = m.link(&app.url("/v1/waitlist/confirm?token="));
        assert_eq!(
            app.client.post(&url).send().await.unwrap().status(),
            200,
            "{:?}",
            m.to
        );
    }
    let (day_is_today, count): (bool, i32) = sqlx::query_as(
        "SELECT request_mail_day = (now() AT TIME ZONE 'UTC')::date, request_mail_count
         FROM person WHERE id = $1",
    )
    .bind(late)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(
        day_is_today && count == 1,
        "paid from today's budget: {count}"
    );
}

/// A signup of a known address does not wait for a transaction that refers to that person
/// (here one holding the key-share lock that a foreign key check, or finishing jobs, takes):
/// its no-op update of the person locks as a change that keeps the key does. Locking as a
/// change of the key, it waited, and could deadlock with `finish_jobs`, which holds such
/// locks on many people at once.
#[tokio::test]
async fn a_signup_of_a_known_address_does_not_wait_for_rows_referring_to_the_person() {
    let app = spawn_app().await;
    let address = json!({"email": "known@example.net"});
    assert_eq!(signup(&app, address.clone()).await.status(), 202);
    app.queue_drained().await;
    let mut holder = app.platform.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM person FOR KEY SHARE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), signup(&app, address)).await;
    holder.rollback().await.unwrap();
    assert_eq!(again.expect("answered without waiting").status(), 202);
}
