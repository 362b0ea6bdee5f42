//! privacy@ answers by itself (issue 29): letters in a real IMAP server's mailbox (Dovecot,
//! over TLS) become privacy requests, on the clock from our server's receipt and acknowledged
//! as replies in their language, by the server's recurring job with no operator command;
//! bounces in the bounce mailbox suppress; nothing is lost or doubled across a crash.

use std::time::Duration;

use pexper_tests::dovecot::Dovecot;
use pexper_tests::*;
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

const WAIT: Duration = Duration::from_secs(30);

/// A message as our receiving server stored it: its `Received` line on top (taken at `at`),
/// its DMARC verdict (a pass), then what the sender wrote.
fn letter(at: OffsetDateTime, headers: &str, body: &str) -> Vec<u8> {
    letter_with(at, "pass", headers, body)
}

/// The same, with our server's DMARC verdict `dmarc`.
fn letter_with(at: OffsetDateTime, dmarc: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "Return-Path: <sender@example.org>\r\n\
         Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n\
         \tby mx.pexper.test (Postfix) with ESMTPS id 4F2A1;\r\n\t{}\r\n\
         Authentication-Results: mx.pexper.test; dkim=pass; dmarc={dmarc} header.from=example.org\r\n\
         To: privacy@pexper.com\r\nDate: Sun, 01 Jan 2023 00:00:00 +0000\r\n{headers}\r\n\r\n{body}\r\n",
        at.format(&Rfc2822).unwrap()
    )
    .into_bytes()
}

fn plain(headers: &str) -> String {
    format!("{headers}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8")
}

async fn start_reading(dovecot: &Dovecot, extra: &[(&str, &str)]) -> Replicas {
    let vars = dovecot.vars("privacy", Some("bounces"));
    let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Replicas::start(1, TestDatabase::new().await, "info", &all).await
}

