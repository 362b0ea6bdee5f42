//! The managed local Postgres: the embedded default when `DATABASE_URL` is unset.
//!
//! Lifecycle: the first `pexper-server` or `pexper-admin` that needs the database creates the
//! cluster under `<data dir>/postgres` (initdb, a generated CA and server certificate, a
//! generated password) and starts it with `pg_ctl`. It keeps running after that process exits,
//! like any development database, so restarts and admin commands are instant; later processes
//! reuse it. `pexper-admin db stop` stops it; deleting the directory throws it away.
//!
//! Only TLS connections are accepted (`hostssl` is the sole line in `pg_hba.conf`), and we
//! connect with `sslmode=verify-full` against the generated CA, exactly as production does.
//!
//! Postgres refuses to run as root. When we are root (CI, containers), the cluster runs as the
//! `postgres` system user, which owns the data directory; commands go through `runuser`.
//!
//! Everything here blocks (it runs child processes); async callers use `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The superuser the cluster is created with.
const SUPERUSER: &str = "pexper";

/// Settings that trade durability for speed; only the test harness asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on: the development default, where data should survive a power cut.
    Durable,
    /// fsync off: throwaway test clusters.
    Throwaway,
}

/// A running managed cluster.
#[derive(Debug, Clone)]
pub struct ManagedPostgres {
    root: PathBuf,
    port: u16,
    password: SecretString,
}

/// The system account the cluster runs as when we are root.
#[derive(Debug, Clone)]
struct SystemUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl ManagedPostgres {
    /// Starts the cluster under `root` (creating it on first use), or reuses it if it runs.
    pub fn start_or_reuse(
        root: &Path,
        pg_bin: Option<&Path>,
        durability: Durability,
    ) -> anyhow::Result<Self> {
        let bin = PgBin::find(pg_bin)?;
        let run_as = if running_as_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        fs::create_dir_all(root).with_context(|| format!("failed to create {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("failed to resolve {}", root.display()))?;
        if let Some(user) = &run_as {
            check_reachable(&root, user)?;
        }

        // Two processes starting at once must not both run initdb or pick two ports.
        let lock = File::create(root.join("lock")).context("failed to create the cluster lock")?;
        lock.lock().context("failed to lock the managed cluster")?;

        let cluster = Cluster {
            root: root.clone(),
            bin,
            run_as,
        };
        if !cluster.data_dir().join("PG_VERSION").exists() {
            cluster.init(durability)?;
        }
        let port = match cluster.running_port() {
            Some(port) => port,
            None => cluster.start()?,
        };
        let password = fs::read_to_string(root.join("password"))
            .context("failed to read the managed cluster's password")?;
        Ok(Self {
            root,
            port,
            password: SecretString::from(password.trim().to_owned()),
        })
    }

    /// Stops the cluster under `root` if it runs. Returns whether it was running.
    pub fn stop(root: &Path, pg_bin: Option<&Path>) -> anyhow::Result<bool> {
        let cluster = Cluster {
            root: root.to_path_buf(),
            bin: PgBin::find(pg_bin)?,
            run_as: if running_as_root() {
                Some(postgres_user()?)
            } else {
                None
            },
        };
        if cluster.running_port().is_none() {
            return Ok(false);
        }
        let data = cluster.data_dir();
        let out = cluster.run(
            &cluster.bin.pg_ctl,
            &["-D", path_str(&data)?, "-m", "fast", "-w", "stop"],
        )?;
        check(&out, "pg_ctl stop")?;
        Ok(true)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate that signed the server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// Connection options for `database`, over TLS with full verification.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(SUPERUSER)
            .password(self.password.expose_secret())
            .database(database)
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert(self.ca_path())
    }

    /// The same as a URL, for tools such as `pg_dump` and for tests of the external path.
    pub fn url(&self, database: &str) -> SecretString {
        SecretString::from(format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}?sslmode=verify-full&sslrootcert={}",
            self.password.expose_secret(),
            self.port,
            self.ca_path().display()
        ))
    }
}

