//! Accounts, black-box: sign-up with a verified address, sign-in with a cookie a browser keeps
//! to itself, no enumeration, throttling, CSRF, reset, the account page and its actions, the
//! admin CLI, and what the database and the logs never hold.

use std::time::{Duration, Instant};

use pexper_tests::stripe::{self, Checkout};
use pexper_tests::*;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::waitlist::{WAIT, join};

pub(crate) const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "seven quiet rivers bend past old mills";

async fn sign_up(app: &TestApp, email: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/accounts"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap()
}

pub(crate) async fn sign_in(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// A signed-in client's cookie and CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
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

pub(crate) async fn signed_in(app: &TestApp, email: &str, password: &str) -> Session {
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
pub(crate) async fn form(
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

/// The newest verification link mailed to `email`.
async fn verification_link(app: &TestApp, email: &str) -> String {
    let mail = eventually(WAIT, "the verification email", || async {
        app.smtp.received().into_iter().rev().find(|m| {
            to(m, email)
                && m.header("Subject")
                    .unwrap()
                    .contains("open your Pexper account")
        })
    })
    .await;
    mail.link(&format!("{}/v1/accounts/verify?token=", app.address))
}

/// Signs up and opens the account through the link in its email, choosing `PASSWORD` on the
/// link's page.
pub(crate) async fn open_account(app: &TestApp, email: &str) {
    assert_eq!(sign_up(app, email).await.status(), 202);
    let link = verification_link(app, email).await;
    let res = choose_password(&app.client, &link, &app.address, PASSWORD).await;
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

    let res = sign_up(&app, email).await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "check_your_email"})
    );
    let link = verification_link(&app, email).await;
    // Signing in before the link is used: there is no account yet.
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 401);
    // A GET (a mail scanner) shows the form for the password and changes nothing.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Open my account") && page.contains("name=\"password\""));
    assert_eq!(app.count("account").await, 0);
    // Posted from another site (a page that would choose the password for the owner): refused.
    let res = app
        .client
        .post(&link)
        .header("origin", "https://evil.example")
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    let opened = choose_password(&app.client, &link, &app.address, PASSWORD).await;
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
    assert_eq!(
        choose_password(&app.client, &link, &app.address, NEW_PASSWORD)
            .await
            .status(),
        400
    );
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);

    let session = signed_in(&app, email, PASSWORD).await;
    let view: Value = account(&app, &session).await.json().await.unwrap();
    assert_eq!(view["email"], email);
    assert_eq!(view["waitlist"]["status"], "confirmed");
    assert_eq!(view["waitlist"]["position"], 1);
}

