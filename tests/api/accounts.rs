//! Accounts, black-box: sign-up with a verified address, sign-in with a cookie a browser keeps
//! to itself, no enumeration, throttling, CSRF, reset, the account page and its actions, the
//! admin CLI, and what the database and the logs never hold.

use std::time::{Duration, Instant};

use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::waitlist::{WAIT, join};

const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "seven quiet rivers bend past old mills";

async fn sign_up(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/accounts"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn sign_in(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// A signed-in client's cookie and CSRF token.
#[derive(Debug, Clone)]
struct Session {
    cookie: String,
    csrf: String,
}

/// The `name=value` of the session cookie a response sets.
fn session_cookie(res: &reqwest::Response) -> String {
    let set = res
        .headers()
        .get(SET_COOKIE)
        .expect("a Set-Cookie")
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn signed_in(app: &TestApp, email: &str, password: &str) -> Session {
    let res = sign_in(app, email, password).await;
    assert_eq!(res.status(), 201, "sign-in of {email}");
    let cookie = session_cookie(&res);
    let body: Value = res.json().await.unwrap();
    Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

async fn account(app: &TestApp, session: &Session) -> reqwest::Response {
    app.client
        .get(app.url("/v1/account"))
        .header(COOKIE, &session.cookie)
        .send()
        .await
        .unwrap()
}

/// A form post from our own pages, in a session.
async fn form(
    app: &TestApp,
    session: &Session,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut fields = fields.to_vec();
    fields.push(("csrf", &session.csrf));
    app.client
        .post(app.url(path))
        .header(COOKIE, &session.cookie)
        .header("origin", &app.address)
        .form(&fields)
        .send()
        .await
        .unwrap()
}

fn to(mail: &pexper_tests::smtp::ReceivedMail, email: &str) -> bool {
    mail.to.iter().any(|t| t.contains(email))
}

/// Signs up and opens the account through the link in its email.
async fn open_account(app: &TestApp, email: &str) {
    assert_eq!(sign_up(app, email, PASSWORD).await.status(), 202);
    let mail = eventually(WAIT, "the verification email", || async {
        app.smtp.received().into_iter().find(|m| {
            to(m, email)
                && m.header("Subject")
                    .unwrap()
                    .contains("open your Pexper account")
        })
    })
    .await;
    let link = mail.link(&format!("{}/v1/accounts/verify?token=", app.address));
    let res = app.client.post(&link).send().await.unwrap();
    assert_eq!(res.status(), 200, "the link opens the account");
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Asserts two medians are of one timing class: neither more than 3 times the other.
fn same_timing_class(a: Duration, b: Duration, what: &str) {
    let ratio = a.as_secs_f64() / b.as_secs_f64();
    assert!(
        (1.0 / 3.0..=3.0).contains(&ratio),
        "{what}: {a:?} against {b:?}"
    );
}

#[tokio::test]
async fn an_account_opens_only_through_its_emailed_link_and_joins_the_person_of_that_address() {
    let app = spawn_app().await;
    let email = "ada@example.com";
    join(&app, email, json!({})).await;
    let waitlisted: uuid::Uuid = sqlx::query_scalar("SELECT person_id FROM waitlist_entry")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();

    let res = sign_up(&app, email, PASSWORD).await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "check_your_email"})
    );
    let mail = eventually(WAIT, "the verification email", || async {
        app.smtp.received().into_iter().find(|m| {
            m.header("Subject")
                .unwrap()
                .contains("open your Pexper account")
        })
    })
    .await;
    let link = mail.link(&format!("{}/v1/accounts/verify?token=", app.address));
    // Signing in before the link is used: there is no account yet.
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 401);
    // A GET (a mail scanner) shows the button and changes nothing.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Open my account"));
    assert_eq!(app.count("account").await, 0);

    let opened = app.client.post(&link).send().await.unwrap();
    assert_eq!(opened.status(), 200);
    assert!(opened.text().await.unwrap().contains("id=\"verified\""));
    let person: uuid::Uuid = sqlx::query_scalar("SELECT person_id FROM account")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(
        person, waitlisted,
        "the account is the waitlist entry's person"
    );
    assert_eq!(app.count("person").await, 1);
    assert_eq!(app.count("account_signup").await, 0);
    // The link works once.
    assert_eq!(app.client.post(&link).send().await.unwrap().status(), 400);
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);

    let session = signed_in(&app, email, PASSWORD).await;
    let view: Value = account(&app, &session).await.json().await.unwrap();
    assert_eq!(view["email"], email);
    assert_eq!(view["waitlist"]["status"], "confirmed");
    assert_eq!(view["waitlist"]["position"], 1);
}

