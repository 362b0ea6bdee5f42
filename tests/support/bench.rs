//! What the benchmarks (`tests/benches/`) share: arguments, goals and a runtime.
//!
//! `cargo bench` runs a bench for real: full size, goals enforced. `cargo test` (and so CI)
//! runs every bench too, as a smoke run: a size that takes seconds, speed goals printed but
//! not enforced, correctness (`check`) enforced as in a real run. A bench therefore never
//! rots unbuilt or unrun; its figures come only from `cargo bench`.

/// Whether this is a real benchmark run: `cargo bench` passes `--bench` to the target.
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The numeric arguments after `--` of a `cargo bench` run, each defaulting to `full`; in a
/// smoke run, `smoke`.
pub fn bench_args<const N: usize>(full: [u64; N], smoke: [u64; N]) -> [u64; N] {
    if !benchmarking() {
        println!("smoke run (goals not enforced): `cargo bench` measures");
        return smoke;
    }
    let given: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    std::array::from_fn(|i| given.get(i).copied().unwrap_or(full[i]))
}

/// A correctness property of a benchmark's run (every copy delivered once, no 5xx): checked
/// in every run, the smoke runs of `cargo test` too, and the bench fails at once without it.
/// Only the speed goals (`goal`) are left to `cargo bench`.
pub fn check(what: &str, figure: String, holds: bool) {
    println!(
        "check: {what}: {figure} — {}",
        if holds { "holds" } else { "FAILED" }
    );
    assert!(holds, "{what}: {figure}");
}

/// Prints a benchmark's goal beside its figure and says whether it was met; the bench exits
/// non-zero (`bench_exit`) if any was missed.
pub fn goal(what: &str, figure: String, met: bool) -> bool {
    println!(
        "goal: {what}: {figure} — {}",
        if met { "met" } else { "MISSED" }
    );
    met
}

/// Ends a benchmark: exit code 1 when a goal was missed in a real run.
pub fn bench_exit(all_met: bool) -> ! {
    std::process::exit(if all_met || !benchmarking() { 0 } else { 1 })
}

/// Runs a benchmark on a multi-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A process's peak resident memory so far (`VmHWM`), in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

/// A durable Postgres cluster of a benchmark's own (fsync and synchronous commit on, TLS, as
/// in production): the test harness's shared one trades durability for speed, and a bench
/// would measure that.
pub struct DurableCluster {
    root: std::path::PathBuf,
    managed: pexper_platform::db::managed::ManagedPostgres,
    /// With `PEXPER_BENCH_STATEMENTS=1`: a connection to read `pg_stat_statements` through,
    /// opened once, so that reading them costs a phase next to nothing.
    statements: Option<sqlx::PgPool>,
    _dir: crate::tempdir::TempDir,
}

impl DurableCluster {
    /// With `PEXPER_BENCH_STATEMENTS=1`, the cluster counts its statements
    /// (`pg_stat_statements`, planning too), for `statements` to print.
    pub async fn start() -> Self {
        use pexper_platform::db::managed::{Durability, ManagedPostgres};
        let dir = crate::tempdir::TempDir::new();
        let root = dir.path().join("postgres");
        let start = || {
            let root = root.clone();
            tokio::task::spawn_blocking(move || {
                ManagedPostgres::start_or_reuse(&root, None, Durability::Durable)
            })
        };
        let connect = |managed: &ManagedPostgres| {
            let url = secrecy::ExposeSecret::expose_secret(&managed.url("postgres")).to_owned();
            async move {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap()
            }
        };
        let mut managed = start().await.unwrap().unwrap();
        let mut statements = None;
        if counting_statements() {
            let pool = connect(&managed).await;
            sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let stopping = root.clone();
            tokio::task::spawn_blocking(move || ManagedPostgres::stop(&stopping, None))
                .await
                .unwrap()
                .unwrap();
            managed = start().await.unwrap().unwrap();
            let pool = connect(&managed).await;
            // Known once the library is loaded.
            for setting in [
                "CREATE EXTENSION pg_stat_statements",
                "ALTER SYSTEM SET pg_stat_statements.track = 'all'",
                "ALTER SYSTEM SET pg_stat_statements.track_planning = on",
                "SELECT pg_reload_conf()",
            ] {
                sqlx::query(setting).execute(&pool).await.unwrap();
            }
            statements = Some(pool);
        }
        Self {
            root,
            managed,
            statements,
            _dir: dir,
        }
    }

