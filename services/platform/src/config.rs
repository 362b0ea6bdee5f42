//! Configuration, read from the environment exactly as the table in the README (and
//! DESIGN.md) lists it. Secrets are held as `SecretString` so that `Debug` never prints them,
//! and `PEXPER_ENV=production` refuses the insecure development defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use crate::mailbox::MailboxUrl;
use crate::trusted_proxy::TrustedProxy;

/// Where the process runs. Production refuses every insecure default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// A crash-intake key: the `project_id:public_key` pair of one Sentry DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashKey {
    pub project_id: u64,
    pub public_key: String,
}

/// PEM files: the certificate chain and the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Who signs outgoing mail with DKIM (RFC 6376), so that receivers can tell it is ours.
#[derive(Clone, Debug)]
pub enum DkimSigning {
    /// We sign, with this DNS selector and private key (an RSA key in PEM, PKCS#1 or PKCS#8,
    /// or `ed25519:<base64 seed>`).
    Sign { selector: String, key: SecretString },
    /// `PEXPER_DKIM=relay`: the relay signs with the domain's key (OpenDKIM beside Postfix, or
    /// a mail service with the domain authenticated).
    Relay,
    /// Nobody: development and tests only; production refuses it.
    Unsigned,
}

/// Which binary reads the configuration: production's checks are the server's, or only what
/// every admin command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Admin,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub env: Environment,
    /// `None` means: run the managed local Postgres under `data_dir`.
    pub database_url: Option<SecretString>,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    /// Base of every link we put in an email, without a trailing slash.
    pub public_url: String,
    /// `None` in development means: generate a key into the data dir.
    pub master_key: Option<SecretString>,
    /// `None` means: write `.eml` files into `<data dir>/outbox/`.
    pub smtp_url: Option<SecretString>,
    /// A PEM CA certificate the SMTP relay's certificate may chain to, besides the public
    /// roots: for a relay on a private network with its own CA.
    pub smtp_ca_file: Option<PathBuf>,
    pub mail_from: String,
    /// Several secrets may be configured (comma-separated) so one can be rotated without downtime.
    pub stripe_webhook_secrets: Vec<SecretString>,
    pub allowed_origins: Vec<String>,
    /// `None` in development means: generate a key into the data dir.
    pub license_key: Option<SecretString>,
    pub privacy_email: String,
    /// Only requests whose peer is one of these addresses may name a client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The certificate chain and private key (PEM files) when the server terminates TLS
    /// itself; re-read when they change.
    pub tls: Option<TlsFiles>,
    pub crash_keys: Vec<CrashKey>,
    pub analytics_retention_days: u32,
    /// How long the operator keeps backups: the erasure journal must outlive every backup
    /// taken before an erasure, and no longer (`PEXPER_BACKUP_RETENTION_DAYS`).
    pub backup_retention_days: u32,
    /// The period of the recurring jobs (sweeps, rollups): each runs once per period, however
    /// many replicas serve.
    pub recurring_seconds: u64,
    /// After SIGTERM, how long running jobs may take before they are handed back.
    pub shutdown_grace_seconds: u64,
    /// Where `initdb`/`pg_ctl` live when they are not on `PATH`.
    pub pg_bin: Option<PathBuf>,
    /// Places a waitlist member moves up for each confirmed referral.
    pub referral_bump: i64,
    /// How many passwords are hashed at once, each on a thread of its own: one core's work
    /// each. The default, one less than the cores (at least one), keeps a core for the rest
    /// of the server under a sign-in flood.
    pub password_hashers: usize,
    /// How many background jobs (mostly emails) this process runs at once, each with a
    /// database connection of the job pool's and an SMTP connection of its own.
    pub job_concurrency: usize,
    /// At most this many emails per second from this process (a relay's limit); unset, as
    /// fast as the relay takes them.
    pub mail_per_second: Option<u32>,
    /// Where a browser's form post to the waitlist is sent (303) instead of our own page.
    pub waitlist_thank_you_url: Option<String>,
    /// Who signs outgoing mail with DKIM (`PEXPER_DKIM`, `PEXPER_DKIM_SELECTOR`,
    /// `PEXPER_DKIM_KEY`).
    pub dkim: DkimSigning,
    /// The company's postal address, in the footer of every product email (CAN-SPAM and its
    /// kin require one in commercial email). Production refuses to start without it.
    pub postal_address: Option<String>,
    /// The privacy@ mailbox the server reads letters from, and the bounce address's
    /// (`PEXPER_PRIVACY_IMAP_URL`, `PEXPER_BOUNCE_IMAP_URL`); unset: not read.
    pub privacy_mailbox: Option<MailboxUrl>,
    pub bounce_mailbox: Option<MailboxUrl>,
    /// How to log in to them over IMAP (`PEXPER_IMAP_PASSWORD` or `PEXPER_IMAP_PASSWORD_FILE`,
    /// read at each login so a rotated file is picked up) and whom to trust
    /// (`PEXPER_IMAP_CA_FILE`, besides the public roots).
    pub imap: crate::mailbox::Credentials,
    /// Where `/metrics` is served (`PEXPER_METRICS_ADDR`), on a listener of its own that the
    /// public one never routes to; unset: no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
}

