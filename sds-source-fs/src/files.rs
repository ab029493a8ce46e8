//! [`FileSource`]: credentials named by explicit file paths, watched, as a [`SecretSource`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_core::Stream;
use futures_util::stream;
use sds_core::{SecretName, SecretSource, UnixTime, Update};
use tokio::{sync::Notify, time::Instant};

use crate::{
    DirSource, Error,
    credential::{self, Parsed, Work},
    layout::{Ca, Pair, shown},
    reload::{self, Wake},
    stamp::FileId,
    watch::Watcher,
};

/// Credentials named by explicit file paths, watched for changes: a certificate chain and key
/// served as one secret, a CA bundle as another, wherever their files are.
///
/// Where [`DirSource`] serves a directory of credential directories, this serves a few files
/// named one by one, e.g. the certificate of the SDS server itself and the CA its clients'
/// certificates must chain to:
///
/// ```no_run
/// use sds_core::SecretName;
/// use sds_source_fs::FileSource;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let source = FileSource::new()
///     .credential(
///         SecretName::new("sds-server")?,
///         "/etc/sds-tls/tls.crt",
///         "/etc/sds-tls/tls.key",
///     )
///     .bundle(SecretName::new("sds-client-ca")?, "/etc/sds-tls/ca.crt");
/// let (mut reader, driver) = sds_core::publish(source);
/// tokio::spawn(driver); // the embedder owns the task; dropping it stops the watcher
/// let snapshot = reader.ready().await?;
/// # let _ = snapshot; Ok(()) }
/// ```
///
/// The files are read, parsed and validated by the same code as a [`DirSource`]'s (PEM, at
/// most [`sds_core::MAX_INPUT_LEN`] bytes, a key that matches its chain, the validity period
/// at the current time), and a problem rejects the secret it concerns with a reason that names
/// the file ("cannot read /etc/sds-tls/tls.key", "… expired"). The publisher keeps serving the
/// last good version of a rejected secret, so a bad or half-written file never replaces a good
/// credential, and a name that was never valid is never served. This source never yields an
/// `Err`: every problem is such a rejection.
///
/// The directories the files are in are watched (not the files: editors and deploy tools
/// rename a new file over the old one, and kubelet swaps a `..data` symlink), with the same
/// watcher as a [`DirSource`], so are their nearest existing ancestors (a directory created
/// later is seen) and the directories symlinks among the files lead into. Events are debounced
/// into one reload; the files are also read again every [rescan interval](FileSource::rescan).
/// A reload reads every file (they are few) and parses only those whose content changed; an
/// update is yielded only when a secret or a rejection changed. Relative paths are resolved
/// against the current directory when the stream starts.
#[derive(Clone, Debug, Default)]
pub struct FileSource {
    entries: Vec<Entry>,
    debounce: Option<Duration>,
    rescan: Option<Duration>,
}

/// One secret of a [`FileSource`] and its files.
#[derive(Clone, Debug)]
struct Entry {
    name: SecretName,
    files: Files,
}

/// The files of one secret.
#[derive(Clone, Debug)]
enum Files {
    /// A certificate chain (leaf first) and its private key.
    Credential { cert: PathBuf, key: PathBuf },
    /// CA certificates.
    Bundle { ca: PathBuf },
}

// === impl FileSource ===

impl FileSource {
    /// A source that serves nothing yet: add credentials and bundles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves the certificate chain in the PEM file `cert` (leaf first) with the private key
    /// in the PEM file `key` as the secret `name` (a `tls_certificate`). Replaces what `name`
    /// was given before.
    pub fn credential(
        self,
        name: SecretName,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        let files = Files::Credential {
            cert: cert.into(),
            key: key.into(),
        };
        self.with(name, files)
    }

    /// Serves the CA certificates in the PEM file `ca` as the secret `name` (a
    /// `validation_context`). Replaces what `name` was given before.
    pub fn bundle(self, name: SecretName, ca: impl Into<PathBuf>) -> Self {
        self.with(name, Files::Bundle { ca: ca.into() })
    }