#[tokio::test]
async fn sign_up_answers_a_known_address_like_a_new_one_in_status_body_and_time() {
    let app = spawn_app().await;
    let known = "known@example.com";
    open_account(&app, known).await;

    let mut known_times = Vec::new();
    let mut new_times = Vec::new();
    for i in 0..7 {
        let started = Instant::now();
        let k = sign_up(&app, known, NEW_PASSWORD).await;
        known_times.push(started.elapsed());
        let started = Instant::now();
        let n = sign_up(&app, &format!("new{i}@example.com"), NEW_PASSWORD).await;
        new_times.push(started.elapsed());
        assert_eq!((k.status().as_u16(), n.status().as_u16()), (202, 202));
        assert_eq!(k.text().await.unwrap(), n.text().await.unwrap());
    }
    same_timing_class(
        median(known_times),
        median(new_times),
        "known and new addresses",
    );

    // The owner hears of it, once a day's budget allows, and their password is unchanged.
    let mails = app.smtp.wait_for(4, WAIT).await;
    let to_known: Vec<_> = mails.iter().filter(|m| to(m, known)).collect();
    assert!(
        to_known[1]
            .header("Subject")
            .unwrap()
            .contains("Someone tried")
    );
    let text = to_known[1].part("text/plain").unwrap();
    assert!(
        text.contains("/account/password-reset") && !text.contains("verify"),
        "{text}"
    );
    assert_eq!(sign_in(&app, known, NEW_PASSWORD).await.status(), 401);
    assert_eq!(sign_in(&app, known, PASSWORD).await.status(), 201);
    assert_eq!(app.count("account").await, 1);
}