/// The fixed Stripe secret used in development, so that `stripe listen` or a test can sign.
pub const DEV_STRIPE_WEBHOOK_SECRET: &str = "whsec_pexper_development_only";

impl Config {
    /// Whether Stripe webhooks are verified with the fixed development secret.
    pub fn uses_dev_stripe_secret(&self) -> bool {
        self.stripe_webhook_secrets
            .iter()
            .any(|s| s.expose_secret() == DEV_STRIPE_WEBHOOK_SECRET)
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads configuration from a map of variables (the environment, or a test's own), as the
    /// server needs it.
    pub fn from_vars(vars: HashMap<String, String>) -> anyhow::Result<Self> {
        Self::from_vars_as(vars, Role::Server)
    }

    /// Reads configuration as `role` needs it: production refuses a server without every
    /// secret it uses, but an admin command only without a database it can trust — each other
    /// secret is required by the command that uses it (`keys::load_master_keys`), so a
    /// migration or a journal export runs with the database's credentials alone.
    pub fn from_vars_as(vars: HashMap<String, String>, role: Role) -> anyhow::Result<Self> {
        // An empty variable means unset: `FOO= pexper-server` must not mean "the empty key".
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let secret = |name: &str| get(name).map(|v| SecretString::from(v.to_owned()));
        let list = |name: &str, default: &str| -> Vec<String> {
            get(name)
                .unwrap_or(default)
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };

        let env = match get("PEXPER_ENV").unwrap_or("development") {
            "development" | "dev" => Environment::Development,
            "production" | "prod" => Environment::Production,
            other => bail!("PEXPER_ENV must be `development` or `production`, not `{other}`"),
        };
        let bind = get("PEXPER_BIND")
            .unwrap_or("127.0.0.1:8080")
            .parse()
            .context("PEXPER_BIND must be an address like 127.0.0.1:8080")?;
        let public_url = get("PEXPER_PUBLIC_URL")
            .unwrap_or("http://127.0.0.1:8080")
            .trim_end_matches('/')
            .to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            bail!("PEXPER_PUBLIC_URL must start with http:// or https://");
        }
        let trusted_proxies = list("PEXPER_TRUSTED_PROXY", "")
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: String| anyhow::anyhow!("PEXPER_TRUSTED_PROXY must be a comma-separated list of IP addresses or CIDR networks: {e}"))?;
        let crash_keys = list("PEXPER_CRASH_KEYS", &format!("1:{DEV_CRASH_KEY}"))
            .iter()
            .map(|pair| parse_crash_key(pair))
            .collect::<anyhow::Result<_>>()?;
        let analytics_retention_days = get("PEXPER_ANALYTICS_RETENTION_DAYS")
            .unwrap_or("90")
            .parse()
            .context("PEXPER_ANALYTICS_RETENTION_DAYS must be a whole number of days")?;
        let backup_retention_days: u32 = get("PEXPER_BACKUP_RETENTION_DAYS")
            .unwrap_or("30")
            .parse()
            .ok()
            .filter(|days| (1..=36_500).contains(days))
            .context("PEXPER_BACKUP_RETENTION_DAYS must be a whole number of days, 1 to 36500")?;
        let tls = match (get("PEXPER_TLS_CERT"), get("PEXPER_TLS_KEY")) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (None, None) => None,
            _ => bail!("PEXPER_TLS_CERT and PEXPER_TLS_KEY go together: set both, or neither"),
        };
        let recurring_seconds = get("PEXPER_RECURRING_SECONDS")
            .unwrap_or("300")
            .parse()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .context("PEXPER_RECURRING_SECONDS must be a whole number of seconds, 1 to 86400")?;
        let shutdown_grace_seconds = get("PEXPER_SHUTDOWN_GRACE_SECONDS")
            .unwrap_or("20")
            .parse()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .context(
                "PEXPER_SHUTDOWN_GRACE_SECONDS must be a whole number of seconds, 1 to 3600",
            )?;
        let stripe_webhook_secrets = list("STRIPE_WEBHOOK_SECRET", DEV_STRIPE_WEBHOOK_SECRET)
            .into_iter()
            .map(SecretString::from)
            .collect();

