//! The waitlist's emails, sent from jobs: the confirmation (transactional) and the welcome
//! with one's place in line (product email: it carries RFC 8058 List-Unsubscribe headers).
//! No email has tracking pixels or rewritten links.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::crypto::{BlindIndex, Keyring};
use pexper_platform::jobs::{BackgroundJob, Job, JobError};
use pexper_platform::mail::{self, EmailTemplate};
use pexper_platform::person::{self, PersonId};
use pexper_platform::suppression;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{self, EntryStatus, SignupMailDecision};
use crate::unsubscribe;

#[derive(Debug, Clone)]
pub struct ConfirmEmail {
    pub confirm_url: String,
    pub unsubscribe_url: String,
}

pexper_platform::email_template!(
    ConfirmEmail,
    "waitlist-confirm",
    Requested,
    "emails/waitlist-confirm/subject.txt",
    "emails/waitlist-confirm/body.txt",
    "emails/waitlist-confirm/body.html"
);

#[derive(Debug, Clone)]
pub struct WelcomeEmail {
    pub position: i64,
    pub bump: i64,
    pub referral_link: String,
    pub footer: ProductFooter,
}

pexper_platform::email_template!(
    WelcomeEmail,
    "waitlist-welcome",
    Product,
    "emails/waitlist-welcome/subject.txt",
    "emails/waitlist-welcome/body.txt",
    "emails/waitlist-welcome/body.html"
);

pub fn referral_link(platform: &Platform, code: &str) -> String {
    format!("{}/?ref={code}", platform.config.site_url())
}

/// RFC 8058 headers for product email.
fn list_unsubscribe(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("List-Unsubscribe", format!("<{url}>")),
        (
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click".to_owned(),
        ),
    ]
}

/// The email a signup asks for: a confirmation link for someone not (or no longer) opted in,
/// or a reminder of their place for someone on the list. At most one per person per 10
/// minutes, and at most `person::REQUEST_MAIL_PER_DAY` a day together with support
/// acknowledgements (the contact budget, `person::MailBudget`), whatever the number of signups.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignupMail {
    /// The suppression key of the address signed up (`suppression::hash`, base64url), so
    /// that the job's read of its decision also asks whether the address is suppressed: a
    /// round trip less for each email (issue 31). Used only if it is the key of the address
    /// the job reads (`mail::Checked`); absent in jobs queued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    suppression_key: Option<String>,
}

impl SignupMail {
    /// The job for a signup of `email`.
    pub fn for_address(keyring: &Keyring, email: &EmailAddress) -> Self {
        Self {
            suppression_key: Some(URL_SAFE_NO_PAD.encode(suppression::hash(keyring, email))),
        }
    }

    /// The suppression key it carries, if what it carries could be one.
    fn suppression_key(&self) -> Option<BlindIndex> {
        let bytes = URL_SAFE_NO_PAD
            .decode(self.suppression_key.as_deref()?)
            .ok()?;
        bytes.try_into().ok()
    }
}

impl BackgroundJob for SignupMail {
    const KIND: &'static str = "waitlist.signup_mail";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        signup_mail(platform, job, self.suppression_key()).await
    }
}

/// The welcome with one's place in line, after a confirmation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {}

impl BackgroundJob for Welcome {
    const KIND: &'static str = "waitlist.welcome";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let person = job.person()?;
        let mut conn = platform.pool.acquire().await?;
        let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
            return Ok(());
        };
        welcome_email(&platform, &mut conn, job, person, to).await
    }
}

async fn signup_mail(
    platform: Platform,
    job: &Job,
    suppression_key: Option<BlindIndex>,
) -> Result<(), JobError> {
    let person = job.person()?;
    let token = store::confirmation_token(&platform.keyring, job.id);
    let mut conn = platform.pool.acquire().await?;
    let templates = [ConfirmEmail::NAME, WelcomeEmail::NAME];
    let check = suppression_key.map(|key| (mail::message_id(job, &platform.mail_from), key));
    let decided =
        store::decide_signup_mail(&mut conn, person, job.id, &token, &templates, check).await?;
    let (status, confirm, sealed, checked) = match decided {
        SignupMailDecision::Send {
            status,
            confirm,
            sealed,
            checked,
        } => (status, confirm, sealed, checked),
        SignupMailDecision::BudgetSpent => {
            tracing::info!("daily mail budget spent; signup email not sent");
            return Ok(());
        }
        SignupMailDecision::NotDue => return Ok(()), // Erased, or mailed within 10 minutes.
    };
    let to = sealed.open(&platform.keyring, person)?;
    if confirm {
        let email = ConfirmEmail {
            confirm_url: format!(
                "{}/v1/waitlist/confirm?token={token}",
                platform.config.public_url
            ),
            unsubscribe_url: unsubscribe::url(&platform, person),
        };
        mail::send_template_checked(
            &platform,
            &mut conn,
            job,
            Some(person),
            to,
            &email,
            Vec::new(),
            checked,
        )
        .await
    } else if status == EntryStatus::Confirmed {
        welcome_email(&platform, &mut conn, job, person, to).await
    } else {
        Ok(()) // Invited already: the invitation said everything.
    }
}

