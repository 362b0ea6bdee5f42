//! The shutdown signal every long-running part watches (the HTTP server, the job worker, the
//! scheduler): a `watch` channel that turns true once.

use tokio::sync::watch;

/// Resolves once `shutdown` turns true, or once its sender is gone (nothing can tell us to go
/// on any more, so we stop as if told).
pub async fn requested(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
}