    /// Sets how long the file system must be quiet after an event before the files are read
    /// again (as [`DirSource::debounce`]: [`DirSource::DEFAULT_DEBOUNCE`] by default, at least
    /// [`DirSource::MIN_DEBOUNCE`]).
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = Some(debounce.max(DirSource::MIN_DEBOUNCE));
        self
    }

    /// Sets how often the files are read although no change was reported (as
    /// [`DirSource::rescan`]: [`DirSource::DEFAULT_RESCAN`] by default, at least
    /// [`DirSource::MIN_RESCAN`]).
    pub fn rescan(mut self, interval: Duration) -> Self {
        self.rescan = Some(interval.max(DirSource::MIN_RESCAN));
        self
    }

    /// Every file this source reads, in the order the secrets were added.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().flat_map(|entry| entry.files.paths())
    }

    fn with(mut self, name: SecretName, files: Files) -> Self {
        self.entries.retain(|entry| entry.name != name);
        self.entries.push(Entry { name, files });
        self
    }

    fn debounce_or_default(&self) -> Duration {
        self.debounce.unwrap_or(DirSource::DEFAULT_DEBOUNCE)
    }

    fn rescan_or_default(&self) -> Duration {
        self.rescan.unwrap_or(DirSource::DEFAULT_RESCAN)
    }
}

impl SecretSource for FileSource {
    type Error = Error;

    /// Watches the files' directories, then reads the files: the first item is the initial
    /// state. Never yields an `Err`. Dropping the stream stops the watcher.
    fn into_stream(self) -> impl Stream<Item = Result<Update, Error>> + Send + 'static {
        stream::unfold(Reloader::new(self), |mut reloader| async move {
            let update = reloader.next().await?;
            Some((Ok(update), reloader))
        })
    }
}

// === impl Files ===

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        let (first, second) = match self {
            Files::Credential { cert, key } => (cert, Some(key)),
            Files::Bundle { ca } => (ca, None),
        };
        std::iter::once(first.as_path()).chain(second.map(PathBuf::as_path))
    }

    /// These files with absolute paths (relative to the current directory).
    fn absolute(&self) -> Files {
        let absolute = |path: &PathBuf| std::path::absolute(path).unwrap_or_else(|_| path.clone());
        match self {
            Files::Credential { cert, key } => Files::Credential {
                cert: absolute(cert),
                key: absolute(key),
            },
            Files::Bundle { ca } => Files::Bundle { ca: absolute(ca) },
        }
    }

    /// Reads, parses and validates the secret `name` at `now`, unless `previous` was parsed
    /// from the same content. Blocking.
    fn read(
        &self,
        name: &SecretName,
        now: UnixTime,
        previous: Option<&Parsed>,
        work: &mut Work,
    ) -> Parsed {
        match self {
            Files::Credential { cert, key } => {
                let pair = Pair {
                    cert: cert.clone(),
                    key: key.clone(),
                    ocsp_staple: None,
                };
                credential::pair_part(name, Ok(pair), now, previous, work)
            }
            Files::Bundle { ca } => {
                let ca = Ca {
                    ca: ca.clone(),
                    crl: None,
                };
                credential::ca_part(name, Ok(ca), now, previous, work)
            }
        }
    }
}

/// The state of a running [`FileSource`] between reloads.
#[derive(Debug)]
struct Reloader {
    source: FileSource,
    /// Set by the watcher's callback; a burst of events leaves one permit.
    dirty: Arc<Notify>,
    /// `None` before the first reload, and while a reload holds it.
    state: Option<Box<State>>,
    /// Whether the first reload happened.
    started: bool,
    /// Whether to reload at once (watches were added after the last read).
    again: bool,
    /// Secrets served and names rejected by the last read, to log only what changed.
    counts: Option<(usize, usize)>,
    /// When to read again although no file changed (a certificate becomes valid then).
    retry_at: Option<UnixTime>,
    /// When to read again anyway.
    rescan_at: Instant,
}

/// What a reload needs and hands on to the next one.
#[derive(Debug)]
struct State {
    /// `None` if inotify cannot be used: then the rescans alone see changes.
    watcher: Option<Watcher>,
    /// Each secret, its files (absolute) and what they gave at the last read.
    secrets: Vec<(SecretName, Files, Option<Parsed>)>,
}

/// What one reload gave.
#[derive(Debug)]
struct Reloaded {
    update: Update,
    /// Whether a secret or a rejection differs from the last read.
    changed: bool,
    /// Whether a watch was added: a change made before it has no event.
    added: bool,
}

// === impl Reloader ===

impl Reloader {
    fn new(source: FileSource) -> Self {
        Self {
            rescan_at: Instant::now() + source.rescan_or_default(),
            source,
            dirty: Arc::new(Notify::new()),
            state: None,
            started: false,
            again: false,
            counts: None,
            retry_at: None,
        }
    }

