//! Watching for changes: inotify through `notify-debouncer-full`, reduced to one "something
//! changed" signal. Nothing here reads a credential.
//!
//! Every watch is set on one directory, not recursively, and only where a change can matter:
//! the nearest existing ancestor of `DIR` (so that the removal, creation or replacement of
//! `DIR` or of any directory above it is seen), `DIR` itself (credentials coming and going),
//! and each credential's directories (the directory and where its symlinks lead). The set
//! is brought up to date on every reload. A [`FileSource`](crate::FileSource) watches the
//! same way with several `DIR`s: the directories its files are in. A directory that cannot be watched (no read
//! permission, the inotify watch limit reached) is reported once, naming it and why, and left
//! to the periodic rescan; it takes no other watch down with it.

use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    fmt, fs, io,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify_debouncer_full::{
    DebounceEventResult, DebouncedEvent, Debouncer, FileIdMap, new_debouncer_opt,
    notify::{
        self, EventKind, RecommendedWatcher, RecursiveMode,
        event::{AccessKind, AccessMode, ModifyKind},
    },
};
use parking_lot::Mutex;
use sds_core::Untrusted;
use tokio::sync::Notify;

use crate::{layout::shown, stamp::FileId};

/// How many times the watches above the credentials are set again when `DIR` or its parents
/// keep changing while they are being set.
const MAX_TOP_ROUNDS: usize = 3;

/// Why a directory is not watched when the inotify watch limit is reached.
const WATCH_LIMIT: &str = "the inotify watch limit is reached (sysctl fs.inotify.max_user_watches)";

/// The watches of one source: of a directory source, whose top directory is `DIR`, or of a
/// file source, whose top directories are those its files are in. Every debounced batch of
/// relevant events wakes `dirty`; bursts coalesce into one stored permit.
///
/// Dropping the watcher stops its threads.
pub(crate) struct Watcher {
    debouncer: Debouncer<RecommendedWatcher, FileIdMap>,
    /// The top directories, absolute: `DIR`, or the directories of a file source's files.
    dirs: Vec<PathBuf>,
    /// Every directory watched, by the path its watch was set with.
    watched: HashMap<PathBuf, FileId>,
    /// The watches, by the directory they are on: one watch per directory, since
    /// inotify gives two paths of one directory the same watch.
    by_id: HashMap<FileId, Watch>,
    /// What the event handler noted since the last reload.
    noted: Arc<Mutex<Noted>>,
    /// Directories that could not be watched, with why, as reported.
    unwatchable: HashMap<PathBuf, Unwatchable>,
    /// Whether the watch limit was reported (for the directories not even tried).
    limit_reported: bool,
    /// Counts the calls to [`Watcher::sync`], to tell which watches it kept.
    generation: u64,
    /// How often the source reads everything anyway, for the logs.
    rescan: Duration,
}

/// A directory watched.
#[derive(Debug)]
struct Watch {
    /// The path its watch was set with.
    path: PathBuf,
    /// The last [`Watcher::sync`] that wanted it.
    generation: u64,
}

/// A directory that could not be watched, as reported.
#[derive(Debug)]
struct Unwatchable {
    id: FileId,
    reason: String,
    generation: u64,
}

/// What the events since the last reload say changed.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Something that cannot be pinned to one entry of `DIR` (`DIR` itself, a directory above
    /// it, a directory outside it that a symlink leads into, lost events; with several top
    /// directories, anything): read everything.
    pub(crate) everything: bool,
    /// The entries of `DIR` in which something changed (with one top directory only).
    pub(crate) entries: HashSet<OsString>,
}

/// What the event handler notes for the next reload.
#[derive(Debug, Default)]
struct Noted {
    changes: Changes,
    /// Paths of directories removed or renamed: notify has dropped their watches (and those
    /// below them) by itself.
    dropped: HashSet<PathBuf>,
}