/// After a confirmation: the place in line and the referral link.
async fn welcome_email(
    platform: &Platform,
    conn: &mut sqlx::PgConnection,
    job: &Job,
    person: PersonId,
    to: EmailAddress,
) -> Result<(), JobError> {
    let Some(entry) = store::entry(conn, person).await? else {
        return Ok(());
    };
    let position = store::position(conn, person, platform.config.referral_bump).await?;
    let (Some(position), true) = (position, entry.subscribed) else {
        return Ok(()); // Invited already, or unsubscribed: no product email.
    };
    let bump = platform.config.referral_bump;
    let referral_link = referral_link(platform, entry.referral_code.as_deref().unwrap_or(""));
    send_product_email(platform, conn, job, person, to, |footer| WelcomeEmail {
        position,
        bump,
        referral_link,
        footer,
    })
    .await
}

/// What the footer of every product email carries: the person's unsubscribe link and the
/// company's postal address (`PEXPER_POSTAL_ADDRESS`; anti-spam law asks for both).
#[derive(Debug, Clone)]
pub struct ProductFooter {
    pub unsubscribe_url: String,
    pub postal_address: String,
}

/// Sends product email: its footer links to the unsubscribe page and names the company's
/// postal address, and it carries both RFC 8058 headers. `build` gets the footer.
async fn send_product_email<T: EmailTemplate>(
    platform: &Platform,
    conn: &mut sqlx::PgConnection,
    job: &Job,
    person: PersonId,
    to: EmailAddress,
    build: impl FnOnce(ProductFooter) -> T,
) -> Result<(), JobError> {
    let unsubscribe_url = unsubscribe::url(platform, person);
    let headers = list_unsubscribe(&unsubscribe_url);
    let email = build(ProductFooter {
        unsubscribe_url,
        postal_address: platform.config.postal_address.clone().unwrap_or_default(),
    });
    mail::send_template(platform, conn, job, Some(person), to, &email, headers).await
}

/// `product-update`: a broadcast whose subject and body the operator wrote.
#[derive(Debug, Clone)]
pub struct ProductUpdate {
    pub subject: String,
    pub body: String,
    pub footer: ProductFooter,
}

impl ProductUpdate {
    /// Paragraphs for the HTML body (blank-line separated in the text).
    pub fn paragraphs(&self) -> Vec<&str> {
        mail::paragraphs(&self.body)
    }
}

pexper_platform::email_template!(
    ProductUpdate,
    "product-update",
    Product,
    "emails/product-update/subject.txt",
    "emails/product-update/body.txt",
    "emails/product-update/body.html"
);

#[derive(Debug, Clone)]
pub struct InvitationEmail {
    pub download_url: String,
    pub footer: ProductFooter,
}

pexper_platform::email_template!(
    InvitationEmail,
    "waitlist-invitation",
    Product,
    "emails/waitlist-invitation/subject.txt",
    "emails/waitlist-invitation/body.txt",
    "emails/waitlist-invitation/body.html"
);

/// Whether product email may go to this person now: on the list (or invited), subscribed, and
/// not suppressed. Checked at send time, so an unsubscribe stops mail already queued.
async fn may_receive_product_email(
    conn: &mut sqlx::PgConnection,
    person: PersonId,
) -> Result<bool, JobError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM waitlist_entry
                        WHERE person_id = $1 AND subscribed AND status IN ('confirmed', 'invited'))",
    )
    .bind(person)
    .fetch_one(conn)
    .await?)
}

/// One product update to one person (`pexper-admin waitlist broadcast` queues one per person).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Broadcast {
    pub broadcast_id: Uuid,
}

impl BackgroundJob for Broadcast {
    const KIND: &'static str = "waitlist.broadcast";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        broadcast(platform, job, self.broadcast_id).await
    }
}

/// The invitation to download the app (`pexper-admin waitlist invite`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invitation {}

impl BackgroundJob for Invitation {
    const KIND: &'static str = "waitlist.invitation";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        invitation(platform, job).await
    }
}

async fn broadcast(platform: Platform, job: &Job, broadcast_id: Uuid) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    if !may_receive_product_email(&mut conn, person).await? {
        return Ok(());
    }
    let Some((subject, body)): Option<(String, String)> =
        sqlx::query_as("SELECT subject, body FROM broadcast WHERE id = $1")
            .bind(broadcast_id)
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Err(JobError::permanent(anyhow::anyhow!(
            "broadcast {broadcast_id} is gone"
        )));
    };
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    send_product_email(&platform, &mut conn, job, person, to, |footer| {
        ProductUpdate {
            subject,
            body,
            footer,
        }
    })
    .await
}

async fn invitation(platform: Platform, job: &Job) -> Result<(), JobError> {
    let person = job.person()?;
    let mut conn = platform.pool.acquire().await?;
    if !may_receive_product_email(&mut conn, person).await? {
        return Ok(());
    }
    let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
        return Ok(());
    };
    let download_url = format!("{}/download", platform.config.site_url());
    send_product_email(&platform, &mut conn, job, person, to, |footer| {
        InvitationEmail {
            download_url,
            footer,
        }
    })
    .await
}
