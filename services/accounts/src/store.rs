//! Accounts in Postgres: pending sign-ups, accounts, reset links, sessions and the sign-in
//! throttle. Tokens are random and only their SHA-256 is stored.

use anyhow::Context;
use pexper_platform::crypto::{random_token, sha256};
use pexper_platform::person::PersonId;
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pexper_platform::id!(
    /// A person's account on pexper.com.
    AccountId
);
pexper_platform::id!(
    /// One signed-in browser.
    SessionId
);

/// How long a verification link works.
pub const SIGNUP_LIFETIME: Duration = Duration::days(2);
/// How long a password-reset link works.
pub const RESET_LIFETIME: Duration = Duration::hours(1);
/// A session unused this long is over.
pub const SESSION_IDLE: Duration = Duration::days(7);
/// A session is over this long after sign-in, however much it is used.
pub const SESSION_ABSOLUTE: Duration = Duration::days(30);
/// Export and deletion need the password typed this recently in the session.
pub const REAUTH_WINDOW: Duration = Duration::minutes(10);

/// An account as a sign-in sees it.
#[derive(Debug, sqlx::FromRow)]
pub struct Account {
    pub id: AccountId,
    pub person_id: PersonId,
    pub password_hash: String,
    /// When the password was last set: device cookies name it, so a change voids them.
    pub password_changed_at: OffsetDateTime,
    pub disabled_at: Option<OffsetDateTime>,
}

pub async fn account_of(
    conn: &mut PgConnection,
    person: PersonId,
) -> anyhow::Result<Option<Account>> {
    sqlx::query_as(
        "SELECT id, person_id, password_hash, password_changed_at, disabled_at FROM account
         WHERE person_id = $1",
    )
    .bind(person)
    .fetch_optional(conn)
    .await
    .context("failed to load an account")
}

pub async fn account(conn: &mut PgConnection, id: AccountId) -> anyhow::Result<Option<Account>> {
    sqlx::query_as(
        "SELECT id, person_id, password_hash, password_changed_at, disabled_at FROM account WHERE id = $1",
    )
        .bind(id)
        .fetch_optional(conn)
        .await
        .context("failed to load an account")
}

pexper_platform::id!(
    /// A sign-up waiting for its address to be verified.
    SignupId
);

/// Stores a sign-up waiting for its link (made when the email is sent: `signup_token`). It
/// holds no password: that is chosen on the page the link opens.
pub async fn create_signup(conn: &mut PgConnection, person: PersonId) -> anyhow::Result<SignupId> {
    let id = SignupId(Uuid::now_v7());
    sqlx::query(
        "INSERT INTO account_signup (id, person_id, email_index, expires_at)
         SELECT $1, id, email_index, now() + $3 FROM person WHERE id = $2",
    )
    .bind(id)
    .bind(person)
    .bind(SIGNUP_LIFETIME)
    .execute(conn)
    .await
    .context("failed to store a sign-up")?;
    Ok(id)
}

/// A new link token for a pending sign-up, with when it expires; `None` once the sign-up is
/// used or expired. A retried email gets a new token (the old one was never delivered).
pub async fn signup_token(
    conn: &mut PgConnection,
    signup: SignupId,
) -> anyhow::Result<Option<(String, OffsetDateTime)>> {
    let token = random_token();
    let expires: Option<OffsetDateTime> = sqlx::query_scalar(
        "UPDATE account_signup SET token_hash = $2 WHERE id = $1 AND expires_at > now()
         RETURNING expires_at",
    )
    .bind(signup)
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(conn)
    .await
    .context("failed to make a sign-up link")?;
    Ok(expires.map(|e| (token, e)))
}

/// Which verification links still work: unexpired, for the address they were mailed to (the
/// person's address has not changed since).
const LIVE_SIGNUP: &str =
    "s.expires_at > now() AND p.id = s.person_id AND p.email_index = s.email_index";

/// The person a usable (unused, unexpired) verification link is for.
pub async fn signup_person(
    conn: &mut PgConnection,
    token: &str,
) -> anyhow::Result<Option<PersonId>> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT s.person_id FROM account_signup s, person p
         WHERE s.token_hash = $1 AND {LIVE_SIGNUP}"
    )))
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(conn)
    .await
    .context("failed to look up a sign-up")
}

