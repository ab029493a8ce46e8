//! Reading the whole directory into one complete [`Update`].

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    ffi::{OsStr, OsString},
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sds_core::{SecretName, UnixTime, Update};

use crate::{
    Error,
    credential::{Credential, Work},
    layout::{self, NO_KNOWN_FILE},
    stamp::FileId,
};

/// The file system's own directory on a volume's root (`fsck`), usually unreadable: never a
/// credential, and not worth a warning.
const LOST_AND_FOUND: &str = "lost+found";

/// Reads every credential in `dir` once, blocking, and returns the complete [`Update`].
///
/// Each subdirectory `dir/<name>/` is one credential (see the [crate docs](crate) for the
/// layout). A credential whose directory or files are missing, unreadable or invalid is
/// rejected in the update with the reason; entries that are not credentials (hidden names,
/// plain files, directories without any known file) are skipped and logged at warn level.
/// Validation happens at `now`.
///
/// This is what [`DirSource`](crate::DirSource) runs on its first reload, without the watching
/// (later reloads read only what changed).
///
/// # Errors
///
/// [`Error::ReadDir`] if `dir` itself cannot be listed.
pub fn scan(dir: &Path, now: UnixTime) -> Result<Update, Error> {
    let scan = Scan::read(dir, now, &mut Credentials::default(), Scope::All)?;
    for ignored in &scan.ignored {
        ignored.warn();
    }
    Ok(scan.update)
}

/// Which credentials a read looks at.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Everything: `DIR` is listed, and every credential's directory and files are looked at
    /// (and read if they changed).
    All,
    /// Only the entries of `DIR` named here, and the credentials not watched (`watched` says
    /// whether a directory is); everything else is as it was. Right when `DIR` is watched and
    /// the names are those of every entry an event concerned since the last read.
    Changed {
        entries: &'a HashSet<OsString>,
        watched: &'a dyn Fn(FileId) -> bool,
    },
}

/// What the last read found in `DIR`: what the next read reuses when nothing changed.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    /// Every credential directory, by name.
    by_name: BTreeMap<SecretName, Credential>,
    /// The entries of `DIR` that are not credentials, by name, with why.
    ignored: BTreeMap<OsString, Ignored>,
}

/// One read of the directory, with what the caller may want to log.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The complete update.
    pub(crate) update: Update,
    /// How many secrets the update serves.
    pub(crate) served: usize,
    /// How many names the update rejects.
    pub(crate) rejected: usize,
    /// Entries that are not credentials, in path order.
    pub(crate) ignored: Vec<Ignored>,
    /// Whether the update may differ from the one the previous read of the same
    /// [`Credentials`] gave.
    pub(crate) changed: bool,
    /// What the read cost.
    pub(crate) work: Work,
}

/// An entry of the directory that is not a credential, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ignored {
    pub(crate) path: PathBuf,
    pub(crate) reason: &'static str,
}

// === impl Credentials ===

impl Credentials {
    /// Forgets everything (the directory is gone).
    pub(crate) fn clear(&mut self) {
        self.by_name.clear();
        self.ignored.clear();
    }

    /// The directories to watch for changes to the credentials, with what each is.
    pub(crate) fn watch(&self) -> impl Iterator<Item = (&Path, FileId)> {
        self.by_name
            .values()
            .flat_map(|c| c.watch().iter().map(|(path, id)| (path.as_path(), *id)))
    }

    /// Looks at the entry `file_name` of `dir` again: it is a credential (read, or `old` if
    /// nothing in it changed), an entry that is not one, or gone. Blocking.
    fn look_at(&mut self, dir: &Path, file_name: &OsStr, old: Option<Credential>, read: &mut Read) {
        let path = dir.join(file_name);
        let mut ignore = |reason| {
            let ignored = Ignored {
                path: path.clone(),
                reason,
            };
            self.ignored.insert(file_name.to_owned(), ignored);
        };
        let found = match file_name.to_str() {
            // kubelet's `..data` and `..<timestamp>`, editors' and tools' hidden files.
            Some(name) if name.starts_with('.') || name == LOST_AND_FOUND => None,
            None => {
                ignore("its name is not UTF-8");
                None
            }
            Some(name) => match fs::metadata(&path) {
                Ok(metadata) if !metadata.is_dir() => {
                    ignore("it is not a directory");
                    None
                }
                // Removed since it was listed, or a dangling symlink: not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                // A directory, or one we cannot look at: the credential says why.
                metadata => match SecretName::new(name) {
                    Ok(name) => Some((name, metadata)),
                    Err(_) => {
                        ignore(
                            "its name is not a valid secret name (printable ASCII without spaces)",
                        );
                        None
                    }
                },
            },
        };
        match found {
            Some((name, metadata)) => {
                let credential = Credential::read(
                    &name,
                    &path,
                    metadata,
                    read.now,
                    read.looked_at,
                    old,
                    &mut read.work,
                );
                self.by_name.insert(name, credential);
            }
            None if old.is_some() => read.removed = true,
            None => {}
        }
    }
}