/// The progress of one [`Watcher::sync`].
struct Pass {
    generation: u64,
    /// Watches added.
    added: usize,
    /// Whether the watch limit was reached.
    limit: bool,
    /// Directories not even tried once the limit was reached.
    not_tried: usize,
}

/// What [`Watcher::watch`] did.
enum Outcome {
    /// The directory was watched already (under this path or another).
    Kept,
    /// A new watch is set.
    Added,
    /// It cannot be watched, for this reason; `None` when it is gone meanwhile (a watch above
    /// it reports that).
    Failed(Option<String>),
    /// The inotify watch limit is reached.
    Limit,
}

// === impl Watcher ===

impl Watcher {
    /// Starts the watcher threads; nothing is watched until [`Watcher::watch_top`].
    /// `dirs`, the top directories, are absolute. Blocking.
    ///
    /// # Errors
    ///
    /// Why inotify cannot be used at all (e.g. the limit of inotify instances is reached).
    pub(crate) fn start(
        dirs: Vec<PathBuf>,
        debounce: Duration,
        rescan: Duration,
        dirty: Arc<Notify>,
    ) -> Result<Self, String> {
        let noted = Arc::new(Mutex::new(Noted::default()));
        let on_events = {
            let dirs = dirs.clone();
            let noted = Arc::clone(&noted);
            move |result: DebounceEventResult| {
                let relevant = match &result {
                    Ok(events) => noted.lock().note(events, &dirs),
                    Err(errors) => {
                        // One line per batch; notify's messages carry paths: escaped, cut.
                        if let Some(first) = errors.first() {
                            tracing::warn!(
                                error = %Untrusted::new(&first.to_string(), 256),
                                errors = errors.len(),
                                "file watcher failed; reading every credential again"
                            );
                        }
                        noted.lock().changes.everything = true;
                        true
                    }
                };
                if relevant {
                    dirty.notify_one();
                }
            }
        };
        let debouncer = new_debouncer_opt::<_, RecommendedWatcher, FileIdMap>(
            debounce,
            None,
            on_events,
            FileIdMap::new(),
            notify::Config::default(),
        )
        .map_err(|error| reason(&error).unwrap_or_else(|| error.to_string()))?;
        Ok(Self {
            debouncer,
            dirs,
            watched: HashMap::new(),
            by_id: HashMap::new(),
            noted,
            unwatchable: HashMap::new(),
            limit_reported: false,
            generation: 0,
            rescan,
        })
    }

