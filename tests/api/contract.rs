//! The API contract: schemathesis generates requests from `/openapi.json` (its coverage phase,
//! `EXAMPLES` fuzzed cases per operation, and the stateful phase) against the real
//! `pexper-server` binary, with every check, and must find nothing: no 5xx, no status, content
//! type, header or body the document does not state, no schema-valid request refused and no
//! schema-violating one accepted. Where a check cannot apply to generated data (a token from an
//! email, a licence signature, a password only the account's owner knows)
//! `tests/contract/schemathesis.toml` says so with the reason.
//!
//! The server holds data first: an account with a purchase and its licence, an announced
//! policy, waitlist and support entries; so answers with dates and lists are validated against
//! the document with real values in them. The hooks (`tests/contract/hooks.py`) get the fuzzer
//! past the door: every request from its own client address (the server trusts the loopback
//! proxy here, so the rate limiter does not hide the logic), webhooks signed with the run's
//! secret, and the signed-in operations sent with a real session and its CSRF token. They count
//! the answers per operation and phase: each operation that takes input must have had its
//! `EXAMPLES` fuzzed cases answered, each must have answered past the door (something other
//! than 403, 413, 415 or 429) at least once, and each whose success answer holds a date must
//! have given one.
//!
//! The run is bounded by cases, not by the clock: `EXAMPLES` generated requests per operation
//! in the fuzzing phase (and as many stateful scenarios), beside the coverage phase's. A time budget
//! (`--max-time`) made a loaded machine test less, and always took all of it: 180 s gave each
//! operation 135 to 400 answers alone, and 120 s left one short of 50 beside the rest of the
//! suite. 100 per operation take about 70 s alone on a 2-core machine.
//!
//! Needs `schemathesis` (PyPI, the version `.ci/run` pins); skipped with a note without it,
//! unless `PEXPER_REQUIRE_SCHEMATHESIS` is set (CI). The seed differs from run to run and is
//! printed; `PEXPER_CONTRACT_SEED` replays one.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pexper_tests::*;
use serde_json::{Value, json};

/// The schemathesis version the contract was written against (`.ci/run` installs it).
const SCHEMATHESIS: &str = "4.32.5";

fn installed_version() -> Option<String> {
    let out = Command::new("schemathesis")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    out.status
        .success()
        .then(|| text.trim().rsplit(' ').next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_the_openapi_document_does_not_state() {
    let Some(version) = installed_version() else {
        assert!(
            std::env::var("PEXPER_REQUIRE_SCHEMATHESIS").is_err(),
            "PEXPER_REQUIRE_SCHEMATHESIS is set but schemathesis is not installed"
        );
        eprintln!("skipped: pip install schemathesis=={SCHEMATHESIS} to run the contract test");
        return;
    };
    assert_eq!(
        version, SCHEMATHESIS,
        "the contract is checked with schemathesis {SCHEMATHESIS}"
    );
    let server = ServerProcess::start_with("warn", &[("PEXPER_TRUSTED_PROXY", "127.0.0.1")]).await;
    let base = server.base.clone();
    hold_data(&server).await;
    let seed = std::env::var("PEXPER_CONTRACT_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        (now.unwrap().as_nanos() % 1_000_000_007).to_string()
    });
    eprintln!("schemathesis seed {seed}: PEXPER_CONTRACT_SEED={seed} replays this run");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    let scratch = tempdir::TempDir::new();
    let counts_file = scratch.path().join("counts.json");
    let document: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let (base, seed, counts_file) = (base.clone(), seed.clone(), counts_file.clone());
        move || {
            let mut cmd = Command::new("schemathesis");
            cmd.current_dir(&dir)
                .env("SCHEMATHESIS_HOOKS", "hooks")
                .env("PYTHONPATH", &dir)
                .env("NO_COLOR", "1")
                .env("PEXPER_CONTRACT_BASE", &base)
                .env("PEXPER_CONTRACT_SECRET", stripe::SECRET)
                .env("PEXPER_CONTRACT_EMAIL", ACCOUNT)
                .env("PEXPER_CONTRACT_PASSWORD", PASSWORD)
                .env("PEXPER_CONTRACT_COUNTS", &counts_file)
                .args(["--config-file", "schemathesis.toml", "run"])
                .arg(format!("{base}/openapi.json"))
                .args(["--phases", "coverage,fuzzing,stateful"])
                .args(["--max-examples", &EXAMPLES.to_string(), "--seed", &seed]);
            // A run that hangs fails here.
            output_within(cmd, Duration::from_secs(600), "schemathesis")
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let log = server.stop().await;
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}):\n{report}\n{}\nserver log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every operation the document states was reached, often enough and past the door…
    let counts: Counts =
        serde_json::from_str(&std::fs::read_to_string(&counts_file).unwrap()).unwrap();
    let answered =
        |operation: &str, wanted: &dyn Fn(&str) -> bool| sum(&counts.answers, operation, wanted);
    let fuzzed =
        |operation: &str, wanted: &dyn Fn(&str) -> bool| sum(&counts.fuzzed, operation, wanted);
    let mut thin = Vec::new();
    let mut at_the_door = Vec::new();
    let mut undated = Vec::new();
    let mut reached = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let label = format!("{} {path}", method.to_uppercase());
            let n = answered(&label, &|_| true);
            let fuzzed_n = fuzzed(&label, &|_| true);
            reached.push(format!("{label}: {n} ({fuzzed_n} fuzzed)"));
            // An operation that takes nothing has one request to make: the coverage phase
            // sends it a few times, and the fuzzer has nothing to vary.
            let takes_input = operation.get("requestBody").is_some()
                || operation["parameters"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty());
            if (takes_input && fuzzed_n < EXAMPLES) || n < MIN_CASES_WITHOUT_INPUT {
                thin.push(format!("{label}: {n} ({fuzzed_n} fuzzed)"));
            }
            // Refused before the logic (forbidden, too large, not JSON, throttled) every time,
            // an operation would be fuzzed in name only. The fuzzing phase's answers only: the
            // coverage phase also sends each path other methods, whose 405s would count here.
            if fuzzed(&label, &|s| !["403", "413", "415", "429"].contains(&s)) == 0 {
                at_the_door.push(label.clone());
            }
            // …and each whose success answer holds a date or a time gave one, with data: the
            // document's format for it was checked against a real value.
            if success_has_a_date(&document, operation)
                && answered(&label, &|s| s.starts_with('2')) == 0
            {
                undated.push(label);
            }
        }
    }
    eprintln!("answers per operation: {reached:?}");
    assert!(
        thin.is_empty(),
        "operations reached fewer times than required (seed {seed}): {thin:?}\n{report}"
    );
    assert!(
        at_the_door.is_empty(),
        "operations only ever refused at the door (seed {seed}): {at_the_door:?}"
    );
    assert!(
        undated.is_empty(),
        "operations whose answer has a date never answered with one (seed {seed}): {undated:?}"
    );
}

