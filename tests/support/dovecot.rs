//! A real IMAP server for the mailbox reader's tests: Debian's Dovecot, started as an
//! unprivileged process (as root, as `nobody`) with a throwaway configuration, a password
//! file, Maildir storage and a TLS certificate from a CA of its own, on a free loopback port.
//! Mail is delivered as a delivery agent does: a file written in `tmp/`, renamed into `new/`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::tempdir::TempDir;

pub const PASSWORD: &str = "imap-test-password";

pub struct Dovecot {
    dir: TempDir,
    child: Child,
    pub port: u16,
    /// Who Dovecot runs as, to own what the tests deliver.
    owner: Option<(u32, u32)>,
}

fn id(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().expect("id runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Dovecot {
    /// Starts Dovecot with one mailbox per account (password `PASSWORD`).
    pub async fn start(accounts: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = TempDir::new();
        let root = dir.path().to_path_buf();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &Issuer::new(ca_params, ca_key))
            .unwrap();
        std::fs::write(root.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(root.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(root.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(root.join("password"), PASSWORD).unwrap();
        let passwd: String = accounts
            .iter()
            .map(|a| format!("{a}:{{PLAIN}}{PASSWORD}::::::\n"))
            .collect();
        std::fs::write(root.join("passwd"), passwd).unwrap();
        for account in accounts {
            for sub in ["new", "cur", "tmp"] {
                std::fs::create_dir_all(root.join("mail").join(account).join(sub)).unwrap();
            }
        }
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let as_root = id(&["-u"]) == "0";
        let (user, group) = if as_root {
            ("nobody".to_owned(), id(&["-gn", "nobody"]))
        } else {
            (id(&["-un"]), id(&["-gn"]))
        };
        let port = crate::free_port();
        let r = root.display();
        std::fs::write(
            root.join("dovecot.conf"),
            format!(
                "base_dir = {r}/run\nstate_dir = {r}/state\nlog_path = {r}/dovecot.log\n\
                 protocols = imap\nlisten = 127.0.0.1\nssl = required\n\
                 ssl_cert = <{r}/cert.pem\nssl_key = <{r}/key.pem\n\
                 default_internal_user = {user}\ndefault_internal_group = {group}\n\
                 default_login_user = {user}\nfirst_valid_uid = 1\nauth_mechanisms = plain\n\
                 passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {r}/passwd\n}}\n\
                 userdb {{\n  driver = static\n  args = uid={user} gid={group} home={r}/home/%u mail=maildir:{r}/mail/%u\n}}\n\
                 service imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = 0\n  }}\n  \
                 inet_listener imaps {{\n    port = {port}\n    ssl = yes\n  }}\n}}\n\
                 service anvil {{\n  chroot =\n}}\n"
            ),
        )
        .unwrap();
        let owner = as_root.then(|| {
            (
                id(&["-u", "nobody"]).parse().unwrap(),
                id(&["-g", "nobody"]).parse().unwrap(),
            )
        });
        if let Some((uid, gid)) = owner {
            chown_tree(&root, uid, gid);
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut command = Command::new("dovecot");
        command
            .args(["-F", "-c"])
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        let child = command
            .spawn()
            .expect("dovecot runs (apt-get install dovecot-imapd)");
        let dovecot = Self {
            dir,
            child,
            port,
            owner,
        };
        crate::eventually(Duration::from_secs(20), "Dovecot listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        dovecot
    }

    /// `imaps://account@127.0.0.1:port/INBOX`.
    pub fn url(&self, account: &str) -> String {
        format!("imaps://{account}@127.0.0.1:{}/INBOX", self.port)
    }

    /// The variables that point the server's reader at `account`'s mailbox for privacy@ (and
    /// `bounces`' for the bounce address, when given).
    pub fn vars(&self, privacy: &str, bounces: Option<&str>) -> Vec<(String, String)> {
        let mut vars = vec![
            ("PEXPER_PRIVACY_IMAP_URL".to_owned(), self.url(privacy)),
            (
                "PEXPER_IMAP_PASSWORD_FILE".to_owned(),
                self.dir.path().join("password").display().to_string(),
            ),
            (
                "PEXPER_IMAP_CA_FILE".to_owned(),
                self.dir.path().join("ca.pem").display().to_string(),
            ),
        ];
        if let Some(bounces) = bounces {
            vars.push(("PEXPER_BOUNCE_IMAP_URL".to_owned(), self.url(bounces)));
        }
        vars
    }

    fn maildir(&self, account: &str) -> PathBuf {
        self.dir.path().join("mail").join(account)
    }

    /// Delivers a message into `account`'s mailbox, as a delivery agent does.
    pub fn deliver(&self, account: &str, raw: &[u8]) {
        self.put(account, raw, false);
    }

    /// Delivers a message someone has read already (in `cur/`, flagged `\Seen`).
    pub fn deliver_seen(&self, account: &str, raw: &[u8]) {
        self.put(account, raw, true);
    }

    fn put(&self, account: &str, raw: &[u8], seen: bool) {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}.M{}P{}Q{}.test",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            N.fetch_add(1, Ordering::Relaxed),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let tmp = self.maildir(account).join("tmp").join(&name);
        std::fs::write(&tmp, raw).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
        }
        let (sub, name) = if seen {
            ("cur", format!("{name}:2,S"))
        } else {
            ("new", name)
        };
        std::fs::rename(&tmp, self.maildir(account).join(sub).join(name)).unwrap();
    }

    /// How many of `account`'s messages Dovecot has marked `\Seen`, and how many not.
    pub fn seen_and_unseen(&self, account: &str) -> (usize, usize) {
        let mut seen = 0;
        let mut unseen = 0;
        for sub in ["new", "cur"] {
            for entry in std::fs::read_dir(self.maildir(account).join(sub)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                let flags = name.rsplit_once(":2,").map_or("", |(_, f)| f);
                if flags.contains('S') {
                    seen += 1;
                } else {
                    unseen += 1;
                }
            }
        }
        (seen, unseen)
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to Dovecot's IMAP session processes:
    /// stopped, a client waits for its next answer, as with a server that hangs; killed, what
    /// the client sent meanwhile is never carried out, as when the connection dies.
    pub fn signal_sessions(&self, signal: &str) {
        let master = self.child.id().to_string();
        let mut found = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …
            let Some((comm, rest)) = stat.split_once(") ") else {
                continue;
            };
            let comm = comm.rsplit_once('(').map_or("", |(_, c)| c);
            let ppid = rest.split_whitespace().nth(1).unwrap_or_default();
            if ppid == master && comm == "imap" {
                let pid = entry.file_name().to_string_lossy().into_owned();
                Command::new("kill").args([signal, &pid]).status().unwrap();
                found += 1;
            }
        }
        assert!(found > 0, "an IMAP session to signal");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
