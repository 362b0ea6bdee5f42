//! Group commit: concurrent requests' writes of one kind, stored by one statement (signups;
//! also the job worker's claims, one per idle slot).
//!
//! Postgres spends most of a small write on the statement and the commit around it (parse,
//! plan, locks, snapshot, the WAL flush), not on the rows: on a 2-core machine a signup
//! statement alone, one per transaction, ran at a quarter of pgbench's one-row inserts, and
//! sixteen signups in one statement stored six times as many per second. A `Batcher` queues
//! each write; a writer takes everything queued so far (up to a maximum) into one call of the
//! write function. Under load batches grow by themselves while the previous ones commit; idle,
//! a write goes alone at once (no timer waits for company). Each caller gets its own result
//! when its batch has committed: nothing is acknowledged before it is stored.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// Writes of `I` in batches, each answered with its `O`.
pub struct Batcher<I, O> {
    queue: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

struct Pending<I, O> {
    item: I,
    answer: oneshot::Sender<Result<O, Arc<anyhow::Error>>>,
    queued: Instant,
}

/// What the writers last learnt of the database: the last batch that failed because it could
/// not be reached (when, and why), and when the latest batch to reach it had started.
#[derive(Default)]
struct Health {
    outage: Option<(Instant, Arc<anyhow::Error>)>,
    reached: Option<Instant>,
}

type Outage = Arc<std::sync::Mutex<Health>>;

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// At most `writers` batches in flight at once (each holds a database connection), each
    /// of at most `max` items. `write` stores a batch in one transaction and returns one
    /// output per item, in their order. Spawns the dispatcher: call inside the runtime.
    pub fn new<W, F>(writers: usize, max: usize, write: W) -> Self
    where
        W: Fn(Vec<I>) -> F + Send + Sync + 'static,
        F: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
    {
        // Room for a few batches' worth of waiting writes; beyond that, callers wait to queue.
        let (queue, pending) = mpsc::channel(writers * max * 2);
        tokio::spawn(dispatch(pending, writers, max, Arc::new(write)));
        Self { queue }
    }

    /// Queues `item` and waits until its batch is stored. If the batch fails, every write in
    /// it fails with that error (its cause stays in the chain: a database outage is still
    /// told apart from a bug).
    pub async fn write(&self, item: I) -> anyhow::Result<O> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending {
                item,
                answer,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| anyhow::anyhow!("the batch writer has stopped"))?;
        match answered.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(failed)) => Err(BatchFailed(failed).into()),
            Err(_) => Err(anyhow::anyhow!("the batch writer dropped a write")),
        }
    }
}

/// Takes what is queued into batches while a writer is free; ends when every `Batcher` handle
/// is gone.
async fn dispatch<I, O, W, F>(
    mut pending: mpsc::Receiver<Pending<I, O>>,
    writers: usize,
    max: usize,
    write: Arc<W>,
) where
    I: Send + 'static,
    O: Send + 'static,
    W: Fn(Vec<I>) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
{
    let free = Arc::new(Semaphore::new(writers));
    let outage = Outage::default();
    loop {
        let Ok(writer) = free.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max);
        if pending.recv_many(&mut batch, max).await == 0 {
            return;
        }
        // A write whose caller has stopped waiting (it timed out, or its client left) is not
        // stored: whoever asked has been told it was not.
        batch.retain(|p| !p.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        // A write that queued while a batch was finding the database unreachable shares that
        // batch's answer at once: its own batch would wait out the pool's timeout again, and
        // its caller would hear "unavailable" after twice the time (a refusal must be quick:
        // nothing is stored, the client is told to come back).
        //
        // The pool's own timeout counts as such an answer: a pool that had no connection for
        // 0.8 s is overloaded or cut off, and the writes behind would wait as long for theirs.
        let last_outage = outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outage
            .clone();
        if let Some((since, error)) = last_outage {
            let (stale, fresh): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|p| p.queued < since);
            for p in stale {
                let _ = p.answer.send(Err(error.clone()));
            }
            batch = fresh;
            if batch.is_empty() {
                continue;
            }
        }
        let write = write.clone();
        let outage = outage.clone();
        tokio::spawn(async move {
            let (items, answers): (Vec<I>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.answer)).unzip();
            let started = Instant::now();
            let count = items.len();
            let stored = write(items).await.and_then(|outputs| {
                anyhow::ensure!(
                    outputs.len() == count,
                    "a batch of {count} writes returned {} results",
                    outputs.len()
                );
                Ok(outputs)
            });
            match stored {
                Ok(outputs) => {
                    reached(&outage, started);
                    for (answer, output) in answers.into_iter().zip(outputs) {
                        let _ = answer.send(Ok(output));
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    if crate::outage::database_unreachable(&error) {
                        let mut health = outage.lock().unwrap_or_else(|e| e.into_inner());
                        // Unless a batch that started later has reached the database meanwhile
                        // (with several writers, a slow failure can end after a newer success).
                        if health.reached.is_none_or(|reached| reached < started) {
                            health.outage = Some((Instant::now(), error.clone()));
                        }
                    } else {
                        reached(&outage, started);
                    }
                    for answer in answers {
                        let _ = answer.send(Err(error.clone()));
                    }
                }
            }
            drop(writer);
        });
    }
}