/// The requests the fuzzing phase generates for each operation, all of which each operation
/// that takes input must have answered; and the answers every operation must get in all (one
/// that takes nothing has one request, sent a few times by the coverage phase).
const EXAMPLES: u64 = 100;
const MIN_CASES_WITHOUT_INPUT: u64 = 5;

/// What the hooks counted, by "METHOD /path STATUS": every answer, and the fuzzing phase's.
#[derive(serde::Deserialize)]
struct Counts {
    answers: HashMap<String, u64>,
    fuzzed: HashMap<String, u64>,
}

/// The answers `counts` holds for `operation` ("METHOD /path") with a status `wanted` takes.
fn sum(counts: &HashMap<String, u64>, operation: &str, wanted: &dyn Fn(&str) -> bool) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| {
            k.rsplit_once(' ')
                .is_some_and(|(op, status)| op == operation && wanted(status))
        })
        .map(|(_, n)| n)
        .sum()
}

/// The account the hooks sign in as.
const ACCOUNT: &str = "contract@example.com";
const PASSWORD: &str = "seven quiet rivers bend past old mills";

/// What a live server holds: an account with a purchase and its licence, an announced policy,
/// a waitlist entry, a support request and a privacy request.
async fn hold_data(server: &ServerProcess) {
    let client = reqwest::Client::new();
    let base = &server.base;
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .header("X-Forwarded-For", "192.0.2.1")
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/v1/accounts", json!({"email": ACCOUNT}))
            .await
            .unwrap()
            .status(),
        202
    );
    let mail = server.smtp.wait_for(1, Duration::from_secs(20)).await[0].clone();
    let link = mail.link(&format!("{base}/v1/accounts/verify?token="));
    assert_eq!(
        choose_password(&client, &link, base, PASSWORD)
            .await
            .status(),
        200
    );
    let paid = stripe::Checkout::new(ACCOUNT).session_event("checkout.session.completed", "paid");
    assert_eq!(stripe::deliver(&client, base, &paid).await.status(), 200);
    for (path, body) in [
        ("/v1/waitlist", json!({"email": "fan@example.com"})),
        (
            "/v1/support",
            json!({"email": ACCOUNT, "subject": "Hello", "message": "A question."}),
        ),
        (
            "/v1/privacy/requests",
            json!({"email": ACCOUNT, "kind": "access"}),
        ),
    ] {
        assert!(
            post(path, body).await.unwrap().status().is_success(),
            "{path}"
        );
    }
    let vars: Vec<(String, String)> = server.vars.clone().into_iter().collect();
    let scratch = tempdir::TempDir::new();
    let summary = scratch.path().join("summary.txt");
    std::fs::write(&summary, "We now say how long support requests are kept.").unwrap();
    let effective = (time::OffsetDateTime::now_utc().date() + time::Duration::days(31)).to_string();
    let out = admin(
        &vars,
        &[
            "policy",
            "announce",
            "--version",
            "2027-01",
            "--effective",
            &effective,
            "--summary-file",
            summary.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Whether a 2xx JSON answer of `operation` has, anywhere in its schema, a string of format
/// `date` or `date-time`.
fn success_has_a_date(document: &Value, operation: &Value) -> bool {
    fn has_date(document: &Value, schema: &Value, depth: usize) -> bool {
        if depth > 20 {
            return false;
        }
        match schema {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    let name = r.rsplit('/').next().unwrap_or_default();
                    return has_date(
                        document,
                        &document["components"]["schemas"][name],
                        depth + 1,
                    );
                }
                if matches!(
                    o.get("format").and_then(Value::as_str),
                    Some("date" | "date-time")
                ) {
                    return true;
                }
                o.values().any(|v| has_date(document, v, depth + 1))
            }
            Value::Array(a) => a.iter().any(|v| has_date(document, v, depth + 1)),
            _ => false,
        }
    }
    operation["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(status, _)| status.starts_with('2'))
        .any(|(_, response)| {
            has_date(
                document,
                &response["content"]["application/json"]["schema"],
                0,
            )
        })
}