    /// What changed since the last call, as the events tell.
    pub(crate) fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.noted.lock().changes)
    }

    /// Whether the directory `id` is watched: a change in it is reported.
    pub(crate) fn watches(&self, id: FileId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Whether every top directory (`DIR`) itself is watched: entries created, removed or
    /// renamed in it are reported.
    pub(crate) fn watches_dir(&self) -> bool {
        self.dirs.iter().all(|dir| self.watched.contains_key(dir))
    }

    /// Watches each top directory (`DIR`) and its nearest existing ancestor as they are now:
    /// call it before reading, so that no change after the read is missed. Blocking.
    pub(crate) fn watch_top(&mut self) {
        self.forget_dropped();
        for _ in 0..MAX_TOP_ROUNDS {
            let top = self.top();
            for (path, id) in &top {
                if let Outcome::Failed(Some(reason)) = self.watch(path, *id) {
                    self.report(path, *id, reason);
                }
            }
            // A directory created or replaced while it was being watched is watched again.
            if self.top() == top {
                return;
            }
        }
    }

    /// Brings every watch up to date: the top directories (`DIR`), their nearest existing
    /// ancestors, and the directories of the credentials as just read; stops watching anything else. Returns how
    /// many watches it added: a change made between the read and a new watch is missed, so
    /// the caller reads once more if any was. Blocking.
    pub(crate) fn sync<'a>(
        &mut self,
        credentials: impl Iterator<Item = (&'a Path, FileId)>,
    ) -> usize {
        self.forget_dropped();
        self.generation += 1;
        let mut sync = Pass {
            generation: self.generation,
            added: 0,
            limit: false,
            not_tried: 0,
        };
        for (path, id) in self.top() {
            self.want(&path, id, &mut sync);
        }
        for (path, id) in credentials {
            self.want(path, id, &mut sync);
        }
        let generation = sync.generation;
        // Stop watching what is no longer wanted.
        let stale: Vec<PathBuf> = self
            .by_id
            .values()
            .filter(|watch| watch.generation != generation)
            .map(|watch| watch.path.clone())
            .collect();
        for path in stale {
            self.unwatch(&path);
        }
        self.unwatchable.retain(|_, u| u.generation == generation);
        if sync.not_tried > 0 && !self.limit_reported {
            tracing::warn!(
                directories = sync.not_tried,
                reason = WATCH_LIMIT,
                rescan = ?self.rescan,
                "more directories cannot be watched for changes; they are read again periodically"
            );
        }
        self.limit_reported = sync.limit;
        sync.added
    }

    /// Watches the directory `id` at `path` for this sync, unless it is watched already.
    fn want(&mut self, path: &Path, id: FileId, sync: &mut Pass) {
        if sync.limit {
            // Every further watch would fail the same way.
            if !self.keep(id, sync.generation) {
                sync.not_tried += 1;
            }
            return;
        }
        match self.watch(path, id) {
            Outcome::Kept | Outcome::Failed(None) => {}
            Outcome::Added => sync.added += 1,
            Outcome::Failed(Some(reason)) => {
                self.report(path, id, reason);
                self.mark_unwatchable(path, sync.generation);
            }
            Outcome::Limit => {
                sync.limit = true;
                self.report(path, id, WATCH_LIMIT.to_owned());
                self.mark_unwatchable(path, sync.generation);
            }
        }
        self.keep(id, sync.generation);
    }

    /// The directories above the credentials to watch: each top directory (`DIR`) if it is
    /// one, and its nearest existing ancestor.
    fn top(&self) -> Vec<(PathBuf, FileId)> {
        let mut top = Vec::with_capacity(2 * self.dirs.len());
        let dir = |path: &Path| fs::metadata(path).ok().filter(|m| m.is_dir());
        for top_dir in &self.dirs {
            if let Some(metadata) = dir(top_dir) {
                top.push((top_dir.clone(), FileId::of(&metadata)));
            }
            if let Some((path, metadata)) = top_dir
                .ancestors()
                .skip(1)
                .find_map(|path| Some((path, dir(path)?)))
            {
                top.push((path.to_owned(), FileId::of(&metadata)));
            }
        }
        top
    }

    /// Watches the directory `id` at `path`, unless it is watched already.
    fn watch(&mut self, path: &Path, id: FileId) -> Outcome {
        if self.by_id.contains_key(&id) {
            return Outcome::Kept;
        }
        // Another directory was there before: its watch is gone with it, or must go.
        self.unwatch(path);
        match self.debouncer.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(path.to_owned(), id);
                let watch = Watch {
                    path: path.to_owned(),
                    generation: 0,
                };
                self.by_id.insert(id, watch);
                if self.unwatchable.remove(path).is_some() {
                    tracing::info!(dir = %shown(path), "watching a directory for changes again");
                }
                Outcome::Added
            }
            Err(error) if matches!(error.kind, notify::ErrorKind::MaxFilesWatch) => Outcome::Limit,
            Err(error) => Outcome::Failed(reason(&error)),
        }
    }

    /// Marks the watch of the directory `id` (under any path) as wanted by this sync; returns
    /// whether there is one.
    fn keep(&mut self, id: FileId, generation: u64) -> bool {
        match self.by_id.get_mut(&id) {
            Some(watch) => {
                watch.generation = generation;
                true
            }
            None => false,
        }
    }

    fn mark_unwatchable(&mut self, path: &Path, generation: u64) {
        if let Some(unwatchable) = self.unwatchable.get_mut(path) {
            unwatchable.generation = generation;
        }
    }

    fn unwatch(&mut self, path: &Path) {
        if let Some(id) = self.watched.remove(path) {
            self.by_id.remove(&id);
            // Already gone if the directory was removed; nothing to undo then.
            let _ = self.debouncer.unwatch(path);
        }
    }

    /// Logs, once while it lasts, that the directory `id` at `path` cannot be watched.
    fn report(&mut self, path: &Path, id: FileId, reason: String) {
        if self
            .unwatchable
            .get(path)
            .is_some_and(|u| u.id == id && u.reason == reason)
        {
            return;
        }
        tracing::warn!(
            dir = %shown(path),
            reason = %reason,
            rescan = ?self.rescan,
            "cannot watch a directory for changes; it is read again periodically"
        );
        self.unwatchable.insert(
            path.to_owned(),
            Unwatchable {
                id,
                reason,
                generation: self.generation,
            },
        );
    }

    /// Forgets the watches notify dropped by itself: those of removed or renamed directories
    /// and of everything below them.
    fn forget_dropped(&mut self) {
        let dropped = std::mem::take(&mut self.noted.lock().dropped);
        if dropped.is_empty() {
            return;
        }
        let by_id = &mut self.by_id;
        self.watched.retain(|path, id| {
            let gone = path.ancestors().any(|p| dropped.contains(p));
            if gone {
                by_id.remove(id);
            }
            !gone
        });
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("dirs", &self.dirs)
            .field("watched", &self.watched.len())
            .field("unwatchable", &self.unwatchable.len())
            .finish_non_exhaustive()
    }
}