    /// Waits for a change (except the first time) and reloads, until a reload has something
    /// to yield. `None` once the runtime shuts down.
    async fn next(&mut self) -> Option<Update> {
        loop {
            if self.started && !std::mem::take(&mut self.again) {
                match Wake::wait(&self.dirty, self.retry_at, self.rescan_at).await {
                    Wake::Changed => {}
                    Wake::Retry => tracing::debug!(
                        "reading credential files again: a rejected certificate's notBefore has passed"
                    ),
                    Wake::Rescan => {
                        tracing::debug!("reading credential files again: periodic rescan");
                    }
                }
            }
            let first = !std::mem::replace(&mut self.started, true);
            let state = self.state.take();
            let source = self.source.clone();
            let dirty = Arc::clone(&self.dirty);
            let reloaded = reload::blocking(move || {
                let mut state = state.unwrap_or_else(|| Box::new(State::start(&source, dirty)));
                let reloaded = state.reload(UnixTime::now());
                (state, reloaded)
            })
            .await;
            let (state, reloaded) = reloaded?;
            self.state = Some(state);
            self.rescan_at = Instant::now() + self.source.rescan_or_default();
            self.again = reloaded.added;
            // Nothing on disk changes when a rejected certificate becomes valid: read again
            // then.
            self.retry_at = reloaded.update.recheck_at();
            self.log(&reloaded.update);
            if first || reloaded.changed {
                return Some(reloaded.update);
            }
        }
    }

    /// Logs what a read found, at info level when the counts changed. Rejections are logged
    /// by the publisher.
    fn log(&mut self, update: &Update) {
        let counts = (update.len(), update.rejected().len());
        if self.counts == Some(counts) {
            tracing::debug!(
                secrets = counts.0,
                rejected = counts.1,
                "reloaded credential files"
            );
        } else {
            tracing::info!(
                secrets = counts.0,
                rejected = counts.1,
                "loaded credential files"
            );
        }
        self.counts = Some(counts);
    }
}

// === impl State ===

impl State {
    /// Starts watching the directories of `source`'s files. Blocking.
    fn start(source: &FileSource, dirty: Arc<Notify>) -> Self {
        let secrets: Vec<_> = source
            .entries
            .iter()
            .map(|entry| (entry.name.clone(), entry.files.absolute(), None))
            .collect();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in secrets
            .iter()
            .flat_map(|(_, files, _)| files.paths())
            .filter_map(Path::parent)
        {
            if !dirs.iter().any(|known| known == dir) {
                dirs.push(dir.to_owned());
            }
        }
        let rescan = source.rescan_or_default();
        let watcher = match Watcher::start(
            dirs.clone(),
            source.debounce_or_default(),
            rescan,
            dirty,
        ) {
            Ok(watcher) => Some(watcher),
            Err(reason) => {
                let dirs: Vec<String> = dirs.iter().map(|dir| shown(dir)).collect();
                tracing::warn!(
                    dirs = %dirs.join(", "),
                    reason = %reason,
                    ?rescan,
                    "cannot watch credential files for changes; they are read again periodically"
                );
                None
            }
        };
        Self { watcher, secrets }
    }

    /// One reload at `now`, blocking: watches the files' directories as they are now, reads
    /// every file (parsing only new content), then watches where their symlinks lead.
    fn reload(&mut self, now: UnixTime) -> Reloaded {
        if let Some(watcher) = &mut self.watcher {
            // Every reload reads every file: what changed does not matter.
            let _ = watcher.take_changes();
            watcher.watch_top();
        }
        let mut work = Work::default();
        let mut changed = false;
        let mut update = Update::new();
        // Where symlinks among the files lead (kubelet's payload directory, certbot's archive).
        let mut links: Vec<(PathBuf, FileId)> = Vec::new();
        for (name, files, parsed) in &mut self.secrets {
            let dirs: Vec<&Path> = files.paths().filter_map(Path::parent).collect();
            let read = credential::consistently(&dirs, || {
                files.read(name, now, parsed.as_ref(), &mut work)
            });
            changed |= parsed
                .as_ref()
                .is_none_or(|last| !credential::same_result(last.result(), read.result()));
            match read.result() {
                Ok(secret) => update.insert_shared(name.clone(), Arc::clone(secret)),
                Err(error) => update.reject(name.clone(), error.clone()),
            }
            *parsed = Some(read);
            for file in files.paths() {
                credential::link_dirs(file, &mut links);
            }
        }
        let added = match &mut self.watcher {
            Some(watcher) => watcher.sync(links.iter().map(|(path, id)| (path.as_path(), *id))) > 0,
            None => false,
        };
        Reloaded {
            update,
            changed,
            added,
        }
    }
}
