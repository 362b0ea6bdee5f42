//! How many passwords may be tried, and by whom. Every place a password is checked — sign-in,
//! the account page's re-check before export and deletion, and the password change — first
//! reserves an attempt (`Attempt::reserve`), then hashes, then clears the count on success.
//!
//! Two counts, each checked and counted in one step, so parallel requests cannot slip past:
//! - per *address*, in Postgres (`store::reserve_attempt`, shared by every replica): 5 free,
//!   then 1 s, 2 s, 4 s … up to 15 minutes;
//! - per *client*, here in memory, because a client is an IP address and an IP address is never
//!   stored: 20 free (an office or a campus signs in from one address), then the same delays.
//!   Each replica counts on its own, like the rate limiter in front of it.
//!
//! A browser that has signed in to an address before carries a device cookie for it
//! (`session::device_of`, OWASP's "device cookies"): its attempts are counted under that
//! device's own key instead of the address's, so a stranger's wrong guesses, however many,
//! cannot lock the owner out of their own browser; the device's own guesses are limited the
//! same way. A new password voids every device cookie. From a new browser, the owner's way
//! past a stranger's guesses is a password reset: following its link clears the address's
//! count and gives that browser its device cookie.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::session;
use crate::store;

/// Domain of the keyed hash an address's (or a device's) password attempts are counted under.
pub const SIGNIN_INDEX: &str = "signin";

