//! Failed sign-ins per client, with growing delays. Per *address* the count is in Postgres
//! (`store::record_failure`, shared by every replica); per *client* it is kept here, in
//! memory, because a client is an IP address and an IP address is never stored. Each replica
//! counts on its own, like the rate limiter in front of it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a client may make before delays begin: generous, since an office or a campus
/// signs in from one address.
const FREE_FAILURES: u32 = 20;
const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A client quiet this long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Beyond this many clients, the quiet ones are forgotten at the next failure.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Clients {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl Clients {
    /// How long `client` must still wait, if at all.
    pub fn blocked_for(&self, client: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&client)
            .and_then(|f| f.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a failure: past the free ones, each blocks the client twice as long as the last.
    pub fn record_failure(&self, client: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, f| now - f.last < FORGET_AFTER);
        }
        let entry = map.entry(client).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if now - entry.last >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        entry.blocked_until = entry
            .count
            .checked_sub(FREE_FAILURES)
            .filter(|over| *over > 0)
            .map(|over| now + delay(over));
    }
}

/// 1 s for the first failure over the free ones, then 2 s, 4 s, … up to 15 minutes.
fn delay(over: u32) -> Duration {
    Duration::from_secs(1u64 << (over - 1).min(20)).min(MAX_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_begin_after_the_free_failures_and_double_up_to_a_ceiling() {
        assert_eq!(delay(1), Duration::from_secs(1));
        assert_eq!(delay(2), Duration::from_secs(2));
        assert_eq!(delay(5), Duration::from_secs(16));
        assert_eq!(delay(11), Duration::from_secs(900));
        assert_eq!(delay(40), Duration::from_secs(900));

        let clients = Clients::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("an address");
        for _ in 0..FREE_FAILURES {
            clients.record_failure(ip);
        }
        assert_eq!(clients.blocked_for(ip), None);
        clients.record_failure(ip);
        let wait = clients
            .blocked_for(ip)
            .expect("blocked after the free failures");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        assert_eq!(
            clients.blocked_for("192.0.2.8".parse().expect("an address")),
            None
        );
    }
}
