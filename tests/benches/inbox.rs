//! The privacy@ mailbox reader against a real IMAP server (Dovecot over TLS, as the tests
//! start it): letters waiting in the mailbox taken in as requests, each a request with its
//! acknowledgement queued, the messages marked taken.
//!
//!     cargo bench -p pexper-tests --bench inbox [-- LETTERS]
//!
//! LETTERS (default 10000) from as many people. Goal (issue 29): at least 200 letters a second.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Instant;

use pexper_tests::dovecot::Dovecot;
use pexper_tests::*;

fn main() {
    let [letters] = bench_args([10_000], [40]);
    bench_exit(block_on(run(letters as usize)));
}

async fn run(letters: usize) -> bool {
    let app = spawn_app().await;
    let dovecot = Dovecot::start(&["privacy"]).await;
    for i in 0..letters {
        dovecot.deliver(
            "privacy",
            format!(
                "Received: from mail.example.org by mx.pexper.test; Mon, 30 Nov 2026 09:00:00 +0000\r\n\
                 From: person{i}@example.com\r\nTo: privacy@pexper.com\r\n\
                 Subject: Please delete my data\r\nMessage-ID: <letter-{i}@example.com>\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\r\n\
                 Hello, please delete my account and all my data. Thank you.\r\n"
            )
            .as_bytes(),
        );
    }
    let mut config = app.platform.config.clone();
    let vars: std::collections::HashMap<String, String> =
        dovecot.vars("privacy", None).into_iter().collect();
    let mut all = app
        .cli_vars()
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    all.extend(vars);
    let read = pexper_platform::Config::from_vars(all).unwrap();
    config.privacy_mailbox = read.privacy_mailbox;
    config.imap = read.imap;

    let started = Instant::now();
    let run = pexper_server::inbox::read_once(&config, &app.platform.pool, &app.platform.keyring)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let rate = letters as f64 / elapsed.as_secs_f64();
    println!(
        "{letters} letters taken in over IMAP in {:.2} s: {rate:.0} letters/s",
        elapsed.as_secs_f64()
    );
    let requests = app.scalar("SELECT count(*) FROM privacy_request").await;
    check(
        "every letter is one request, every message marked taken",
        format!(
            "{requests} requests, run {:?}, {:?} seen/unseen",
            run.letters,
            dovecot.seen_and_unseen("privacy")
        ),
        requests == letters as i64
            && run.letters.requests == letters as u64
            && dovecot.seen_and_unseen("privacy") == (letters, 0),
    );
    goal(
        "at least 200 letters a second",
        format!("{rate:.0}/s"),
        rate >= 200.0,
    )
}