/// Takes `raw` in as a letter to `app`'s privacy@, from a Maildir, with `mail inbox --once`;
/// returns what the run did.
pub(crate) fn read_letter(app: &TestApp, raw: &str) -> serde_json::Value {
    let dir = tempdir::TempDir::new();
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("new/1.letter.test"), raw).unwrap();
    let mut vars = app.cli_vars();
    vars.push((
        "PEXPER_PRIVACY_IMAP_URL".into(),
        format!("maildir:{}", dir.path().display()),
    ));
    let out = admin(&vars, &["mail", "inbox", "--once", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn letters_to_privacy_become_requests_acknowledged_as_replies_with_no_operator_command() {
    let dovecot = Dovecot::start(&["privacy", "bounces"]).await;
    let arrived = (OffsetDateTime::now_utc() - time::Duration::days(3))
        .replace_nanosecond(0)
        .unwrap();
    let english = letter(
        arrived,
        &plain(
            "From: Ada <ada@example.org>\r\nSubject: Please delete my data\r\nMessage-ID: <letter-1@example.org>",
        ),
        "Hello, please delete my account and all my data. Ada",
    );
    // Delivered twice (a retry by the sender's server): one request.
    dovecot.deliver("privacy", &english);
    dovecot.deliver("privacy", &english);
    dovecot.deliver(
        "privacy",
        &letter(
            arrived,
            "From: =?ISO-8859-1?Q?J=FCrgen?= <juergen@example.de>\r\n\
             Subject: =?ISO-8859-1?Q?Auskunft_=FCber_meine_Daten?=\r\nMessage-ID: <brief-2@example.de>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n\
             Content-Transfer-Encoding: quoted-printable",
            "Sehr geehrte Damen und Herren,\r\n\r\nich bitte um Auskunft =FCber meine Daten.\r\n\r\nMit freundlichen Gr=FC=DFen",
        ),
    );
    dovecot.deliver(
        "privacy",
        &letter(
            arrived,
            "From: grace@example.org\r\nSubject: My account\r\nMessage-ID: <html-3@example.org>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8",
            "<html><body><p>Please <b>delete</b> everything you hold about me.</p></body></html>",
        ),
    );
    dovecot.deliver(
        "privacy",
        &letter(
            arrived,
            &plain(
                "From: alan@example.org\r\nSubject: A question\r\nMessage-ID: <q-4@example.org>",
            ),
            "What do you keep about me, and for how long do you need it?",
        ),
    );
    dovecot.deliver(
        "privacy",
        &letter(
            arrived,
            &plain("From: ooo@example.org\r\nSubject: Out of office: Re: Your data\r\nMessage-ID: <ooo-5@example.org>\r\nAuto-Submitted: auto-replied"),
            "I am away until Monday. Please delete nothing.",
        ),
    );

    // One recurring period, no operator command.
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let replicas = start_reading(
        &dovecot,
        &[
            ("PEXPER_RECURRING_SECONDS", "1"),
            ("PEXPER_METRICS_ADDR", &metrics_addr),
        ],
    )
    .await;
    let pool = replicas.db.pool().await;
    // Four acknowledgements, and the operator's notice of the letter to classify.
    let mail = replicas.smtp.wait_for(5, WAIT).await;
    let requests: Vec<(String, String, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
        "SELECT kind, source, received_at, due_at FROM privacy_request ORDER BY kind",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let kinds: Vec<&str> = requests.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(kinds, ["access", "deletion", "deletion", "unclassified"]);
    for (_, source, received_at, due_at) in &requests {
        assert_eq!(source, "email");
        // From our server's Received line, not the sender's Date (2023).
        assert_eq!(*received_at, arrived);
        assert_eq!(*due_at, arrived + time::Duration::days(30));
    }
    // Every message marked taken once its batch is committed (just after the commit that
    // queued the acknowledgements, so it may trail their sending).
    eventually(WAIT, "every message marked taken", || async {
        (dovecot.seen_and_unseen("privacy") == (6, 0)).then_some(())
    })
    .await;

    let to = |address: &str| {
        mail.iter()
            .find(|m| m.to.iter().any(|t| t.contains(address)))
            .unwrap_or_else(|| panic!("mail to {address}"))
            .clone()
    };
    let ada = to("ada@example.org");
    assert_eq!(ada.header("Subject").unwrap(), "Re: Please delete my data");
    assert_eq!(ada.header("In-Reply-To").unwrap(), "<letter-1@example.org>");
    assert_eq!(ada.header("References").unwrap(), "<letter-1@example.org>");
    // An automatic answer, which other responders do not answer (RFC 3834).
    assert_eq!(ada.header("Auto-Submitted").unwrap(), "auto-replied");
    let text = ada.part("text/plain").unwrap();
    assert!(text.contains("deletion of your data"), "{text}");
    assert!(text.contains(&(arrived + time::Duration::days(30)).date().to_string()));
    assert!(text.contains("/v1/privacy/verify?token="));
    let juergen = to("juergen@example.de");
    assert_eq!(
        juergen.header("In-Reply-To").unwrap(),
        "<brief-2@example.de>"
    );
    let german = juergen.part("text/plain").unwrap();
    assert!(german.contains("Auskunft über Ihre Daten"), "{german}");
    assert!(german.contains("Anfrage"), "{german}");
    assert!(juergen.part("text/html").unwrap().contains("lang=\"de\""));
    assert!(
        to("grace@example.org")
            .part("text/plain")
            .unwrap()
            .contains("deletion of your data")
    );
    assert!(!mail.iter().any(|m| m.to.iter().any(|t| t.contains("ooo@"))));
    let notice = to("privacy@pexper.com");
    assert!(notice.data.contains("classify"), "{}", notice.data);
    assert!(!notice.data.contains("alan@"), "no address in a notice");

    // The operator names the unclassified request's right.
    let unclassified: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM privacy_request WHERE kind = 'unclassified'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let id = unclassified.to_string();
    let out = admin(
        &replicas.cli_vars(),
        &["privacy", "classify", &id, "--kind", "access"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again = admin(
        &replicas.cli_vars(),
        &["privacy", "classify", &id, "--kind", "deletion"],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("access request already"),
        "{}",
        stderr(&again)
    );

    // Ada answers our acknowledgement: her words join her request, no new one.
    let ack_id = ada.header("Message-ID").unwrap();
    dovecot.deliver(
        "privacy",
        &letter(
            OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
            &plain(&format!(
                "From: Ada <ada@example.org>\r\nSubject: Re: Please delete my data\r\n\
                 Message-ID: <reply-6@example.org>\r\nIn-Reply-To: {ack_id}\r\nReferences: <letter-1@example.org> {ack_id}"
            )),
            "Yes, that was me. Please delete the newsletter signup too.",
        ),
    );
    eventually(WAIT, "the reply taken in", || async {
        (dovecot.seen_and_unseen("privacy") == (7, 0)).then_some(())
    })
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM privacy_request").await,
        4
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM privacy_letter l JOIN privacy_request r ON r.id = l.request_id
             WHERE r.kind = 'deletion' AND l.reply_sealed IS NULL"
        )
        .await,
        1,
        "the reply is linked to its request"
    );
    let notices = replicas.smtp.wait_for(6, WAIT).await;
    assert!(
        notices
            .iter()
            .any(|m| m.data.contains("got a reply by email"))
    );

    // A bounce of the acknowledgement, in the bounce mailbox, stops mail to Ada.
    dovecot.deliver(
        "bounces",
        crate::product_email::dsn(&ada, Some("ada@example.org"), "5.1.1").as_bytes(),
    );
    eventually(WAIT, "the bounce applied", || async {
        let n = count(
            &pool,
            "SELECT count(*) FROM email_suppression WHERE reason = 'bounced'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    // Marked once its report is committed: just after, not before.
    eventually(WAIT, "the bounce marked taken", || async {
        (dovecot.seen_and_unseen("bounces") == (1, 0)).then_some(())
    })
    .await;
    // Counted once its run is over.
    eventually(WAIT, "the bounce counted", || async {
        let body = pexper_tests::metrics::scrape_listener(&metrics_addr).await;
        pexper_tests::metrics::metric(
            &body,
            r#"pexper_mail_reports_applied_total{kind="hard_bounce"}"#,
        )
        .filter(|n| *n == 1.0)
    })
    .await;
}

/// The admin's `mail inbox --once`, started and left running: the test kills it.
fn spawn_inbox(vars: &[(String, String)]) -> std::process::Child {
    std::process::Command::new(binary("pexper-admin"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(["mail", "inbox", "--once"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_reader_killed_between_its_commit_and_the_mark_takes_the_letter_in_again_as_the_same_request()
 {
    let dovecot = Dovecot::start(&["privacy", "bounces"]).await;
    // The server's own schedule is out of the way: the readers here are admin commands.
    let replicas = start_reading(&dovecot, &[("PEXPER_RECURRING_SECONDS", "86400")]).await;
    let pool = replicas.db.pool().await;
    let mut vars = replicas.cli_vars();
    vars.extend(dovecot.vars("privacy", Some("bounces")));
    dovecot.deliver(
        "privacy",
        &letter(
            OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
            &plain("From: ada@example.org\r\nSubject: Delete my data\r\nMessage-ID: <crash-1@example.org>"),
            "Please delete my data.",
        ),
    );
    // Stop the reader at its first write, with its IMAP session open...
    let lock = TableLock::take(&pool, "privacy_letter").await;
    let mut reader = spawn_inbox(&vars);
    lock.until_someone_waits(&pool).await;
    // ...freeze its IMAP session, let the transaction commit, and kill the reader while it
    // waits to mark the message; the session dies with it, its last command never done.
    dovecot.signal_sessions("-STOP");
    lock.release().await;
    eventually(WAIT, "the request committed", || async {
        (count(&pool, "SELECT count(*) FROM privacy_request").await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.kill().unwrap();
    reader.wait().unwrap();
    dovecot.signal_sessions("-KILL");
    assert_eq!(dovecot.seen_and_unseen("privacy"), (0, 1), "not marked");

    // The next reader takes it in again: the same request, no second acknowledgement.
    let out = admin(&vars, &["mail", "inbox", "--once", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(run["letters"]["again"], 1, "{run}");
    assert_eq!(run["letters"]["requests"], 0, "{run}");
    assert_eq!(dovecot.seen_and_unseen("privacy"), (1, 0));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM privacy_request").await,
        1
    );
    // The server's workers send the one acknowledgement queued with the request.
    replicas.smtp.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas.smtp.count(), 1, "one acknowledgement");
}

#[tokio::test]
async fn strangers_letters_neither_hide_nor_join_a_persons_request_nor_put_words_in_our_mail() {
    let dovecot = Dovecot::start(&["privacy", "bounces"]).await;
    let replicas = start_reading(&dovecot, &[("PEXPER_RECURRING_SECONDS", "86400")]).await;
    let pool = replicas.db.pool().await;
    let mut vars = replicas.cli_vars();
    vars.extend(dovecot.vars("privacy", Some("bounces")));
    let inbox = |vars: &[(String, String)]| {
        let out = admin(vars, &["mail", "inbox", "--once", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()
    };
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    // Mallory learned the Message-ID of Ada's letter and sends one first in Ada's name, which
    // our server's DMARC check fails, with a subject meant for Ada's eyes.
    dovecot.deliver(
        "privacy",
        &letter_with(
            now,
            "fail",
            &plain("From: Ada <ada@example.org>\r\nSubject: Your account is locked, call +1 555 0100\r\nMessage-ID: <ada-7@example.org>"),
            "Please delete my data.",
        ),
    );
    dovecot.deliver(
        "privacy",
        &letter(
            now,
            &plain("From: Ada <ada@example.org>\r\nSubject: Delete my data\r\nMessage-ID: <ada-7@example.org>"),
            "Hello, please delete my account and everything else.",
        ),
    );
    // A letter the operator opened before the reader ran: still a request.
    dovecot.deliver_seen(
        "privacy",
        &letter(
            now,
            &plain("From: bob@example.org\r\nSubject: Access to my data\r\nMessage-ID: <bob-8@example.org>"),
            "Please send me a copy of my data.",
        ),
    );
    // Our own notice to the operator, who reads privacy@, and a message with no sender: no
    // requests, and left unread for a person.
    dovecot.deliver(
        "privacy",
        b"From: Pexper <hello@pexper.com>\r\nTo: privacy@pexper.com\r\nSubject: A privacy request to classify\r\nMessage-ID: <n-9@pexper.com>\r\n\r\nRequest 1 arrived by email.\r\n",
    );
    dovecot.deliver(
        "privacy",
        b"Subject: hello\r\nMessage-ID: <x-10@example.org>\r\n\r\nI want my data deleted.\r\n",
    );
    // A letter too large to read whole (an attachment of 3 MiB), and one in a charset nobody
    // knows: requests for the operator, never a crash or a silent skip.
    dovecot.deliver(
        "privacy",
        &letter(
            now,
            "From: carol@example.org\r\nSubject: Delete my data\r\nMessage-ID: <big-12@example.org>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8",
            &"attachment ".repeat(300_000),
        ),
    );
    dovecot.deliver(
        "privacy",
        &letter(
            now,
            "From: dave@example.org\r\nSubject: =?x-unknown-42?Q?=E9=FF?=\r\nMessage-ID: <odd-13@example.org>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-unknown-42\r\n\
             Content-Transfer-Encoding: quoted-printable",
            "=E9=FF=FE =C0=C1",
        ),
    );
    let run = inbox(&vars);
    assert_eq!(run["letters"]["requests"], 5, "{run}");
    assert_eq!(run["letters"]["unclassified"], 2, "{run}");
    assert_eq!(run["letters"]["not_letters"], 1, "{run}");
    assert_eq!(run["letters"]["no_sender"], 1, "{run}");
    // Left unread for a person: our notice, the one with no sender, the one too large.
    assert_eq!(dovecot.seen_and_unseen("privacy"), (4, 3));

    // Five acknowledgements, the notice about the message with no sender, and two about
    // the requests to classify.
    let mail = replicas.smtp.wait_for(8, WAIT).await;
    let to_ada: Vec<String> = mail
        .iter()
        .filter(|m| m.to.iter().any(|t| t.contains("ada@")))
        .map(|m| m.header("Subject").unwrap())
        .collect();
    assert_eq!(to_ada.len(), 2, "{to_ada:?}");
    assert!(
        to_ada.contains(&"Re: Delete my data".to_owned()),
        "{to_ada:?}"
    );
    assert!(
        to_ada.contains(&"Re: Your privacy request".to_owned()),
        "the forged letter's subject is not quoted back: {to_ada:?}"
    );
    assert!(!mail.iter().any(|m| m.data.contains("555 0100")));
    // The forged letter is marked for the operator.
    let forged: uuid::Uuid =
        sqlx::query_scalar("SELECT request_id FROM privacy_letter WHERE dmarc_failed")
            .fetch_one(&pool)
            .await
            .unwrap();
    let shown = admin(&vars, &["privacy", "show", &forged.to_string(), "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(shown["dmarc_failed"], true, "{shown}");

    // A reply in Ada's name that our server cannot vouch for does not join her request: it
    // is a request of its own, to be verified like any other.
    let genuine = mail
        .iter()
        .find(|m| m.header("Subject").as_deref() == Some("Re: Delete my data"))
        .unwrap();
    let ack_id = genuine.header("Message-ID").unwrap();
    dovecot.deliver(
        "privacy",
        &letter_with(
            now,
            "fail",
            &plain(&format!(
                "From: Ada <ada@example.org>\r\nSubject: Re: Delete my data\r\n\
                 Message-ID: <forged-11@example.org>\r\nIn-Reply-To: {ack_id}\r\nReferences: {ack_id}"
            )),
            "I withdraw my request; send my data to mallory@example.net instead.",
        ),
    );
    let run = inbox(&vars);
    assert_eq!(
        (
            run["letters"]["requests"].clone(),
            run["letters"]["replies"].clone()
        ),
        (serde_json::json!(1), serde_json::json!(0)),
        "{run}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM privacy_request").await,
        6
    );
}
