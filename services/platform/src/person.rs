//! People: the one place an email address is stored, sealed under the person's own data key.
//!
//! Services refer to a person by `PersonId` and never keep the address themselves; to write to
//! someone, a mail job names the person and the address is opened only at send time.

use anyhow::Context;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::address::EmailAddress;
use crate::crypto::{BlindIndex, DataKey, Field, Keyring, WrappedKey};

/// Domain of the email blind index (see `Keyring::blind_index`).
pub const EMAIL_INDEX: &str = "email";

crate::id!(
    /// Someone we hold an address for: the waitlist, purchases and privacy requests of one
    /// address all point at one person.
    PersonId
);

fn email_field(id: PersonId) -> Field<'static> {
    Field {
        table: "person",
        column: "email_sealed",
        row: id.0,
    }
}

/// Finds a person by address through the blind index.
pub async fn find(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
) -> anyhow::Result<Option<PersonId>> {
    find_indexed(conn, &email_index(keyring, email)).await
}

/// The blind index `person.email_index` holds for `email`: what a job can carry to find the
/// person later without holding the address.
pub fn email_index(keyring: &Keyring, email: &EmailAddress) -> BlindIndex {
    keyring.blind_index(EMAIL_INDEX, email.as_str())
}

/// Finds a person by the blind index of their address (see `email_index`).
pub async fn find_indexed(
    conn: &mut PgConnection,
    index: &[u8],
) -> anyhow::Result<Option<PersonId>> {
    sqlx::query_scalar("SELECT id FROM person WHERE email_index = $1")
        .bind(index)
        .fetch_optional(conn)
        .await
        .context("failed to look up a person")
}

/// How many emails that anyone could cause (by typing this person's address into a public
/// form) we send to one address per UTC day, per budget: enough for a person who retries,
/// useless for flooding an inbox.
pub const REQUEST_MAIL_PER_DAY: i32 = 3;

/// A person's daily mail budgets (migrations/…_mail_budgets.sql). Kept apart so that spending
/// one cannot silence another: three support requests with someone's address must not stop
/// their password reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailBudget {
    /// Waitlist confirmations and support acknowledgements: 3 a day.
    Contact,
    /// Account links, password resets and privacy-request acknowledgements (each with the link
    /// that proves the address is theirs): 3 a day.
    Access,
    /// What a signed-in person asks for (a licence sent again): 5 a day, and no stranger can
    /// spend it.
    Owner,
    /// The one email a day acknowledging the privacy requests the access budget held back: no
    /// other mail spends it, so those requests are always acknowledged the next day.
    Held,
}

impl MailBudget {
    pub fn name(self) -> &'static str {
        match self {
            Self::Contact => "contact",
            Self::Access => "access",
            Self::Owner => "owner",
            Self::Held => "held",
        }
    }

    pub fn per_day(self) -> i32 {
        match self {
            Self::Contact | Self::Access => REQUEST_MAIL_PER_DAY,
            Self::Owner => 5,
            Self::Held => 1,
        }
    }
}

/// Takes one email from one of the person's daily budgets; `false` once it is spent. The rule
/// is the database function `take_mail` (`take_request_mail` for the contact budget, which a
/// statement that decides to send can call itself): one atomic UPDATE on the person row, so
/// concurrent requests, on any replica, queue on its lock and see each other's counts.
pub async fn take_mail(
    conn: &mut PgConnection,
    person: PersonId,
    budget: MailBudget,
) -> anyhow::Result<bool> {
    let taken: Option<bool> = sqlx::query_scalar("SELECT take_mail($1, $2, $3)")
        .bind(person)
        .bind(budget.name())
        .bind(budget.per_day())
        .fetch_one(conn)
        .await
        .context("failed to take from a person's mail budget")?;
    Ok(taken == Some(true))
}

/// The columns of a `person` row for an address not stored yet: a fresh id, the address's
/// blind index, and the address sealed under a fresh data key, itself wrapped under the
/// master key. For a use case that writes the person in the same statement as the rest of
/// its change (`INSERT … ON CONFLICT ON CONSTRAINT person_email_index_key`); otherwise use
/// `find_or_create`.
#[derive(Debug)]
pub struct NewPerson {
    pub id: PersonId,
    pub email_index: Vec<u8>,
    pub email_sealed: Vec<u8>,
    pub data_key: Vec<u8>,
    pub key_version: i32,
}

impl NewPerson {
    pub fn new(keyring: &Keyring, email: &EmailAddress) -> Self {
        let id = PersonId(Uuid::now_v7());
        let (key, wrapped) = keyring.new_data_key(id.0);
        Self {
            id,
            email_index: email_index(keyring, email).to_vec(),
            email_sealed: key.seal(email_field(id), email.as_str().as_bytes()),
            data_key: wrapped.bytes,
            key_version: wrapped.master_version,
        }
    }
}

