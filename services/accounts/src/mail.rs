//! The account emails, each an answer to something done with the address (`Requested`): the
//! verification link, "you already have an account", the reset link, and "your password was
//! changed". Links are made when the email is sent, so no token waits in the queue in clear.

use pexper_platform::Platform;
use pexper_platform::jobs::{self, BackgroundJob, Job, JobError, NewJob};
use pexper_platform::{email_template, mail, person};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{self, AccountId, SignupId};

#[derive(Debug, Clone)]
pub struct VerifyAddress {
    pub url: String,
    pub expires: String,
}

email_template!(
    VerifyAddress,
    "account-verify",
    Requested,
    "emails/account-verify/subject.txt",
    "emails/account-verify/body.txt",
    "emails/account-verify/body.html"
);

#[derive(Debug, Clone)]
pub struct AlreadyRegistered {
    pub sign_in_url: String,
    pub reset_url: String,
}

email_template!(
    AlreadyRegistered,
    "account-exists",
    Requested,
    "emails/account-exists/subject.txt",
    "emails/account-exists/body.txt",
    "emails/account-exists/body.html"
);

#[derive(Debug, Clone)]
pub struct ResetLink {
    pub url: String,
}

email_template!(
    ResetLink,
    "account-reset",
    Requested,
    "emails/account-reset/subject.txt",
    "emails/account-reset/body.txt",
    "emails/account-reset/body.html"
);

#[derive(Debug, Clone)]
pub struct PasswordChanged {
    pub when: String,
    pub reset_url: String,
}

email_template!(
    PasswordChanged,
    "account-password-changed",
    Requested,
    "emails/account-password-changed/subject.txt",
    "emails/account-password-changed/body.txt",
    "emails/account-password-changed/body.html"
);

/// Sends `email` to the job's person, if they still have an address.
async fn send<T: mail::EmailTemplate>(
    platform: &Platform,
    conn: &mut sqlx::PgConnection,
    job: &Job,
    email: &T,
) -> Result<(), JobError> {
    let person = job.person()?;
    let Some(to) = person::email(conn, &platform.keyring, person).await? else {
        return Ok(()); // Erased meanwhile.
    };
    mail::send_template(platform, conn, job, Some(person), to, email, vec![]).await
}

fn page(platform: &Platform, path: &str) -> String {
    format!("{}{path}", platform.config.public_url.trim_end_matches('/'))
}

/// The verification link of a sign-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendVerification {
    pub signup: SignupId,
}

impl BackgroundJob for SendVerification {
    const KIND: &'static str = "accounts.verify_mail";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let mut conn = platform.pool.acquire().await?;
        let Some((token, expires)) = store::signup_token(&mut conn, self.signup).await? else {
            return Ok(()); // Used or expired meanwhile.
        };
        let email = VerifyAddress {
            url: page(&platform, &format!("/v1/accounts/verify?token={token}")),
            expires: format_when(expires),
        };
        send(&platform, &mut conn, job, &email).await
    }
}

/// The answer to a sign-up with an address that has an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendAlreadyRegistered {}

impl BackgroundJob for SendAlreadyRegistered {
    const KIND: &'static str = "accounts.exists_mail";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let mut conn = platform.pool.acquire().await?;
        let email = AlreadyRegistered {
            sign_in_url: page(&platform, "/account/sign-in"),
            reset_url: page(&platform, "/account/password-reset"),
        };
        send(&platform, &mut conn, job, &email).await
    }
}

/// A password-reset link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReset {
    pub account: AccountId,
    /// When it was asked for: the link counts from then, so a password changed while the
    /// email waited in the queue (or a relay outage) kills it too. Jobs queued before this
    /// field existed count from when they run.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub requested_at: Option<OffsetDateTime>,
}

impl BackgroundJob for SendReset {
    const KIND: &'static str = "accounts.reset_mail";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let mut conn = platform.pool.acquire().await?;
        if store::account(&mut conn, self.account).await?.is_none() {
            return Ok(()); // Deleted meanwhile.
        }
        let token = store::create_reset(&mut conn, self.account, self.requested_at).await?;
        let email = ResetLink {
            url: page(
                &platform,
                &format!("/v1/accounts/password-reset/confirm?token={token}"),
            ),
        };
        send(&platform, &mut conn, job, &email).await
    }
}

/// A password-reset request, decided off the request path. The request only queues this job,
/// the same one INSERT and commit whether or not the address has an account, so neither the
/// answer nor its timing tells a stranger which addresses are registered. It carries the
/// address's blind index (what `person.email_index` holds), never the address; erasure
/// deletes it, and so does the `accounts.reset_requests` rule once its hour is over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecideReset {
    #[serde(with = "base64_index")]
    pub email_index: Vec<u8>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

impl BackgroundJob for DecideReset {
    const KIND: &'static str = "accounts.reset_request";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        if self.requested_at + store::RESET_LIFETIME < OffsetDateTime::now_utc() {
            return Ok(()); // A link from it would be dead on arrival.
        }
        let mut tx = platform.pool.begin().await?;
        let mut budget_spent = false;
        if let Some(person) = person::find_indexed(&mut tx, &self.email_index).await?
            && let Some(account) = store::account_of(&mut tx, person).await?
            && account.disabled_at.is_none()
        {
            if person::take_mail(&mut tx, person, person::MailBudget::Access).await? {
                jobs::enqueue(
                    &mut tx,
                    NewJob::new(&SendReset {
                        account: account.id,
                        requested_at: Some(self.requested_at),
                    })
                    .for_person(person)
                    // Run again (its finished row's delete lost), it mails no second link.
                    .dedupe_key(format!("{}:{}", SendReset::KIND, job.id)),
                )
                .await?;
            } else {
                budget_spent = true;
            }
        }
        tx.commit().await?;
        if budget_spent {
            platform
                .metrics
                .mail_budget_spent(person::MailBudget::Access);
        }
        Ok(())
    }
}

/// How `DecideReset` writes an address's blind index in its payload (erasure finds it so).
pub fn index_in_payload(index: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(index)
}

mod base64_index {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(index: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::index_in_payload(index))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        URL_SAFE_NO_PAD
            .decode(String::deserialize(d)?)
            .map_err(D::Error::custom)
    }
}

/// The notice that the password changed (by a reset or in the account).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendPasswordChanged {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl BackgroundJob for SendPasswordChanged {
    const KIND: &'static str = "accounts.password_changed_mail";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let mut conn = platform.pool.acquire().await?;
        let email = PasswordChanged {
            when: format_when(self.at),
            reset_url: page(&platform, "/account/password-reset"),
        };
        send(&platform, &mut conn, job, &email).await
    }
}

/// "2026-11-30 16:40", in UTC.
fn format_when(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{} {:02}:{:02}", at.date(), at.hour(), at.minute())
}
