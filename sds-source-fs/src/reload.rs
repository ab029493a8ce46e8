//! What the sources share between reloads: waiting for the next one, and running one off the
//! async runtime.

use std::time::Duration;

use sds_core::UnixTime;
use tokio::{sync::Notify, time::Instant};

/// Why a source reads its files again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The watcher reported a change.
    Changed,
    /// A certificate rejected as not valid yet has become valid.
    Retry,
    /// The rescan interval has passed.
    Rescan,
}

// === impl Wake ===

impl Wake {
    /// Waits for a change reported through `dirty`, the second after `retry_at` (a rejected
    /// certificate's notBefore), or `rescan_at`, whichever comes first.
    pub(crate) async fn wait(
        dirty: &Notify,
        retry_at: Option<UnixTime>,
        rescan_at: Instant,
    ) -> Wake {
        let retry = async {
            match retry_at {
                Some(at) => {
                    let wait = at
                        .as_secs()
                        .saturating_sub(UnixTime::now().as_secs())
                        .saturating_add(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = dirty.notified() => Wake::Changed,
            () = retry => Wake::Retry,
            () = tokio::time::sleep_until(rescan_at) => Wake::Rescan,
        }
    }
}

/// Runs `reload` on the blocking thread pool; `None` if the runtime is shutting down. A panic
/// in `reload` is resumed here.
pub(crate) async fn blocking<T: Send + 'static>(
    reload: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(reload).await {
        Ok(reloaded) => Some(reloaded),
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => None,
        },
    }
}