/// Uses a verification link: the account is created with the password chosen on its page,
/// and every other pending sign-up of the address goes. `None` for an unknown, used or
/// expired link, or an address that has an account already.
pub async fn complete_signup(
    conn: &mut PgConnection,
    token: &str,
    password_hash: &str,
) -> anyhow::Result<Option<(AccountId, PersonId, OffsetDateTime)>> {
    // The person's pending sign-ups are locked first, in one order: two of their links used at
    // once must not each delete the other's row (a deadlock).
    sqlx::query(
        "SELECT 1 FROM account_signup WHERE person_id =
             (SELECT person_id FROM account_signup WHERE token_hash = $1)
         ORDER BY id FOR UPDATE",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .execute(&mut *conn)
    .await
    .context("failed to lock pending sign-ups")?;
    let person: Option<PersonId> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "DELETE FROM account_signup s USING person p
         WHERE s.token_hash = $1 AND {LIVE_SIGNUP}
         RETURNING s.person_id"
    )))
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to use a sign-up link")?;
    let Some(person) = person else {
        return Ok(None);
    };
    sqlx::query("DELETE FROM account_signup WHERE person_id = $1")
        .bind(person)
        .execute(&mut *conn)
        .await
        .context("failed to clear pending sign-ups")?;
    let opened: Option<(AccountId, OffsetDateTime)> = sqlx::query_as(
        "INSERT INTO account (id, person_id, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (person_id) DO NOTHING RETURNING id, password_changed_at",
    )
    .bind(AccountId(Uuid::now_v7()))
    .bind(person)
    .bind(password_hash)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to create an account")?;
    Ok(opened.map(|(id, changed)| (id, person, changed)))
}

/// A new password-reset link for an account, made as of `requested_at` (when it was asked
/// for; now if unknown): it expires an hour after, and dies if the password changed since.
/// Returns its token.
pub async fn create_reset(
    conn: &mut PgConnection,
    account: AccountId,
    requested_at: Option<OffsetDateTime>,
) -> anyhow::Result<String> {
    let token = random_token();
    sqlx::query(
        "INSERT INTO account_reset (token_hash, account_id, email_index, created_at, expires_at)
         SELECT $1, a.id, p.email_index, coalesce($4, now()), coalesce($4, now()) + $3
         FROM account a JOIN person p ON p.id = a.person_id WHERE a.id = $2",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .bind(account)
    .bind(RESET_LIFETIME)
    .bind(requested_at)
    .execute(conn)
    .await
    .context("failed to store a reset link")?;
    Ok(token)
}

/// Which reset links still work: unused, unexpired, made since the password last changed (a
/// link mailed before a change dies with the old password), of an account not disabled (a
/// reset never opens one), for the address they were mailed to.
const LIVE_RESET: &str = "r.used_at IS NULL AND r.expires_at > now()
     AND r.account_id = a.id AND r.created_at >= a.password_changed_at AND a.disabled_at IS NULL
     AND p.id = a.person_id AND p.email_index = r.email_index";

/// The account a reset link is for, if it still works (it is not used here).
pub async fn reset_account(
    conn: &mut PgConnection,
    token: &str,
) -> anyhow::Result<Option<AccountId>> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT r.account_id FROM account_reset r, account a, person p
         WHERE r.token_hash = $1 AND {LIVE_RESET}"
    )))
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(conn)
    .await
    .context("failed to look up a reset link")
}

/// Uses a reset link, once: every other link of the account is used up with it.
pub async fn use_reset(conn: &mut PgConnection, token: &str) -> anyhow::Result<Option<AccountId>> {
    let account: Option<AccountId> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE account_reset r SET used_at = now() FROM account a, person p
         WHERE r.token_hash = $1 AND {LIVE_RESET}
         RETURNING r.account_id"
    )))
    .bind(sha256(token.as_bytes()).as_slice())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to use a reset link")?;
    if let Some(account) = account {
        sqlx::query(
            "UPDATE account_reset SET used_at = now() WHERE account_id = $1 AND used_at IS NULL",
        )
        .bind(account)
        .execute(conn)
        .await
        .context("failed to use up reset links")?;
    }
    Ok(account)
}

