//! Telling a database outage from a bug: the HTTP layer answers the first with 503 and
//! `Retry-After` (nothing was stored, come back), the group-commit batcher lets writes queued
//! behind a batch that met one share its answer; and `/readyz`'s view of the database
//! (`Readiness`). A leaf module, so each of them can use it.

use std::future::Future;
use std::time::Duration;

/// Whether an error means the database cannot be reached (down, restarting, out of
/// connections) rather than a bug: the client should come back, nothing was stored.
pub fn database_unreachable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| match e.downcast_ref::<sqlx::Error>() {
            Some(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // admin_shutdown, crash_shutdown, cannot_connect_now, and the connection exceptions.
            Some(sqlx::Error::Database(db)) => db.code().is_some_and(|c| {
                matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")
            }),
            _ => false,
        })
}

/// Whether an error is a wait for a pool's connection that ran out of time: every connection
/// in use, or a new one not opened in time (the database unreachable, or slow to connect).
pub fn pool_timed_out(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(sqlx::Error::PoolTimedOut)))
}

/// `/readyz`'s last answer, refreshed at most once a second by one caller at a time: probes
/// (every kubelet's, a load balancer's, or a flood of them) cost at most one database round
/// trip a second, and never take the connections requests need.
#[derive(Debug, Default)]
pub struct Readiness(tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>);

impl Readiness {
    const FRESH: Duration = Duration::from_secs(1);

    /// The last answer if it is fresh, else `ping`'s (awaited by one caller; the others wait
    /// for it and share it).
    pub async fn ready<F: Future<Output = bool>>(&self, ping: impl FnOnce() -> F) -> bool {
        let mut last = self.0.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < Self::FRESH
        {
            return ready;
        }
        let ready = ping().await;
        *last = Some((tokio::time::Instant::now(), ready));
        ready
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn many_probes_at_once_cost_one_ping_a_second() {
        let readiness = Arc::new(Readiness::default());
        let pings = Arc::new(AtomicUsize::new(0));
        let probe = |up: bool| {
            let (readiness, pings) = (readiness.clone(), pings.clone());
            tokio::spawn(async move {
                readiness
                    .ready(|| async move {
                        pings.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        up
                    })
                    .await
            })
        };
        let answers: Vec<_> = (0..100).map(|_| probe(true)).collect();
        for answer in answers {
            assert!(answer.await.expect("answers"));
        }
        assert_eq!(
            pings.load(Ordering::SeqCst),
            1,
            "one ping for a hundred probes"
        );
        // Within the second, what was seen stands, whatever the database does meanwhile.
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(probe(false).await.expect("answers"));
        assert_eq!(pings.load(Ordering::SeqCst), 1);
        // After it, the next probe looks again.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!probe(false).await.expect("answers"));
        assert_eq!(pings.load(Ordering::SeqCst), 2);
    }
}