/// Attempts a client may make before delays begin.
const FREE_ATTEMPTS: u32 = 20;
const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A client quiet this long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Beyond this many clients, the quiet ones are forgotten at the next attempt — at most once
/// every `PRUNE_EVERY`, so that a crowd of addresses (one /48 holds 65,536 /64s) does not make
/// every attempt walk the whole map under its lock.
const PRUNE_ABOVE: usize = 10_000;
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Attempts {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Clients {
    attempts: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    clients: HashMap<IpAddr, Attempts>,
    pruned: Option<Instant>,
}

impl Clients {
    /// Counts an attempt of `client` unless it is blocked (then: how long it must still wait).
    /// The 20th attempt blocks the client for 1 s, each one after a wait twice as long.
    pub fn reserve(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if map.clients.len() > PRUNE_ABOVE && map.pruned.is_none_or(|at| now - at >= PRUNE_EVERY) {
            map.clients.retain(|_, a| now - a.last < FORGET_AFTER);
            map.pruned = Some(now);
        }
        let entry = map.clients.entry(client).or_insert(Attempts {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if let Some(until) = entry.blocked_until.filter(|until| *until > now) {
            return Err(until - now);
        }
        if now - entry.last >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        entry.blocked_until =
            (entry.count >= FREE_ATTEMPTS).then(|| now + delay(entry.count + 1 - FREE_ATTEMPTS));
        Ok(())
    }

    /// Gives back an attempt that was not a failure (a right password, or one never checked).
    pub fn refund(&self, client: IpAddr) {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.clients.get_mut(&client) {
            entry.count = entry.count.saturating_sub(1);
        }
    }
}

/// 1 s for the first attempt over the free ones, then 2 s, 4 s, … up to 15 minutes.
fn delay(over: u32) -> Duration {
    Duration::from_secs(1u64 << (over - 1).min(20)).min(MAX_BLOCK)
}

/// One reserved password check: counted as a failure until `succeeded`.
#[derive(Debug)]
pub struct Attempt {
    key: Vec<u8>,
    client: Option<IpAddr>,
    /// The device cookie's nonce, when this browser has signed in to the address before.
    pub device: Option<String>,
}

impl Attempt {
    /// Reserves an attempt for `address` from this request's browser and client; `Err` is the
    /// wait in whole seconds (at least 1) while blocked. `password_set` is the account's
    /// password version, when the address has an account (only then can a browser hold a
    /// device cookie for it).
    pub async fn reserve(
        platform: &Platform,
        clients: &Clients,
        conn: &mut PgConnection,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        address: &EmailAddress,
        password_set: Option<OffsetDateTime>,
    ) -> anyhow::Result<Result<Self, u64>> {
        let device =
            password_set.and_then(|set| session::device_of(platform, headers, address, set));
        let (key, client) = match &device {
            // A known browser: its own count, and not the client's (an attacker sharing its
            // network cannot lock it out either).
            Some(nonce) => (device_key(platform, address, nonce), None),
            None => (address_key(platform, address), client),
        };
        if let Some(client) = client
            && let Err(wait) = clients.reserve(client)
        {
            return Ok(Err(wait.as_secs() + 1));
        }
        if let Err(wait) = store::reserve_attempt(conn, &key).await? {
            if let Some(client) = client {
                clients.refund(client);
            }
            return Ok(Err(wait.unsigned_abs().max(1)));
        }
        Ok(Ok(Self {
            key,
            client,
            device,
        }))
    }

    /// The password was right: the address's (or device's) count starts over.
    pub async fn succeeded(
        &self,
        clients: &Clients,
        conn: &mut PgConnection,
    ) -> anyhow::Result<()> {
        if let Some(client) = self.client {
            clients.refund(client);
        }
        store::clear_failures(conn, &self.key).await
    }

    /// No password was checked (the hashing pool was busy): the attempt is given back, so
    /// that a flood of other sign-ins cannot spend the owner's.
    pub async fn undo(self, clients: &Clients, platform: &Platform) -> anyhow::Result<()> {
        if let Some(client) = self.client {
            clients.refund(client);
        }
        let mut conn = platform.pool.acquire().await?;
        store::undo_attempt(&mut conn, &self.key).await
    }
}

/// The count of an address's attempts from browsers that never signed in to it.
fn address_key(platform: &Platform, address: &EmailAddress) -> Vec<u8> {
    platform
        .keyring
        .blind_index(SIGNIN_INDEX, address.as_str())
        .to_vec()
}

/// Someone proved they hold the address's mailbox (a reset link, the account's own link): the
/// address's count of strangers' guesses no longer stands between them and their account.
pub async fn clear_address(
    platform: &Platform,
    conn: &mut PgConnection,
    address: &EmailAddress,
) -> anyhow::Result<()> {
    store::clear_failures(conn, &address_key(platform, address)).await
}

/// The count of one browser's attempts at one address.
fn device_key(platform: &Platform, address: &EmailAddress, nonce: &str) -> Vec<u8> {
    platform
        .keyring
        .blind_index(
            SIGNIN_INDEX,
            &format!("device\n{}\n{nonce}", address.as_str()),
        )
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_begin_at_the_last_free_attempt_and_double_up_to_a_ceiling() {
        assert_eq!(delay(1), Duration::from_secs(1));
        assert_eq!(delay(2), Duration::from_secs(2));
        assert_eq!(delay(5), Duration::from_secs(16));
        assert_eq!(delay(11), Duration::from_secs(900));
        assert_eq!(delay(40), Duration::from_secs(900));

        let clients = Clients::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("an address");
        for i in 0..FREE_ATTEMPTS {
            assert_eq!(clients.reserve(ip), Ok(()), "attempt {i}");
        }
        let wait = clients
            .reserve(ip)
            .expect_err("blocked after the free attempts");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        assert_eq!(
            clients.reserve("192.0.2.8".parse().expect("an address")),
            Ok(())
        );
    }

    #[test]
    fn quiet_clients_are_forgotten_in_a_crowd_but_not_at_every_attempt() {
        let clients = Clients::default();
        let long_ago = Instant::now()
            .checked_sub(FORGET_AFTER * 2)
            .expect("the clock is old enough");
        let crowd = |clients: &Clients, from: u32| {
            let mut map = clients.attempts.lock().expect("lock");
            for i in from..from + PRUNE_ABOVE as u32 + 1 {
                map.clients.insert(
                    IpAddr::from(i.to_be_bytes()),
                    Attempts {
                        count: 1,
                        last: long_ago,
                        blocked_until: None,
                    },
                );
            }
        };
        let size = |clients: &Clients| clients.attempts.lock().expect("lock").clients.len();
        crowd(&clients, 0);
        assert_eq!(clients.reserve("192.0.2.1".parse().expect("ip")), Ok(()));
        assert_eq!(size(&clients), 1, "the quiet crowd is forgotten");
        // Another crowd at once: not walked again until `PRUNE_EVERY` has passed.
        crowd(&clients, 1 << 24);
        assert_eq!(clients.reserve("192.0.2.2".parse().expect("ip")), Ok(()));
        assert_eq!(size(&clients), PRUNE_ABOVE + 3);
    }

    #[test]
    fn a_refunded_attempt_is_not_counted() {
        let clients = Clients::default();
        let ip: IpAddr = "192.0.2.9".parse().expect("an address");
        for _ in 0..FREE_ATTEMPTS * 3 {
            assert_eq!(clients.reserve(ip), Ok(()));
            clients.refund(ip);
        }
    }
}