/// Stores a new password hash; returns when it was set (the password's version).
pub async fn set_password(
    conn: &mut PgConnection,
    account: AccountId,
    password_hash: &str,
) -> anyhow::Result<OffsetDateTime> {
    sqlx::query_scalar(
        "UPDATE account SET password_hash = $2, password_changed_at = clock_timestamp(),
             updated_at = now()
         WHERE id = $1 RETURNING password_changed_at",
    )
    .bind(account)
    .bind(password_hash)
    .fetch_one(conn)
    .await
    .context("failed to store a password hash")
}

/// Undoes a reserved attempt that never reached a password check (the hashing pool was
/// busy): the count goes back, and so does the block the attempt set, if any.
pub async fn undo_attempt(conn: &mut PgConnection, key: &[u8]) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE signin_throttle SET failures = failures - 1,
             blocked_until = CASE WHEN failures - 1 >= $2
                 THEN now() + least(interval '1 second' * power(2, least(failures - 1 - $2, 20)), $3)
                 END
         WHERE key = $1 AND failures > 0",
    )
    .bind(key)
    .bind(FREE_ATTEMPTS)
    .bind(MAX_BLOCK)
    .execute(conn)
    .await
    .context("failed to undo a sign-in attempt")?;
    Ok(())
}

/// A rehash with today's parameters, stored only if the password did not change meanwhile.
pub async fn upgrade_hash(
    conn: &mut PgConnection,
    account: AccountId,
    old: &str,
    new: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE account SET password_hash = $3, updated_at = now() WHERE id = $1 AND password_hash = $2")
        .bind(account)
        .bind(old)
        .bind(new)
        .execute(conn)
        .await
        .context("failed to upgrade a password hash")?;
    Ok(())
}

/// A signed-in session, as a request sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub id: SessionId,
    pub account_id: AccountId,
    pub person_id: PersonId,
    pub last_seen_at: OffsetDateTime,
    pub reauthenticated_at: OffsetDateTime,
}

pub async fn create_session(
    conn: &mut PgConnection,
    account: AccountId,
    device: &str,
) -> anyhow::Result<(SessionId, String)> {
    let token = random_token();
    let id = SessionId(Uuid::now_v7());
    sqlx::query(
        "INSERT INTO account_session (id, account_id, token_hash, device, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5)",
    )
    .bind(id)
    .bind(account)
    .bind(sha256(token.as_bytes()).as_slice())
    .bind(device)
    .bind(SESSION_ABSOLUTE)
    .execute(conn)
    .await
    .context("failed to store a session")?;
    Ok((id, token))
}

/// The live session of a cookie's token: within both lifetimes, of an enabled account.
pub async fn session(conn: &mut PgConnection, token: &str) -> anyhow::Result<Option<Session>> {
    sqlx::query_as(
        "SELECT s.id, s.account_id, a.person_id, s.last_seen_at, s.reauthenticated_at
         FROM account_session s JOIN account a ON a.id = s.account_id
         WHERE s.token_hash = $1 AND s.expires_at > now() AND s.last_seen_at > now() - $2
           AND a.disabled_at IS NULL",
    )
    .bind(sha256(token.as_bytes()).as_slice())
    .bind(SESSION_IDLE)
    .fetch_optional(conn)
    .await
    .context("failed to look up a session")
}

/// Marks a session used now (at most once a minute: a page view is not worth a write).
pub async fn touch(conn: &mut PgConnection, session: &Session) -> anyhow::Result<()> {
    if OffsetDateTime::now_utc() - session.last_seen_at < Duration::minutes(1) {
        return Ok(());
    }
    sqlx::query("UPDATE account_session SET last_seen_at = now() WHERE id = $1")
        .bind(session.id)
        .execute(conn)
        .await
        .context("failed to touch a session")?;
    Ok(())
}

