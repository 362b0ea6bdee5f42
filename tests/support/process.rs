//! The real binaries as child processes: `pexper-admin` runs, and `ServerProcess`, a
//! `pexper-server` with its own test database and SMTP server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::{Dump, SmtpServer, TestDatabase, eventually, init, tempdir, test_vars};

/// The path of `pexper-server` or `pexper-admin`, as built for this test run (see the
/// `[[bin]]` entries of tests/Cargo.toml).
///
/// Cargo builds a package's binaries before its integration tests and puts them one level
/// above the test executable (`target/debug/deps/platform-…` → `target/debug/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(format!("{name}-under-test"));
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// How long any one `pexper-admin` command may run in a test (a restore, a broadcast
/// followed to its end): a command that hangs fails its test instead of the whole run.
const ADMIN_BOUND: Duration = Duration::from_secs(120);

/// Runs `pexper-admin` with exactly these variables (plus PATH), for at most `ADMIN_BOUND`.
pub fn admin(vars: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(binary("pexper-admin"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(args);
    output_within(cmd, ADMIN_BOUND, &format!("pexper-admin {args:?}"))
}

/// `Command::output`, bounded: past `bound` the child is killed and the test fails with
/// what it printed.
pub fn output_within(mut cmd: std::process::Command, bound: Duration, what: &str) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    // Read both pipes as the child writes, so a full pipe never stops it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).ok();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = std::time::Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            let printed = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("{what} still ran after {bound:?}, and was killed; it printed: {printed}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The real `pexper-server` binary as a child process, with its own test database and SMTP
/// server, logging to a file (not a pipe: nobody reads a pipe until exit, and a full one would
/// block the server's logging, and so the server).
pub struct ServerProcess {
    pub base: String,
    pub vars: HashMap<String, String>,
    pub smtp: SmtpServer,
    child: tokio::process::Child,
    dir: tempdir::TempDir,
    db: TestDatabase,
}

impl ServerProcess {
    /// Starts the server with `RUST_LOG=log_level` and waits until `/readyz` answers 200.
    pub async fn start(log_level: &str) -> Self {
        Self::start_with(log_level, &[]).await
    }

    /// Its database.
    pub fn db(&self) -> &TestDatabase {
        &self.db
    }

    /// The same, with `extra` variables on top of the test defaults.
    pub async fn start_with(log_level: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_binary(&binary("pexper-server"), log_level, extra).await
    }

    /// The same, with another build of the server (a benchmark's baseline).
    pub async fn start_binary(server: &Path, log_level: &str, extra: &[(&str, &str)]) -> Self {
        init();
        let db = TestDatabase::new().await;
        let smtp = SmtpServer::start().await;
        let dir = tempdir::TempDir::new();
        let mut vars = test_vars(&db, &smtp, dir.path());
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = dir.path().join("server.log");
        let (base, child) = spawn_server(server, &mut vars, &log, log_level, true).await;
        Self {
            base,
            vars,
            smtp,
            child,
            dir,
            db,
        }
    }

    /// The server's process id (to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// `pg_dump` of the server's database.
    pub fn dump(&self) -> Dump {
        self.db.dump()
    }

    /// Sends SIGTERM, asserts a graceful exit within 15 s, and returns everything it logged.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("SIGTERM stops the server")
            .unwrap();
        assert!(status.success(), "graceful exit");
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap()
    }
}

/// Starts `pexper-server` with exactly `vars` (and PATH, and `RUST_LOG=log_level`) on a free
/// port, logging to `log`, and waits until `/readyz` answers 200; returns its base URL. With
/// `own_public_url`, `PEXPER_PUBLIC_URL` is that base (links in its email lead back to it).
async fn spawn_server(
    server: &Path,
    vars: &mut HashMap<String, String>,
    log: &Path,
    log_level: &str,
    own_public_url: bool,
) -> (String, tokio::process::Child) {
    // A free port is only free until someone takes it: a parallel test may bind the one we
    // picked before our server does. So the server must say it listens on that port (its own
    // log line, whatever the level asked) before we believe an answer there, and if it could
    // not bind, we pick another.
    let mut attempts = 0;
    let (base, child) = loop {
        attempts += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        vars.insert("PEXPER_BIND".into(), format!("127.0.0.1:{port}"));
        if own_public_url {
            vars.insert("PEXPER_PUBLIC_URL".into(), base.clone());
        }
        let mut child = tokio::process::Command::new(server)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&*vars)
            .env("RUST_LOG", format!("{log_level},pexper_server::cli=info"))
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let listening = format!("listening address=127.0.0.1:{port}");
        let bound = eventually(
            Duration::from_secs(30),
            "the server to listen or exit",
            || {
                let exited = child.try_wait().unwrap().is_some();
                let said = std::fs::read_to_string(log).is_ok_and(|l| l.contains(&listening));
                async move { (exited || said).then_some(said) }
            },
        )
        .await;
        if bound {
            break (base, child);
        }
        // Only a port taken meanwhile is worth another try: any other exit is a crash, and
        // starting again would hide it (and overwrite its log).
        let said = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            said.contains("Address already in use") || said.contains("address already in use"),
            "the server exited before it listened:\n{said}"
        );
        assert!(attempts < 5, "the server could not bind: {said}");
    };
    let client = reqwest::Client::new();
    let ready = format!("{base}/readyz");
    eventually(Duration::from_secs(30), "the server to be ready", || {
        let (client, url) = (client.clone(), ready.clone());
        async move {
            let res = client.get(&url).send().await.ok()?;
            (res.status() == 200).then_some(())
        }
    })
    .await;
    (base, child)
}

