//! [`DirSource`]: a watched directory as a [`SecretSource`].

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_core::Stream;
use futures_util::stream;
use sds_core::{SecretSource, UnixTime, Update};
use tokio::{sync::Notify, time::Instant};

use crate::{
    Error,
    layout::shown,
    reload::{self, Wake},
    scan::{Credentials, Ignored, Scan, Scope},
    watch::Watcher,
};

/// A directory of credentials, watched for changes: `DIR/<name>/` holds the files of the
/// credential `<name>` (see the [crate docs](crate) for the layout).
///
/// As a [`SecretSource`], it yields the complete state of the directory first, then again after
/// every change, debounced, and reads the directory again every
/// [rescan interval](DirSource::rescan) as a safety net. A reload runs off the async runtime and
/// reads only what changed: a credential whose directory and files look as they did (identity,
/// size, times) is not read again.
#[derive(Clone, Debug)]
pub struct DirSource {
    dir: PathBuf,
    debounce: Duration,
    rescan: Duration,
}

// === impl DirSource ===

impl DirSource {
    /// How long the file system must be quiet before a change is read, by default.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

    /// The shortest debounce [`DirSource::debounce`] accepts.
    pub const MIN_DEBOUNCE: Duration = Duration::from_millis(10);

    /// How often the directory is read although no change was reported, by default.
    pub const DEFAULT_RESCAN: Duration = Duration::from_secs(30);

    /// The shortest interval [`DirSource::rescan`] accepts.
    pub const MIN_RESCAN: Duration = Duration::from_millis(100);

    /// A source for the credentials in `dir`. A relative `dir` is resolved against the current
    /// directory when the stream starts. Nothing is read or watched before then.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            debounce: Self::DEFAULT_DEBOUNCE,
            rescan: Self::DEFAULT_RESCAN,
        }
    }

    /// Sets how long the file system must be quiet after an event before the directory is read
    /// again ([`DirSource::DEFAULT_DEBOUNCE`] by default, at least
    /// [`DirSource::MIN_DEBOUNCE`]). A burst of writes gives one reload.
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce.max(Self::MIN_DEBOUNCE);
        self
    }

    /// Sets how often the directory is read although no change was reported
    /// ([`DirSource::DEFAULT_RESCAN`] by default, at least [`DirSource::MIN_RESCAN`]).
    ///
    /// Changes are watched with inotify, and this read is the safety net for what inotify
    /// cannot report: a directory it may not watch (no read permission, the watch limit
    /// reached; each is logged once), a change behind a symlink into a directory that is not
    /// watched, a network file system. It is cheap: only credentials whose files changed are
    /// read, and an update is yielded only if something changed.
    pub fn rescan(mut self, interval: Duration) -> Self {
        self.rescan = interval.max(Self::MIN_RESCAN);
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
    /// An [`Error::ReadDir`] item means the directory is missing (or a parent is), is not a
    /// directory, or is unreadable; it is yielded once, and the stream goes on: the directory is
    /// read again when it (or a parent) appears, and at every rescan. Dropping the stream stops
    /// the watcher.
    fn into_stream(self) -> impl Stream<Item = Result<Update, Error>> + Send + 'static {
        stream::unfold(Reloader::new(self), |mut reloader| async move {
            let item = reloader.next().await?;
            Some((item, reloader))
        })
    }
}

/// The state of a running [`DirSource`] between reloads.
#[derive(Debug)]
struct Reloader {
    source: DirSource,
    /// Set by the watcher's callback; a burst of events leaves one permit.
    dirty: Arc<Notify>,
    phase: Phase,
    /// What the stream yielded last, so that an unchanged read yields nothing.
    last: Option<Yielded>,
    /// Entries already reported as not being credentials, so each is reported once.
    warned: Vec<Ignored>,
    /// Secrets served and names rejected by the last read, to log only what changed.
    counts: Option<(usize, usize)>,
    /// When to read again although no file changed (a certificate becomes valid then).
    retry_at: Option<UnixTime>,
    /// When to read again anyway.
    rescan_at: Instant,
    /// Whether the next reload looks at every credential, not only those events concern.
    full: bool,
    /// Whether to reload at once (watches were added after the last read).
    again: bool,
}

#[derive(Debug)]
enum Phase {
    /// Nothing watched or read yet.
    Start,
    /// Between reloads; the state is `None` only while a reload holds it.
    Running(Option<Box<State>>),
    /// The runtime is shutting down: the stream has ended.
    Done,
}

/// What a reload needs and hands on to the next one.
#[derive(Debug)]
struct State {
    /// The directory, absolute.
    dir: PathBuf,
    /// `None` if inotify cannot be used: then the rescans alone see changes.
    watcher: Option<Watcher>,
    /// Every credential as last read.
    credentials: Credentials,
}

/// The last item of the stream.
#[derive(Debug, PartialEq, Eq)]
enum Yielded {
    Update,
    Failed(io::ErrorKind),
}

// === impl Reloader ===

impl Reloader {
    fn new(source: DirSource) -> Self {
        Self {
            rescan_at: Instant::now() + source.rescan,
            source,
            dirty: Arc::new(Notify::new()),
            phase: Phase::Start,
            last: None,
            warned: Vec::new(),
            counts: None,
            retry_at: None,
            full: true,
            again: false,
        }
    }