/// Finds the person with this address, or creates them with a fresh data key. Safe under
/// concurrency: the unique blind index decides, never a read-then-write race.
pub async fn find_or_create(
    conn: &mut PgConnection,
    keyring: &Keyring,
    email: &EmailAddress,
) -> anyhow::Result<PersonId> {
    // A key-share lock (held to the caller's commit): the retention sweep, which erases a
    // person nobody holds anything for, locks the row to check that again, so it either waits
    // for what the caller stores for this person or goes first and the caller finds no one.
    let found: Option<PersonId> =
        sqlx::query_scalar("SELECT id FROM person WHERE email_index = $1 FOR KEY SHARE")
            .bind(email_index(keyring, email).as_slice())
            .fetch_optional(&mut *conn)
            .await
            .context("failed to look up a person")?;
    if let Some(id) = found {
        return Ok(id);
    }
    let new = NewPerson::new(keyring, email);
    let inserted: Option<PersonId> = sqlx::query_scalar(
        "INSERT INTO person (id, email_index, email_sealed, data_key, key_version)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT ON CONSTRAINT person_email_index_key DO NOTHING
         RETURNING id",
    )
    .bind(new.id)
    .bind(new.email_index)
    .bind(new.email_sealed)
    .bind(new.data_key)
    .bind(new.key_version)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to insert a person")?;
    match inserted {
        Some(id) => Ok(id),
        None => find(conn, keyring, email)
            .await?
            .context("a person vanished between insert and lookup"),
    }
}

/// Unwraps a person's data key. `None` once the person is erased: their data is gone.
pub async fn data_key(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: PersonId,
) -> anyhow::Result<Option<DataKey>> {
    let row: Option<(Vec<u8>, i32)> =
        sqlx::query_as("SELECT data_key, key_version FROM person WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await
            .context("failed to load a data key")?;
    row.map(|(bytes, master_version)| {
        keyring
            .open_data_key(
                id.0,
                &WrappedKey {
                    master_version,
                    bytes,
                },
            )
            .context("failed to unwrap a data key")
    })
    .transpose()
}

/// Opens a person's address, for sending them mail or exporting their data.
pub async fn email(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: PersonId,
) -> anyhow::Result<Option<EmailAddress>> {
    let row: Option<SealedEmail> =
        sqlx::query_as("SELECT email_sealed, data_key, key_version FROM person WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await
            .context("failed to load a person")?;
    row.map(|sealed| sealed.open(keyring, id)).transpose()
}

/// A person's address as stored (`email_sealed, data_key, key_version`), for a statement that
/// reads it together with other things; `email` reads it alone.
#[derive(Debug, sqlx::FromRow)]
pub struct SealedEmail {
    pub email_sealed: Vec<u8>,
    pub data_key: Vec<u8>,
    pub key_version: i32,
}

impl SealedEmail {
    pub fn open(self, keyring: &Keyring, id: PersonId) -> anyhow::Result<EmailAddress> {
        let key = keyring
            .open_data_key(
                id.0,
                &WrappedKey {
                    master_version: self.key_version,
                    bytes: self.data_key,
                },
            )
            .context("failed to unwrap a data key")?;
        let address = key
            .open_string(email_field(id), &self.email_sealed)
            .context("failed to open a sealed address")?;
        EmailAddress::parse(&address).context("a stored address no longer parses")
    }
}

/// What `change_email` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailChange {
    Changed,
    /// The new address is another person's: nothing changed (never merged silently).
    Taken(PersonId),
}

/// Changes a person's address (a completed correction request): sealed anew under their key
/// and re-indexed, so they are found by the new address and no longer by the old one.
pub async fn change_email(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: PersonId,
    new: &EmailAddress,
) -> anyhow::Result<EmailChange> {
    match find(conn, keyring, new).await? {
        Some(other) if other != id => return Ok(EmailChange::Taken(other)),
        _ => {}
    }
    let key = data_key(conn, keyring, id)
        .await?
        .context("no such person to correct")?;
    let updated = sqlx::query(
        "UPDATE person SET email_sealed = $2, email_index = $3, updated_at = now()
         WHERE id = $1 AND erasing_since IS NULL",
    )
    .bind(id)
    .bind(key.seal(email_field(id), new.as_str().as_bytes()))
    .bind(email_index(keyring, new).as_slice())
    .execute(conn)
    .await
    .context("failed to change an address")?;
    anyhow::ensure!(updated.rows_affected() == 1, "the person is being erased");
    Ok(EmailChange::Changed)
}

/// Sets or lifts a restriction of processing (`restricted_since`): while set, `may_process`
/// allows only storage, legal notices and their own requests.
pub async fn restrict(conn: &mut PgConnection, id: PersonId, on: bool) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE person SET restricted_since = CASE WHEN $2 THEN coalesce(restricted_since, now()) END,
                updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(on)
    .execute(conn)
    .await
    .context("failed to change a restriction")?;
    Ok(())
}

/// What a person's data is used for, as far as a restriction of processing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Product email: launches, updates, the broadcasts.
    ProductEmail,
    /// An invitation off the waitlist.
    Invitation,
    /// The operator's export of addresses (`waitlist export`).
    OperatorExport,
    /// Credit for a referral (a better place in line).
    ReferralCredit,
}

