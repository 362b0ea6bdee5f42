//! The API contract: schemathesis generates requests from `/openapi.json` (its coverage phase,
//! then fuzzing for the rest of a time budget) against the real `pexper-server` binary, with
//! every check, and must find nothing: no 5xx, no status, content type, header or body the
//! document does not state, no schema-valid request refused and no schema-violating one
//! accepted. Where a check cannot apply to generated data (a Stripe signature, a token from an
//! email, a licence signature) `tests/contract/schemathesis.toml` says so with the reason.
//!
//! The rate limiter must not hide the logic: the server trusts the loopback proxy here and the
//! hooks (`tests/contract/hooks.py`) give every request its own `X-Forwarded-For`.
//!
//! Needs `schemathesis` (PyPI, the version `.ci/run` pins); skipped with a note without it,
//! unless `PEXPER_REQUIRE_SCHEMATHESIS` is set (CI). `PEXPER_CONTRACT_SECONDS` (default 120)
//! bounds the run; `PEXPER_CONTRACT_SEED` picks another seed than the fixed default.

use std::path::Path;
use std::process::Command;

use pexper_tests::*;

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
    let seconds = std::env::var("PEXPER_CONTRACT_SECONDS").unwrap_or_else(|_| "120".into());
    let seed = std::env::var("PEXPER_CONTRACT_SEED").unwrap_or_else(|_| "20261130".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    let base = server.base.clone();
    // Every operation the document states, so that "all reached" means all of them.
    let document: serde_json::Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .current_dir(&dir)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", &dir)
            .env("NO_COLOR", "1")
            .args(["--config-file", "schemathesis.toml", "run"])
            .arg(format!("{base}/openapi.json"))
            .args(["--phases", "coverage,fuzzing"])
            .args(["--max-time", &seconds, "--seed", &seed])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let log = server.stop().await;
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}\nserver log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "every one of the {operations} operations was reached:\n{report}"
    );
}