    /// Forgets the statements counted so far (`PEXPER_BENCH_STATEMENTS=1`).
    pub async fn reset_statements(&self) {
        if let Some(pool) = &self.statements {
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(pool)
                .await
                .unwrap();
        }
    }

    /// Prints the statements that took the most of Postgres's time since the last reset
    /// (`PEXPER_BENCH_STATEMENTS=1`): calls, plans, and the time executing and planning them,
    /// divided by `per` (the signups or emails of the phase). With `track = all`, a statement
    /// a function runs has a row of its own, and its time is in the function's call's too.
    pub async fn statements(&self, what: &str, per: u64) {
        let Some(pool) = &self.statements else {
            return;
        };
        let rows: Vec<(String, i64, i64, f64, f64)> = sqlx::query_as(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls, plans,
                    total_exec_time, total_plan_time
             FROM pg_stat_statements
             WHERE dbid <> (SELECT oid FROM pg_database WHERE datname = 'postgres')
             ORDER BY total_exec_time + total_plan_time DESC LIMIT 12",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let per = per.max(1);
        println!("\nstatements, {what} (µs of Postgres per one of {per}):\n");
        println!("| statement | calls | plans | execution µs | planning µs |");
        println!("|---|---|---|---|---|");
        for (query, calls, plans, exec_ms, plan_ms) in rows {
            let per_one = |ms: f64| ms * 1000.0 / per as f64;
            println!(
                "| `{}` | {calls} | {plans} | {:.1} | {:.1} |",
                query.replace('|', "\\|"),
                per_one(exec_ms),
                per_one(plan_ms)
            );
        }
    }

    /// The URL of `database`, created if need be.
    pub async fn database(&self, database: &str) -> String {
        pexper_platform::db::ensure_database(&self.managed, database)
            .await
            .unwrap();
        secrecy::ExposeSecret::expose_secret(&self.managed.url(database)).to_owned()
    }

    pub async fn stop(self) {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            pexper_platform::db::managed::ManagedPostgres::stop(&root, None)
        })
        .await
        .unwrap()
        .unwrap();
    }
}

/// Whether the benchmark's cluster counts its statements: `PEXPER_BENCH_STATEMENTS=1`.
pub fn counting_statements() -> bool {
    std::env::var("PEXPER_BENCH_STATEMENTS").is_ok_and(|v| v == "1")
}

/// How the benchmarks' mail is signed: `PEXPER_BENCH_DKIM` = `rsa` (the default: an RSA-2048
/// key, what nearly every domain publishes and every receiver verifies), `ed25519` (RFC 8463,
/// which few receivers verify yet) or `relay` (`PEXPER_DKIM=relay`: the relay signs).
pub fn dkim_signing() -> String {
    std::env::var("PEXPER_BENCH_DKIM").unwrap_or_else(|_| "rsa".to_owned())
}

/// The server settings that sign outgoing mail as production does (`dkim_signing`). The RSA
/// key is new for each run, in PKCS#1 (`openssl genrsa -traditional`), which every earlier
/// build takes too.
pub fn dkim_vars() -> Vec<(&'static str, String)> {
    use base64::Engine;
    match dkim_signing().as_str() {
        "relay" => vec![("PEXPER_DKIM", "relay".to_owned())],
        "ed25519" => vec![
            ("PEXPER_DKIM_SELECTOR", "bench".to_owned()),
            (
                "PEXPER_DKIM_KEY",
                format!(
                    "ed25519:{}",
                    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
                ),
            ),
        ],
        "rsa" => {
            let out = std::process::Command::new("openssl")
                .args(["genrsa", "-traditional", "2048"])
                .output()
                .expect("openssl on PATH");
            assert!(out.status.success(), "{out:?}");
            vec![
                ("PEXPER_DKIM_SELECTOR", "bench".to_owned()),
                ("PEXPER_DKIM_KEY", String::from_utf8(out.stdout).unwrap()),
            ]
        }
        other => panic!("PEXPER_BENCH_DKIM must be rsa, ed25519 or relay, not {other}"),
    }
}