// === impl Noted ===

impl Noted {
    /// Notes what a debounced batch of events changed under the top directories `dirs`;
    /// returns whether anything relevant did.
    fn note(&mut self, events: &[DebouncedEvent], dirs: &[PathBuf]) -> bool {
        let mut relevant = false;
        for event in events {
            if drops_watches(event) {
                self.dropped.extend(event.paths.iter().cloned());
            }
            if !may_change(event) {
                continue;
            }
            if event.need_rescan() {
                self.changes.everything = true;
                relevant = true;
            }
            for path in &event.paths {
                match concerns_any(path, dirs) {
                    Concerns::Nothing => continue,
                    Concerns::Entry(entry) => {
                        self.changes.entries.insert(entry.to_owned());
                    }
                    Concerns::Everything => self.changes.everything = true,
                }
                relevant = true;
            }
        }
        relevant
    }
}

/// What an event on a path may have changed.
enum Concerns<'a> {
    /// Nothing: something beside `DIR` in a directory above it.
    Nothing,
    /// This entry of `DIR`.
    Entry(&'a OsStr),
    /// Anything.
    Everything,
}

/// Whether an event may change what the directory holds. Opening and reading files, which
/// every reload does, does not.
fn may_change(event: &notify::Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// What an event on `path` may have changed under the top directories `dirs`. With one (a
/// directory source's `DIR`), as [`concerns`] says; with several (a file source's
/// directories), nothing for something beside one of them in a directory above it, else
/// everything.
fn concerns_any<'a>(path: &'a Path, dirs: &[PathBuf]) -> Concerns<'a> {
    if let [dir] = dirs {
        return concerns(path, dir);
    }
    let on_the_way = dirs
        .iter()
        .any(|dir| path.starts_with(dir) || dir.starts_with(path));
    let beside = dirs
        .iter()
        .any(|dir| matches!(concerns(path, dir), Concerns::Nothing));
    if beside && !on_the_way {
        Concerns::Nothing
    } else {
        Concerns::Everything
    }
}

