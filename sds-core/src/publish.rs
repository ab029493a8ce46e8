//! Turning a [`SecretSource`] into a shared, watchable [`Reader`].

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    Clock, Error, Secret, SecretName, SecretSource, Snapshot, SystemClock,
    expiry::{self, Expiry},
};

/// Returned when the publisher is gone: its source ended (or it was dropped) before producing
/// what was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the secret source ended before a snapshot was published")]
pub struct Closed;

/// Connects `source` to readers. Spawns nothing: run the returned [`Driver`] (e.g. with
/// `tokio::spawn`) for snapshots to flow. The driver finishes when the source's stream ends
/// or when every [`Reader`] has been dropped.
///
/// The same as `Publish::new(source).start()`: see [`Publish`] for the expiry warnings and
/// the clock.
pub fn publish<S: SecretSource>(source: S) -> (Reader, Driver) {
    Publish::new(source).start()
}

/// Publishes a source's snapshots, with options: a [`publish`] to configure.
///
/// ```no_run
/// # fn demo(source: impl sds_core::SecretSource) {
/// use std::time::Duration;
///
/// let (reader, driver) = sds_core::Publish::new(source)
///     .expiry_warning(Duration::from_secs(14 * 24 * 3600))
///     .start();
/// tokio::spawn(driver);
/// # }
/// ```
///
/// # Expiry warnings
/// The driver logs every served certificate whose `notAfter` is within
/// [`Publish::expiry_warning`] (7 days by default) at WARN when its version is first served
/// and again every day; one that has expired while still served (its replacement was
/// rejected, or never came) at ERROR, when it expires and every day after. An expired
/// certificate keeps being served: Envoy would keep it anyway, and withdrawing it helps no
/// one. For a trust bundle, the CA certificate that expires first counts.
#[derive(Debug)]
pub struct Publish<S> {
    source: S,
    clock: Arc<dyn Clock>,
    expiry_warning: Duration,
}

impl<S: SecretSource> Publish<S> {
    /// Publishes `source` with the system clock and a 7-day expiry warning.
    pub fn new(source: S) -> Self {
        Self {
            source,
            clock: Arc::new(SystemClock),
            expiry_warning: expiry::DEFAULT_WARNING,
        }
    }

    /// How long before its end a served certificate is warned about (7 days by default;
    /// zero: only once it has expired).
    pub fn expiry_warning(mut self, before: Duration) -> Self {
        self.expiry_warning = before;
        self
    }

    /// The clock the driver reads for expiry warnings and [`Reader::source_status`]
    /// ([`SystemClock`] by default): tests inject their own.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The reader, and the driver to run (e.g. with `tokio::spawn`): nothing is published
    /// until it is polled.
    pub fn start(self) -> (Reader, Driver) {
        let (tx, rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            watches: Mutex::new(Watches {
                by_name: HashMap::new(),
                closed: false,
            }),
            status: Mutex::default(),
        });
        let reader = Reader {
            snapshots: rx,
            shared: Arc::clone(&shared),
        };
        let publisher = Publisher {
            snapshots: tx,
            shared,
        };
        let run = Run {
            publisher,
            clock: self.clock,
            expiry: Expiry::new(self.expiry_warning),
            reported: BTreeMap::new(),
        };
        let driver = Driver {
            inner: Box::pin(run.drive(self.source)),
        };
        (reader, driver)
    }
}

/// What the publisher knows of its source's health, for metrics and readiness: see
/// [`Reader::source_status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStatus {
    /// Complete updates the source yielded (whether or not they changed anything).
    pub updates: u64,
    /// Errors the source reported (it went on; the last good snapshot stayed served).
    pub failures: u64,
    /// When the source last yielded an update: for a directory, at least at every rescan;
    /// for Kubernetes, after every change (a quiet cluster yields nothing).
    pub last_update: Option<SystemTime>,
    /// When the source last reported an error.
    pub last_failure: Option<SystemTime>,
    /// Whether the last thing the source yielded was an error.
    pub failing: bool,
    /// Whether the source's stream has ended (the last snapshot stays served).
    pub ended: bool,
    /// Rejected inputs, counted per secret and [`reason`](Error::reason) each time a problem
    /// was first seen (a reload that finds the same problem again does not count), for the
    /// names the last snapshot serves or rejects.
    pub rejections: Vec<Rejections>,
}

/// How many times one secret's input was rejected for one reason: see [`SourceStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejections {
    /// The secret.
    pub secret: SecretName,
    /// The problem's [`Error::reason`].
    pub reason: &'static str,
    /// How many times it was newly seen.
    pub count: u64,
}