        let job_concurrency =
            match get("PEXPER_JOB_CONCURRENCY") {
                Some(n) => n.parse().ok().filter(|n| (1..=256).contains(n)).context(
                    "PEXPER_JOB_CONCURRENCY must be a number of jobs at once from 1 to 256",
                )?,
                None => 16,
            };
        let mail_per_second = get("PEXPER_MAIL_PER_SECOND")
            .map(|n| {
                n.parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .context("PEXPER_MAIL_PER_SECOND must be a number of emails from 1 to 100000")
            })
            .transpose()?;
        let config = Config {
            env,
            database_url: secret("DATABASE_URL"),
            data_dir: PathBuf::from(get("PEXPER_DATA_DIR").unwrap_or("./.pexper")),
            bind,
            public_url,
            master_key: secret("PEXPER_MASTER_KEY"),
            smtp_url: secret("PEXPER_SMTP_URL"),
            smtp_ca_file: get("PEXPER_SMTP_CA_FILE").map(PathBuf::from),
            mail_from: get("PEXPER_MAIL_FROM")
                .unwrap_or("Pexper <hello@pexper.com>")
                .to_owned(),
            stripe_webhook_secrets,
            allowed_origins: list("PEXPER_ALLOWED_ORIGINS", "https://pexper.com"),
            license_key: secret("PEXPER_LICENSE_KEY"),
            privacy_email: get("PEXPER_PRIVACY_EMAIL")
                .unwrap_or("privacy@pexper.com")
                .to_owned(),
            trusted_proxies,
            tls,
            crash_keys,
            analytics_retention_days,
            backup_retention_days,
            recurring_seconds,
            shutdown_grace_seconds,
            pg_bin: get("PG_BIN").map(PathBuf::from),
            referral_bump: get("PEXPER_REFERRAL_BUMP")
                .unwrap_or("5")
                .parse()
                .ok()
                .filter(|n| (0..=10_000).contains(n))
                .context("PEXPER_REFERRAL_BUMP must be a whole number of places from 0 to 10000")?,
            password_hashers: match get("PEXPER_PASSWORD_HASHERS") {
                Some(n) => {
                    n.parse().ok().filter(|n| (1..=256).contains(n)).context(
                        "PEXPER_PASSWORD_HASHERS must be a number of threads from 1 to 256",
                    )?
                }
                None => std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1).max(1)),
            },
            job_concurrency,
            mail_per_second,
            waitlist_thank_you_url: get("PEXPER_WAITLIST_THANK_YOU_URL").map(str::to_owned),
            postal_address: get("PEXPER_POSTAL_ADDRESS").map(str::to_owned),
            metrics_addr: get("PEXPER_METRICS_ADDR")
                .map(|addr| {
                    addr.parse()
                        .context("PEXPER_METRICS_ADDR must be an address like 127.0.0.1:9090")
                })
                .transpose()?,
            privacy_mailbox: get("PEXPER_PRIVACY_IMAP_URL")
                .map(|url| MailboxUrl::parse("PEXPER_PRIVACY_IMAP_URL", url))
                .transpose()?,
            bounce_mailbox: get("PEXPER_BOUNCE_IMAP_URL")
                .map(|url| MailboxUrl::parse("PEXPER_BOUNCE_IMAP_URL", url))
                .transpose()?,
            imap: crate::mailbox::Credentials {
                password: secret("PEXPER_IMAP_PASSWORD"),
                password_file: get("PEXPER_IMAP_PASSWORD_FILE").map(PathBuf::from),
                ca_file: get("PEXPER_IMAP_CA_FILE").map(PathBuf::from),
            },
            dkim: match (
                get("PEXPER_DKIM"),
                get("PEXPER_DKIM_SELECTOR"),
                secret("PEXPER_DKIM_KEY"),
            ) {
                (Some("relay"), None, None) => DkimSigning::Relay,
                (Some("relay"), _, _) => bail!(
                    "PEXPER_DKIM=relay: the relay signs, so leave PEXPER_DKIM_SELECTOR and PEXPER_DKIM_KEY unset"
                ),
                (None | Some("sign"), Some(selector), Some(key)) => DkimSigning::Sign {
                    selector: selector.to_owned(),
                    key,
                },
                (None, None, None) => DkimSigning::Unsigned,
                (None, _, _) => {
                    bail!("set both PEXPER_DKIM_SELECTOR and PEXPER_DKIM_KEY, or neither")
                }
                (Some("sign"), _, _) => {
                    bail!("PEXPER_DKIM=sign needs both PEXPER_DKIM_SELECTOR and PEXPER_DKIM_KEY")
                }
                (Some(other), _, _) => bail!(
                    "PEXPER_DKIM must be `sign` (the default: we sign with PEXPER_DKIM_KEY) or `relay` (the relay signs), not `{other}`"
                ),
            },
        };
        config.check_production(role)?;
        Ok(config)
    }

    /// Production refuses to start on a development default; each refusal is one line that
    /// says what to set.
    fn check_production(&self, role: Role) -> anyhow::Result<()> {
        if self.env != Environment::Production {
            return Ok(());
        }
        let unverified_database = || {
            self.database_url
                .as_ref()
                .is_none_or(|url| !database_verifies_full(url.expose_secret()))
        };
        const DATABASE: &str = "PEXPER_ENV=production needs DATABASE_URL with sslmode=verify-full (e.g. postgres://user:pass@db.example.com/pexper?sslmode=verify-full)";
        if role == Role::Admin {
            if unverified_database() {
                bail!(DATABASE);
            }
            return Ok(());
        }
        if self.master_key.is_none() {
            bail!(
                "PEXPER_ENV=production needs PEXPER_MASTER_KEY: set it to a base64-encoded 32-byte key (e.g. `openssl rand -base64 32`)"
            );
        }
        match &self.smtp_url {
            None => bail!(
                "PEXPER_ENV=production refuses the file mail backend: set PEXPER_SMTP_URL (e.g. smtps://user:pass@smtp.example.com)"
            ),
            Some(url) if !smtp_requires_tls(url.expose_secret()) => bail!(
                "PEXPER_ENV=production refuses SMTP without TLS: set PEXPER_SMTP_URL to smtps://… (implicit TLS) or smtp://…?tls=required (STARTTLS)"
            ),
            Some(_) => {}
        }
        if !self.public_url.starts_with("https://") {
            bail!(
                "PEXPER_ENV=production needs an https:// PEXPER_PUBLIC_URL: the links in our emails carry tokens"
            );
        }
        if unverified_database() {
            bail!(DATABASE);
        }
        if self
            .crash_keys
            .iter()
            .any(|k| k.public_key == DEV_CRASH_KEY)
        {
            bail!(
                "PEXPER_ENV=production refuses the development crash key `pexper-dev`: set PEXPER_CRASH_KEYS to project_id:public_key pairs of your own (e.g. 1:$(openssl rand -hex 16))"
            );
        }
        if self.postal_address.is_none() {
            bail!(
                "PEXPER_ENV=production needs PEXPER_POSTAL_ADDRESS: the company's postal address, which the law asks for in the footer of product email"
            );
        }
        if self.license_key.is_none() {
            bail!(
                "PEXPER_ENV=production needs PEXPER_LICENSE_KEY: set it to a base64-encoded 32-byte Ed25519 seed"
            );
        }
        if self.tls.is_none() && self.trusted_proxies.is_empty() {
            bail!(
                "PEXPER_ENV=production needs HTTPS: set PEXPER_TLS_CERT and PEXPER_TLS_KEY, or name the proxy that terminates TLS in PEXPER_TRUSTED_PROXY"
            );
        }
        if matches!(self.dkim, DkimSigning::Unsigned) {
            bail!(
                "PEXPER_ENV=production signs its mail: set PEXPER_DKIM_SELECTOR and PEXPER_DKIM_KEY (e.g. `openssl genrsa -traditional 2048`), or PEXPER_DKIM=relay if the relay signs with your domain's key"
            );
        }
        if self.uses_dev_stripe_secret() {
            bail!(
                "PEXPER_ENV=production needs STRIPE_WEBHOOK_SECRET: set it to the whsec_… secret of your Stripe webhook endpoint"
            );
        }
        Ok(())
    }

    /// What every binary does first: installs ring as the one rustls provider, then reads the
    /// environment. On a bad configuration it prints one line and returns exit code 2.
    pub fn for_binary(name: &str, role: Role) -> Result<Self, std::process::ExitCode> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self::from_vars_as(std::env::vars().collect(), role).map_err(|e| {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::from(2)
        })
    }

    /// The website people sign up on (the first allowed origin): referral links point there.
    pub fn site_url(&self) -> &str {
        self.allowed_origins
            .first()
            .map(|s| s.trim_end_matches('/'))
            .unwrap_or("https://pexper.com")
    }

    /// Where the file mail backend writes in development.
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }
}

