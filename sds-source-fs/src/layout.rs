//! The files of one credential directory, and which of them wins.
//!
//! The file names are the keys of Kubernetes Secrets, with Istio's precedence, so that a
//! directory and a Secret with the same keys mean the same thing.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use sds_core::{
    ErrorKind, MAX_INPUT_LEN, SecretName, Untrusted,
    layout::{self as core, Incomplete, Key, Presence},
};

use crate::stamp::Stamp;

/// Why a directory without any of the names above is not a credential.
pub(crate) const NO_KNOWN_FILE: &str = "it holds none of the known files (cert, key, tls.crt, \
     tls.key, cacert, ca.crt, crl, ca.crl, tls.ocsp-staple)";

/// What one credential directory holds, after precedence: each part is absent (`None`), files
/// to read, or a problem that rejects the part's secret.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The certificate chain and its key, served as `<name>`. A directory that cannot be looked
    /// into at all is a problem of this part alone (there is nothing to tell a CA by).
    pub(crate) pair: Option<Result<Pair, Problem>>,
    /// The CA certificates and their CRL, served as `<name>-cacert`.
    pub(crate) ca: Option<Result<Ca, Problem>>,
    /// Every known file that exists, whichever wins: where their names lead is watched.
    pub(crate) present: Vec<PathBuf>,
}

/// What a look at the known file names of a directory saw, name by name: compared between
/// reloads to tell whether the directory must be read again.
pub(crate) type Seen = [Probed; Key::ALL.len()];

/// What looking up one known file name saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probed {
    /// No such file (or a dangling symlink).
    Absent,
    /// A file, as it is now (following symlinks).
    Present(Stamp),
    /// The lookup failed, for this reason.
    Failed(io::ErrorKind),
}

/// The files of a certificate chain, its private key and its optional OCSP staple.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ocsp_staple: Option<PathBuf>,
}

/// The files of a CA bundle and its optional CRL.
#[derive(Debug)]
pub(crate) struct Ca {
    pub(crate) ca: PathBuf,
    pub(crate) crl: Option<PathBuf>,
}

/// Why one part of a credential cannot be read.
#[derive(Debug)]
pub(crate) enum Problem {
    /// A file (or the credential directory itself) exists but cannot be read, or is not a
    /// regular file.
    Unreadable { path: PathBuf, source: io::Error },
    /// A file is larger than [`sds_core::MAX_INPUT_LEN`].
    TooLarge { path: PathBuf, len: u64 },
    /// One file of a pair without the other: a chain without its key, a CRL without a CA.
    Unpaired { found: PathBuf, missing: String },
}

// === impl Layout ===