impl Purpose {
    /// As the database function `may_process` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::ProductEmail => "product_email",
            Purpose::Invitation => "invitation",
            Purpose::OperatorExport => "operator_export",
            Purpose::ReferralCredit => "referral_credit",
        }
    }
}

/// Whether `id`'s data may be used for `purpose`: not while processing is restricted. The one
/// check, the database function `may_process` (migration `…23_may_process.sql`), which the
/// statements that select people in bulk call too.
pub async fn may_process(
    conn: &mut PgConnection,
    id: PersonId,
    purpose: Purpose,
) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT may_process($1, $2)")
        .bind(id)
        .bind(purpose.as_str())
        .fetch_one(conn)
        .await
        .context("failed to check a restriction")
}

/// Since when processing is restricted for a person, if it is.
pub async fn restricted_since(
    conn: &mut PgConnection,
    id: PersonId,
) -> anyhow::Result<Option<time::OffsetDateTime>> {
    Ok(
        sqlx::query_scalar("SELECT restricted_since FROM person WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await
            .context("failed to read a restriction")?
            .flatten(),
    )
}

/// Detaches a person being erased from their address: their blind index becomes random bytes,
/// so no lookup finds them, and a signup or a purchase for the address from now on makes a new
/// person, while this one waits for its goodbye email and `destroy`.
pub async fn detach(conn: &mut PgConnection, id: PersonId) -> anyhow::Result<()> {
    let mut unfindable = [0u8; 32];
    rand::fill(&mut unfindable);
    sqlx::query(
        "UPDATE person SET email_index = $2, erasing_since = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(unfindable.as_slice())
    .execute(conn)
    .await
    .context("failed to detach a person from their address")?;
    Ok(())
}

/// Journals the erasure of a person, in the erasure's transaction, so that restoring a backup
/// taken before it erases them again (`db::backup`): a hash of their id, computed by Postgres
/// as `journalled` matches it, so the two cannot drift apart.
pub async fn journal_erasure(conn: &mut PgConnection, id: PersonId) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO erasure_journal (person_hash)
         VALUES (sha256(convert_to('pexper/erased-person/' || $1::text, 'UTF8')))
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .execute(conn)
    .await
    .context("failed to journal an erasure")?;
    Ok(())
}

/// The people still here whom the erasure journal names: after a restore, those erased since
/// the backup was taken.
pub async fn journalled(conn: &mut PgConnection) -> anyhow::Result<Vec<PersonId>> {
    sqlx::query_scalar(
        "SELECT p.id FROM person p JOIN erasure_journal j
           ON j.person_hash = sha256(convert_to('pexper/erased-person/' || p.id::text, 'UTF8'))",
    )
    .fetch_all(conn)
    .await
    .context("failed to read the erasure journal")
}

/// Deletes the person row and with it their data key (crypto-shredding). Services erase their
/// own rows first (see `personal_data`); this is the last step.
pub async fn destroy(conn: &mut PgConnection, id: PersonId) -> anyhow::Result<bool> {
    let deleted = sqlx::query("DELETE FROM person WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .context("failed to delete a person")?;
    Ok(deleted.rows_affected() == 1)
}

/// How many data keys are wrapped under each master version.
pub async fn key_versions(pool: &PgPool) -> anyhow::Result<Vec<(i32, i64)>> {
    sqlx::query_as(
        "SELECT key_version, count(*) FROM person GROUP BY key_version ORDER BY key_version",
    )
    .fetch_all(pool)
    .await
    .context("failed to count data keys")
}

/// Re-wraps up to `batch` data keys that are not under the current master version. Returns
/// how many were done; 0 means none is left. Each batch is one transaction; it waits for rows
/// a running server holds (never skips them), so 0 is a real count, not a batch of busy rows.
/// Its locks change no key (`FOR NO KEY UPDATE`), so they never wait for, nor hold up, the
/// key-share locks of rows that refer to a person (`finish_jobs` takes them for many people);
/// they are taken in the order the signup statement locks the known people of its batch in
/// (`email_index`), so the two wait for each other instead of deadlocking.
pub async fn rotate_batch(pool: &PgPool, keyring: &Keyring, batch: i64) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(PersonId, Vec<u8>, i32)> = sqlx::query_as(
        "SELECT id, data_key, key_version FROM person
         WHERE key_version <> $1 ORDER BY email_index LIMIT $2 FOR NO KEY UPDATE",
    )
    .bind(keyring.current_version())
    .bind(batch)
    .fetch_all(&mut *tx)
    .await
    .context("failed to select keys to rotate")?;
    for (id, bytes, master_version) in rows.iter().cloned() {
        let key = keyring
            .open_data_key(
                id.0,
                &WrappedKey {
                    master_version,
                    bytes,
                },
            )
            .with_context(|| format!("failed to unwrap the data key of person {id}"))?;
        let wrapped = keyring.wrap_data_key(&key);
        sqlx::query(
            "UPDATE person SET data_key = $2, key_version = $3, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(&wrapped.bytes)
        .bind(wrapped.master_version)
        .execute(&mut *tx)
        .await
        .context("failed to store a re-wrapped key")?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}