#[tokio::test]
async fn a_weak_or_malformed_sign_up_is_refused_naming_the_field_and_stores_nothing() {
    let app = spawn_app().await;
    for (body, code) in [
        (
            json!({"email": "a@example.com", "password": "short pass"}),
            "weak_password",
        ),
        (
            json!({"email": "a@example.com", "password": "password1234"}),
            "weak_password",
        ),
        (
            json!({"email": "a@example.com", "password": "a@example.com123"}),
            "weak_password",
        ),
        (
            json!({"email": "a@example.com", "password": "x".repeat(129)}),
            "weak_password",
        ),
        (
            json!({"email": "not an address", "password": PASSWORD}),
            "invalid_email",
        ),
    ] {
        let res = app
            .client
            .post(app.url("/v1/accounts"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        let error: Value = res.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}");
        assert!(
            !error
                .to_string()
                .contains(body["password"].as_str().unwrap())
        );
    }
    // A form post gets the form again, saying why, with the address kept and no password.
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .header("origin", &app.address)
        .form(&[("email", "form@example.com"), ("password", "password1234")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("role=\"alert\"") && page.contains("form@example.com"));
    assert!(!page.contains("password1234"));
    // From another site: refused.
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .header("origin", "https://evil.example")
        .form(&[("email", "form@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.count("person").await, 0);
    assert_eq!(app.count("account_signup").await, 0);
}

#[tokio::test]
async fn signing_in_sets_a_host_only_secure_http_only_lax_cookie_stored_only_as_a_hash() {
    let app = spawn_app().await;
    let email = "cookie@example.com";
    open_account(&app, email).await;
    let res = sign_in(&app, email, PASSWORD).await;
    assert_eq!(res.status(), 201);
    let set = res.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let attributes: Vec<&str> = set.split("; ").collect();
    let (name, token) = attributes[0].split_once('=').unwrap();
    assert_eq!(name, "__Host-pexper-session");
    assert_eq!(token.len(), 43, "256 random bits, base64url");
    for flag in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(attributes.contains(&flag), "{flag} in {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    let dump = app.db.dump();
    assert!(
        !dump.contains(token) && !dump.bytea_contains(token),
        "the token is stored only as a hash"
    );

    let session = Session {
        cookie: attributes[0].to_owned(),
        csrf: res.json::<Value>().await.unwrap()["csrf_token"]
            .as_str()
            .unwrap()
            .to_owned(),
    };
    let view = account(&app, &session).await;
    assert_eq!(view.status(), 200);
    assert_eq!(view.headers()["cache-control"], "no-store");
    let view: Value = view.json().await.unwrap();
    assert_eq!(view["email"], email);
    assert_eq!(view["csrf_token"], session.csrf.as_str());
    assert_eq!(view["sessions"].as_array().unwrap().len(), 1);
    // Without the cookie, or with a made-up one: not signed in.
    let anonymous = app.client.get(app.url("/v1/account")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let forged = Session {
        cookie: format!("__Host-pexper-session={}", "A".repeat(43)),
        csrf: String::new(),
    };
    assert_eq!(account(&app, &forged).await.status(), 401);
    // The page: signed in, the account; signed out, on to sign-in.
    let page = app
        .client
        .get(app.url("/account"))
        .header(COOKIE, &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(email));
    let page = app.client.get(app.url("/account")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/account/sign-in");
}

#[tokio::test]
async fn an_old_password_hash_is_replaced_with_todays_parameters_at_sign_in() {
    use argon2::PasswordHasher;
    let app = spawn_app().await;
    let email = "old.hash@example.com";
    open_account(&app, email).await;
    let weaker = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8 * 1024, 1, 1, None).unwrap(),
    )
    .hash_password(PASSWORD.as_bytes())
    .unwrap()
    .to_string();
    sqlx::query("UPDATE account SET password_hash = $1")
        .bind(&weaker)
        .execute(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 201);
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM account")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 201);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_address_answer_alike_and_failures_are_throttled() {
    let app = spawn_app().await;
    let known = "victim@example.com";
    let unknown = "nobody@example.com";
    open_account(&app, known).await;

    // Five failures each are free; the answers match in status, body and time.
    let (mut known_times, mut unknown_times) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let k = sign_in(&app, known, "wrong horse battery staple").await;
        known_times.push(started.elapsed());
        let started = Instant::now();
        let u = sign_in(&app, unknown, "wrong horse battery staple").await;
        unknown_times.push(started.elapsed());
        assert_eq!((k.status().as_u16(), u.status().as_u16()), (401, 401));
        assert_eq!(k.text().await.unwrap(), u.text().await.unwrap());
    }
    same_timing_class(
        median(known_times),
        median(unknown_times),
        "known and unknown addresses",
    );

    // The sixth blocks each address for a second, then two, and so on — even for the right
    // password; other addresses are not affected.
    for email in [known, unknown] {
        assert_eq!(
            sign_in(&app, email, "wrong horse battery staple")
                .await
                .status(),
            401
        );
        let blocked = sign_in(&app, email, PASSWORD).await;
        assert_eq!(blocked.status(), 429, "{email}");
        assert_eq!(blocked.headers()["retry-after"], "1");
        let body: Value = blocked.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_attempts");
    }
    let other = "other@example.com";
    open_account(&app, other).await;
    assert_eq!(sign_in(&app, other, PASSWORD).await.status(), 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        sign_in(&app, known, PASSWORD).await.status(),
        201,
        "after the wait"
    );
    // A success clears the count: the next failure is free again.
    assert_eq!(
        sign_in(&app, known, "wrong horse battery staple")
            .await
            .status(),
        401
    );
    assert_eq!(sign_in(&app, known, PASSWORD).await.status(), 201);
}

#[tokio::test]
async fn one_client_spraying_many_addresses_is_throttled_whatever_the_address() {
    let app = spawn_app().await;
    let email = "sprayed@example.com";
    open_account(&app, email).await;
    // Twenty failures are free (an office signs in from one address); the 21st blocks the
    // client for a second, then two, and so on.
    for i in 0..21 {
        let res = sign_in(
            &app,
            &format!("spray{i}@example.com"),
            "wrong horse battery staple",
        )
        .await;
        assert_eq!(res.status(), 401, "failure {i}");
    }
    let res = sign_in(&app, email, PASSWORD).await;
    assert_eq!(
        res.status(),
        429,
        "the client is blocked, whatever the address"
    );
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        app.count("signin_throttle").await,
        21,
        "one count per address, none blocked"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 201);
}

#[tokio::test]
async fn state_changes_without_the_csrf_token_or_from_another_site_are_refused() {
    let app = spawn_app().await;
    let email = "csrf@example.com";
    open_account(&app, email).await;
    let session = signed_in(&app, email, PASSWORD).await;
    let delete = |csrf: Option<&str>, origin: Option<&str>| {
        let mut req = app
            .client
            .delete(app.url("/v1/sessions/current"))
            .header(COOKIE, &session.cookie);
        if let Some(csrf) = csrf {
            req = req.header("x-csrf-token", csrf);
        }
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    let other = signed_in(&app, email, PASSWORD).await;
    for (csrf, origin, code) in [
        (None, None, "csrf_token_invalid"),
        (Some(other.csrf.as_str()), None, "csrf_token_invalid"),
        (Some("A".repeat(43).as_str()), None, "csrf_token_invalid"),
        (
            Some(session.csrf.as_str()),
            Some("https://evil.example"),
            "forbidden_origin",
        ),
    ] {
        let res = delete(csrf, origin).await.unwrap();
        assert_eq!(res.status(), 403, "{csrf:?} {origin:?}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code);
    }
    // A form post without the token, or from another site, changes nothing either.
    let res = app
        .client
        .post(app.url("/account/sessions/end-others"))
        .header(COOKIE, &session.cookie)
        .header("origin", &app.address)
        .form(&[("csrf", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .client
        .post(app.url("/account/sessions/end-others"))
        .header(COOKIE, &session.cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Our pages send no Referer, so a browser posts them with `Origin: null`: then only
    // `Sec-Fetch-Site: same-origin` makes it ours (a sandboxed frame elsewhere says cross-site).
    for site in [None, Some("cross-site"), Some("same-site")] {
        let mut req = app
            .client
            .post(app.url("/account/sessions/end-others"))
            .header(COOKIE, &session.cookie)
            .header("origin", "null");
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        let res = req
            .form(&[("csrf", session.csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "Origin: null, Sec-Fetch-Site: {site:?}");
    }
    assert_eq!(account(&app, &other).await.status(), 200, "still signed in");

    let res = delete(Some(&session.csrf), Some(&app.address))
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        res.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(account(&app, &session).await.status(), 401, "signed out");
    assert_eq!(
        account(&app, &other).await.status(),
        200,
        "only this session"
    );
    assert_eq!(
        delete(Some(&session.csrf), None).await.unwrap().status(),
        401
    );
}

#[tokio::test]
async fn a_password_reset_works_once_ends_every_session_and_says_so_by_email() {
    let app = spawn_app().await;
    let email = "forgetful@example.com";
    open_account(&app, email).await;
    let first = signed_in(&app, email, PASSWORD).await;
    let second = signed_in(&app, email, PASSWORD).await;
    let ask = |address: &'static str| {
        app.client
            .post(app.url("/v1/accounts/password-reset"))
            .json(&json!({ "email": address }))
            .send()
    };
    let unknown = ask("stranger@example.com").await.unwrap();
    let known = ask(email).await.unwrap();
    assert_eq!(
        (unknown.status().as_u16(), known.status().as_u16()),
        (202, 202)
    );
    assert_eq!(unknown.text().await.unwrap(), known.text().await.unwrap());
    let mail = app.smtp.wait_for(2, WAIT).await[1].clone();
    assert!(to(&mail, email));
    let link = mail.link(&format!(
        "{}/v1/accounts/password-reset/confirm?token=",
        app.address
    ));

    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("autocomplete=\"new-password\"")
    );
    let post = |password: &'static str| {
        app.client
            .post(&link)
            .header("origin", &app.address)
            .form(&[("password", password)])
            .send()
    };
    let weak = post("password1234").await.unwrap();
    assert_eq!(weak.status(), 422, "checked like a new password");
    assert!(weak.text().await.unwrap().contains("role=\"alert\""));
    assert_eq!(
        account(&app, &first).await.status(),
        200,
        "nothing changed yet"
    );

    let done = post(NEW_PASSWORD).await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(
        done.text()
            .await
            .unwrap()
            .contains("id=\"password-changed\"")
    );
    assert_eq!(
        account(&app, &first).await.status(),
        401,
        "every session ended"
    );
    assert_eq!(
        account(&app, &second).await.status(),
        401,
        "every session ended"
    );
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 401);
    assert_eq!(sign_in(&app, email, NEW_PASSWORD).await.status(), 201);
    assert_eq!(
        post(PASSWORD).await.unwrap().status(),
        400,
        "the link works once"
    );
    let changed = app.smtp.wait_for(3, WAIT).await[2].clone();
    assert!(
        changed
            .header("Subject")
            .unwrap()
            .contains("password of your Pexper account was changed")
    );
    assert_eq!(
        app.smtp
            .received()
            .iter()
            .filter(|m| to(m, "stranger"))
            .count(),
        0
    );
}

#[tokio::test]
async fn changing_the_password_in_the_account_keeps_this_session_and_ends_the_others() {
    let app = spawn_app().await;
    let email = "changer@example.com";
    open_account(&app, email).await;
    let here = signed_in(&app, email, PASSWORD).await;
    let elsewhere = signed_in(&app, email, PASSWORD).await;
    let wrong = form(
        &app,
        &here,
        "/account/password",
        &[
            ("password", "not my password at all"),
            ("new_password", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let weak = form(
        &app,
        &here,
        "/account/password",
        &[("password", PASSWORD), ("new_password", "password1234")],
    )
    .await;
    assert_eq!(weak.status(), 422);
    assert_eq!(
        sign_in(&app, email, PASSWORD).await.status(),
        201,
        "unchanged"
    );
    let changed = form(
        &app,
        &here,
        "/account/password",
        &[("password", PASSWORD), ("new_password", NEW_PASSWORD)],
    )
    .await;
    assert_eq!(changed.status(), 200);
    assert!(
        changed
            .text()
            .await
            .unwrap()
            .contains("Your password is changed")
    );
    assert_eq!(account(&app, &here).await.status(), 200);
    assert_eq!(account(&app, &elsewhere).await.status(), 401);
    assert_eq!(sign_in(&app, email, NEW_PASSWORD).await.status(), 201);
    app.smtp.wait_for(2, WAIT).await;

    // "Sign out everywhere else" does the same without a new password.
    let third = signed_in(&app, email, NEW_PASSWORD).await;
    let res = form(&app, &here, "/account/sessions/end-others", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(account(&app, &third).await.status(), 401);
    assert_eq!(account(&app, &here).await.status(), 200);
}

#[tokio::test]
async fn the_account_shows_a_purchase_from_the_webhook_and_resends_its_licence() {
    let app = spawn_app().await;
    let email = "buyer@example.com";
    let checkout = Checkout::new(email);
    let res = stripe::deliver(
        &app.client,
        &app.address,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!(res.status(), 200);
    let receipt = app.smtp.wait_for(1, WAIT).await[0].clone();
    open_account(&app, email).await;
    let session = signed_in(&app, email, PASSWORD).await;
    let view: Value = account(&app, &session).await.json().await.unwrap();
    let purchase = &view["purchases"][0];
    assert_eq!(purchase["amount"], checkout.amount);
    assert_eq!(purchase["status"], "paid");
    assert_eq!(purchase["license_status"], "active");
    let licence = purchase["license"].as_str().unwrap();
    assert!(receipt.part("text/plain").unwrap().contains(licence));
    let id = purchase["id"].as_str().unwrap();

    let res = form(
        &app,
        &session,
        "/account/licences/resend",
        &[("purchase", id)],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("on its way"));
    let again = app.smtp.wait_for(3, WAIT).await[2].clone();
    assert!(again.part("text/plain").unwrap().contains(licence));
    // Someone else's purchase, or none: nothing is sent.
    let res = form(
        &app,
        &session,
        "/account/licences/resend",
        &[("purchase", &uuid::Uuid::new_v4().to_string())],
    )
    .await;
    assert_eq!(res.status(), 404);
    // The address's daily budget (3, the sign-up link was one) bounds the resends.
    let res = form(
        &app,
        &session,
        "/account/licences/resend",
        &[("purchase", id)],
    )
    .await;
    assert!(res.text().await.unwrap().contains("on its way"));
    let res = form(
        &app,
        &session,
        "/account/licences/resend",
        &[("purchase", id)],
    )
    .await;
    assert!(res.text().await.unwrap().contains("try again tomorrow"));
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), 4);
}

#[tokio::test]
async fn export_and_deletion_need_a_fresh_password_and_are_audited_as_self_service() {
    let app = spawn_app().await;
    let email = "leaving@example.com";
    join(&app, email, json!({})).await;
    open_account(&app, email).await;
    let session = signed_in(&app, email, PASSWORD).await;
    // Ten minutes after signing in, the password must be typed again.
    sqlx::query("UPDATE account_session SET reauthenticated_at = now() - interval '11 minutes'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(
        form(&app, &session, "/account/export", &[]).await.status(),
        403
    );
    assert_eq!(
        form(&app, &session, "/account/delete", &[("confirm", "delete")])
            .await
            .status(),
        403
    );
    assert_eq!(
        form(
            &app,
            &session,
            "/account/confirm-password",
            &[("password", "not my password at all")]
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        form(
            &app,
            &session,
            "/account/confirm-password",
            &[("password", PASSWORD)]
        )
        .await
        .status(),
        200
    );

    let res = form(&app, &session, "/account/export", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let export: Value = res.json().await.unwrap();
    assert_eq!(export["format"], "pexper-data-export/1");
    assert_eq!(export["sections"]["email"]["address"], email);
    assert!(export["sections"]["account"]["account"]["opened_at"].is_string());
    assert!(!export.to_string().contains("$argon2id$"), "never the hash");
    let request: (String, String) =
        sqlx::query_as("SELECT source, status FROM privacy_request WHERE kind = 'access'")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(request, ("account".into(), "completed".into()));
    let actors: Vec<String> = sqlx::query_scalar("SELECT DISTINCT actor FROM privacy_audit")
        .fetch_all(&app.platform.pool)
        .await
        .unwrap();
    assert_eq!(actors, vec!["self-service".to_owned()]);

    let refused = form(&app, &session, "/account/delete", &[("confirm", "yes")]).await;
    assert_eq!(refused.status(), 422);
    let deleted = form(&app, &session, "/account/delete", &[("confirm", "delete")]).await;
    assert_eq!(deleted.status(), 200);
    assert!(
        deleted.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(account(&app, &session).await.status(), 401);
    eventually(WAIT, "the deletion confirmation", || async {
        app.smtp
            .received()
            .into_iter()
            .find(|m| m.header("Subject").unwrap().contains("deleted"))
    })
    .await;
    app.queue_drained().await;
    for table in ["account", "account_session", "waitlist_entry", "person"] {
        assert_eq!(app.count(table).await, 0, "{table}");
    }
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, source FROM privacy_request ORDER BY created_at")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(kinds[1], ("deletion".into(), "account".into()));
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 401);
}

#[tokio::test]
async fn the_admin_lists_shows_disables_and_signs_out_accounts_with_every_change_audited() {
    let app = spawn_app().await;
    let email = "operated@example.com";
    open_account(&app, email).await;
    let session = signed_in(&app, email, PASSWORD).await;
    let vars = app.cli_vars();
    let cli = |args: &[&str]| {
        let out = admin(&vars, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let list = cli(&["accounts", "list", "--json"]);
    assert_eq!(list[0]["sessions"], 1);
    assert!(!list.to_string().contains(email));
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let shown = cli(&["accounts", "show", &id, "--json"]);
    assert_eq!(shown["status"], "active");
    assert!(shown.get("email").is_none());
    assert!(
        !admin(&vars, &["accounts", "show", &id, "--email"])
            .status
            .success()
    );
    let shown = cli(&[
        "accounts",
        "show",
        &id,
        "--email",
        "--reason",
        "support ticket",
        "--json",
    ]);
    assert_eq!(shown["email"], email);

    let revoked = cli(&[
        "accounts",
        "sessions",
        "revoke",
        &id,
        "--reason",
        "lost laptop",
        "--json",
    ]);
    assert_eq!(revoked["sessions_ended"], 1);
    assert_eq!(account(&app, &session).await.status(), 401);
    assert!(
        !admin(&vars, &["accounts", "disable", &id]).status.success(),
        "a reason is needed"
    );
    let _again = signed_in(&app, email, PASSWORD).await;
    let disabled = cli(&[
        "accounts",
        "disable",
        &id,
        "--reason",
        "abuse report",
        "--json",
    ]);
    assert_eq!(disabled["sessions_ended"], 1);
    let res = sign_in(&app, email, PASSWORD).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "account_disabled"
    );
    let page = app
        .client
        .post(app.url("/v1/sessions"))
        .header("origin", &app.address)
        .form(&[("email", email), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403, "a form post gets the form again");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("This account is disabled")
    );

    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT event, detail FROM privacy_audit ORDER BY seq")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    let events: Vec<&str> = audit.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["read", "sessions_revoked", "account_disabled"]);
    assert!(audit[2].1.contains(&id) && audit[2].1.contains("abuse report"));
    let verified = cli(&["privacy", "audit", "--json"]);
    assert!(verified["broken_at"].is_null(), "{verified}");
}

#[tokio::test]
async fn the_canary_audit_finds_no_password_session_token_or_address_in_a_dump_or_the_logs() {
    let server = ServerProcess::start("debug").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let password = "canary-password-5521 tangerine lighthouse";
    let res = client
        .post(format!("{}/v1/accounts", server.base))
        .json(&json!({"email": canary::EMAIL, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mail = server.smtp.wait_for(1, WAIT).await[0].clone();
    let link = mail.link(&format!("{}/v1/accounts/verify?token=", server.base));
    assert_eq!(client.post(&link).send().await.unwrap().status(), 200);
    let wrong = client
        .post(format!("{}/v1/sessions", server.base))
        .json(&json!({"email": canary::EMAIL, "password": "canary-wrong-password-8812"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let res = client
        .post(format!("{}/v1/sessions", server.base))
        .header(
            "user-agent",
            format!(
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0 {}",
                canary::HOSTNAME
            ),
        )
        .json(&json!({"email": canary::EMAIL, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let cookie = session_cookie(&res);
    let token = cookie.split_once('=').unwrap().1.to_owned();
    let view = client
        .get(format!("{}/v1/account", server.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), 200);

    let dump = server.dump();
    for secret in [
        password,
        "canary-wrong-password-8812",
        token.as_str(),
        canary::HOSTNAME,
    ] {
        assert!(
            !dump.contains(secret) && !dump.bytea_contains(secret),
            "{secret} in the dump"
        );
    }
    assert!(!dump.to_lowercase().contains(canary::EMAIL) && !dump.bytea_contains(canary::EMAIL));
    assert!(
        dump.contains("Firefox on Linux"),
        "the device label, and only it"
    );
    let log = server.stop().await;
    assert!(log.contains("signed in"), "the log is captured");
    for secret in [password, "canary-wrong-password-8812", token.as_str()] {
        assert!(!log.contains(secret), "{secret} in the logs");
    }
    assert_eq!(canary::found(&log), Vec::<&str>::new(), "in the logs");
}

#[tokio::test]
async fn an_account_works_end_to_end_in_a_real_browser() {
    let app = spawn_app().await;
    let Some(browser) = browser::Browser::start().await else {
        return;
    };
    let email = "browser.buyer@example.com";
    let mail_to = |subject: &'static str| {
        let app = &app;
        async move {
            eventually(WAIT, subject, || async {
                app.smtp
                    .received()
                    .into_iter()
                    .rev()
                    .find(|m| to(m, email) && m.header("Subject").unwrap().contains(subject))
            })
            .await
        }
    };
    let checkout = Checkout::new(email);
    let res = stripe::deliver(
        &app.client,
        &app.address,
        &checkout.session_event("checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!(res.status(), 200);

    // Every form can be used by keyboard and screen reader: each field has its label, the
    // order of focus is the order on the page, and errors are announced.
    for page in [
        "/account/sign-up",
        "/account/sign-in",
        "/account/password-reset",
    ] {
        browser.goto(&app.url(page)).await;
        assert_eq!(accessibility(&browser).await, json!([]), "{page}");
    }
    browser.goto(&app.url("/account/sign-in")).await;
    browser
        .fill("input[name=email]", "nobody@example.com")
        .await;
    browser.fill("input[name=password]", PASSWORD).await;
    browser.click("form[action='/v1/sessions'] button").await;
    browser.wait_for_text("[role=alert]", "do not match").await;

    // Sign up, and open the account from the emailed link (a page, then its button).
    browser.goto(&app.url("/account/sign-up")).await;
    browser.fill("input[name=email]", email).await;
    browser.fill("input[name=password]", PASSWORD).await;
    browser.click("form[action='/v1/accounts'] button").await;
    browser.wait_for_text("h1", "Check your email").await;
    let link = mail_to("open your Pexper account")
        .await
        .link(&format!("{}/v1/accounts/verify?token=", app.address));
    browser.goto(&link).await;
    browser.click("#confirm").await;
    browser
        .wait_for_text("#verified", "Your account is open")
        .await;

    // Sign in: the purchase made through the webhook is there, and its licence goes again.
    browser.goto(&app.url("/account/sign-in")).await;
    browser.fill("input[name=email]", email).await;
    browser.fill("input[name=password]", PASSWORD).await;
    browser.click("form[action='/v1/sessions'] button").await;
    browser.wait_for_text("#address", email).await;
    assert!(browser.current_url().await.ends_with("/account"));
    assert_eq!(accessibility(&browser).await, json!([]), "the account page");
    browser.wait_for_text("#purchases", "paid").await;
    let receipts = |app: &TestApp| {
        app.smtp
            .received()
            .iter()
            .filter(|m| to(m, email) && m.part("text/plain").unwrap().contains("licence key"))
            .count()
    };
    let before = receipts(&app);
    browser.click(".resend").await;
    browser.wait_for_text("#notice", "on its way").await;
    eventually(WAIT, "the licence again", || async {
        (receipts(&app) > before).then_some(())
    })
    .await;

    // Sign out everywhere else: another browser's session ends, this one stays.
    let elsewhere = signed_in(&app, email, PASSWORD).await;
    browser.click("#end-others").await;
    browser
        .wait_for_text("#notice", "Every other browser")
        .await;
    assert_eq!(account(&app, &elsewhere).await.status(), 401);

    // Reset the password by email: every session ends, this browser's too.
    browser.goto(&app.url("/account/password-reset")).await;
    browser.fill("input[name=email]", email).await;
    browser
        .click("form[action='/v1/accounts/password-reset'] button")
        .await;
    browser.wait_for_text("h1", "Check your email").await;
    let link = mail_to("Choose a new password").await.link(&format!(
        "{}/v1/accounts/password-reset/confirm?token=",
        app.address
    ));
    browser.goto(&link).await;
    browser.fill("input[name=password]", NEW_PASSWORD).await;
    browser.click("form button").await;
    browser
        .wait_for_text("#password-changed", "Your password is changed")
        .await;
    browser.goto(&app.url("/account")).await;
    browser.wait_for_text("h1", "Sign in to Pexper").await;

    // Back in with the new password (just typed, so export and deletion are open without
    // confirming it again): download the data, delete the account.
    browser.fill("input[name=email]", email).await;
    browser.fill("input[name=password]", NEW_PASSWORD).await;
    browser.click("form[action='/v1/sessions'] button").await;
    browser.wait_for_text("#address", email).await;
    browser.click("#export").await;
    eventually(WAIT, "the self-service export", || async {
        let done: i64 = app
            .scalar("SELECT count(*) FROM privacy_request WHERE source = 'account' AND kind = 'access' AND status = 'completed'")
            .await;
        (done == 1).then_some(())
    })
    .await;
    browser.fill("input[name=confirm]", "delete").await;
    browser.click("#delete").await;
    browser
        .wait_for_text("#message", "Your account and data are being deleted")
        .await;
    mail_to("deleted").await;
    app.queue_drained().await;
    assert_eq!(app.count("account").await, 0);
    assert_eq!(app.count("person").await, 0);
}

/// What keeps the page shown from working by keyboard or with a screen reader: a field
/// without a label, a button without a name, a focus order other than the page's (`tabindex`
/// above 0), a page without a language or a heading.
async fn accessibility(browser: &browser::Browser) -> Value {
    browser
        .script(
            r#"
            const problems = [];
            for (const input of document.querySelectorAll("input:not([type=hidden])")) {
                if (input.labels.length === 0) problems.push("no label: " + input.name);
            }
            for (const button of document.querySelectorAll("button")) {
                if (!button.textContent.trim()) problems.push("a button without a name");
            }
            for (const el of document.querySelectorAll("[tabindex]")) {
                if (el.tabIndex > 0) problems.push("tabindex > 0: " + el.outerHTML);
            }
            if (!document.documentElement.lang) problems.push("no lang");
            if (document.querySelectorAll("h1").length !== 1) problems.push("not one h1");
            return problems;
            "#,
        )
        .await
}