/// What an event on `path` may have changed in `dir`.
fn concerns<'a>(path: &'a Path, dir: &Path) -> Concerns<'a> {
    if let Ok(rest) = path.strip_prefix(dir) {
        return match rest.components().next() {
            Some(Component::Normal(entry)) => Concerns::Entry(entry),
            _ => Concerns::Everything,
        };
    }
    let beside_dir = path.parent().is_some_and(|parent| dir.starts_with(parent));
    if beside_dir && !dir.starts_with(path) {
        Concerns::Nothing
    } else {
        Concerns::Everything
    }
}

/// Whether notify drops the watches of an event's paths (and below): it does when a watched
/// directory is removed or renamed.
fn drops_watches(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// Why a watch failed, as logged; `None` if the directory is gone.
fn reason(error: &notify::Error) -> Option<String> {
    match &error.kind {
        notify::ErrorKind::PathNotFound => None,
        notify::ErrorKind::Io(e) if e.kind() == io::ErrorKind::NotFound => None,
        notify::ErrorKind::Io(e) => Some(e.to_string()),
        notify::ErrorKind::MaxFilesWatch => Some(WATCH_LIMIT.to_owned()),
        // notify's message names the paths: outside text.
        _ => Some(Untrusted::new(&error.to_string(), 256).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{Concerns, concerns, concerns_any};

    #[test]
    fn an_event_concerns_an_entry_everything_or_nothing() {
        let dir = Path::new("/srv/sds/credentials");
        let entry = |path: &str| match concerns(Path::new(path), dir) {
            Concerns::Entry(entry) => Some(entry.to_string_lossy().into_owned()),
            Concerns::Everything => Some("*".to_owned()),
            Concerns::Nothing => None,
        };
        // Inside `DIR`: the entry it is in.
        let web = Some("web".to_owned());
        assert_eq!(entry("/srv/sds/credentials/web"), web);
        assert_eq!(entry("/srv/sds/credentials/web/tls.crt"), web);
        assert_eq!(entry("/srv/sds/credentials/web/..2026/tls.crt"), web);
        // `DIR` itself, or a directory above it: anything may have changed.
        let everything = Some("*".to_owned());
        assert_eq!(entry("/srv/sds/credentials"), everything);
        assert_eq!(entry("/srv/sds"), everything);
        assert_eq!(entry("/srv"), everything);
        // Where a symlink leads, outside `DIR`: anything.
        assert_eq!(entry("/etc/letsencrypt/archive/web/cert1.pem"), everything);
        // Something beside `DIR` in a directory above it: nothing.
        assert_eq!(entry("/srv/sds/other"), None);
        assert_eq!(entry("/srv/sds/credentials.old"), None);
        assert_eq!(entry("/srv/unrelated"), None);
    }

    #[test]
    fn with_several_top_directories_an_event_concerns_everything_or_nothing() {
        let dirs = [PathBuf::from("/etc/sds/tls"), PathBuf::from("/var/ca")];
        let concerned = |path: &str| match concerns_any(Path::new(path), &dirs) {
            Concerns::Entry(_) => panic!("no entries with several top directories"),
            Concerns::Everything => true,
            Concerns::Nothing => false,
        };
        // In a top directory, on the way to one, or where a symlink leads: everything.
        assert!(concerned("/etc/sds/tls/tls.crt"));
        assert!(concerned("/var/ca/ca.crt"));
        assert!(concerned("/etc/sds"));
        assert!(concerned("/var"));
        assert!(concerned("/opt/certbot/archive/cert1.pem"));
        // Beside a top directory, in a directory above it: nothing.
        assert!(!concerned("/etc/sds/other"));
        assert!(!concerned("/etc/passwd"));
        assert!(!concerned("/var/log"));
        // One top directory: its entries, as for a directory source.
        let one = [PathBuf::from("/etc/sds/tls")];
        assert!(matches!(
            concerns_any(Path::new("/etc/sds/tls/tls.key"), &one),
            Concerns::Entry(entry) if entry == "tls.key"
        ));
    }
}
