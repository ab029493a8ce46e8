//! Watching the directory for changes: inotify through `notify-debouncer-full`, reduced to one
//! "something changed" signal. Nothing here reads a credential.

use std::{
    ffi::OsString,
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify_debouncer_full::{
    DebounceEventResult, Debouncer, FileIdMap,
    file_id::{FileId, get_file_id},
    new_debouncer_opt,
    notify::{
        self, EventKind, RecommendedWatcher, RecursiveMode,
        event::{AccessKind, AccessMode},
    },
};
use tokio::sync::Notify;

use crate::Error;

/// Watches a credential directory recursively, and its parent so that the directory's removal,
/// creation and replacement are seen too. Every debounced batch of relevant events wakes
/// `dirty`; bursts coalesce into one stored permit.
///
/// Dropping the watcher stops its threads.
pub(crate) struct Watcher {
    debouncer: Debouncer<RecommendedWatcher, FileIdMap>,
    /// The credential directory, absolute.
    dir: PathBuf,
    /// What `dir` looked like when its recursive watch was set; `None` while it is not watched.
    watched: Option<Shape>,
}

/// The identity of the directory and of its visible entries, following symlinks. When it
/// changes, the recursive watch is set again, so that a recreated directory or an entry whose
/// symlink now points elsewhere is watched where it is now.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    dir: FileId,
    entries: Vec<(OsString, FileId)>,
}

// === impl Watcher ===

impl Watcher {
    /// Starts the watcher threads and watches the parent of `dir`. Blocking (it walks the
    /// parent to record file ids); `dir` is watched by the first [`Watcher::sync`].
    pub(crate) fn start(dir: &Path, debounce: Duration, dirty: Arc<Notify>) -> Result<Self, Error> {
        let dir = std::path::absolute(dir).map_err(|source| Error::Watch {
            path: dir.to_owned(),
            source,
        })?;
        let relevant_to = dir.clone();
        let on_events = move |result: DebounceEventResult| {
            let relevant = match &result {
                Ok(events) => events.iter().any(|event| concerns(event, &relevant_to)),
                Err(errors) => {
                    for error in errors {
                        let error: &dyn std::error::Error = error;
                        tracing::warn!(error, "file watcher failed; reloading every credential");
                    }
                    true
                }
            };
            if relevant {
                dirty.notify_one();
            }
        };
        let mut debouncer = new_debouncer_opt::<_, RecommendedWatcher, FileIdMap>(
            debounce,
            None,
            on_events,
            FileIdMap::new(),
            notify::Config::default(),
        )
        .map_err(watch_error(&dir))?;
        if let Some(parent) = dir.parent() {
            debouncer
                .watch(parent, RecursiveMode::NonRecursive)
                .map_err(watch_error(parent))?;
        }
        Ok(Self {
            debouncer,
            dir,
            watched: None,
        })
    }

    /// The credential directory, absolute.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Watches the directory recursively if it exists and is not watched as it is now: call it
    /// before every read, so that no change between the two is missed. Blocking.
    pub(crate) fn sync(&mut self) -> Result<(), Error> {
        let shape = Shape::of(&self.dir);
        if shape == self.watched {
            return Ok(());
        }
        if self.watched.take().is_some() {
            // Already gone if the directory was removed; nothing to undo then.
            let _ = self.debouncer.unwatch(&self.dir);
        }
        // A missing directory is seen coming back through the parent's watch.
        if let Some(shape) = shape {
            self.debouncer
                .watch(&self.dir, RecursiveMode::Recursive)
                .map_err(watch_error(&self.dir))?;
            self.watched = Some(shape);
        }
        Ok(())
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("dir", &self.dir)
            .field("watched", &self.watched.is_some())
            .finish_non_exhaustive()
    }
}

// === impl Shape ===

impl Shape {
    /// The shape of `dir`, or `None` if it cannot be looked at (then the read says why).
    fn of(dir: &Path) -> Option<Self> {
        let id = get_file_id(dir).ok()?;
        let mut entries: Vec<_> = fs::read_dir(dir)
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name();
                if name.as_encoded_bytes().starts_with(b".") {
                    return None;
                }
                Some((name, get_file_id(entry.path()).ok()?))
            })
            .collect();
        entries.sort();
        Some(Self { dir: id, entries })
    }
}

/// Whether a debounced event may change what the directory holds. Opening and reading files,
/// which every reload does, does not.
fn concerns(event: &notify::Event, dir: &Path) -> bool {
    let may_change = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    may_change && (event.need_rescan() || event.paths.iter().any(|p| p.starts_with(dir)))
}

fn watch_error(path: &Path) -> impl FnOnce(notify::Error) -> Error + '_ {
    move |error| Error::Watch {
        path: path.to_owned(),
        source: match error.kind {
            notify::ErrorKind::Io(io) => io,
            _ => io::Error::other(error),
        },
    }
}
