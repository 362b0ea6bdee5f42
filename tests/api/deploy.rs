//! The server binary as deployed: production refuses unsafe settings, the container's
//! settings, the health check, logs without secrets, and `--services`.

use pexper_tests::*;
use serde_json::json;

#[tokio::test]
async fn production_refuses_to_start_without_a_master_key() {
    let out = std::process::Command::new(binary("pexper-server"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PEXPER_ENV", "production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("PEXPER_MASTER_KEY"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Everything a production deployment sets (values for tests only).
const PRODUCTION: &[(&str, &str)] = &[
    ("PEXPER_ENV", "production"),
    (
        "PEXPER_MASTER_KEY",
        "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGU=",
    ),
    (
        "PEXPER_LICENSE_KEY",
        "bGljZW5zZS1rZXktZm9yLXRlc3RzLW9ubHktMzJieXQ=",
    ),
    ("STRIPE_WEBHOOK_SECRET", "whsec_real"),
    ("PEXPER_SMTP_URL", "smtps://u:p@smtp.example.com"),
    ("PEXPER_PUBLIC_URL", "https://api.pexper.com"),
    ("PEXPER_TRUSTED_PROXY", "10.0.0.2"),
    ("PEXPER_CRASH_KEYS", "1:0f3c9a7e5b2d4c6a"),
    (
        "PEXPER_POSTAL_ADDRESS",
        "Pexper Inc., 1 Example Street, Springfield",
    ),
    ("PEXPER_DKIM", "relay"),
    (
        "DATABASE_URL",
        "postgres://u:p@db.invalid/pexper?sslmode=verify-full",
    ),
];

/// Runs `pexper-server` with exactly these variables (and PATH), later ones winning.
fn server_with<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> std::process::Output {
    std::process::Command::new(binary("pexper-server"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars)
        .output()
        .unwrap()
}

#[tokio::test]
async fn production_refuses_to_start_on_each_unsafe_setting_with_one_line_and_exit_code_2() {
    for (name, unsafe_value, hint) in [
        (
            "PEXPER_SMTP_URL",
            "smtp://u:p@smtp.example.com",
            "SMTP without TLS",
        ),
        (
            "PEXPER_SMTP_URL",
            "smtp://u:p@smtp.example.com?tls=opportunistic",
            "SMTP without TLS",
        ),
        ("PEXPER_PUBLIC_URL", "http://api.pexper.com", "https://"),
        ("PEXPER_CRASH_KEYS", "1:pexper-dev", "pexper-dev"),
        (
            "DATABASE_URL",
            "postgres://u:p@db.invalid/pexper?sslmode=verify-full&sslmode=disable",
            "sslmode=verify-full",
        ),
        ("STRIPE_WEBHOOK_SECRET", "", "STRIPE_WEBHOOK_SECRET"),
        ("PEXPER_POSTAL_ADDRESS", "", "PEXPER_POSTAL_ADDRESS"),
    ] {
        let out = server_with(PRODUCTION.iter().copied().chain([(name, unsafe_value)]));
        assert_eq!(out.status.code(), Some(2), "{name}={unsafe_value}");
        let err = stderr(&out);
        assert!(err.contains(hint), "{name}={unsafe_value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    }
}

/// The `ENV name=value` pairs of deploy/Dockerfile's final stage.
fn dockerfile_env() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_container_runs_as_production_and_refuses_to_start_without_its_secrets() {
    let env = dockerfile_env();
    assert!(
        env.contains(&("PEXPER_ENV".into(), "production".into())),
        "{env:?}"
    );
    // Everything a deployment sets, but the Stripe secret: the public development secret
    // must not verify webhooks in a container.
    let out = server_with(
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(
            PRODUCTION
                .iter()
                .copied()
                .filter(|(k, _)| !matches!(*k, "PEXPER_ENV" | "STRIPE_WEBHOOK_SECRET")),
        ),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("STRIPE_WEBHOOK_SECRET"),
        "{}",
        stderr(&out)
    );

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let healthcheck = dockerfile
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .unwrap();
    assert!(
        healthcheck.contains(r#"CMD ["/usr/local/bin/pexper-server", "healthcheck"]"#),
        "the health check is the binary's own (no /dev/tcp in Debian's sh): {healthcheck}"
    );
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for dir in ["target/", ".pexper/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == dir),
            "{dir} stays out of the build context"
        );
    }
}

#[tokio::test]
async fn the_healthcheck_command_follows_readyz() {
    let server = ServerProcess::start("info").await;
    let check = |vars: &std::collections::HashMap<String, String>| {
        std::process::Command::new(binary("pexper-server"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars)
            .arg("healthcheck")
            .output()
            .unwrap()
    };
    let vars = server.vars.clone();
    let up = check(&vars);
    assert!(up.status.success(), "{}", stderr(&up));
    server.stop().await;
    let down = check(&vars);
    assert_eq!(down.status.code(), Some(1));
    assert_eq!(stderr(&down).trim().lines().count(), 1, "{}", stderr(&down));
}

#[tokio::test]
async fn the_server_binary_serves_and_never_logs_its_secrets() {
    let server = ServerProcess::start("trace").await;
    let vars = server.vars.clone();
    let key = vars["PEXPER_MASTER_KEY"].clone();
    let res = reqwest::get(format!("{}/readyz?token=secret-token-value", server.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let log = server.stop().await;
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("/readyz"), "the route template is logged");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file has no colour codes: {log:?}"
    );
    for secret in [
        key.as_str(),
        "secret-token-value",
        secrecy::ExposeSecret::expose_secret(
            &pexper_platform::Config::from_vars(vars.clone())
                .unwrap()
                .database_url
                .unwrap(),
        )
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn services_picks_which_routes_a_process_serves() {
    assert!(pexper_server::select_services(Some("waitlist,nope")).is_err());
    let only_platform = pexper_server::select_services(Some("platform")).unwrap();
    assert_eq!(
        only_platform.iter().map(|s| s.name()).collect::<Vec<_>>(),
        vec!["platform"]
    );
    let app = spawn_app_with(AppOptions {
        services: only_platform,
        ..AppOptions::default()
    })
    .await;
    let res = app
        .client
        .post(app.url("/v1/waitlist"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // The privacy registry still reaches every service's data, whatever this process serves.
    assert_eq!(
        app.platform.personal_data.sections(),
        vec![
            "email",
            "waitlist",
            "payments",
            "privacy_requests",
            "analytics",
            "support",
            "account"
        ]
    );
    let waitlist = spawn_app().await;
    let res = waitlist
        .client
        .post(waitlist.url("/v1/waitlist"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}
