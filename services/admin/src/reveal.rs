//! `--email --reason WHY`: the one way a command shows an address in clear. The read is
//! recorded in the privacy audit trail, with the operator's name and the reason (redacted).

use pexper_platform::config::Config;
use pexper_privacy::PrivacyRequestId;
use sqlx::PgPool;

#[derive(Debug, clap::Args)]
pub struct Reveal {
    /// Also decrypt and show the address (needs --reason; audited).
    #[arg(long, requires = "reason")]
    pub email: bool,
    /// Why you need the address: recorded in the audit trail with your name.
    #[arg(long)]
    pub reason: Option<String>,
}

impl Reveal {
    /// Whether to show the address; when so, the read of `what` (which names no address) is
    /// recorded first.
    pub async fn record(
        &self,
        config: &Config,
        pool: &PgPool,
        request: Option<PrivacyRequestId>,
        what: impl FnOnce() -> String,
    ) -> anyhow::Result<bool> {
        let (true, Some(reason)) = (self.email, &self.reason) else {
            return Ok(false);
        };
        let keyring = crate::keyring(config, pool).await?;
        let mut conn = pool.acquire().await?;
        pexper_privacy::admin::record_read(&mut conn, &keyring, request, &what(), reason).await?;
        Ok(true)
    }
}