pub async fn reauthenticated(conn: &mut PgConnection, session: SessionId) -> anyhow::Result<()> {
    sqlx::query("UPDATE account_session SET reauthenticated_at = now() WHERE id = $1")
        .bind(session)
        .execute(conn)
        .await
        .context("failed to record a re-authentication")?;
    Ok(())
}

pub async fn end_session(conn: &mut PgConnection, session: SessionId) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM account_session WHERE id = $1")
        .bind(session)
        .execute(conn)
        .await
        .context("failed to end a session")?;
    Ok(())
}

/// Ends every session of an account but `keep`; returns how many ended.
pub async fn end_sessions(
    conn: &mut PgConnection,
    account: AccountId,
    keep: Option<SessionId>,
) -> anyhow::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM account_session WHERE account_id = $1 AND id IS DISTINCT FROM $2")
            .bind(account)
            .bind(keep)
            .execute(conn)
            .await
            .context("failed to end sessions")?
            .rows_affected(),
    )
}

/// One session, for the list a person sees.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    #[schema(value_type = uuid::Uuid)]
    pub id: SessionId,
    /// Browser and system, e.g. "Firefox on Linux".
    pub device: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: OffsetDateTime,
}

pub async fn sessions(
    conn: &mut PgConnection,
    account: AccountId,
) -> anyhow::Result<Vec<SessionInfo>> {
    sqlx::query_as(
        "SELECT id, device, created_at, last_seen_at FROM account_session
         WHERE account_id = $1 AND expires_at > now() AND last_seen_at > now() - $2
         ORDER BY last_seen_at DESC",
    )
    .bind(account)
    .bind(SESSION_IDLE)
    .fetch_all(conn)
    .await
    .context("failed to list sessions")
}

/// Attempts allowed before delays begin.
const FREE_ATTEMPTS: i32 = 5;
/// The longest a key is blocked after one more failure.
const MAX_BLOCK: Duration = Duration::minutes(15);

/// Reserves one password check for `key` before the password is hashed: `Ok(())` when the
/// key may try now, `Err(seconds to wait)` while it is blocked. The check and the count are
/// one statement (the row's lock orders concurrent attempts, on any replica), so a burst of
/// parallel guesses gets the same 5 as guesses one after another. The attempt counts as a
/// failure until a success clears the key (`clear_failures`). The fifth attempt blocks the key
/// for 1 s, each one after a wait twice as long as the last (2 s, 4 s, … up to 15 minutes).
pub async fn reserve_attempt(
    conn: &mut PgConnection,
    key: &[u8],
) -> anyhow::Result<Result<(), i64>> {
    let reserved: Option<bool> = sqlx::query_scalar(
        "INSERT INTO signin_throttle AS t (key, failures, updated_at) VALUES ($1, 1, now())
         ON CONFLICT (key) DO UPDATE SET failures = t.failures + 1, updated_at = now(),
             blocked_until = CASE WHEN t.failures + 1 >= $2
                 THEN now() + least(interval '1 second' * power(2, least(t.failures + 1 - $2, 20)), $3)
                 END
         WHERE t.blocked_until IS NULL OR t.blocked_until <= now()
         RETURNING true",
    )
    .bind(key)
    .bind(FREE_ATTEMPTS)
    .bind(MAX_BLOCK)
    .fetch_optional(&mut *conn)
    .await
    .context("failed to reserve a sign-in attempt")?;
    if reserved.is_some() {
        return Ok(Ok(()));
    }
    // Blocked: for how many whole seconds more (at least 1).
    let wait: Option<i64> = sqlx::query_scalar(
        "SELECT greatest(1, ceil(extract(epoch FROM blocked_until - now())))::bigint
         FROM signin_throttle WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await
    .context("failed to read the sign-in throttle")?;
    Ok(Err(wait.unwrap_or(1)))
}

pub async fn clear_failures(conn: &mut PgConnection, key: &[u8]) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM signin_throttle WHERE key = $1")
        .bind(key)
        .execute(conn)
        .await
        .context("failed to clear the sign-in throttle")?;
    Ok(())
}