/// Where `initdb` and `pg_ctl` live.
#[derive(Debug, Clone)]
struct PgBin {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl PgBin {
    fn find(pg_bin: Option<&Path>) -> anyhow::Result<Self> {
        let programs = ["initdb", "pg_ctl"];
        match programs.map(|name| find_program(pg_bin, name)) {
            [Some(initdb), Some(pg_ctl)] => Ok(Self { initdb, pg_ctl }),
            _ => Err(missing_programs(pg_bin, &programs)),
        }
    }
}

/// A PostgreSQL program (`initdb`, `pg_dump`, …) in `PG_BIN`, or else on `PATH`.
pub fn find_program(pg_bin: Option<&Path>, name: &str) -> Option<PathBuf> {
    let search: Vec<PathBuf> = match pg_bin {
        Some(dir) => vec![dir.to_path_buf()],
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect(),
    };
    search.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The one line that says which programs are missing and what to do.
pub fn missing_programs(pg_bin: Option<&Path>, names: &[&str]) -> anyhow::Error {
    anyhow::anyhow!(
        "PostgreSQL server binaries ({}) were not found {}: install the PostgreSQL server (e.g. `apt-get install postgresql`), set PG_BIN to the directory holding them, or set DATABASE_URL to an existing database",
        names.join(", "),
        match pg_bin {
            Some(dir) => format!("in PG_BIN={}", dir.display()),
            None => "on PATH".to_owned(),
        }
    )
}

struct Cluster {
    root: PathBuf,
    bin: PgBin,
    run_as: Option<SystemUser>,
}

impl Cluster {
    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Runs a Postgres program, as the `postgres` user when we are root.
    fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &user.name, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .current_dir(&self.root)
            .output()
            .with_context(|| format!("failed to run {}", program.display()))
    }

    /// Gives a path we created to the account Postgres runs as.
    fn hand_over(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("failed to give {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }

    fn init(&self, durability: Durability) -> anyhow::Result<()> {
        let data = self.data_dir();
        // A half-made cluster from an interrupted first start is rebuilt from scratch.
        if data.exists() {
            fs::remove_dir_all(&data).context("failed to remove a half-initialised cluster")?;
        }
        fs::create_dir(&data).context("failed to create the cluster directory")?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
        self.hand_over(&data)?;

        let password = crate::crypto::random_token();
        write_private(&self.root.join("password"), password.as_bytes())?;
        // initdb reads the password from a file; it must be readable by the cluster's owner.
        let pwfile = self.root.join("initdb-password");
        write_private(&pwfile, password.as_bytes())?;
        self.hand_over(&pwfile)?;
        let out = self.run(
            &self.bin.initdb,
            &[
                "-D",
                path_str(&data)?,
                "-U",
                SUPERUSER,
                "--pwfile",
                path_str(&pwfile)?,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
        );
        fs::remove_file(&pwfile).ok();
        check(&out?, "initdb")?;

        self.write_tls_files()?;
        let mut conf = String::from(
            "\n# Managed by pexper (db/managed.rs): TLS only, loopback only, no Unix socket.\n\
             ssl = on\n\
             ssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n\
             ssl_min_protocol_version = 'TLSv1.2'\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n\
             max_connections = 200\n",
        );
        if durability == Durability::Throwaway {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .context("failed to configure postgresql.conf")?;
        fs::write(
            data.join("pg_hba.conf"),
            "# Managed by pexper: TLS connections from loopback with a password, nothing else.\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .context("failed to write pg_hba.conf")?;
        Ok(())
    }

    /// A throwaway CA signs the server certificate; we keep the CA certificate to verify
    /// against and drop its key, so nothing else can ever be signed by it.
    fn write_tls_files(&self) -> anyhow::Result<()> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pexper managed Postgres CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "pexper managed Postgres");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let data = self.data_dir();
        fs::write(self.root.join("ca.crt"), ca_cert.pem())?;
        let crt = data.join("server.crt");
        fs::write(&crt, server_cert.pem())?;
        self.hand_over(&crt)?;
        let key = data.join("server.key");
        write_private(&key, server_key.serialize_pem().as_bytes())?;
        self.hand_over(&key)?;
        Ok(())
    }

    /// The port of the running postmaster, read from `postmaster.pid` once `pg_ctl status`
    /// says it is alive.
    fn running_port(&self) -> Option<u16> {
        let data = self.data_dir();
        let out = self
            .run(&self.bin.pg_ctl, &["-D", data.to_str()?, "status"])
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let pid = fs::read_to_string(data.join("postmaster.pid")).ok()?;
        pid.lines().nth(3)?.trim().parse().ok()
    }

    /// Starts the postmaster: on the port it had last time when that is free (so servers
    /// already running against it reconnect by themselves after a restart), else on another.
    fn start(&self) -> anyhow::Result<u16> {
        let data = self.data_dir();
        let log = data.join("server.log");
        let remembered = self.root.join("port");
        let last_port: Option<u16> = fs::read_to_string(&remembered)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let mut last_error = None;
        // A free port can be taken between our probe and the postmaster's bind: try again.
        for attempt in 0..3 {
            let port = match last_port {
                Some(port) if attempt == 0 && port_is_free(port) => port,
                _ => free_port()?,
            };
            let out = self.run(
                &self.bin.pg_ctl,
                &[
                    "-D",
                    path_str(&data)?,
                    "-l",
                    path_str(&log)?,
                    "-o",
                    &format!("-p {port}"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )?;
            match check(&out, "pg_ctl start") {
                Ok(()) => {
                    fs::write(&remembered, port.to_string())
                        .context("failed to remember the managed cluster's port")?;
                    return Ok(port);
                }
                Err(e) => last_error = Some(e),
            }
        }
        let tail = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        Err(last_error.expect("three attempts were made")).with_context(|| {
            format!(
                "the managed Postgres did not start; last lines of {}: {}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        })
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("failed to find a free loopback port")?
        .local_addr()?
        .port())
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .with_context(|| format!("failed to write {}", path.display()))
}

/// The effective uid, read from `/proc/self` (whose owner is the process's euid) so that no
/// `unsafe` libc call is needed.
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn postgres_user() -> anyhow::Result<SystemUser> {
    let passwd = fs::read_to_string("/etc/passwd").context("failed to read /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0] != "postgres" {
                return None;
            }
            Some(SystemUser {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .context(
            "running as root, but PostgreSQL refuses to run as root and there is no `postgres` system user: create one (`useradd --system postgres`), run as another user, or set DATABASE_URL",
        )
}

/// The cluster's owner must be able to walk down to its data directory.
fn check_reachable(root: &Path, user: &SystemUser) -> anyhow::Result<()> {
    for dir in root.ancestors() {
        let meta = fs::metadata(dir)?;
        let mode = meta.permissions().mode();
        let can_enter = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !can_enter {
            bail!(
                "the `{}` user that runs the managed Postgres cannot enter {} (mode {:o}): set PEXPER_DATA_DIR to a directory outside it, or `chmod o+x {}`",
                user.name,
                dir.display(),
                mode & 0o777,
                dir.display()
            );
        }
    }
    Ok(())
}