#[tokio::test]
async fn a_stranger_who_signs_up_with_someone_s_address_never_holds_the_password_of_their_account()
{
    let app = spawn_app().await;
    let victim = "victim@example.com";
    let attackers = "attacker's own password 7733";
    // The stranger signs up with the victim's address and a password of their own choosing
    // (a field the form no longer has: it is ignored), until the victim's daily budget of
    // account mail is spent, so the victim's own sign-up sends nothing.
    for _ in 0..3 {
        let res = app
            .client
            .post(app.url("/v1/accounts"))
            .json(&json!({"email": victim, "password": attackers}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    app.smtp.wait_for(3, WAIT).await;
    assert_eq!(sign_up(&app, victim).await.status(), 202);
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), 3);
    // The only links the victim has are the ones the stranger caused; they ask for a password.
    let link = verification_link(&app, victim).await;
    let res = choose_password(&app.client, &link, &app.address, PASSWORD).await;
    assert_eq!(res.status(), 200);
    assert_eq!(sign_in(&app, victim, attackers).await.status(), 401);
    assert_eq!(sign_in(&app, victim, PASSWORD).await.status(), 201);
}

#[tokio::test]
async fn strangers_spending_an_address_s_contact_mail_cannot_stop_its_password_reset() {
    let app = spawn_app().await;
    let email = "holder@example.com";
    open_account(&app, email).await;
    // Three support requests with the holder's address spend its day of such mail…
    for _ in 0..4 {
        let res = app
            .client
            .post(app.url("/v1/support"))
            .json(&json!({"email": email, "message": "spam"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    app.queue_drained().await;
    let acknowledgements = |app: &TestApp| {
        app.smtp
            .received()
            .iter()
            .filter(|m| to(m, email) && !m.header("Subject").unwrap().contains("open your"))
            .count()
    };
    assert_eq!(
        acknowledgements(&app),
        3,
        "three a day, the fourth held back"
    );
    // …but the reset the holder asks for still comes.
    let res = app
        .client
        .post(app.url("/v1/accounts/password-reset"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let reset = eventually(WAIT, "the reset email", || async {
        app.smtp.received().into_iter().find(|m| {
            to(m, email)
                && m.part("text/plain")
                    .unwrap()
                    .contains("/password-reset/confirm?token=")
        })
    })
    .await;
    assert!(to(&reset, email));
    // A stranger asking for resets gets the holder at most three links a day, each usable.
    for _ in 0..5 {
        let res = app
            .client
            .post(app.url("/v1/accounts/password-reset"))
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    app.queue_drained().await;
    let resets = app
        .smtp
        .received()
        .iter()
        .filter(|m| {
            to(m, email)
                && m.part("text/plain")
                    .unwrap()
                    .contains("/password-reset/confirm?token=")
        })
        .count();
    // The account link of the sign-up took one of the three.
    assert_eq!(
        resets, 2,
        "the access budget: the sign-up's link and two resets"
    );
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
        let k = sign_up(&app, known).await;
        known_times.push(started.elapsed());
        let started = Instant::now();
        let n = sign_up(&app, &format!("new{i}@example.com")).await;
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
async fn a_weak_password_on_the_links_page_or_a_malformed_sign_up_is_refused_and_opens_nothing() {
    let app = spawn_app().await;
    // The sign-up form takes an address only.
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .json(&json!({"email": "not an address"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_email");
    // From another site: refused.
    let res = app
        .client
        .post(app.url("/v1/accounts"))
        .header("origin", "https://evil.example")
        .form(&[("email", "form@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.count("person").await, 0);
    assert_eq!(app.count("account_signup").await, 0);

    // The password is judged on the link's page: the form again, saying why, never echoing it.
    let email = "a@example.com";
    assert_eq!(sign_up(&app, email).await.status(), 202);
    let link = verification_link(&app, email).await;
    for (password, why) in [
        ("short pass", "at least 12"),
        ("password1234", "too easy to guess"),
        ("a@example.com123", "too easy to guess"),
        (&"x".repeat(129), "at most 128"),
        // 1,500 characters that NFKC would make 27,000, in a body under the limit.
        (&"\u{fdfa}".repeat(1500), "at most 128"),
    ] {
        let res = choose_password(&app.client, &link, &app.address, password).await;
        assert_eq!(res.status(), 422, "{why}");
        let page = res.text().await.unwrap();
        assert!(
            page.contains(
                "aria-describedby=\"password-hint password-error\" aria-invalid=\"true\" autofocus"
            ) && page.contains(why),
            "{page}"
        );
        assert!(!page.contains(password));
    }
    assert_eq!(app.count("account").await, 0);
    // Not a form: refused; the link still works after all of these.
    let res = app
        .client
        .post(&link)
        .header("origin", &app.address)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = choose_password(&app.client, &link, &app.address, PASSWORD).await;
    assert_eq!(res.status(), 200);
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 201);
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

const WRONG: &str = "wrong horse battery staple";

/// Moves the sign-in throttle's clock past every block it holds (instead of sleeping).
async fn blocks_lapse(app: &TestApp) {
    sqlx::query("UPDATE signin_throttle SET blocked_until = now() - interval '1 millisecond'")
        .execute(&app.platform.pool)
        .await
        .unwrap();
}

/// Starts again, from now, every block the throttle set in the last minute, `seconds` long:
/// a block begins when its fifth attempt is reserved, before that password is hashed, and on
/// a loaded machine the hashing alone can outlast a one-second block before the test's next
/// request arrives. Asserts that a block was there to renew.
async fn blocks_renewed(app: &TestApp, seconds: i32) {
    let renewed = sqlx::query(
        "UPDATE signin_throttle SET blocked_until = now() + make_interval(secs => $1)
         WHERE blocked_until > now() - interval '1 minute'",
    )
    .bind(seconds)
    .execute(&app.platform.pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(renewed >= 1, "a block was set");
}

/// A sign-in from the client `ip` (behind the trusted proxy), with `cookie` if any.
async fn sign_in_from(
    app: &TestApp,
    ip: &str,
    cookie: Option<&str>,
    email: &str,
    password: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/sessions"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

fn behind_a_proxy() -> AppOptions {
    AppOptions {
        vars: vec![("PEXPER_TRUSTED_PROXY", "127.0.0.1".into())],
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_address_answer_alike_and_failures_are_throttled() {
    let app = spawn_app().await;
    let known = "victim@example.com";
    let unknown = "nobody@example.com";
    open_account(&app, known).await;

    // Five attempts each; the answers match in status, body and time.
    let (mut known_times, mut unknown_times) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let k = sign_in(&app, known, WRONG).await;
        known_times.push(started.elapsed());
        let started = Instant::now();
        let u = sign_in(&app, unknown, WRONG).await;
        unknown_times.push(started.elapsed());
        assert_eq!((k.status().as_u16(), u.status().as_u16()), (401, 401));
        assert_eq!(k.text().await.unwrap(), u.text().await.unwrap());
    }
    same_timing_class(
        median(known_times),
        median(unknown_times),
        "known and unknown addresses",
    );

    // Then each address is blocked for a second — even for the right password, from a
    // browser that never signed in to it; other addresses are not affected.
    blocks_renewed(&app, 1).await;
    for email in [known, unknown] {
        let blocked = sign_in(&app, email, PASSWORD).await;
        assert_eq!(blocked.status(), 429, "{email}");
        assert_eq!(blocked.headers()["retry-after"], "1");
        let body: Value = blocked.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_attempts");
    }
    let other = "other@example.com";
    open_account(&app, other).await;
    assert_eq!(sign_in(&app, other, PASSWORD).await.status(), 201);
    blocks_lapse(&app).await;
    assert_eq!(
        sign_in(&app, known, PASSWORD).await.status(),
        201,
        "after the wait"
    );
    // A success clears the count: the next attempts are free again.
    for _ in 0..4 {
        assert_eq!(sign_in(&app, known, WRONG).await.status(), 401);
    }
    assert_eq!(sign_in(&app, known, PASSWORD).await.status(), 201);
}

#[tokio::test]
async fn fifty_parallel_guesses_from_fifty_clients_get_five_tries_and_the_rest_wait() {
    let app = spawn_app_with(behind_a_proxy()).await;
    let email = "target@example.com";
    open_account(&app, email).await;
    let guesses = (0..50).map(|i| {
        let (client, url) = (app.client.clone(), app.url("/v1/sessions"));
        tokio::spawn(async move {
            let res = client
                .post(url)
                .header("x-forwarded-for", format!("203.0.113.{i}"))
                .json(&json!({"email": email, "password": format!("guess number {i} of many")}))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        })
    });
    let mut answers = join_all(guesses.collect::<Vec<_>>()).await;
    answers.sort();
    // A 401 is a guess that reached the hash: exactly the five free attempts, however many
    // arrive at once; the rest are told to wait before any hashing.
    assert_eq!(
        answers.iter().filter(|s| **s == 401).count(),
        5,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|s| **s == 429).count(),
        45,
        "{answers:?}"
    );
    assert_eq!(
        app.scalar("SELECT failures::bigint FROM signin_throttle")
            .await,
        5,
        "refused attempts are not counted"
    );
}

#[tokio::test]
async fn the_throttle_doubles_its_wait_after_each_attempt_up_to_fifteen_minutes() {
    let app = spawn_app().await;
    let email = "patient@example.com";
    open_account(&app, email).await;
    for _ in 0..5 {
        assert_eq!(sign_in(&app, email, WRONG).await.status(), 401);
    }
    // The first block, a second long, renewed from now; the doubling after it is the server's.
    blocks_renewed(&app, 1).await;
    let mut waits = Vec::new();
    for _ in 0..12 {
        let blocked = sign_in(&app, email, PASSWORD).await;
        assert_eq!(blocked.status(), 429);
        waits.push(
            blocked.headers()["retry-after"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        // The clock moved past the wait: one more attempt is let through, and fails.
        blocks_lapse(&app).await;
        assert_eq!(sign_in(&app, email, WRONG).await.status(), 401);
    }
    assert_eq!(
        waits,
        [
            "1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "900", "900"
        ]
    );
}

#[tokio::test]
async fn a_stranger_s_guesses_cannot_lock_the_owner_out_of_a_browser_that_signed_in_before() {
    let app = spawn_app_with(behind_a_proxy()).await;
    let email = "owner@example.com";
    open_account(&app, email).await;
    // The owner's browser signs in once and keeps its device cookie.
    let res = sign_in_from(&app, "198.51.100.1", None, email, PASSWORD).await;
    assert_eq!(res.status(), 201);
    let device = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("__Host-pexper-device="))
        .expect("a device cookie")
        .to_owned();
    for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(device.contains(part), "{device}");
    }
    let device = device.split(';').next().unwrap().to_owned();

    // A stranger guesses until the address is blocked, and keeps guessing.
    for i in 0..5 {
        let res = sign_in_from(&app, "203.0.113.9", None, email, &format!("guess {i} ....")).await;
        assert_eq!(res.status(), 401);
    }
    blocks_renewed(&app, 60).await;
    let res = sign_in_from(&app, "203.0.113.9", None, email, PASSWORD).await;
    assert_eq!(
        res.status(),
        429,
        "without the cookie, even the right password waits"
    );
    // The owner's browser is not blocked, from anywhere.
    let res = sign_in_from(&app, "192.0.2.44", Some(&device), email, PASSWORD).await;
    assert_eq!(res.status(), 201);
    // Its cookie is no use for another address, and a made-up one is no cookie at all.
    let other = "other@example.com";
    open_account(&app, other).await;
    let forged = format!("__Host-pexper-device={}.AAAA", "A".repeat(43));
    for _ in 0..5 {
        let res = sign_in_from(&app, "198.51.100.7", None, other, WRONG).await;
        assert_eq!(res.status(), 401);
    }
    blocks_renewed(&app, 60).await;
    for cookie in [&device, &forged] {
        let res = sign_in_from(&app, "198.51.100.8", Some(cookie), other, PASSWORD).await;
        assert_eq!(res.status(), 429, "{cookie}");
    }
    // From a new browser, the owner's way past the stranger is a reset: its link clears the
    // address's count, gives that browser a device cookie, and voids every older one (the
    // password changed).
    let res = app
        .client
        .post(app.url("/v1/accounts/password-reset"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let link = eventually(WAIT, "the reset email", || async {
        app.smtp.received().into_iter().find_map(|m| {
            let text = m.part("text/plain")?;
            text.contains("/password-reset/confirm?token=")
                .then(|| m.link(&app.url("/v1/accounts/password-reset/confirm?token=")))
        })
    })
    .await;
    let res = choose_password(&app.client, &link, &app.address, NEW_PASSWORD).await;
    assert_eq!(res.status(), 200);
    let new_device = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("__Host-pexper-device="))
        .expect("a device cookie for the browser that reset")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    for i in 0..5 {
        let res = sign_in_from(&app, "203.0.113.9", None, email, &format!("again {i} ....")).await;
        assert_eq!(res.status(), 401);
    }
    let res = sign_in_from(&app, "192.0.2.50", Some(&new_device), email, NEW_PASSWORD).await;
    assert_eq!(res.status(), 201, "the resetting browser is a known one");
    let res = sign_in_from(&app, "192.0.2.44", Some(&device), email, NEW_PASSWORD).await;
    assert_eq!(
        res.status(),
        429,
        "the old device cookie died with the old password"
    );

    // And a device's own guesses are limited like anyone's.
    let device = new_device;
    let res = sign_in_from(&app, "192.0.2.44", Some(&device), email, NEW_PASSWORD).await;
    assert_eq!(res.status(), 201);
    for i in 0..5 {
        let res = sign_in_from(
            &app,
            "192.0.2.44",
            Some(&device),
            email,
            &format!("typo {i} ...."),
        )
        .await;
        assert_eq!(res.status(), 401);
    }
    blocks_renewed(&app, 60).await;
    let res = sign_in_from(&app, "192.0.2.44", Some(&device), email, NEW_PASSWORD).await;
    assert_eq!(res.status(), 429);
}

#[tokio::test]
async fn one_client_spraying_many_addresses_is_throttled_whatever_the_address() {
    let app = spawn_app().await;
    let email = "sprayed@example.com";
    open_account(&app, email).await;
    // Twenty attempts are free (an office signs in from one address); then the client is
    // blocked for a second, then two, and so on.
    for i in 0..20 {
        let res = sign_in(&app, &format!("spray{i}@example.com"), WRONG).await;
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
        20,
        "one count per address tried, none for the refused one"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 201);
}

#[tokio::test]
async fn the_account_page_s_password_checks_are_counted_like_sign_ins() {
    let app = spawn_app().await;
    let email = "recheck@example.com";
    open_account(&app, email).await;
    // A session (the client keeps no cookies: this one has no device cookie either).
    let session = signed_in(&app, email, PASSWORD).await;
    for path in ["/account/confirm-password", "/account/password"] {
        for i in 0..5 {
            let res = form(
                &app,
                &session,
                path,
                &[
                    ("password", &format!("not it {i} ....")),
                    ("new_password", NEW_PASSWORD),
                ],
            )
            .await;
            assert_eq!(res.status(), 401, "{path} attempt {i}");
        }
        blocks_renewed(&app, 60).await;
        let res = form(
            &app,
            &session,
            path,
            &[("password", PASSWORD), ("new_password", NEW_PASSWORD)],
        )
        .await;
        assert_eq!(res.status(), 429, "{path}: counted with sign-ins");
        // And a sign-in of the same address is blocked by them.
        assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 429);
        blocks_lapse(&app).await;
        let res = form(
            &app,
            &session,
            "/account/confirm-password",
            &[("password", PASSWORD)],
        )
        .await;
        assert_eq!(res.status(), 200, "the right password clears the count");
    }
}

#[tokio::test]
async fn a_megabyte_password_that_grows_under_normalisation_is_refused_before_it_costs_memory() {
    let server = ServerProcess::start("warn").await;
    let client = reqwest::Client::new();
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    // Warm: one ordinary sign-in and readiness, so the baseline holds what any request uses.
    let res = client
        .post(format!("{}/v1/sessions", server.base))
        .json(&json!({"email": "warm@example.com", "password": WRONG}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let before = rss(server.pid());
    // U+FDFA is 3 bytes that NFKC makes 18 characters: a megabyte of them would be a string
    // of 6 million characters once normalised.
    let password = "\u{fdfa}".repeat((1 << 20) / 3 - 100);
    let body =
        serde_json::to_vec(&json!({"email": "victim@example.com", "password": password})).unwrap();
    assert!(body.len() < 1 << 20);
    let sign_ins: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, body) = (
                client.clone(),
                format!("{}/v1/sessions", server.base),
                body.clone(),
            );
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let error: Value = res.json().await.unwrap();
                (
                    status,
                    error["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
        })
        .collect();
    // Meanwhile the server answers others at once.
    let mut slowest = Duration::ZERO;
    while sign_ins.iter().any(|t| !t.is_finished()) {
        let started = Instant::now();
        let res = client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    let answers = join_all(sign_ins).await;
    // What it cost, first: a buffered megabyte each would be 16 MiB, normalised far more.
    let grown_mib = (rss(server.pid()) - before) as f64 / 1024.0;
    assert!(
        grown_mib < 16.0,
        "peak resident memory grew by {grown_mib:.1} MiB"
    );
    assert!(
        slowest < Duration::from_millis(200),
        "/readyz took {slowest:?}"
    );
    // Refused as it arrives: an account form is a few kilobytes (`pexper_accounts::BODY_LIMIT`).
    for answer in answers {
        assert_eq!(answer, (413, "payload_too_large".to_owned()));
    }
    // Under that limit, a password over 128 characters as sent is refused before it is
    // normalised or counted as an attempt.
    let password = "\u{fdfa}".repeat(pexper_accounts::BODY_LIMIT / 3 - 100);
    let res = client
        .post(format!("{}/v1/sessions", server.base))
        .json(&json!({"email": "victim@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["error"]["code"], "password_too_long");
    server.stop().await;
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
async fn every_state_changing_account_route_in_the_document_refuses_other_sites_and_wrong_tokens() {
    let app = spawn_app().await;
    let email = "everywhere@example.com";
    open_account(&app, email).await;
    let session = signed_in(&app, email, PASSWORD).await;
    let other = signed_in(&app, "everywhere@example.com", PASSWORD).await;
    // Every POST and DELETE of the accounts' document; a signed-in one says it needs the
    // session's CSRF token in its 403.
    let document: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tagged = op["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("accounts")));
            if tagged && (method == "post" || method == "delete") {
                let csrf = op["responses"]["403"]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("CSRF"));
                routes.push((method.to_uppercase(), path.clone(), csrf));
            }
        }
    }
    assert!(routes.len() >= 13, "{routes:?}");
    assert!(
        routes.iter().filter(|(_, _, csrf)| *csrf).count() >= 8,
        "{routes:?}"
    );
    let send =
        |method: &str, path: &str, cookie: Option<&str>, headers: &[(&str, &str)], csrf: &str| {
            let url = app.url(&format!("{path}?token={}", "A".repeat(43)));
            let mut req = app.client.request(method.parse().unwrap(), url);
            if let Some(cookie) = cookie {
                req = req.header(COOKIE, cookie);
            }
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if method == "DELETE" {
                req = req.header("x-csrf-token", csrf);
            } else {
                req = req.form(&[
                    ("csrf", csrf),
                    ("email", email),
                    ("password", PASSWORD),
                    ("new_password", NEW_PASSWORD),
                    ("confirm", "delete"),
                ]);
            }
            req.send()
        };
    for (method, path, needs_csrf) in &routes {
        // From another site, or from a frame that hides where it is: refused, signed in or not.
        for headers in [
            &[("origin", "https://evil.example")][..],
            &[("origin", "null"), ("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "cross-site")][..],
        ] {
            let res = send(method, path, Some(&session.cookie), headers, &session.csrf)
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{method} {path} with {headers:?}");
        }
        if *needs_csrf {
            // From our pages, but without this session's token.
            for csrf in ["", other.csrf.as_str(), &"A".repeat(43)] {
                let res = send(
                    method,
                    path,
                    Some(&session.cookie),
                    &[("origin", &app.address)],
                    csrf,
                )
                .await
                .unwrap();
                assert_eq!(res.status(), 403, "{method} {path} with the token {csrf:?}");
            }
        }
    }
    // Nothing changed: both sessions live, the password is the same.
    assert_eq!(account(&app, &session).await.status(), 200);
    assert_eq!(account(&app, &other).await.status(), 200);
    assert_eq!(sign_in(&app, email, PASSWORD).await.status(), 201);
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
    assert!(weak.text().await.unwrap().contains(
        "aria-describedby=\"password-hint password-error\" aria-invalid=\"true\" autofocus"
    ));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_request_does_the_same_database_work_for_an_unknown_address_as_for_a_known_one() {
    let app = spawn_app().await;
    let email = "registered@example.com";
    open_account(&app, email).await;
    app.queue_drained().await;
    let mail_before = app.smtp.received().len();
    // Nobody may even read who is registered: a request that looked the address up (and then
    // wrote, or not) would wait here, and its timing would tell a stranger the answer.
    let mut held = app.platform.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE person, account IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for address in [email, "nobody-here@example.com"] {
        let res = client
            .post(app.url("/v1/accounts/password-reset"))
            .json(&json!({ "email": address }))
            .send()
            .await
            .expect("the request touches neither people nor accounts");
        assert_eq!(res.status(), 202);
    }
    // Each left the same one row: a queued decision carrying a keyed hash, not the address.
    let queued: Vec<(String, Value)> = sqlx::query_as(
        "SELECT kind, payload FROM job WHERE kind LIKE 'accounts.reset%' ORDER BY id",
    )
    .fetch_all(&app.db.pool().await)
    .await
    .unwrap();
    assert_eq!(queued.len(), 2, "{queued:?}");
    // The same fields, and a keyed hash of the same length (the time's digits vary).
    let shape = |payload: &Value| -> (Vec<String>, usize) {
        let object = payload.as_object().unwrap();
        let index = object["email_index"].as_str().unwrap().len();
        (object.keys().cloned().collect(), index)
    };
    assert_eq!(queued[0].0, queued[1].0);
    assert_eq!(shape(&queued[0].1), shape(&queued[1].1));
    assert!(queued.iter().all(|(_, p)| !p.to_string().contains('@')));
    held.rollback().await.unwrap();
    // Decided off the request path: the holder gets their link, the stranger nothing.
    let mail = app.smtp.wait_for(mail_before + 1, WAIT).await[mail_before].clone();
    assert!(to(&mail, email));
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), mail_before + 1);
}

/// Asks for a reset of `email` and returns the link its email brings (the `n`th reset email).
async fn reset_link(app: &TestApp, email: &str, n: usize) -> String {
    let res = app
        .client
        .post(app.url("/v1/accounts/password-reset"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let prefix = app.url("/v1/accounts/password-reset/confirm?token=");
    eventually(WAIT, "the reset email", || async {
        let links: Vec<String> = app
            .smtp
            .received()
            .iter()
            .filter(|m| to(m, email) && m.part("text/plain").unwrap().contains(&prefix))
            .map(|m| m.link(&prefix))
            .collect();
        links.get(n).cloned()
    })
    .await
}

#[tokio::test]
async fn a_reset_link_dies_with_a_password_change_and_never_opens_a_disabled_account() {
    let app = spawn_app().await;
    let email = "careful@example.com";
    open_account(&app, email).await;
    let link = reset_link(&app, email, 0).await;
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 200);
    // The password changes in the account meanwhile (the person remembered it): the link that
    // was mailed before is dead.
    let session = signed_in(&app, email, PASSWORD).await;
    let res = form(
        &app,
        &session,
        "/account/password",
        &[("password", PASSWORD), ("new_password", NEW_PASSWORD)],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);
    let res = choose_password(
        &app.client,
        &link,
        &app.address,
        "a third good passphrase here",
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(sign_in(&app, email, NEW_PASSWORD).await.status(), 201);

    // A link mailed before the account is disabled does not open it.
    let link = reset_link(&app, email, 1).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM account")
        .fetch_one(&app.platform.pool)
        .await
        .unwrap();
    let out = admin(
        &app.cli_vars(),
        &[
            "accounts",
            "disable",
            &id.to_string(),
            "--reason",
            "abuse report",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);
    let res = choose_password(
        &app.client,
        &link,
        &app.address,
        "a third good passphrase here",
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(sign_in(&app, email, NEW_PASSWORD).await.status(), 403);
}

#[tokio::test]
async fn a_reset_email_still_queued_when_the_password_changes_brings_a_dead_link() {
    let app = spawn_app().await;
    let email = "queued@example.com";
    open_account(&app, email).await;
    // The reset's email waits in the queue (its job stops where it stores the link)…
    let held = TableLock::take(&app.platform.pool, "account_reset").await;
    let res = app
        .client
        .post(app.url("/v1/accounts/password-reset"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    held.until_someone_waits(&app.platform.pool).await;
    // …while the password changes.
    let session = signed_in(&app, email, PASSWORD).await;
    let res = form(
        &app,
        &session,
        "/account/password",
        &[("password", PASSWORD), ("new_password", NEW_PASSWORD)],
    )
    .await;
    assert_eq!(res.status(), 200);
    held.release().await;
    let link = reset_link(&app, email, 0).await;
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn links_and_sessions_end_when_their_time_is_up_with_the_clock_moved() {
    let app = spawn_app().await;
    let exec = |sql: &'static str| {
        let pool = app.platform.pool.clone();
        async move {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    };
    // A sign-up link, a minute before and after its 2 days.
    assert_eq!(sign_up(&app, "late@example.com").await.status(), 202);
    let link = verification_link(&app, "late@example.com").await;
    exec("UPDATE account_signup SET expires_at = now() + interval '1 minute'").await;
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 200);
    exec("UPDATE account_signup SET expires_at = now() - interval '1 second'").await;
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);
    let res = choose_password(&app.client, &link, &app.address, PASSWORD).await;
    assert_eq!(res.status(), 400);

    // A reset link, likewise around its hour.
    let email = "timely@example.com";
    open_account(&app, email).await;
    let link = reset_link(&app, email, 0).await;
    exec("UPDATE account_reset SET expires_at = now() - interval '1 second'").await;
    assert_eq!(app.client.get(&link).send().await.unwrap().status(), 400);
    let res = choose_password(&app.client, &link, &app.address, NEW_PASSWORD).await;
    assert_eq!(res.status(), 400);

    // A session: past its 30 days from sign-in, or 7 days unused.
    let session = signed_in(&app, email, PASSWORD).await;
    assert_eq!(account(&app, &session).await.status(), 200);
    exec("UPDATE account_session SET expires_at = now() - interval '1 second'").await;
    assert_eq!(account(&app, &session).await.status(), 401);
    let session = signed_in(&app, email, PASSWORD).await;
    exec("UPDATE account_session SET last_seen_at = now() - interval '6 days 23 hours'").await;
    assert_eq!(account(&app, &session).await.status(), 200);
    exec("UPDATE account_session SET last_seen_at = now() - interval '7 days 1 minute'").await;
    assert_eq!(account(&app, &session).await.status(), 401);
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
    // The signed-in person's own daily budget (5; no stranger can spend it) bounds the
    // resends.
    for _ in 0..4 {
        let res = form(
            &app,
            &session,
            "/account/licences/resend",
            &[("purchase", id)],
        )
        .await;
        assert!(res.text().await.unwrap().contains("on its way"));
    }
    let res = form(
        &app,
        &session,
        "/account/licences/resend",
        &[("purchase", id)],
    )
    .await;
    assert!(res.text().await.unwrap().contains("try again tomorrow"));
    app.queue_drained().await;
    assert_eq!(
        app.smtp.received().len(),
        7,
        "the receipt, the link, five resends"
    );
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
    let server = ServerProcess::start("trace").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let password = "canary-password-5521 tangerine lighthouse";
    let res = client
        .post(format!("{}/v1/accounts", server.base))
        .json(&json!({"email": canary::EMAIL}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mail = server.smtp.wait_for(1, WAIT).await[0].clone();
    let link = mail.link(&format!("{}/v1/accounts/verify?token=", server.base));
    assert_eq!(
        choose_password(&client, &link, &server.base, password)
            .await
            .status(),
        200
    );
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
    browser
        .wait_for_text("#password-error", "do not match")
        .await;

    // Sign up with the address, and open the account from the emailed link (a page where
    // the password is chosen).
    browser.goto(&app.url("/account/sign-up")).await;
    browser.fill("input[name=email]", email).await;
    browser.click("form[action='/v1/accounts'] button").await;
    browser.wait_for_text("h1", "Check your email").await;
    let link = mail_to("open your Pexper account")
        .await
        .link(&format!("{}/v1/accounts/verify?token=", app.address));
    browser.goto(&link).await;
    assert_eq!(accessibility(&browser).await, json!([]), "the link's page");
    browser.fill("input[name=password]", PASSWORD).await;
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