/// Several `pexper-server` processes on one database, one SMTP server and the same keys, as
/// replicas behind a load balancer: each has its own port, data dir and log.
pub struct Replicas {
    pub bases: Vec<String>,
    pub smtp: SmtpServer,
    pub db: TestDatabase,
    /// `None` once terminated.
    children: Vec<Option<tokio::process::Child>>,
    shared: HashMap<String, String>,
    log_level: String,
    dir: tempdir::TempDir,
}

impl Replicas {
    /// Starts `n` replicas on `db`, 300 ms apart, with `extra` variables. A start takes longer
    /// than that, so they apply the migrations at the same time, as replicas rolled out
    /// together do; and their clocks tick out of step, as real replicas' do.
    pub async fn start(
        n: usize,
        db: TestDatabase,
        log_level: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        init();
        let smtp = SmtpServer::start().await;
        let dir = tempdir::TempDir::new();
        let mut shared = test_vars(&db, &smtp, dir.path());
        // One licence key for all, as in production (a master key is in `test_vars`):
        // 32 random bytes in standard base64, the same shape.
        shared.insert(
            "PEXPER_LICENSE_KEY".into(),
            pexper_platform::crypto::MasterKeys::generate_encoded(),
        );
        shared.insert("PEXPER_PUBLIC_URL".into(), "https://api.pexper.test".into());
        shared.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut replicas = Self {
            bases: Vec::new(),
            smtp,
            db,
            children: Vec::new(),
            shared,
            log_level: log_level.to_owned(),
            dir,
        };
        let starting: Vec<_> = (0..n)
            .map(|i| replicas.spawn(i, Duration::from_millis(300) * i as u32, &[]))
            .collect();
        for started in starting {
            let (base, child) = started.await.unwrap();
            replicas.bases.push(base);
            replicas.children.push(Some(child));
        }
        replicas
    }

    fn spawn(
        &self,
        i: usize,
        after: Duration,
        own: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<(String, tokio::process::Child)> {
        let mut vars = self.shared.clone();
        vars.extend(own.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let data = self.dir.path().join(format!("replica-{i}"));
        vars.insert("PEXPER_DATA_DIR".into(), data.display().to_string());
        let log = self.dir.path().join(format!("replica-{i}.log"));
        let level = self.log_level.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            spawn_server(&binary("pexper-server"), &mut vars, &log, &level, false).await
        })
    }

    /// Starts one more replica; returns its index.
    pub async fn add(&mut self) -> usize {
        self.add_with(&[]).await
    }

    /// Starts one more replica with some variables of its own (a rolling restart's new
    /// configuration); returns its index.
    pub async fn add_with(&mut self, own: &[(&str, &str)]) -> usize {
        let i = self.children.len();
        let (base, child) = self.spawn(i, Duration::ZERO, own).await.unwrap();
        self.bases.push(base);
        self.children.push(Some(child));
        i
    }

    /// Sends replica `i` SIGTERM and waits for it to exit (at most 60 s); returns how long it
    /// took, and asserts the exit was clean.
    pub async fn terminate(&mut self, i: usize) -> Duration {
        let mut child = self.children[i].take().expect("replica still running");
        let pid = child.id().unwrap().to_string();
        let sent = std::time::Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("SIGTERM stops the replica")
            .unwrap();
        let took = sent.elapsed();
        assert!(status.success(), "a clean exit: {status}");
        took
    }

    /// Kills replica `i` with SIGKILL, as a crash or an OOM kill would: nothing is finished or
    /// handed back.
    pub async fn kill(&mut self, i: usize) {
        let mut child = self.children[i].take().expect("replica still running");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    /// The variables every replica shares, as `pexper-admin` takes them.
    pub fn cli_vars(&self) -> Vec<(String, String)> {
        self.shared.clone().into_iter().collect()
    }

    /// Everything the replicas logged, one string per replica.
    pub fn logs(&self) -> Vec<String> {
        (0..self.children.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("replica-{i}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}
