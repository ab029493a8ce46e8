//! [`DirSource`]: a watched directory as a [`SecretSource`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_core::Stream;
use futures_util::{StreamExt as _, stream};
use sds_core::{SecretSource, UnixTime, Update};
use tokio::sync::Notify;

use crate::{
    Error,
    scan::{Ignored, Scan},
    watch::Watcher,
};

/// A directory of credentials, watched for changes: `DIR/<name>/` holds the files of the
/// credential `<name>` (see the [crate docs](crate) for the layout).
///
/// As a [`SecretSource`], it yields the complete state of the directory first, then again after
/// every change, debounced. Every reload re-reads every credential, off the async runtime.
#[derive(Clone, Debug)]
pub struct DirSource {
    dir: PathBuf,
    debounce: Duration,
}

// === impl DirSource ===

impl DirSource {
    /// How long the file system must be quiet before a change is read, by default.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

    /// The shortest debounce [`DirSource::debounce`] accepts.
    pub const MIN_DEBOUNCE: Duration = Duration::from_millis(10);

    /// A source for the credentials in `dir`. A relative `dir` is resolved against the current
    /// directory when the stream starts. Nothing is read or watched before then.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            debounce: Self::DEFAULT_DEBOUNCE,
        }
    }

    /// Sets how long the file system must be quiet after an event before the directory is read
    /// again ([`DirSource::DEFAULT_DEBOUNCE`] by default, at least
    /// [`DirSource::MIN_DEBOUNCE`]). A burst of writes gives one reload.
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce.max(Self::MIN_DEBOUNCE);
        self
    }

    /// The directory this source reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl SecretSource for DirSource {
    type Error = Error;

    /// Watches the directory, then reads it: the first item is the initial state.
    ///
    /// An [`Error::ReadDir`] item means the directory is missing or unreadable; the stream goes
    /// on and reads it again when it reappears. An [`Error::Watch`] item means changes may be
    /// missed; if the watcher cannot even start (e.g. the parent directory does not exist),
    /// that error is the only item and the stream ends. Dropping the stream stops the watcher.
    fn into_stream(self) -> impl Stream<Item = Result<Update, Error>> + Send + 'static {
        stream::unfold(Reloader::new(self), |mut reloader| async move {
            let items = reloader.next().await?;
            Some((stream::iter(items), reloader))
        })
        .flatten()
    }
}

/// The state of a running [`DirSource`] between reloads.
#[derive(Debug)]
struct Reloader {
    source: DirSource,
    /// Set by the watcher's callback; a burst of events leaves one permit.
    dirty: Arc<Notify>,
    phase: Phase,
    /// Entries already reported as not being credentials, so each is reported once.
    warned: Vec<Ignored>,
    /// Secrets served and names rejected by the last read, to log only what changed.
    counts: Option<(usize, usize)>,
    /// When to read again although no file changed (a certificate becomes valid then).
    retry_at: Option<UnixTime>,
}

#[derive(Debug)]
enum Phase {
    /// Nothing watched or read yet.
    Start,
    /// Watching; the watcher is `None` only while a reload holds it.
    Watching(Option<Watcher>),
    /// The watcher could not start: the stream has ended.
    Done,
}

/// What one reload, run on the blocking pool, hands back.
struct Reload {
    watcher: Option<Watcher>,
    watch_error: Option<Error>,
    scan: Option<Result<Scan, Error>>,
}

// === impl Reloader ===

impl Reloader {
    fn new(source: DirSource) -> Self {
        Self {
            source,
            dirty: Arc::new(Notify::new()),
            phase: Phase::Start,
            warned: Vec::new(),
            counts: None,
            retry_at: None,
        }
    }

    /// Waits for a change (except the first time), reloads, and returns the items to yield.
    async fn next(&mut self) -> Option<Vec<Result<Update, Error>>> {
        let watcher = match &mut self.phase {
            Phase::Start => None,
            Phase::Watching(watcher) => {
                match self.retry_at.take() {
                    Some(at) => {
                        let wait = at
                            .as_secs()
                            .saturating_sub(UnixTime::now().as_secs())
                            .saturating_add(1);
                        tokio::select! {
                            () = self.dirty.notified() => {}
                            () = tokio::time::sleep(Duration::from_secs(wait)) => {
                                tracing::debug!("reading again: a rejected certificate's notBefore has passed");
                            }
                        }
                    }
                    None => self.dirty.notified().await,
                }
                watcher.take()
            }
            Phase::Done => return None,
        };
        let dir = self.source.dir.clone();
        let debounce = self.source.debounce;
        let dirty = Arc::clone(&self.dirty);
        let reload = tokio::task::spawn_blocking(move || reload(&dir, debounce, dirty, watcher));
        let Reload {
            watcher,
            watch_error,
            scan,
        } = match reload.await {
            Ok(reload) => reload,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // The runtime is shutting down.
                Err(_) => return None,
            },
        };
        self.phase = match watcher {
            Some(watcher) => Phase::Watching(Some(watcher)),
            None => Phase::Done,
        };

        let mut items = Vec::with_capacity(2);
        items.extend(watch_error.map(Err));
        match scan {
            Some(Ok(scan)) => {
                self.log(&scan);
                // Nothing on disk changes when a rejected certificate becomes valid: read
                // again then.
                self.retry_at = scan.update.recheck_at();
                items.push(Ok(scan.update));
            }
            Some(Err(error)) => {
                // Logged by the publisher; log the next successful read again.
                self.counts = None;
                items.push(Err(error));
            }
            None => {}
        }
        Some(items)
    }

    /// Logs what this read found, once for what did not change since the last one. Rejected
    /// credentials are logged by the publisher.
    fn log(&mut self, scan: &Scan) {
        for ignored in &scan.ignored {
            if self.warned.binary_search(ignored).is_err() {
                ignored.warn();
            }
        }
        self.warned.clone_from(&scan.ignored);
        let counts = (scan.served, scan.rejected);
        let dir = self.source.dir.display();
        if self.counts == Some(counts) {
            tracing::debug!(%dir, secrets = scan.served, rejected = scan.rejected, "reloaded credentials");
        } else {
            tracing::info!(%dir, secrets = scan.served, rejected = scan.rejected, "loaded credentials");
        }
        self.counts = Some(counts);
    }
}

/// One reload, blocking: starts the watcher the first time, makes sure the directory is watched
/// as it is now, then reads everything at the current time.
fn reload(dir: &Path, debounce: Duration, dirty: Arc<Notify>, watcher: Option<Watcher>) -> Reload {
    let mut watcher = match watcher.map_or_else(|| Watcher::start(dir, debounce, dirty), Ok) {
        Ok(watcher) => watcher,
        Err(error) => {
            return Reload {
                watcher: None,
                watch_error: Some(error),
                scan: None,
            };
        }
    };
    let watch_error = watcher.sync().err();
    let scan = Scan::read(watcher.dir(), UnixTime::now());
    Reload {
        watcher: Some(watcher),
        watch_error,
        scan: Some(scan),
    }
}