/// Signatures a second on all of this machine's cores, as `openssl speed` measures them on
/// one (`rsa2048` or `ed25519`): the ceiling of in-process DKIM signing.
pub fn openssl_signing_ceiling(algorithm: &str) -> f64 {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", algorithm])
        .output()
        .expect("openssl on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    // `rsa 2048 bits 0.000317s 0.000018s 3155.3 54908.7` (sign/s, then verify/s), or
    // ` 253 bits EdDSA (Ed25519)   0.0000s   0.0001s  25437.7   9648.7`.
    let marker = if algorithm == "rsa2048" {
        "rsa 2048 bits"
    } else {
        "(Ed25519)"
    };
    let per_core: f64 = text
        .lines()
        .filter(|l| l.contains(marker))
        .find_map(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("a {marker} line in {text}"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    per_core * cores as f64
}

/// Signatures a second on all of this machine's cores through AWS-LC, the crate the server
/// signs with, with the key in `dkim` (`dkim_vars`), over a message of a confirmation's size:
/// the ceiling of the server's own signing. `None` when the relay signs.
pub fn signing_ceiling(dkim: &[(&str, String)]) -> Option<f64> {
    use rustls::pki_types::pem::PemObject;
    let key = &dkim.iter().find(|(k, _)| *k == "PEXPER_DKIM_KEY")?.1;
    let sign: Box<dyn Fn() + Sync> = match key.strip_prefix("ed25519:") {
        Some(seed) => {
            use base64::Engine;
            let seed = base64::engine::general_purpose::STANDARD
                .decode(seed)
                .unwrap();
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
            Box::new(move || {
                let _ = pair.sign(&[7; 600]);
            })
        }
        None => {
            let der =
                rustls::pki_types::PrivatePkcs1KeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let pair = aws_lc_rs::signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).unwrap();
            let random = aws_lc_rs::rand::SystemRandom::new();
            Box::new(move || {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &random,
                    &[7; 600],
                    &mut signature,
                )
                .unwrap();
            })
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let seconds = std::time::Duration::from_secs(2);
    let signed: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let (started, mut n) = (std::time::Instant::now(), 0);
                    while started.elapsed() < seconds {
                        sign();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    Some(signed as f64 / seconds.as_secs_f64())
}

/// What a real benchmark run sets back to production's defaults over the test harness's
/// (`test_vars`); nothing in a smoke run.
pub fn production_vars() -> Vec<(&'static str, String)> {
    if benchmarking() {
        vec![("PEXPER_JOB_CONCURRENCY", "16".to_owned())]
    } else {
        Vec::new()
    }
}

/// The builds to compare: `PEXPER_BENCH_BASELINE`, if set, names an earlier `pexper-server`
/// binary measured beside this one in the same run (before and after a change).
/// `PEXPER_BENCH_ROUNDS=n` measures the two in turn, n times each: on a shared machine whose
/// speed drifts for minutes at a time, one build measured after the other can gain or lose a
/// third from the drift alone.
pub fn builds() -> Vec<(String, std::path::PathBuf)> {
    let mut round = Vec::new();
    if let Some(path) = std::env::var_os("PEXPER_BENCH_BASELINE") {
        round.push(("baseline".to_owned(), path.into()));
    }
    round.push((
        "this build".to_owned(),
        crate::process::binary("pexper-server"),
    ));
    let rounds = std::env::var("PEXPER_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    (0..rounds).flat_map(|_| round.clone()).collect()
}