    /// Waits for a change (except the first time) and reloads, until a reload has something
    /// to yield.
    async fn next(&mut self) -> Option<Result<Update, Error>> {
        loop {
            match self.phase {
                Phase::Start => {}
                Phase::Running(_) if std::mem::take(&mut self.again) => self.full = true,
                Phase::Running(_) => self.wait().await,
                Phase::Done => return None,
            }
            let full = std::mem::take(&mut self.full);
            let state = match &mut self.phase {
                Phase::Running(state) => state.take(),
                Phase::Start | Phase::Done => None,
            };
            let source = self.source.clone();
            let dirty = Arc::clone(&self.dirty);
            let reloaded = reload::blocking(move || {
                let mut state = state.unwrap_or_else(|| Box::new(State::start(&source, dirty)));
                let (scan, added) = state.reload(UnixTime::now(), full);
                (state, scan, added)
            })
            .await;
            let Some((state, scan, added)) = reloaded else {
                // The runtime is shutting down.
                self.phase = Phase::Done;
                return None;
            };
            self.phase = Phase::Running(Some(state));
            self.rescan_at = Instant::now() + self.source.rescan;
            // A change made between the read and a new watch has no event: look again.
            self.again = added;
            if let Some(item) = self.outcome(scan) {
                return Some(item);
            }
        }
    }

    /// Waits for a reported change, the time a rejected certificate becomes valid, or the
    /// next rescan, whichever comes first.
    async fn wait(&mut self) {
        match Wake::wait(&self.dirty, self.retry_at, self.rescan_at).await {
            Wake::Changed => {}
            Wake::Retry => {
                tracing::debug!("reading again: a rejected certificate's notBefore has passed");
                self.full = true;
            }
            Wake::Rescan => {
                tracing::debug!(dir = %shown(&self.source.dir), "reading again: periodic rescan");
                self.full = true;
            }
        }
    }

    /// What to yield for a reload: an update unless it is the same as the last one, an error
    /// unless it is the same as the last one.
    fn outcome(&mut self, scan: Result<Scan, Error>) -> Option<Result<Update, Error>> {
        match scan {
            Ok(scan) => {
                self.log(&scan);
                // Nothing on disk changes when a rejected certificate becomes valid: read
                // again then.
                self.retry_at = scan.update.recheck_at();
                if !scan.changed && self.last == Some(Yielded::Update) {
                    return None;
                }
                self.last = Some(Yielded::Update);
                Some(Ok(scan.update))
            }
            Err(error) => {
                // Logged by the publisher; log the next successful read again.
                self.counts = None;
                self.retry_at = None;
                let Error::ReadDir { source, .. } = &error;
                let failed = Yielded::Failed(source.kind());
                if self.last.as_ref() == Some(&failed) {
                    let error: &dyn std::error::Error = &error;
                    tracing::debug!(error, "credential directory still unreadable");
                    return None;
                }
                self.last = Some(failed);
                Some(Err(error))
            }
        }
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
        let dir = shown(&self.source.dir);
        let work = scan.work;
        if self.counts == Some(counts) {
            tracing::debug!(
                %dir, secrets = scan.served, rejected = scan.rejected,
                reused = work.reused, read = work.read, parsed = work.parsed,
                "reloaded credentials"
            );
        } else {
            tracing::info!(%dir, secrets = scan.served, rejected = scan.rejected, "loaded credentials");
        }
        self.counts = Some(counts);
    }
}

// === impl State ===

impl State {
    /// Starts watching `source`'s directory. Blocking.
    fn start(source: &DirSource, dirty: Arc<Notify>) -> Self {
        // Relative to the current directory; if that is gone, the reads say so.
        let dir = std::path::absolute(&source.dir).unwrap_or_else(|_| source.dir.clone());
        let top = vec![dir.clone()];
        let watcher = match Watcher::start(top, source.debounce, source.rescan, dirty) {
            Ok(watcher) => Some(watcher),
            Err(reason) => {
                tracing::warn!(
                    dir = %shown(&dir),
                    reason = %reason,
                    rescan = ?source.rescan,
                    "cannot watch for changes; the directory is read again periodically"
                );
                None
            }
        };
        Self {
            dir,
            watcher,
            credentials: Credentials::default(),
        }
    }

    /// One reload, blocking: makes sure `DIR` is watched as it is now, reads what changed at
    /// `now` (every credential's stamps if `full`, else only those events concern), then
    /// watches the credentials as read. Also says whether a watch was added.
    fn reload(&mut self, now: UnixTime, full: bool) -> (Result<Scan, Error>, bool) {
        let changes = match &mut self.watcher {
            Some(watcher) => {
                let changes = watcher.take_changes();
                watcher.watch_top();
                // Only a watched `DIR` reports every entry that comes and goes.
                let targeted = !full && !changes.everything && watcher.watches_dir();
                Some(changes).filter(|_| targeted)
            }
            None => None,
        };
        let scan = match (&changes, &self.watcher) {
            (Some(changes), Some(watcher)) => {
                let watched = |id| watcher.watches(id);
                let scope = Scope::Changed {
                    entries: &changes.entries,
                    watched: &watched,
                };
                Scan::read(&self.dir, now, &mut self.credentials, scope)
            }
            _ => Scan::read(&self.dir, now, &mut self.credentials, Scope::All),
        };
        if scan.is_err() {
            self.credentials.clear();
        }
        let added = match &mut self.watcher {
            Some(watcher) => watcher.sync(self.credentials.watch()) > 0,
            None => false,
        };
        (scan, added)
    }
}