/// The crash key of the default `PEXPER_CRASH_KEYS`: public in the source, so development only.
pub const DEV_CRASH_KEY: &str = "pexper-dev";

/// Whether the pool this URL configures verifies the server's certificate and name. Read the
/// way sqlx reads it (the last `sslmode` wins, `PGSSLMODE` fills in), not by searching text:
/// `?sslmode=verify-full&sslmode=disable` disables TLS.
fn database_verifies_full(url: &str) -> bool {
    use std::str::FromStr;
    sqlx::postgres::PgConnectOptions::from_str(url)
        .is_ok_and(|o| matches!(o.get_ssl_mode(), sqlx::postgres::PgSslMode::VerifyFull))
}

/// Whether lettre will insist on TLS for this URL: `smtps://` (implicit TLS), or `smtp://`
/// whose `tls` parameter (the first, as lettre reads it) is `required`. Plain and
/// opportunistic STARTTLS can be stripped by anyone on the path.
fn smtp_requires_tls(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    match url.scheme() {
        "smtps" => true,
        "smtp" => tls.as_deref() == Some("required"),
        _ => false,
    }
}

fn parse_crash_key(pair: &str) -> anyhow::Result<CrashKey> {
    let (project, key) = pair
        .split_once(':')
        .context("PEXPER_CRASH_KEYS entries must look like `project_id:public_key`")?;
    let project_id = project
        .parse()
        .context("PEXPER_CRASH_KEYS: the project id must be a number")?;
    if key.is_empty() {
        bail!("PEXPER_CRASH_KEYS: the public key after `:` is empty");
    }
    Ok(CrashKey {
        project_id,
        public_key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PRODUCTION_OK: &[(&str, &str)] = &[
        ("PEXPER_ENV", "production"),
        (
            "PEXPER_MASTER_KEY",
            "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGU=",
        ),
        ("PEXPER_SMTP_URL", "smtps://u:p@smtp.example.com"),
        (
            "PEXPER_LICENSE_KEY",
            "bGljZW5zZS1rZXktZm9yLXRlc3RzLW9ubHktMzJieXQ=",
        ),
        ("STRIPE_WEBHOOK_SECRET", "whsec_real"),
        (
            "DATABASE_URL",
            "postgres://u:p@db/pexper?sslmode=verify-full",
        ),
        ("PEXPER_PUBLIC_URL", "https://api.pexper.com"),
        ("PEXPER_TRUSTED_PROXY", "10.0.0.2"),
        ("PEXPER_CRASH_KEYS", "1:0f3c9a7e5b2d4c6a8e1f3b5d7c9a2e4f"),
        ("PEXPER_POSTAL_ADDRESS", "Pexper Inc., 1 Example Street"),
        ("PEXPER_DKIM", "relay"),
    ];

    fn production_with(name: &str, value: &str) -> anyhow::Result<Config> {
        let mut v = vars(PRODUCTION_OK);
        v.insert(name.into(), value.into());
        Config::from_vars(v)
    }

    fn production_without(name: &str) -> anyhow::Result<Config> {
        let mut v = vars(PRODUCTION_OK);
        v.remove(name);
        Config::from_vars(v)
    }

    #[test]
    fn development_defaults_match_the_documented_table() {
        let c = Config::from_vars(HashMap::new()).expect("defaults are valid");
        assert_eq!(c.env, Environment::Development);
        assert!(c.database_url.is_none());
        assert_eq!(c.data_dir, PathBuf::from("./.pexper"));
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.mail_from, "Pexper <hello@pexper.com>");
        assert_eq!(c.allowed_origins, vec!["https://pexper.com"]);
        assert_eq!(c.privacy_email, "privacy@pexper.com");
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(
            c.crash_keys,
            vec![CrashKey {
                project_id: 1,
                public_key: "pexper-dev".into()
            }]
        );
        assert_eq!(c.analytics_retention_days, 90);
        assert_eq!(c.backup_retention_days, 30);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.password_hashers, cores.saturating_sub(1).max(1));
        assert_eq!(c.job_concurrency, 16);
        assert_eq!(c.mail_per_second, None);
    }

    #[test]
    fn job_concurrency_and_the_mail_ceiling_take_their_ranges_only() {
        let with = |k: &str, n: &str| Config::from_vars(vars(&[(k, n)]));
        assert_eq!(
            with("PEXPER_JOB_CONCURRENCY", "1")
                .expect("valid")
                .job_concurrency,
            1
        );
        assert_eq!(
            with("PEXPER_MAIL_PER_SECOND", "100000")
                .expect("valid")
                .mail_per_second,
            Some(100_000)
        );
        assert_eq!(
            with("PEXPER_BACKUP_RETENTION_DAYS", "36500")
                .expect("valid")
                .backup_retention_days,
            36_500
        );
        for (key, bad) in [
            ("PEXPER_JOB_CONCURRENCY", "0"),
            ("PEXPER_JOB_CONCURRENCY", "257"),
            ("PEXPER_MAIL_PER_SECOND", "0"),
            ("PEXPER_MAIL_PER_SECOND", "100001"),
            ("PEXPER_MAIL_PER_SECOND", "fast"),
            ("PEXPER_BACKUP_RETENTION_DAYS", "0"),
            ("PEXPER_BACKUP_RETENTION_DAYS", "4294967295"),
        ] {
            let e = with(key, bad).expect_err("refused");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn password_hashers_is_a_thread_count_from_1_to_256() {
        let with = |n: &str| Config::from_vars(vars(&[("PEXPER_PASSWORD_HASHERS", n)]));
        assert_eq!(with("3").expect("valid").password_hashers, 3);
        for bad in ["0", "257", "-1", "two"] {
            let e = with(bad).expect_err("refused");
            assert!(e.to_string().contains("PEXPER_PASSWORD_HASHERS"), "{e}");
        }
    }

    #[test]
    fn production_with_everything_set_starts() {
        Config::from_vars(vars(PRODUCTION_OK)).expect("complete production config");
    }

    #[test]
    fn an_admin_command_in_production_needs_a_verified_database_and_nothing_more() {
        let url = "postgres://u:p@db.example.com/pexper?sslmode=verify-full";
        let admin = |pairs: &[(&str, &str)]| Config::from_vars_as(vars(pairs), Role::Admin);
        admin(&[("PEXPER_ENV", "production"), ("DATABASE_URL", url)])
            .expect("the database's credentials are enough");
        let err = admin(&[("PEXPER_ENV", "production")]).expect_err("no database");
        assert!(err.to_string().contains("sslmode=verify-full"), "{err}");
        let err = admin(&[
            ("PEXPER_ENV", "production"),
            (
                "DATABASE_URL",
                "postgres://u:p@db.example.com/pexper?sslmode=require",
            ),
        ])
        .expect_err("an unverified database");
        assert!(err.to_string().contains("verify-full"), "{err}");
        // The server, with the same, is refused.
        Config::from_vars(vars(&[("PEXPER_ENV", "production"), ("DATABASE_URL", url)]))
            .expect_err("a server needs its secrets");
    }

    #[test]
    fn production_refuses_each_insecure_default_with_a_one_line_hint() {
        for (missing, hint) in [
            (
                "PEXPER_MASTER_KEY",
                "set it to a base64-encoded 32-byte key",
            ),
            ("PEXPER_SMTP_URL", "set PEXPER_SMTP_URL"),
            ("DATABASE_URL", "sslmode=verify-full"),
            ("PEXPER_LICENSE_KEY", "PEXPER_LICENSE_KEY"),
            ("STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET"),
            ("PEXPER_TRUSTED_PROXY", "PEXPER_TLS_CERT and PEXPER_TLS_KEY"),
            ("PEXPER_POSTAL_ADDRESS", "PEXPER_POSTAL_ADDRESS"),
            ("PEXPER_DKIM", "PEXPER_DKIM=relay if the relay signs"),
        ] {
            let err = production_without(missing).expect_err(missing).to_string();
            assert!(err.contains(hint), "{missing}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let mut v = vars(PRODUCTION_OK);
        v.insert(
            "DATABASE_URL".into(),
            "postgres://u:p@db/pexper?sslmode=require".into(),
        );
        assert!(
            Config::from_vars(v).is_err(),
            "sslmode=require is not enough"
        );
    }

    #[test]
    fn dkim_is_signed_here_by_the_relay_or_not_at_all_and_never_half_set() {
        let dkim = |pairs: &[(&str, &str)]| {
            Config::from_vars(vars(pairs))
                .map(|c| c.dkim)
                .map_err(|e| e.to_string())
        };
        assert!(matches!(dkim(&[]), Ok(DkimSigning::Unsigned)));
        assert!(matches!(
            dkim(&[("PEXPER_DKIM", "relay")]),
            Ok(DkimSigning::Relay)
        ));
        let key = [("PEXPER_DKIM_SELECTOR", "s1"), ("PEXPER_DKIM_KEY", "k")];
        assert!(matches!(dkim(&key), Ok(DkimSigning::Sign { selector, .. }) if selector == "s1"));
        let signing = [key[0], key[1], ("PEXPER_DKIM", "sign")];
        assert!(matches!(dkim(&signing), Ok(DkimSigning::Sign { .. })));
        for (bad, hint) in [
            (
                vec![("PEXPER_DKIM", "relay"), key[1]],
                "leave PEXPER_DKIM_SELECTOR",
            ),
            (vec![key[0]], "both"),
            (vec![("PEXPER_DKIM", "opendkim")], "`sign`"),
            (vec![("PEXPER_DKIM", "sign")], "PEXPER_DKIM=sign needs both"),
            (
                vec![("PEXPER_DKIM", "relay"), key[0]],
                "leave PEXPER_DKIM_SELECTOR",
            ),
        ] {
            let err = dkim(&bad).expect_err(hint);
            assert!(err.contains(hint), "{bad:?}: {err}");
        }
        // Production takes a key of ours as well as the relay's signature.
        let mut v = vars(PRODUCTION_OK);
        v.remove("PEXPER_DKIM");
        v.extend(key.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert!(Config::from_vars(v).is_ok());
    }

    #[test]
    fn production_refuses_unsafe_values_with_one_line_each() {
        for (name, value, hint) in [
            (
                "PEXPER_SMTP_URL",
                "smtp://u:p@smtp.example.com",
                "without TLS",
            ),
            (
                "PEXPER_SMTP_URL",
                "smtp://u:p@smtp.example.com?tls=opportunistic",
                "without TLS",
            ),
            (
                "PEXPER_SMTP_URL",
                "smtp://u:p@smtp.example.com?tls=opportunistic&tls=required",
                "without TLS",
            ),
            ("PEXPER_SMTP_URL", "not a url", "without TLS"),
            ("PEXPER_PUBLIC_URL", "http://api.pexper.com", "https://"),
            ("PEXPER_CRASH_KEYS", "1:pexper-dev", "development crash key"),
            (
                "PEXPER_CRASH_KEYS",
                "2:mine,1:pexper-dev",
                "development crash key",
            ),
            (
                "DATABASE_URL",
                "postgres://u:p@db/pexper?sslmode=verify-full&sslmode=disable",
                "sslmode=verify-full",
            ),
            (
                "DATABASE_URL",
                "postgres://u:p@db/pexper?application_name=sslmode=verify-full",
                "sslmode=verify-full",
            ),
            (
                "DATABASE_URL",
                "postgres://u:p@db/pexper",
                "sslmode=verify-full",
            ),
        ] {
            let err = production_with(name, value).expect_err(value).to_string();
            assert!(err.contains(hint), "{value}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(!err.contains(":p@"), "no credentials in the message: {err}");
        }
        for (name, value) in [
            (
                "PEXPER_SMTP_URL",
                "smtp://u:p@smtp.example.com:587?tls=required",
            ),
            ("PEXPER_SMTP_URL", "smtps://u:p@smtp.example.com"),
            (
                "DATABASE_URL",
                "postgres://u:p@db/pexper?sslmode=disable&sslmode=verify-full",
            ),
        ] {
            production_with(name, value).expect(value);
        }
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let c = Config::from_vars(vars(PRODUCTION_OK)).expect("valid");
        let shown = format!("{c:?}");
        let public = [
            "PEXPER_ENV",
            "PEXPER_PUBLIC_URL",
            "PEXPER_CRASH_KEYS",
            "PEXPER_TRUSTED_PROXY",
            "PEXPER_POSTAL_ADDRESS",
        ];
        for (_, value) in PRODUCTION_OK.iter().filter(|(k, _)| !public.contains(k)) {
            assert!(!shown.contains(value), "{value} leaked into {shown}");
        }
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let c = Config::from_vars(vars(&[("PEXPER_MASTER_KEY", "  ")])).expect("valid");
        assert!(c.master_key.is_none());
    }
}
