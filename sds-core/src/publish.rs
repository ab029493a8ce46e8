//! Turning a [`SecretSource`] into a shared, watchable [`Reader`].

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{Error, Secret, SecretName, SecretSource, Snapshot};

/// Returned when the publisher is gone: its source ended (or it was dropped) before producing
/// what was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the secret source ended before a snapshot was published")]
pub struct Closed;

/// Connects `source` to readers. Spawns nothing: run the returned [`Driver`] (e.g. with
/// `tokio::spawn`) for snapshots to flow. The driver finishes when the source's stream ends
/// or when every [`Reader`] has been dropped.
pub fn publish<S: SecretSource>(source: S) -> (Reader, Driver) {
    let (tx, rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        watches: Mutex::new(Watches {
            by_name: HashMap::new(),
            closed: false,
        }),
    });
    let reader = Reader {
        snapshots: rx,
        shared: Arc::clone(&shared),
    };
    let publisher = Publisher {
        snapshots: tx,
        shared,
    };
    let driver = Driver {
        inner: Box::pin(drive(source, publisher)),
    };
    (reader, driver)
}

/// State shared by the driver and every reader.
struct Shared {
    /// One channel per watched name. Updated under this lock together with the snapshot
    /// channel, so a new watch never misses a change.
    watches: Mutex<Watches>,
}

struct Watches {
    by_name: HashMap<SecretName, watch::Sender<Option<Arc<Secret>>>>,
    /// The driver is gone: no channel will ever change again.
    closed: bool,
}

/// The driver's side: the only sender of snapshots.
struct Publisher {
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Publishes `next`, waking only the watches whose secret changed, then the readers of
    /// whole snapshots (so a reader woken by a new snapshot finds every watch up to date).
    /// Returns false if nothing changed.
    fn publish(&self, next: Snapshot) -> bool {
        let mut watches = self.shared.watches.lock();
        let same = self
            .snapshots
            .borrow()
            .as_ref()
            .is_some_and(|c| c.version() == next.version() && rejected_eq(c, &next));
        if same {
            return false;
        }
        watches.by_name.retain(|_, tx| !tx.is_closed());
        for (name, tx) in watches.by_name.iter() {
            let new = next.get(name.as_str());
            tx.send_if_modified(|old| {
                let same = match (old.as_ref(), new) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.version() == b.version(),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    *old = new.cloned();
                }
                !same
            });
        }
        self.snapshots.send_replace(Some(Arc::new(next)));
        true
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Dropping the per-name senders ends every `SecretWatch::changed` with `Closed`; the
        // snapshot sender, dropped with `self`, does the same for `Reader`.
        let mut watches = self.shared.watches.lock();
        watches.closed = true;
        watches.by_name.clear();
    }
}

fn rejected_eq(a: &Snapshot, b: &Snapshot) -> bool {
    a.rejected().len() == b.rejected().len()
        && a.rejected()
            .zip(b.rejected())
            .all(|((n1, e1), (n2, e2))| n1 == n2 && e1.same_problem(e2))
}

async fn drive<S: SecretSource>(source: S, publisher: Publisher) {
    let mut stream = pin!(source.into_stream());
    // Rejections already reported, so a source that reloads often does not repeat itself.
    let mut reported: BTreeMap<SecretName, Arc<Error>> = BTreeMap::new();
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = publisher.snapshots.closed() => {
                tracing::debug!("every reader is gone; stopping the secret source");
                return;
            }
        };
        let update = match item {
            Some(Ok(update)) => update,
            Some(Err(error)) => {
                let error: &dyn std::error::Error = &error;
                tracing::warn!(
                    error,
                    "secret source failed; serving the last good snapshot"
                );
                continue;
            }
            None => {
                tracing::info!("secret source ended; serving its last snapshot");
                return;
            }
        };
        let previous = publisher.snapshots.borrow().clone();
        let next = Snapshot::build(previous.as_deref(), update);
        log_changes(previous.as_deref(), &next, &mut reported);
        publisher.publish(next);
    }
}