/// What one read needs and counts.
struct Read {
    now: UnixTime,
    looked_at: SystemTime,
    work: Work,
    /// Whether a credential is gone.
    removed: bool,
}

// === impl Scan ===

impl Scan {
    /// Reads the credentials in `dir` at `now` that `scope` says may have changed, reusing from
    /// `credentials` what did not change, and leaves there what it found.
    pub(crate) fn read(
        dir: &Path,
        now: UnixTime,
        credentials: &mut Credentials,
        scope: Scope<'_>,
    ) -> Result<Self, Error> {
        let mut read = Read {
            now,
            // Whole seconds, rounded down: a file is only ever taken for more recent.
            looked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs()),
            work: Work::default(),
            removed: false,
        };
        match scope {
            Scope::All => {
                let read_dir_error = |source| Error::ReadDir {
                    path: dir.to_owned(),
                    source,
                };
                let listing = fs::read_dir(dir).map_err(read_dir_error)?;
                let mut previous = std::mem::take(&mut credentials.by_name);
                credentials.ignored.clear();
                for entry in listing {
                    let file_name = entry.map_err(read_dir_error)?.file_name();
                    let old = file_name.to_str().and_then(|name| previous.remove(name));
                    credentials.look_at(dir, &file_name, old, &mut read);
                }
                read.removed |= !previous.is_empty();
            }
            Scope::Changed { entries, watched } => {
                let unwatched = credentials
                    .by_name
                    .iter()
                    .filter(|(name, c)| {
                        !c.is_watched(watched) && !entries.contains(OsStr::new(name.as_str()))
                    })
                    .map(|(name, _)| OsString::from(name.as_str()))
                    .collect::<Vec<_>>();
                let mut untouched = credentials.by_name.len();
                for file_name in entries.iter().chain(&unwatched) {
                    credentials.ignored.remove(file_name);
                    let old = file_name
                        .to_str()
                        .and_then(|name| credentials.by_name.remove(name));
                    untouched -= usize::from(old.is_some());
                    credentials.look_at(dir, file_name, old, &mut read);
                }
                read.work.reused += untouched;
            }
        }

        let mut scan = Scan {
            update: Update::new(),
            served: 0,
            rejected: 0,
            ignored: credentials.ignored.values().cloned().collect(),
            changed: read.work.changed > 0 || read.removed,
            work: read.work,
        };
        // Names given to a secret so far: the first directory to claim a name wins.
        let mut claimed = BTreeSet::new();
        for (dir_name, credential) in &credentials.by_name {
            if credential.parts().is_empty() {
                scan.ignore(dir.join(dir_name.as_str()), NO_KNOWN_FILE);
            }
            for (name, result) in credential.parts() {
                if !claimed.insert(name) {
                    scan.ignore(dir.join(dir_name.as_str()), COLLISION);
                    continue;
                }
                match result {
                    Ok(secret) => {
                        scan.update.insert_shared(name.clone(), secret.clone());
                        scan.served += 1;
                    }
                    Err(error) => {
                        scan.update.reject(name.clone(), error.clone());
                        scan.rejected += 1;
                    }
                }
            }
        }
        scan.ignored.sort();
        Ok(scan)
    }

    fn ignore(&mut self, path: PathBuf, reason: &'static str) {
        self.ignored.push(Ignored { path, reason });
    }
}

/// Why a secret is skipped when an earlier directory already gave one of the same name.
const COLLISION: &str = "a secret of the same name comes from another directory \
                         (`<name>/` serves its CA as `<name>-cacert`)";

// === impl Ignored ===

