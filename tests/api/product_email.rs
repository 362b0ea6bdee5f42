//! Product email to the waitlist: one-click unsubscribe, broadcasts, invitations, DKIM,
//! and the suppression that outlives an erasure.

use pexper_platform::personal_data::Registry;
use pexper_tests::*;
use serde_json::{Value, json};

use crate::waitlist::{WAIT, join, signup};

#[tokio::test]
async fn one_click_unsubscribe_stops_product_email_and_a_get_changes_nothing() {
    let app = spawn_app().await;
    join(&app, "lin@example.com", json!({})).await;
    let mail = app.smtp.wait_for(2, WAIT).await;
    let header = mail[1].header("List-Unsubscribe").unwrap();
    let url = header
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    let subscribed = || async {
        sqlx::query_scalar::<_, bool>("SELECT subscribed FROM waitlist_entry")
            .fetch_one(&app.platform.pool)
            .await
            .unwrap()
    };

    // A mail scanner follows the link: nothing changes.
    let page = app.client.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"unsubscribe\""));
    assert!(subscribed().await);

    // A token that keeps the format and breaks only its MAC (one character of it) is refused
    // on the page and by the POST, and the person stays subscribed.
    let mac_at = url.rfind('.').unwrap() + 1;
    let flipped = if &url[mac_at..=mac_at] == "A" {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{flipped}{}", &url[..mac_at], &url[mac_at + 1..]);
    assert_eq!(forged.len(), url.len());
    for res in [
        app.client.get(&forged).send().await.unwrap(),
        app.client
            .post(&forged)
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(res.status(), 400);
    }
    assert!(subscribed().await, "a forged MAC changes nothing");

    // The mail provider's one-click POST: exactly RFC 8058's body, no cookie.
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!subscribed().await);

    // No more product email: a welcome job for them sends nothing.
    app.queue_drained().await;
    let mut tx = app.platform.pool.begin().await.unwrap();
    let person: pexper_platform::person::PersonId =
        sqlx::query_scalar("SELECT person_id FROM waitlist_entry")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    pexper_platform::jobs::enqueue(
        &mut tx,
        pexper_platform::jobs::NewJob::new(&pexper_waitlist::Welcome {}).for_person(person),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), 2);

    // A forged token is refused, and changes nothing.
    let forged = url.replace("token=v", "token=x");
    assert_eq!(app.client.post(&forged).send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn waitlist_data_is_exported_and_erasure_keeps_only_a_suppression_hash() {
    let app = spawn_app().await;
    join(&app, "erase.me@example.com", json!({"source": "homepage"})).await;
    app.smtp.wait_for(2, WAIT).await;
    app.queue_drained().await;
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let person: pexper_platform::person::PersonId =
        sqlx::query_scalar("SELECT person_id FROM waitlist_entry")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    pexper_waitlist_unsubscribe(&app, person).await;

    let registry: Registry = pexper_server::personal_data(&app.platform.config);
    let export = registry
        .export(&mut conn, &app.platform.keyring, person)
        .await
        .unwrap();
    assert_eq!(export["email"]["address"], "erase.me@example.com");
    assert_eq!(export["waitlist"]["status"], "confirmed");
    assert_eq!(export["waitlist"]["source"], "homepage");
    assert_eq!(export["waitlist"]["subscribed"], false);
    assert_eq!(export["waitlist"]["position"], 1);
    assert!(export["waitlist"]["referral_code"].as_str().unwrap().len() >= 10);
    let sent: Vec<&str> = export["email"]["emails_sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["email"].as_str().unwrap())
        .collect();
    assert_eq!(sent, vec!["waitlist-confirm", "waitlist-welcome"]);

    let mut tx = app.platform.pool.begin().await.unwrap();
    let summary = registry
        .erase(&mut tx, &app.platform.keyring, person)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let waitlist = summary.iter().find(|s| s.section == "waitlist").unwrap();
    assert_eq!(waitlist.removed["waitlist_entries"], 1);
    assert_eq!(waitlist.kept.len(), 1, "{waitlist:?}");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM person) + (SELECT count(*) FROM waitlist_entry)
              + (SELECT count(*) FROM waitlist_token) + (SELECT count(*) FROM email_event)",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let suppressed: i64 = sqlx::query_scalar("SELECT count(*) FROM email_suppression")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(suppressed, 1);
    let dump = app.db.dump();
    assert!(!dump.contains("erase.me"), "no trace of the address");
}

async fn pexper_waitlist_unsubscribe(app: &TestApp, person: pexper_platform::person::PersonId) {
    let token = pexper_waitlist::UnsubscribeToken::issue(&app.platform.keyring, person);
    let res = app
        .client
        .post(app.url(&format!("/v1/unsubscribe?token={token}")))
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_broadcast_reaches_subscribers_once_and_unsubscribed_people_never() {
    let app = spawn_app().await;
    for who in ["one@example.com", "two@example.com", "gone@example.com"] {
        join(&app, who, json!({})).await;
    }
    signup(&app, json!({"email": "pending@example.com"})).await;
    app.smtp.wait_for(7, WAIT).await; // 3 × (confirm + welcome) + 1 confirm
    app.queue_drained().await;
    let gone = app
        .smtp
        .received()
        .into_iter()
        .find(|m| m.to == ["<gone@example.com>"] && m.header("List-Unsubscribe").is_some())
        .unwrap();
    let url = gone.header("List-Unsubscribe").unwrap();
    let url = url.trim_start_matches('<').trim_end_matches('>');
    app.client
        .post(url)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();

    let body = app.data_dir.path().join("update.txt");
    std::fs::write(
        &body,
        "Pexper 0.9 is out.\n\nLocal models now run 2x faster.",
    )
    .unwrap();
    let vars = app.cli_vars();
    let args = |dry: bool| {
        let mut a = vec![
            "mail",
            "broadcast",
            "--template",
            "product-update",
            "--subject",
            "Pexper 0.9",
            "--body-file",
            body.to_str().unwrap(),
            "--json",
        ];
        if dry {
            a.push("--dry-run");
        }
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let out = admin(&vars, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    assert_eq!(run(args(true))["queued"], 2, "dry run counts the audience");
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), 7, "a dry run sends nothing");

    // `--follow` returns once every copy is out, and says so. (On a thread of its own: the
    // server sending them runs on this test's runtime.)
    let mut follow = args(false);
    follow.push("--follow".to_owned());
    let out = {
        let vars = vars.clone();
        tokio::task::spawn_blocking(move || {
            admin(
                &vars,
                &follow.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap()
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let done: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(done["queued"], 2);
    assert_eq!(
        done["delivery"],
        json!({"recipients": 2, "outstanding": 0, "failed": 0})
    );
    let mail = app.smtp.wait_for(9, WAIT).await;
    let updates: Vec<_> = mail
        .iter()
        .filter(|m| m.header("Subject").as_deref() == Some("Pexper 0.9"))
        .collect();
    let mut to: Vec<_> = updates.iter().map(|m| m.to[0].clone()).collect();
    to.sort();
    assert_eq!(to, vec!["<one@example.com>", "<two@example.com>"]);
    for m in &updates {
        assert!(
            m.header("List-Unsubscribe")
                .unwrap()
                .contains("/v1/unsubscribe?token=")
        );
        assert_eq!(
            m.header("List-Unsubscribe-Post").unwrap(),
            "List-Unsubscribe=One-Click"
        );
        assert!(
            m.part("text/html")
                .unwrap()
                .contains("<p>Local models now run 2x faster.</p>")
        );
    }

    // Re-running the same broadcast sends nothing new.
    assert_eq!(run(args(false))["queued"], 0);
    app.queue_drained().await;
    assert_eq!(app.smtp.received().len(), 9);
}

#[tokio::test]
async fn the_admin_cli_shows_the_line_exports_addresses_and_invites_the_next_people() {
    let app = spawn_app().await;
    for who in ["a1@example.com", "a2@example.com", "a3@example.com"] {
        join(&app, who, json!({})).await;
    }
    app.smtp.wait_for(6, WAIT).await;
    app.queue_drained().await;
    let vars = app.cli_vars();

    let stats = admin(&vars, &["waitlist", "stats", "--json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: Value = serde_json::from_str(&stdout(&stats)).unwrap();
    assert_eq!(
        (stats["confirmed"].as_i64(), stats["subscribed"].as_i64()),
        (Some(3), Some(3))
    );

    let list = admin(&vars, &["waitlist", "list"]);
    assert!(
        !stdout(&list).contains("@example.com"),
        "list shows no address"
    );
    let csv = stdout(&admin(
        &vars,
        &[
            "waitlist",
            "export",
            "--format",
            "csv",
            "--reason",
            "launch list",
        ],
    ));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("position,email,status"));
    assert!(lines[1].starts_with("1,a1@example.com,confirmed"), "{csv}");

    let invite = admin(&vars, &["waitlist", "invite", "--count", "2", "--json"]);
    assert!(invite.status.success(), "{}", stderr(&invite));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&invite)).unwrap()["queued"],
        2
    );
    let mail = app.smtp.wait_for(8, WAIT).await;
    let mut invited: Vec<_> = mail[6..].iter().map(|m| m.to[0].clone()).collect();
    invited.sort();
    assert_eq!(invited, vec!["<a1@example.com>", "<a2@example.com>"]);
    let export: Value = serde_json::from_str(&stdout(&admin(
        &vars,
        &["waitlist", "export", "--json", "--reason", "launch list"],
    )))
    .unwrap();
    assert_eq!(export[0]["email"], "a3@example.com");
    assert_eq!(
        export[0]["position"], 1,
        "the one still waiting is now first"
    );
}

#[tokio::test]
async fn with_a_dkim_key_product_email_is_signed_over_both_list_unsubscribe_headers() {
    use base64::Engine;
    let seed = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let dir = tempdir::TempDir::new();
    let (pkcs8, rsa_pkcs8) = dkim::rsa_key(dir.path(), false);
    let pkcs1_dir = tempdir::TempDir::new();
    let (pkcs1, rsa_pkcs1) = dkim::rsa_key(pkcs1_dir.path(), true);
    assert!(
        pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{pkcs8:.30}"
    );
    assert!(
        pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{pkcs1:.30}"
    );
    let ed25519 =
        dkim::PublicKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key());
    for (key, public, algorithm) in [
        (format!("ed25519:{seed}"), &ed25519, "ed25519-sha256"),
        (pkcs8, &rsa_pkcs8, "rsa-sha256"),
        (pkcs1, &rsa_pkcs1, "rsa-sha256"),
    ] {
        let app = spawn_app_with(AppOptions {
            vars: vec![
                ("PEXPER_DKIM_SELECTOR", "mail2026".into()),
                ("PEXPER_DKIM_KEY", key),
            ],
            ..AppOptions::default()
        })
        .await;
        join(&app, "signed@example.com", json!({})).await;
        let mail = app.smtp.wait_for(2, WAIT).await;
        for m in &mail {
            let sig = m.header("DKIM-Signature").expect("signed");
            let tags: std::collections::HashMap<&str, &str> = sig
                .split(';')
                .filter_map(|t| t.trim().split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            assert_eq!(tags["d"], "pexper.com");
            assert_eq!(tags["s"], "mail2026");
            assert_eq!(tags["a"], algorithm);
            assert_eq!(tags["c"], "relaxed/relaxed");
            let signed: Vec<String> = tags["h"]
                .split(':')
                .map(|h| h.trim().to_ascii_lowercase())
                .collect();
            for h in [
                "from",
                "to",
                "subject",
                "date",
                "message-id",
                "mime-version",
                "content-type",
            ] {
                assert!(signed.contains(&h.to_owned()), "{h} in {signed:?}");
            }
            let is_product = m.header("List-Unsubscribe").is_some();
            // Product email signs both List-Unsubscribe headers (and once more, over-signed);
            // other email signs them absent.
            for h in ["list-unsubscribe", "list-unsubscribe-post"] {
                let listed = signed.iter().filter(|s| *s == h).count();
                assert_eq!(listed, if is_product { 2 } else { 1 }, "{h} in {signed:?}");
            }
            assert!(tags["b"].len() > 40);
            dkim::verify(m, public).unwrap();
            dkim::verify_with_dkimpy(m, &dkim::record(public)).unwrap();
            // Over-signed: each signed header listed once more than it appears, and the
            // headers our mail never carries listed absent.
            let mut names = signed.clone();
            names.dedup();
            for h in &names {
                let listed = signed.iter().filter(|s| *s == h).count();
                let present = m
                    .data
                    .split("\r\n\r\n")
                    .next()
                    .unwrap()
                    .lines()
                    .filter(|l| {
                        l.split(':')
                            .next()
                            .is_some_and(|n| n.eq_ignore_ascii_case(h))
                    });
                assert_eq!(listed, present.count() + 1, "{h} in {signed:?}");
            }
            // Any change to a signed header or to the body breaks the signature.
            let mut forged = vec![
                ("Subject: ", "Subject: Re: "),
                (
                    "Content-Type: multipart/alternative",
                    "Content-Type: text/plain",
                ),
                ("MIME-Version: 1.0", "MIME-Version: 2.0"),
                ("pexper", "pexpert"),
            ];
            if is_product {
                forged.push((
                    "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                    "List-Unsubscribe-Post: nothing",
                ));
            }
            // A second Subject, or a Reply-To, added above everything (an empty `from`).
            forged.push(("", "Subject: Urgent: reset your password\r\n"));
            forged.push(("", "Reply-To: attacker@example.net\r\n"));
            for (from, to) in forged {
                let mut forged = m.clone();
                assert!(forged.data.contains(from), "{from} in {}", m.data);
                let at = forged
                    .data
                    .rfind(from)
                    .filter(|_| !from.is_empty())
                    .unwrap_or(0);
                forged.data.replace_range(at..at + from.len(), to);
                assert!(dkim::verify(&forged, public).is_err(), "{from} → {to}");
                assert!(
                    !matches!(
                        dkim::verify_with_dkimpy(&forged, &dkim::record(public)),
                        Ok(true)
                    ),
                    "dkimpy: {from} → {to}"
                );
            }
        }
        assert!(
            mail.iter().any(|m| m.header("List-Unsubscribe").is_some()),
            "the welcome is product email"
        );
    }
}

/// A delivery status notification for the message `original` (as our relay received it),
/// sent back to its envelope sender; `final_recipient` is left out when `None`, as some
/// reporters do.
pub(crate) fn dsn(
    original: &smtp::ReceivedMail,
    final_recipient: Option<&str>,
    status: &str,
) -> String {
    let message_id = original.header("Message-ID").unwrap();
    let action = if status.starts_with('5') {
        "failed"
    } else {
        "delayed"
    };
    let recipient = final_recipient
        .map(|r| format!("Final-Recipient: rfc822; {r}\r\n"))
        .unwrap_or_default();
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n\
         To: {to}\r\nMessage-ID: <dsn-{status}-{message_id}>\r\nSubject: Undelivered Mail\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n\
         --r\r\nContent-Type: text/plain\r\n\r\nThe message could not be delivered.\r\n\
         --r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         {recipient}Action: {action}\r\nStatus: {status}\r\n\r\n\
         --r\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {message_id}\r\nSubject: x\r\n\r\n\
         --r--\r\n",
        to = original.from.trim_matches(['<', '>']),
    )
}

/// An ARF complaint about `original`, with the message attached as its receiver kept it
/// (its Return-Path, our bounce address, included) and no Original-Rcpt-To.
pub(crate) fn complaint(original: &smtp::ReceivedMail) -> String {
    let message_id = original.header("Message-ID").unwrap();
    format!(
        "From: feedback@isp.example\r\nTo: abuse@pexper.com\r\nMessage-ID: <arf-{message_id}>\r\n\
         Subject: Complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"r\"\r\n\r\n\
         --r\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
         --r\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\r\n\
         --r\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: {return_path}\r\nFrom: hello@pexper.com\r\n\
         Message-ID: {message_id}\r\nSubject: x\r\n\r\nx\r\n--r--\r\n",
        return_path = original.from,
    )
}

#[tokio::test]
async fn bounces_and_complaints_suppress_what_they_should_and_a_second_read_changes_nothing() {
    let postal = "Pexper Inc., 1 Example Street, Springfield";
    let app = spawn_app_with(AppOptions {
        vars: vec![("PEXPER_POSTAL_ADDRESS", postal.into())],
        ..AppOptions::default()
    })
    .await;
    for who in ["bounced", "softly", "complains", "stays"] {
        join(&app, &format!("{who}@example.net"), json!({})).await;
    }
    app.smtp.wait_for(8, WAIT).await;
    app.queue_drained().await;
    let welcome = |who: &str| {
        app.smtp
            .received()
            .into_iter()
            .find(|m| {
                m.to.contains(&format!("<{who}@example.net>"))
                    && m.header("Subject").unwrap().starts_with("You're")
            })
            .unwrap()
    };
    // Every message goes out from its own bounce address (VERP), and product email names the
    // company's postal address.
    let stays = welcome("stays");
    assert!(stays.from.starts_with("<bounces+"), "{}", stays.from);
    assert_ne!(stays.from, welcome("softly").from);
    assert!(stays.part("text/plain").unwrap().contains(postal));
    assert!(stays.part("text/html").unwrap().contains(postal));

    let dir = tempdir::TempDir::new();
    let mbox = dir.path().join("bounces.mbox");
    let separator = "From MAILER-DAEMON Mon Nov 30 12:00:00 2026\n";
    let reply =
        "From: someone@example.net\r\nTo: hello@pexper.com\r\nSubject: Re: hi\r\n\r\nThanks!\r\n";
    let reports = [
        dsn(&welcome("bounced"), Some("bounced@example.net"), "5.1.1"),
        dsn(&welcome("softly"), None, "4.2.2"),
        complaint(&welcome("complains")),
        reply.to_owned(),
    ];
    let text: String = reports
        .iter()
        .map(|r| format!("{separator}{}\n", r.replace("\r\n", "\n")))
        .collect();
    std::fs::write(&mbox, text).unwrap();
    let read = |app: &TestApp| {
        let out = admin(
            &app.cli_vars(),
            &["mail", "bounces", mbox.to_str().unwrap(), "--json"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    assert_eq!(
        read(&app),
        json!({"messages": 4, "not_reports": 1, "already_seen": 0, "unmatched": 0,
               "hard_bounces": 1, "soft_bounces": 1, "complaints": 1, "failed": 0})
    );
    assert_eq!(
        read(&app),
        json!({"messages": 4, "not_reports": 1, "already_seen": 3, "unmatched": 0,
               "hard_bounces": 0, "soft_bounces": 0, "complaints": 0, "failed": 0}),
        "a second read of the same mailbox changes nothing"
    );
    let reasons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, count(*) FROM email_suppression GROUP BY reason ORDER BY reason",
    )
    .fetch_all(&app.platform.pool)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        vec![("bounced".into(), 1), ("complained".into(), 1)]
    );
    assert_eq!(
        app.scalar("SELECT sum(soft_bounces) FROM email_event")
            .await,
        1,
        "the soft bounce, found by its bounce address alone, counted on its message"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM waitlist_entry WHERE NOT subscribed")
            .await,
        1,
        "the complaint unsubscribed its sender"
    );

    // Product news goes to the two left: not to the bounced address (still subscribed, but
    // suppressed), not to the one who complained.
    let before = app.smtp.received().len();
    broadcast(&app.cli_vars(), dir.path(), "News", false);
    app.queue_drained().await;
    let mut news: Vec<String> = app.smtp.received()[before..]
        .iter()
        .map(|m| m.to.join(","))
        .collect();
    news.sort();
    assert_eq!(news, vec!["<softly@example.net>", "<stays@example.net>"]);

    // What a person asks for still reaches a complainer, never a bounced address.
    for who in ["complains", "bounced"] {
        let res = app
            .client
            .post(app.url("/v1/privacy/requests"))
            .json(&json!({"email": format!("{who}@example.net"), "kind": "access"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    app.queue_drained().await;
    let asked: Vec<String> = app.smtp.received()[before + 2..]
        .iter()
        .map(|m| m.to.join(","))
        .collect();
    assert_eq!(asked, vec!["<complains@example.net>"]);
}

#[tokio::test]
async fn a_forged_bounce_report_silences_nobody_and_an_operator_can_lift_a_real_one() {
    let app = spawn_app().await;
    for who in ["stranger", "victim"] {
        join(&app, &format!("{who}@example.net"), json!({})).await;
    }
    app.smtp.wait_for(4, WAIT).await;
    app.queue_drained().await;
    let last_to = |who: &str| {
        app.smtp
            .received()
            .into_iter()
            .rev()
            .find(|m| m.to.contains(&format!("<{who}@example.net>")))
            .unwrap()
    };
    let dir = tempdir::TempDir::new();
    let mbox = dir.path().join("bounces.mbox");
    let read = |reports: &[String]| {
        let separator = "From MAILER-DAEMON Mon Nov 30 12:00:00 2026\n";
        let text: String = reports
            .iter()
            .map(|r| format!("{separator}{}\n", r.replace("\r\n", "\n")))
            .collect();
        std::fs::write(&mbox, text).unwrap();
        let out = admin(
            &app.cli_vars(),
            &["mail", "bounces", mbox.to_str().unwrap(), "--json"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    // Anyone can write to the bounce address: a report about a message we never sent, naming
    // the victim, and one about the stranger's own message that names the victim instead.
    let never_sent = format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+{job}@pexper.com\r\n\
         Message-ID: <forged-1@mx.example.net>\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n\
         --r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; victim@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--r--\r\n",
        job = uuid::Uuid::now_v7()
    );
    // And one about the victim's own message, by its job id (which every Message-ID shows)
    // but without the MAC that only our bounce addresses carry.
    let victims = last_to("victim");
    let job = victims
        .header("Message-ID")
        .unwrap()
        .trim_matches(['<', '>'])
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let without_mac = dsn(&victims, Some("victim@example.net"), "5.1.1")
        .replace(
            victims.from.trim_matches(['<', '>']),
            &format!("bounces+{job}@pexper.com"),
        )
        .replace("Message-ID: <dsn-", "Message-ID: <forged-dsn-");
    assert!(without_mac.contains(&format!("To: bounces+{job}@")));
    let forged = [
        never_sent,
        dsn(&last_to("stranger"), Some("victim@example.net"), "5.1.1"),
        without_mac,
    ];
    assert_eq!(
        read(&forged),
        json!({"messages": 3, "not_reports": 0, "already_seen": 0, "unmatched": 3,
               "hard_bounces": 0, "soft_bounces": 0, "complaints": 0, "failed": 0})
    );
    assert_eq!(app.count("email_suppression").await, 0);
    // A complaint that names the victim's message by its Message-ID alone (a mailbox
    // provider's report without the original's Return-Path, or a forgery) unsubscribes them
    // from product email, and stops nothing else.
    let by_message_id =
        complaint(&victims).replace(&format!("Return-Path: {}\r\n", victims.from), "");
    assert!(!by_message_id.contains("Return-Path"));
    assert_eq!(read(&[by_message_id])["complaints"], 1);
    assert_eq!(app.count("email_suppression").await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM waitlist_entry WHERE NOT subscribed")
            .await,
        1
    );

    // A real bounce of the victim's message stops their mail; the operator can lift it,
    // saying why, and the audit trail records it (without the address).
    let real = [dsn(&last_to("victim"), Some("victim@example.net"), "5.1.1")];
    assert_eq!(read(&real)["hard_bounces"], 1);
    assert_eq!(app.count("email_suppression").await, 1);
    let unsuppress = |email: &str| {
        let out = admin(
            &app.cli_vars(),
            &[
                "mail",
                "unsuppress",
                "--email",
                email,
                "--reason",
                "the mailbox works again",
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    assert_eq!(
        unsuppress("victim@example.net"),
        json!({"unsuppressed": true, "was": "bounced"})
    );
    assert_eq!(app.count("email_suppression").await, 0);
    assert_eq!(
        unsuppress("victim@example.net"),
        json!({"unsuppressed": false, "was": null})
    );
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT event, detail FROM privacy_audit ORDER BY seq")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "address_unsuppressed");
    assert!(
        audit[0].1.contains("bounced") && audit[0].1.contains("the mailbox works again"),
        "{audit:?}"
    );
    assert!(!audit[0].1.contains("victim"));
}

/// `mail broadcast` of a product update with this subject (and the body "News."), as the
/// operator runs it; its JSON. Another subject is another broadcast.
pub(crate) fn broadcast(
    vars: &[(String, String)],
    dir: &std::path::Path,
    subject: &str,
    dry_run: bool,
) -> Value {
    let body = dir.join("news.txt");
    std::fs::write(&body, "News.").unwrap();
    let mut args = vec![
        "mail",
        "broadcast",
        "--template",
        "product-update",
        "--subject",
        subject,
        "--body-file",
        body.to_str().unwrap(),
        "--json",
    ];
    if dry_run {
        args.push("--dry-run");
    }
    let out = admin(vars, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The suppression key a signup's job carries for `address`, as its payload spells it.
fn suppression_key(app: &TestApp, address: &str) -> String {
    use base64::Engine;
    let address = pexper_platform::address::EmailAddress::parse(address).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pexper_platform::suppression::hash(
        &app.platform.keyring,
        &address,
    ))
}

async fn suppress(app: &TestApp, address: &str, reason: pexper_platform::suppression::Reason) {
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let address = pexper_platform::address::EmailAddress::parse(address).unwrap();
    pexper_platform::suppression::suppress(&mut conn, &app.platform.keyring, &address, reason)
        .await
        .unwrap();
}

/// A new signup's job asks whether its address is suppressed in the same read as its decision,
/// with the address's suppression key that the signup put in its payload; and the answer is
/// used only for the address the job actually reads.
#[tokio::test]
async fn a_new_signup_s_confirmation_never_goes_to_a_bounced_address_but_still_reaches_a_complainer()
 {
    use pexper_platform::suppression::Reason;
    let app = spawn_app().await;
    // The payloads of the signups' jobs, as they are queued (this test's instrument).
    sqlx::raw_sql(
        "CREATE TABLE queued_payload (payload jsonb NOT NULL);
         CREATE FUNCTION log_payload() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO queued_payload VALUES (NEW.payload); RETURN NULL; END $$;
         CREATE TRIGGER log_payload AFTER INSERT ON job FOR EACH ROW
             WHEN (NEW.kind = 'waitlist.signup_mail') EXECUTE FUNCTION log_payload();",
    )
    .execute(&app.platform.pool)
    .await
    .unwrap();
    suppress(&app, "bounced@example.net", Reason::Bounced).await;
    suppress(&app, "complains@example.net", Reason::Complained).await;
    let who = ["bounced", "complains", "fresh"].map(|w| format!("{w}@example.net"));
    for address in &who {
        let res = signup(&app, json!({ "email": address })).await;
        assert_eq!(res.status(), 202);
    }
    app.smtp.wait_for(2, WAIT).await;
    app.queue_drained().await;
    let recipients = |app: &TestApp| {
        let mut to: Vec<String> = app.smtp.received().iter().map(|m| m.to.join(",")).collect();
        to.sort();
        to
    };
    assert_eq!(
        recipients(&app),
        vec!["<complains@example.net>", "<fresh@example.net>"]
    );
    let mut keys: Vec<String> =
        sqlx::query_scalar("SELECT payload ->> 'suppression_key' FROM queued_payload")
            .fetch_all(&app.platform.pool)
            .await
            .unwrap();
    keys.sort();
    let mut expected: Vec<String> = who.iter().map(|a| suppression_key(&app, a)).collect();
    expected.sort();
    assert_eq!(keys, expected, "each job carries its address's key");

    // A job whose key is another's (here, an unsuppressed address's, swapped in as it is
    // queued) is not believed: the check is asked again for the address the job read.
    suppress(&app, "swapped@example.net", Reason::Bounced).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION swap_key() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN NEW.payload := jsonb_build_object('suppression_key', '{}'); RETURN NEW; END $$;
         CREATE TRIGGER swap_key BEFORE INSERT ON job FOR EACH ROW
             WHEN (NEW.kind = 'waitlist.signup_mail') EXECUTE FUNCTION swap_key();",
        suppression_key(&app, "fresh@example.net")
    )))
    .execute(&app.platform.pool)
    .await
    .unwrap();
    let res = signup(&app, json!({"email": "swapped@example.net"})).await;
    assert_eq!(res.status(), 202);
    eventually(WAIT, "the swapped key's job to run", || async {
        let left = app
            .scalar("SELECT count(*) FROM job WHERE kind = 'waitlist.signup_mail'")
            .await;
        let queued = app.scalar("SELECT count(*) FROM queued_payload").await;
        (left == 0 && queued == 4).then_some(())
    })
    .await;
    assert_eq!(
        recipients(&app),
        vec!["<complains@example.net>", "<fresh@example.net>"],
        "nothing to the bounced address whose job carried another's key"
    );
}