fn log_changes(
    previous: Option<&Snapshot>,
    next: &Snapshot,
    reported: &mut BTreeMap<SecretName, Arc<Error>>,
) {
    let old = |name: &SecretName| previous.and_then(|p| p.get(name.as_str()));
    for (name, secret) in next.iter() {
        match old(name) {
            None => tracing::info!(
                secret = %name, kind = secret.kind(), version = %secret.version(),
                "secret added"
            ),
            Some(o) if !Arc::ptr_eq(o, secret) && o.version() != secret.version() => {
                tracing::info!(
                    secret = %name, kind = secret.kind(), version = %secret.version(),
                    previous = %o.version(), "secret updated"
                )
            }
            Some(_) => {}
        }
    }
    if let Some(previous) = previous {
        for (name, secret) in previous.iter() {
            if next.get(name.as_str()).is_none() {
                tracing::info!(
                    secret = %name, version = %secret.version(),
                    "secret removed; it is no longer offered to new subscribers"
                );
            }
        }
    }
    let mut still_rejected = BTreeMap::new();
    for (name, error) in next.rejected() {
        if !reported.get(name).is_some_and(|r| r.same_problem(error)) {
            let error: &dyn std::error::Error = &**error;
            match next.get(name.as_str()) {
                Some(kept) => tracing::warn!(
                    secret = %name, error, kept = %kept.version(),
                    "rejected new input; still serving the last good version"
                ),
                None => tracing::warn!(secret = %name, error, "rejected input; not served"),
            }
        }
        still_rejected.insert(name.clone(), Arc::clone(error));
    }
    *reported = still_rejected;
}

/// Runs a [`SecretSource`] and publishes its snapshots. Created by [`publish`]; spawn it.
#[must_use = "snapshots flow only while the driver is polled"]
pub struct Driver {
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl Future for Driver {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

/// A cheap, cloneable handle on the published snapshots.
#[derive(Clone)]
pub struct Reader {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    shared: Arc<Shared>,
}

// === impl Reader ===

impl Reader {
    /// Waits for the first complete snapshot. Don't serve before it.
    pub async fn ready(&mut self) -> Result<Arc<Snapshot>, Closed> {
        let snapshot = self
            .snapshots
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Closed)?;
        snapshot.clone().ok_or(Closed)
    }

    /// The latest snapshot, or `None` before the first one.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }

    /// Waits until a snapshot newer than the last one this reader saw is published.
    pub async fn changed(&mut self) -> Result<Arc<Snapshot>, Closed> {
        self.snapshots.changed().await.map_err(|_| Closed)?;
        self.snapshots.borrow_and_update().clone().ok_or(Closed)
    }

    /// Watches one secret by name. The watch is woken only when that secret's content changes,
    /// appears or disappears; changes to other secrets never wake it.
    pub fn watch(&self, name: &SecretName) -> SecretWatch {
        let mut watches = self.shared.watches.lock();
        let rx = match watches.by_name.get(name) {
            Some(tx) => tx.subscribe(),
            None => {
                let current = self
                    .snapshots
                    .borrow()
                    .as_ref()
                    .and_then(|s| s.get(name.as_str()).cloned());
                let (tx, rx) = watch::channel(current);
                // After the driver is gone the sender is dropped at once: the watch holds
                // the last value and `changed` reports `Closed`.
                if !watches.closed {
                    watches.by_name.insert(name.clone(), tx);
                }
                rx
            }
        };
        SecretWatch {
            name: name.clone(),
            rx,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Number of names currently watched by at least one [`SecretWatch`].
    pub fn watched_names(&self) -> usize {
        self.shared
            .watches
            .lock()
            .by_name
            .values()
            .filter(|tx| !tx.is_closed())
            .count()
    }
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("version", &self.current().map(|s| s.version()))
            .finish_non_exhaustive()
    }
}

/// A subscription to one secret, created by [`Reader::watch`].
pub struct SecretWatch {
    name: SecretName,
    rx: watch::Receiver<Option<Arc<Secret>>>,
    shared: Arc<Shared>,
}

// === impl SecretWatch ===

impl SecretWatch {
    /// The watched name.
    pub fn name(&self) -> &SecretName {
        &self.name
    }

    /// The secret as it is now (`None` while it does not exist), marking it seen.
    pub fn current(&mut self) -> Option<Arc<Secret>> {
        self.rx.borrow_and_update().clone()
    }

    /// Waits until the secret changes after the last [`SecretWatch::current`]. Never returns
    /// while the secret stays the same; returns `Err` only if the publisher is gone.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        self.rx.changed().await.map_err(|_| Closed)
    }
}

impl Drop for SecretWatch {
    fn drop(&mut self) {
        let mut watches = self.shared.watches.lock();
        // The last watch of a name takes its channel with it, so names that were asked for
        // once (by a typo or a probe) do not accumulate.
        if watches
            .by_name
            .get(&self.name)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            watches.by_name.remove(&self.name);
        }
    }
}

impl fmt::Debug for SecretWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretWatch")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