/// A batch that started at `started` reached the database: an outage seen before it is over.
fn reached(outage: &Outage, started: Instant) {
    let mut health = outage.lock().unwrap_or_else(|e| e.into_inner());
    health.reached = Some(health.reached.map_or(started, |r| r.max(started)));
    if health
        .outage
        .as_ref()
        .is_some_and(|(since, _)| *since < started)
    {
        health.outage = None;
    }
}

/// A write's batch failed: the batch's error, shared by every write in it, as the cause.
#[derive(Debug)]
struct BatchFailed(Arc<anyhow::Error>);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch this write was in failed")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause: &(dyn std::error::Error + Send + Sync + 'static) = &**self.0;
        Some(cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writes_queued_while_a_batch_is_stored_go_together_in_the_next_and_each_gets_its_answer()
     {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Arc::new(Batcher::new(1, 64, move |items: Vec<u32>| {
            seen.lock().expect("lock").push(items.len());
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(items.into_iter().map(|i| i * 10).collect())
            }
        }));
        // One write alone goes at once; ten arriving while it is stored wait and go together.
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.write(1).await.expect("written") }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (2..12)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.write(i).await.expect("written") })
            })
            .collect();
        assert_eq!(first.await.expect("joined"), 10);
        for (i, task) in (2..12).zip(rest) {
            assert_eq!(task.await.expect("joined"), i * 10);
        }
        assert_eq!(*sizes.lock().expect("lock"), vec![1, 10]);
    }

    #[tokio::test]
    async fn a_write_no_longer_awaited_when_its_batch_starts_is_not_stored() {
        let stored = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = stored.clone();
        let batcher = Arc::new(Batcher::new(1, 64, move |items: Vec<u32>| {
            seen.lock().expect("lock").extend(items.iter().copied());
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(items)
            }
        }));
        let write = |i: u32| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.write(i).await.expect("written") })
        };
        let first = write(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued behind the first, then given up on (its caller timed out, or left).
        let abandoned = write(2);
        let kept = write(3);
        tokio::time::sleep(Duration::from_millis(10)).await;
        abandoned.abort();
        assert_eq!(first.await.expect("joined"), 1);
        assert_eq!(kept.await.expect("joined"), 3);
        assert_eq!(*stored.lock().expect("lock"), vec![1, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_queued_behind_a_batch_that_found_the_database_down_are_refused_with_it() {
        // The pool's acquire timeout, 0.8 s, is what a batch takes to find the database down.
        let batcher = Arc::new(Batcher::new(1, 64, |_: Vec<u32>| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            Err::<Vec<u32>, _>(anyhow::Error::from(sqlx::Error::PoolTimedOut))
        }));
        let started = Instant::now();
        let write = |i: u32| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                let failed = batcher.write(i).await.is_err();
                (failed, started.elapsed())
            })
        };
        let first = write(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queued = write(2);
        assert_eq!(
            first.await.expect("joined"),
            (true, Duration::from_millis(800))
        );
        // Not 1.6 s: it shares the first batch's answer.
        let (failed, took) = queued.await.expect("joined");
        assert!(failed);
        assert_eq!(took, Duration::from_millis(800));
        // One that comes after the answer gets a try of its own.
        let later = write(3);
        assert_eq!(
            later.await.expect("joined"),
            (true, Duration::from_millis(1600))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_ends_after_a_newer_success_refuses_nothing_queued() {
        // Two writers: batch 1 takes 800 ms to find no connection; batch 2, started later,
        // reaches the database meanwhile; batch 3 (4 here) holds the other writer, so write 3
        // waits for a writer until batch 1 fails. The database was reachable: 3 is tried.
        let batcher = Arc::new(Batcher::new(2, 64, |items: Vec<u32>| async move {
            let delay = match items[..] {
                [1] => 800,
                [2] => 200,
                [4] => 650,
                _ => 0,
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if items == [1] {
                return Err(anyhow::Error::from(sqlx::Error::PoolTimedOut));
            }
            Ok(items)
        }));
        let write = |i: u32, after: u64| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                batcher.write(i).await.is_ok()
            })
        };
        let (one, two, four, three) = (write(1, 0), write(2, 100), write(4, 350), write(3, 400));
        assert!(!one.await.expect("joined"));
        assert!(two.await.expect("joined"));
        assert!(four.await.expect("joined"));
        assert!(
            three.await.expect("joined"),
            "tried, not refused with batch 1"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_write_in_it_with_its_cause_in_the_chain() {
        let batcher = Batcher::new(2, 8, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>(anyhow::Error::from(sqlx::Error::PoolTimedOut).context("storing"))
        });
        let error = batcher.write(1).await.expect_err("the batch failed");
        assert!(
            error
                .chain()
                .any(|e| matches!(e.downcast_ref(), Some(sqlx::Error::PoolTimedOut))),
            "{error:#}"
        );
    }
}
