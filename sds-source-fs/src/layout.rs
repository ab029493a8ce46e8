//! The files of one credential directory, and which of them wins.
//!
//! The file names are the keys of Kubernetes Secrets, with Istio's precedence, so that a
//! directory and a Secret with the same keys mean the same thing.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use sds_core::{ErrorKind, MAX_INPUT_LEN, SecretName, Untrusted};

use crate::stamp::Stamp;

/// Certificate chain and private key file names, as pairs, generic (Istio) first.
const PAIRS: [(&str, &str); 2] = [("cert", "key"), ("tls.crt", "tls.key")];
/// CA certificate file names, generic first.
const CA: [&str; 2] = ["cacert", "ca.crt"];
/// CRL file names, generic first.
const CRL: [&str; 2] = ["crl", "ca.crl"];
/// Every known file name: the pairs, then the CA files, then the CRLs.
const NAMES: [&str; 8] = [
    PAIRS[0].0, PAIRS[0].1, PAIRS[1].0, PAIRS[1].1, CA[0], CA[1], CRL[0], CRL[1],
];
/// How a CRL without a CA is reported.
const CA_EITHER: &str = "cacert or ca.crt";
/// Why a directory without any of the names above is not a credential.
pub(crate) const NO_KNOWN_FILE: &str =
    "it holds none of the known files (cert, key, tls.crt, tls.key, cacert, ca.crt, crl, ca.crl)";

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
pub(crate) type Seen = [Probed; NAMES.len()];

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

/// The files of a certificate chain and its private key.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
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
    Unpaired {
        found: PathBuf,
        missing: &'static str,
    },
}

// === impl Layout ===

impl Layout {
    /// Looks up the known file names in `dir`, following symlinks (kubelet's `..data`), and
    /// returns what it found with what it saw. Blocking.
    pub(crate) fn probe(dir: &Path) -> (Self, Seen) {
        let probes = NAMES.map(|file| probe(dir, file));
        let seen = probes.each_ref().map(Probe::seen);
        let present = probes
            .iter()
            .filter_map(|p| match p {
                Probe::Present(path, _) => Some(path.clone()),
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
        let [cert, key, tls_crt, tls_key, cacert, ca_crt, crl, ca_crl] = probes;
        let pair = pair([(cert, key), (tls_crt, tls_key)]);
        let ca = match (first([cacert, ca_crt]), first([crl, ca_crl])) {
            (None, None) => None,
            (Some(Err(problem)), _) | (_, Some(Err(problem))) => Some(Err(problem)),
            (None, Some(Ok(found))) => Some(Err(Problem::Unpaired {
                found,
                missing: CA_EITHER,
            })),
            (Some(Ok(ca)), crl) => Some(Ok(Ca {
                ca,
                crl: crl.and_then(Result::ok),
            })),
        };
        (Self { pair, ca, present }, seen)
    }
}

/// One looked-up file.
#[derive(Debug)]
enum Probe {
    Absent,
    Present(PathBuf, Stamp),
    Failed(PathBuf, io::Error),
}

fn probe(dir: &Path, file: &str) -> Probe {
    let path = dir.join(file);
    match fs::metadata(&path) {
        Ok(metadata) => Probe::Present(path, Stamp::of(&metadata)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Absent,
        Err(e) => Probe::Failed(path, e),
    }
}

// === impl Probe ===

impl Probe {
    fn seen(&self) -> Probed {
        match self {
            Probe::Absent => Probed::Absent,
            Probe::Present(_, stamp) => Probed::Present(*stamp),
            Probe::Failed(_, e) => Probed::Failed(e.kind()),
        }
    }

    fn is_permission_denied(&self) -> bool {
        matches!(self, Probe::Failed(_, e) if e.kind() == io::ErrorKind::PermissionDenied)
    }
}

/// The first file present in precedence order, or the problem that hides it.
fn first<const N: usize>(probes: [Probe; N]) -> Option<Result<PathBuf, Problem>> {
    probes.into_iter().find_map(|p| match p {
        Probe::Absent => None,
        Probe::Present(path, _) => Some(Ok(path)),
        Probe::Failed(path, source) => Some(Err(Problem::Unreadable { path, source })),
    })
}

/// The first complete pair in precedence order. A file that cannot be looked up before that
/// rejects the pair (it might have completed the winning pair); without a complete pair, a lone
/// file is reported with its missing partner.
fn pair(probes: [(Probe, Probe); 2]) -> Option<Result<Pair, Problem>> {
    let mut lone = None;
    for ((cert, key), (cert_name, key_name)) in probes.into_iter().zip(PAIRS) {
        match (cert, key) {
            (Probe::Failed(path, source), _) | (_, Probe::Failed(path, source)) => {
                return Some(Err(Problem::Unreadable { path, source }));
            }
            (Probe::Present(cert, _), Probe::Present(key, _)) => {
                return Some(Ok(Pair { cert, key }));
            }
            (Probe::Present(found, _), Probe::Absent) => lone = lone.or(Some((found, key_name))),
            (Probe::Absent, Probe::Present(found, _)) => lone = lone.or(Some((found, cert_name))),
            (Probe::Absent, Probe::Absent) => {}
        }
    }
    lone.map(|(found, missing)| Err(Problem::Unpaired { found, missing }))
}

// === impl Problem ===

impl Problem {
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
                sds_core::Error::missing_input(credential, location(&found), missing.to_string())
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
