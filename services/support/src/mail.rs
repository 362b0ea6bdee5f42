//! The support emails, both answers to what the person asked (`Requested`): the
//! acknowledgement with the reference, and each reply an operator writes.

use pexper_platform::Platform;
use pexper_platform::jobs::{BackgroundJob, Job, JobError};
use pexper_platform::{email_template, mail, person};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{self, SupportRequestId};

#[derive(Debug, Clone)]
pub struct Received {
    pub reference: String,
}

email_template!(
    Received,
    "support-received",
    Requested,
    "emails/support-received/subject.txt",
    "emails/support-received/body.txt",
    "emails/support-received/body.html"
);

#[derive(Debug, Clone)]
pub struct Reply {
    pub reference: String,
    pub body: String,
}

impl Reply {
    pub fn paragraphs(&self) -> Vec<&str> {
        mail::paragraphs(&self.body)
    }
}

email_template!(
    Reply,
    "support-reply",
    Requested,
    "emails/support-reply/subject.txt",
    "emails/support-reply/body.txt",
    "emails/support-reply/body.html"
);

/// The acknowledgement of a request, with its reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acknowledge {
    pub request_id: SupportRequestId,
}

impl BackgroundJob for Acknowledge {
    const KIND: &'static str = "support.acknowledge";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let person = job.person()?;
        let mut conn = platform.pool.acquire().await?;
        let reference: Option<String> =
            sqlx::query_scalar("SELECT reference FROM support_request WHERE id = $1")
                .bind(self.request_id)
                .fetch_optional(&mut *conn)
                .await?;
        let (Some(reference), Some(to)) = (
            reference,
            person::email(&mut conn, &platform.keyring, person).await?,
        ) else {
            return Ok(()); // Erased meanwhile.
        };
        let email = Received { reference };
        mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
    }
}

/// One reply of the operator's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReply {
    pub reply_id: Uuid,
}

impl BackgroundJob for SendReply {
    const KIND: &'static str = "support.reply";
    type Context = Platform;

    async fn run(self, platform: Platform, job: &Job) -> Result<(), JobError> {
        let person = job.person()?;
        let mut conn = platform.pool.acquire().await?;
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT r.reference, y.body_sealed FROM support_reply y
             JOIN support_request r ON r.id = y.request_id WHERE y.id = $1",
        )
        .bind(self.reply_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((reference, sealed)) = row else {
            return Ok(()); // Erased meanwhile.
        };
        let Some(to) = person::email(&mut conn, &platform.keyring, person).await? else {
            return Ok(());
        };
        let key = person::data_key(&mut conn, &platform.keyring, person)
            .await?
            .ok_or_else(|| JobError::permanent(anyhow::anyhow!("the person is erased")))?;
        let body = key
            .open_string(store::reply_field(self.reply_id), &sealed)
            .map_err(JobError::permanent)?;
        let email = Reply { reference, body };
        mail::send_template(&platform, &mut conn, job, Some(person), to, &email, vec![]).await
    }
}