/// What the driver records of its source, behind the shared lock.
#[derive(Debug, Default)]
struct Status {
    updates: u64,
    failures: u64,
    last_update: Option<SystemTime>,
    last_failure: Option<SystemTime>,
    failing: bool,
    ended: bool,
    rejections: BTreeMap<(SecretName, &'static str), u64>,
}

/// State shared by the driver and every reader.
struct Shared {
    /// One channel per watched name. Updated under this lock together with the snapshot
    /// channel, so a new watch never misses a change.
    watches: Mutex<Watches>,
    /// What the driver knows of its source.
    status: Mutex<Status>,
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

/// The driver's state.
struct Run {
    publisher: Publisher,
    clock: Arc<dyn Clock>,
    expiry: Expiry,
    /// Rejections already reported, so a source that reloads often does not repeat itself.
    reported: BTreeMap<SecretName, Arc<Error>>,
}

impl Run {
    async fn drive<S: SecretSource>(mut self, source: S) {
        let mut stream = pin!(source.into_stream());
        // When the expiry warnings are due next, by the clock.
        let mut recheck: Option<SystemTime> = None;
        loop {
            // Never more than a day: a clock that jumps is caught up with.
            let wait = recheck.map(|at| {
                let left = at.duration_since(self.clock.now()).unwrap_or_default();
                tokio::time::Instant::now() + left.min(expiry::REPEAT)
            });
            let item = tokio::select! {
                item = stream.next() => item,
                () = self.publisher.snapshots.closed() => {
                    tracing::debug!("every reader is gone; stopping the secret source");
                    return;
                }
                () = sleep_until(wait), if wait.is_some() => {
                    recheck = self.check_expiry();
                    continue;
                }
            };
            let now = self.clock.now();
            let update = match item {
                Some(Ok(update)) => {
                    let mut status = self.publisher.shared.status.lock();
                    status.updates += 1;
                    status.last_update = Some(now);
                    status.failing = false;
                    update
                }
                Some(Err(error)) => {
                    {
                        let mut status = self.publisher.shared.status.lock();
                        status.failures += 1;
                        status.last_failure = Some(now);
                        status.failing = true;
                    }
                    let error: &dyn std::error::Error = &error;
                    tracing::warn!(
                        error,
                        "secret source failed; serving the last good snapshot"
                    );
                    continue;
                }
                None => {
                    self.publisher.shared.status.lock().ended = true;
                    tracing::info!("secret source ended; serving its last snapshot");
                    return;
                }
            };
            let previous = self.publisher.snapshots.borrow().clone();
            let next = Snapshot::build(previous.as_deref(), update);
            self.log_changes(previous.as_deref(), &next);
            self.publisher.publish(next);
            recheck = self.check_expiry();
        }
    }

    /// Warns about the served certificates near their end, if due; returns when to look
    /// again.
    fn check_expiry(&mut self) -> Option<SystemTime> {
        let snapshot = self.publisher.snapshots.borrow().clone()?;
        self.expiry.check(&snapshot, self.clock.now())
    }

    /// Logs what changed from `previous` to `next`, and counts new rejections.
    fn log_changes(&mut self, previous: Option<&Snapshot>, next: &Snapshot) {
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
        let mut status = self.publisher.shared.status.lock();
        let mut still_rejected = BTreeMap::new();
        for (name, error) in next.rejected() {
            if !self
                .reported
                .get(name)
                .is_some_and(|r| r.same_problem(error))
            {
                *status
                    .rejections
                    .entry((name.clone(), error.reason()))
                    .or_default() += 1;
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
        // Counts only for names the source still has: bounded by the source.
        status.rejections.retain(|(name, _), _| {
            next.get(name.as_str()).is_some() || still_rejected.contains_key(name)
        });
        self.reported = still_rejected;
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a [`SecretSource`] and publishes its snapshots. Created by [`publish`]; spawn it on a
/// tokio runtime with timers enabled (`#[tokio::main]`, or `Builder::enable_time`): it waits
/// on tokio's timer for its expiry warnings, as the sources do for their debounce.
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

    /// What the publisher knows of its source: updates and errors it yielded and when,
    /// and the rejections per secret and reason. Read under a short lock.
    pub fn source_status(&self) -> SourceStatus {
        let status = self.shared.status.lock();
        SourceStatus {
            updates: status.updates,
            failures: status.failures,
            last_update: status.last_update,
            last_failure: status.last_failure,
            failing: status.failing,
            ended: status.ended,
            rejections: status
                .rejections
                .iter()
                .map(|((secret, reason), count)| Rejections {
                    secret: secret.clone(),
                    reason,
                    count: *count,
                })
                .collect(),
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
