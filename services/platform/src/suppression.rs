//! The suppression list: addresses that must get less mail than they otherwise would, kept
//! only as a keyed hash (a blind index under its own domain), with the reason. Every send path
//! reads it through `mail::deliver` (a new signup's confirmation in its job's read of its
//! decision, which `deliver` takes only for the very address and email it sends: `Checked`);
//! which mail a reason stops is `MailClass::allows`.

use anyhow::Context;
use sqlx::PgConnection;

use crate::address::EmailAddress;
use crate::crypto::{BlindIndex, Keyring};

/// Domain of the suppression hash (see `Keyring::blind_index`).
const INDEX: &str = "suppression";

crate::text_enum!(
    /// Why an address is suppressed.
    pub enum Reason {
        /// They unsubscribed and were later erased: kept so that the erasure does not silently
        /// re-subscribe them. A fresh double opt-in lifts it.
        Unsubscribed = "unsubscribed",
        /// A hard bounce (RFC 3464 status 5.x.x): the address takes no mail.
        Bounced = "bounced",
        /// A spam complaint (an RFC 5965 ARF report).
        Complained = "complained",
    }
);

/// The key an address is suppressed under (`email_suppression.address_hash`).
pub fn hash(keyring: &Keyring, email: &EmailAddress) -> BlindIndex {
    keyring.blind_index(INDEX, email.as_str())
}

/// Suppresses `email` for `reason`. A bounce or a complaint replaces `unsubscribed` (it says
/// more, and a fresh opt-in must not lift it); otherwise the first reason stays.
pub async fn suppress(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
    reason: Reason,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO email_suppression (address_hash, reason) VALUES ($1, $2)
         ON CONFLICT (address_hash) DO UPDATE SET reason = EXCLUDED.reason
         WHERE email_suppression.reason = 'unsubscribed'",
    )
    .bind(hash(keyring, email).as_slice())
    .bind(reason)
    .execute(conn)
    .await
    .context("failed to suppress an address")?;
    Ok(())
}

/// What a fresh double opt-in lifts: an `unsubscribed` suppression, never a bounce or a
/// complaint.
pub async fn lift_unsubscribed(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
) -> anyhow::Result<()> {
    sqlx::query(
        "DELETE FROM email_suppression WHERE address_hash = $1 AND reason = 'unsubscribed'",
    )
    .bind(hash(keyring, email).as_slice())
    .execute(conn)
    .await
    .context("failed to lift a suppression")?;
    Ok(())
}

/// Lifts a bounce's or a complaint's suppression of `email` (an operator's decision: `mail
/// unsuppress`); returns the reason it had, if it had one of those. An `unsubscribed` one
/// stays: only the person's own double opt-in lifts it.
pub async fn lift(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
) -> anyhow::Result<Option<Reason>> {
    sqlx::query_scalar(
        "DELETE FROM email_suppression
         WHERE address_hash = $1 AND reason IN ('bounced', 'complained') RETURNING reason",
    )
    .bind(hash(keyring, email).as_slice())
    .fetch_optional(conn)
    .await
    .context("failed to lift a suppression")
}

/// Why `email` is suppressed and since when, if it is: for the person's own export.
pub async fn status(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
) -> anyhow::Result<Option<(Reason, time::OffsetDateTime)>> {
    sqlx::query_as("SELECT reason, created_at FROM email_suppression WHERE address_hash = $1")
        .bind(hash(keyring, email).as_slice())
        .fetch_optional(conn)
        .await
        .context("failed to read the suppression list")
}

/// Why `email` is suppressed, if it is.
pub async fn reason(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
) -> anyhow::Result<Option<Reason>> {
    sqlx::query_scalar("SELECT reason FROM email_suppression WHERE address_hash = $1")
        .bind(hash(keyring, email).as_slice())
        .fetch_optional(conn)
        .await
        .context("failed to read the suppression list")
}