impl Ignored {
    /// Logs this entry at warn level: an entry that is not a credential is likely a mistake.
    pub(crate) fn warn(&self) {
        tracing::warn!(
            path = %layout::shown(&self.path),
            reason = self.reason,
            "ignoring an entry of the credential directory"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        ffi::OsString,
        fs,
        path::Path,
        time::{Duration, SystemTime},
    };

    use sds_core::UnixTime;
    use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};

    use super::{Credentials, Scan, Scope};
    use crate::credential::Work;

    /// `minutes` from now: later than every file's times by more than "recent", so stamps are
    /// trusted.
    fn later(minutes: u64) -> UnixTime {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        UnixTime::since_unix_epoch(now + Duration::from_secs(60 * minutes))
    }

    fn write(dir: &Path, name: &str, leaf: &Leaf) {
        let dir = dir.join(name);
        fs::create_dir_all(&dir).expect("create DIR/<name>");
        fs::write(dir.join("tls.crt"), &leaf.chain_pem).expect("write tls.crt");
        fs::write(dir.join("tls.key"), &leaf.key_pem).expect("write tls.key");
    }

    fn work(dir: &Path, credentials: &mut Credentials, minutes: u64, scope: Scope<'_>) -> Work {
        Scan::read(dir, later(minutes), credentials, scope)
            .expect("DIR is readable")
            .work
    }

    #[test]
    fn only_what_changed_is_read_and_only_new_content_parsed() {
        let ca = Ca::new("Work CA");
        let issue = |dns| ca.issue(&[dns], KeyKind::EcP256Pkcs8, Validity::current());
        let (v1, v2) = (issue("v1.example.com"), issue("v2.example.com"));
        let temp = tempfile::tempdir().expect("a temporary directory");
        let dir = temp.path();
        write(dir, "a", &v1);
        write(dir, "b", &v1);
        let mut credentials = Credentials::default();
        let all = Scope::All;

        let first = work(dir, &mut credentials, 1, all);
        assert_eq!((first.read, first.parsed, first.changed), (2, 2, 2));
        let unchanged = work(dir, &mut credentials, 2, all);
        assert_eq!(
            (unchanged.reused, unchanged.read, unchanged.parsed),
            (2, 0, 0)
        );

        // The same content written again: read (the stamp changed), not parsed.
        write(dir, "a", &v1);
        let rewritten = work(dir, &mut credentials, 3, all);
        assert_eq!(
            (rewritten.reused, rewritten.read, rewritten.parsed),
            (1, 1, 0)
        );
        assert_eq!(rewritten.changed, 0);

        // New content: read and parsed.
        write(dir, "a", &v2);
        let rotated = work(dir, &mut credentials, 4, all);
        assert_eq!((rotated.reused, rotated.read, rotated.parsed), (1, 1, 1));
        assert_eq!(rotated.changed, 1);
    }

    #[test]
    fn a_targeted_read_looks_only_at_the_entries_named_and_the_unwatched() {
        let ca = Ca::new("Scope CA");
        let issue = |dns| ca.issue(&[dns], KeyKind::EcP256Pkcs8, Validity::current());
        let (v1, v2) = (issue("v1.example.com"), issue("v2.example.com"));
        let temp = tempfile::tempdir().expect("a temporary directory");
        let dir = temp.path();
        write(dir, "a", &v1);
        write(dir, "b", &v1);
        let mut credentials = Credentials::default();
        work(dir, &mut credentials, 1, Scope::All);

        write(dir, "a", &v2);
        write(dir, "b", &v2);
        let entries: HashSet<OsString> = [OsString::from("a")].into();
        let everything_watched = |_| true;
        let scope = Scope::Changed {
            entries: &entries,
            watched: &everything_watched,
        };
        let targeted = work(dir, &mut credentials, 2, scope);
        assert_eq!((targeted.reused, targeted.read, targeted.parsed), (1, 1, 1));

        // Nothing watched: every credential is looked at.
        let nothing_watched = |_| false;
        let none = HashSet::new();
        let scope = Scope::Changed {
            entries: &none,
            watched: &nothing_watched,
        };
        let unwatched = work(dir, &mut credentials, 3, scope);
        assert_eq!(
            (unwatched.reused, unwatched.read, unwatched.parsed),
            (1, 1, 1)
        );
    }
}