impl Layout {
    /// Looks up the known file names in `dir`, following symlinks (kubelet's `..data`), and
    /// returns what it found with what it saw. Which files win is `sds_core`'s
    /// [`Layout`](core::Layout), as for a Kubernetes Secret with the same keys. Blocking.
    pub(crate) fn probe(dir: &Path) -> (Self, Seen) {
        let mut probes = Key::ALL.map(|key| probe(dir, key.name()));
        let seen = probes.each_ref().map(Probe::seen);
        let present = probes
            .iter()
            .filter_map(|p| match p {
                Probe::Present { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        // Looking up a name needs only search permission on the directory: when every lookup
        // is refused, it is the directory that cannot be read, whatever it holds.
        if probes.iter().all(Probe::is_permission_denied)
            && let [Probe::Failed(_, source), ..] = probes
        {
            let problem = Problem::Unreadable {
                path: dir.to_owned(),
                source,
            };
            let layout = Self {
                pair: Some(Err(problem)),
                ca: None,
                present,
            };
            return (layout, seen);
        }
        let core::Layout { pair, ca } = core::Layout::of(|key| probes[key.index()].presence());
        let mut take = |key: Key| std::mem::replace(&mut probes[key.index()], Probe::Taken);
        let pair = pair.map(|pair| {
            let keys = pair.map_err(|incomplete| Problem::incomplete(incomplete, &mut take))?;
            Ok(Pair {
                cert: take(keys.chain).into_path(dir),
                key: take(keys.key).into_path(dir),
                ocsp_staple: keys.ocsp_staple.map(|key| take(key).into_path(dir)),
            })
        });
        let ca = ca.map(|ca| {
            let keys = ca.map_err(|incomplete| Problem::incomplete(incomplete, &mut take))?;
            Ok(Ca {
                ca: take(keys.ca).into_path(dir),
                crl: keys.crl.map(|key| take(key).into_path(dir)),
            })
        });
        (Self { pair, ca, present }, seen)
    }
}

/// One looked-up file.
#[derive(Debug)]
enum Probe {
    Absent,
    Present {
        path: PathBuf,
        stamp: Stamp,
        empty: bool,
    },
    Failed(PathBuf, io::Error),
    /// Already moved out, into the layout.
    Taken,
}

fn probe(dir: &Path, file: &str) -> Probe {
    let path = dir.join(file);
    match fs::metadata(&path) {
        Ok(metadata) => Probe::Present {
            stamp: Stamp::of(&metadata),
            // Anything but an empty regular file is read, and refused if it cannot be.
            empty: metadata.is_file() && metadata.len() == 0,
            path,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Absent,
        Err(e) => Probe::Failed(path, e),
    }
}

// === impl Probe ===

impl Probe {
    fn seen(&self) -> Probed {
        match self {
            Probe::Absent | Probe::Taken => Probed::Absent,
            Probe::Present { stamp, .. } => Probed::Present(*stamp),
            Probe::Failed(_, e) => Probed::Failed(e.kind()),
        }
    }

    fn presence(&self) -> Presence {
        match self {
            Probe::Absent | Probe::Taken => Presence::Absent,
            Probe::Present { empty: true, .. } => Presence::Empty,
            Probe::Present { empty: false, .. } => Presence::NonEmpty,
            Probe::Failed(..) => Presence::Unknown,
        }
    }

    fn is_permission_denied(&self) -> bool {
        matches!(self, Probe::Failed(_, e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// The file's path. The layout only picks files it saw, so `dir` is a fallback that is
    /// never taken.
    fn into_path(self, dir: &Path) -> PathBuf {
        match self {
            Probe::Present { path, .. } | Probe::Failed(path, _) => path,
            Probe::Absent | Probe::Taken => dir.to_owned(),
        }
    }
}

// === impl Problem ===

impl Problem {
    /// The problem of a part that [`core::Layout`] found incomplete; `take` gives the probe of
    /// a key.
    fn incomplete(incomplete: Incomplete, take: &mut impl FnMut(Key) -> Probe) -> Problem {
        match incomplete {
            Incomplete::Unknown(key) => match take(key) {
                Probe::Failed(path, source) => Problem::Unreadable { path, source },
                other => Problem::Unreadable {
                    path: other.into_path(Path::new(key.name())),
                    source: io::Error::other("the file could not be looked up"),
                },
            },
            missing => Problem::Unpaired {
                missing: missing.missing_names(|key| key.name().to_owned()),
                found: take(missing.key()).into_path(Path::new(missing.key().name())),
            },
        }
    }

    /// The rejection of `credential` this problem causes.
    pub(crate) fn into_error(self, credential: &SecretName) -> sds_core::Error {
        let credential = credential.clone();
        match self {
            Problem::TooLarge { path, len } => sds_core::Error::input(
                credential,
                location(&path),
                ErrorKind::InputTooLarge {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    max: MAX_INPUT_LEN,
                },
            ),
            Problem::Unreadable { path, source } => sds_core::Error::input(
                credential,
                location(&path),
                ErrorKind::Unreadable {
                    source: Arc::new(source),
                },
            ),
            Problem::Unpaired { found, missing } => {
                sds_core::Error::missing_input(credential, location(&found), missing)
            }
        }
    }
}

/// The longest path shown in a log line, in characters.
const MAX_SHOWN: usize = 512;

/// A path as logged: escaped and cut short as [`Untrusted`] text. Directory entries and symlink
/// targets are named by whoever writes the directory: a newline in a name must not start a log
/// line of its own.
pub(crate) fn shown(path: &Path) -> String {
    Untrusted::lossy(path.as_os_str().as_encoded_bytes(), MAX_SHOWN)
}

/// How a file is named in messages and in [`sds_core::Input::location`].
pub(crate) fn location(path: &Path) -> String {
    path.display().to_string()
}
