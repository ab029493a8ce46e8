//! Reading the whole directory into one complete [`Update`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use sds_core::{
    CertifiedKey, Input, MAX_INPUT_LEN, Secret, SecretName, TrustBundle, UnixTime, Update,
};
use zeroize::Zeroizing;

use crate::{
    Error,
    layout::{self, Ca, Layout, NO_KNOWN_FILE, Pair, Problem},
};

/// kubelet's symlink to the current payload of a Secret volume.
const KUBELET_DATA: &str = "..data";

/// How many times a credential is read when kubelet keeps swapping `..data` under the reader.
const MAX_ATTEMPTS: usize = 5;

/// Reads every credential in `dir` once, blocking, and returns the complete [`Update`].
///
/// Each subdirectory `dir/<name>/` is one credential (see the [crate docs](crate) for the
/// layout). A credential whose files are missing, unreadable or invalid is rejected in the
/// update with the reason; entries that are not credentials (hidden names, plain files,
/// directories without any known file) are skipped and logged at warn level. Validation
/// happens at `now`.
///
/// This is what [`DirSource`](crate::DirSource) runs on every reload, without the watching.
///
/// # Errors
///
/// [`Error::ReadDir`] if `dir` itself cannot be listed.
pub fn scan(dir: &Path, now: UnixTime) -> Result<Update, Error> {
    let scan = Scan::read(dir, now)?;
    for ignored in &scan.ignored {
        ignored.warn();
    }
    Ok(scan.update)
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
    /// Names given to a secret so far: the first directory to claim a name wins.
    claimed: BTreeSet<SecretName>,
}

/// An entry of the directory that is not a credential, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ignored {
    pub(crate) path: PathBuf,
    pub(crate) reason: &'static str,
}

// === impl Scan ===

impl Scan {
    /// Reads every credential in `dir` at `now`.
    pub(crate) fn read(dir: &Path, now: UnixTime) -> Result<Self, Error> {
        let read_dir_error = |source| Error::ReadDir {
            path: dir.to_owned(),
            source,
        };
        let mut scan = Scan {
            update: Update::new(),
            served: 0,
            rejected: 0,
            ignored: Vec::new(),
            claimed: BTreeSet::new(),
        };
        let mut credentials = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(read_dir_error)? {
            let entry = entry.map_err(read_dir_error)?;
            let path = entry.path();
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                scan.ignore(path, "its name is not UTF-8");
                continue;
            };
            // kubelet's `..data` and `..<timestamp>`, editors' and tools' hidden files.
            if file_name.starts_with('.') {
                continue;
            }
            match fs::metadata(&path) {
                Ok(metadata) if !metadata.is_dir() => {
                    scan.ignore(path, "it is not a directory");
                    continue;
                }
                // Removed since it was listed, or a dangling symlink: not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // A directory, or one we cannot look into: its files will say which.
                _ => {}
            }
            match SecretName::new(file_name) {
                Ok(name) => {
                    credentials.insert(name, path);
                }
                Err(_) => scan.ignore(
                    path,
                    "its name is not a valid secret name (printable ASCII without spaces)",
                ),
            }
        }
        for (name, path) in credentials {
            scan.credential(&name, &path, now);
        }
        scan.ignored.sort();
        Ok(scan)
    }

    /// Reads the credential `name` from `dir` and records what it gives.
    fn credential(&mut self, name: &SecretName, dir: &Path, now: UnixTime) {
        let parts = read_consistently(name, dir, now);
        if parts.is_empty() {
            self.ignore(dir.to_owned(), NO_KNOWN_FILE);
        }
        for (name, result) in parts {
            if !self.claimed.insert(name.clone()) {
                self.ignore(dir.to_owned(), COLLISION);
                continue;
            }
            match result {
                Ok(secret) => {
                    self.update.insert_shared(name, secret);
                    self.served += 1;
                }
                Err(error) => {
                    self.update.reject(name, error);
                    self.rejected += 1;
                }
            }
        }
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
            path = %self.path.display(),
            reason = self.reason,
            "ignoring an entry of the credential directory"
        );
    }
}

/// A secret read from a credential directory, or why it is rejected.
type Part = (SecretName, Result<Arc<Secret>, sds_core::Error>);

/// Reads one credential, again if kubelet swapped its `..data` symlink meanwhile, so that a
/// chain and a key always come from the same payload when the reads can be made to agree.
fn read_consistently(name: &SecretName, dir: &Path, now: UnixTime) -> Vec<Part> {
    let data = dir.join(KUBELET_DATA);
    let mut attempt = 1;
    loop {
        let before = fs::read_link(&data).ok();
        let parts = read_credential(name, dir, now);
        let after = fs::read_link(&data).ok();
        if before == after || attempt == MAX_ATTEMPTS {
            return parts;
        }
        tracing::debug!(dir = %dir.display(), attempt, "..data changed while reading; reading again");
        attempt += 1;
    }
}

/// Reads the secrets of one credential directory: `<name>` and `<name>-cacert`, each if present.
fn read_credential(name: &SecretName, dir: &Path, now: UnixTime) -> Vec<Part> {
    let layout = Layout::probe(dir);
    let mut parts = Vec::with_capacity(2);
    let ca_only = layout.pair.is_none();
    if let Some(pair) = layout.pair {
        parts.push((name.clone(), certified_key(name, pair, now).map(Arc::new)));
    }
    if let Some(ca) = layout.ca {
        let cacert = name.cacert();
        let bundle = trust_bundle(&cacert, ca, now).map(Arc::new);
        // A directory holding only a CA is a validation context under its own name too, as
        // a Kubernetes Secret holding only a CA is (Istio's CA-only credentials).
        if ca_only {
            parts.push((name.clone(), bundle.clone()));
        }
        parts.push((cacert, bundle));
    }
    parts
}

fn certified_key(
    name: &SecretName,
    pair: Result<Pair, Problem>,
    now: UnixTime,
) -> Result<Secret, sds_core::Error> {
    let read = |pair: Pair| Ok::<_, Problem>((read(&pair.cert)?, read(&pair.key)?, pair));
    let (chain, key, pair) = pair.and_then(read).map_err(|p| p.into_error(name))?;
    let (chain_location, key_location) =
        (layout::location(&pair.cert), layout::location(&pair.key));
    let certified = CertifiedKey::from_pem(
        name,
        Input::new(&chain_location, &chain),
        Input::new(&key_location, &key),
        now,
    )?;
    Ok(certified.into())
}

fn trust_bundle(
    name: &SecretName,
    ca: Result<Ca, Problem>,
    now: UnixTime,
) -> Result<Secret, sds_core::Error> {
    let read = |ca: Ca| {
        let crl = match &ca.crl {
            Some(path) => Some(read(path)?),
            None => None,
        };
        Ok::<_, Problem>((read(&ca.ca)?, crl, ca))
    };
    let (bundle, crl, ca) = ca.and_then(read).map_err(|p| p.into_error(name))?;
    let ca_location = layout::location(&ca.ca);
    let crl_location = ca.crl.as_deref().map(layout::location);
    let crl = match (&crl_location, &crl) {
        (Some(location), Some(bytes)) => Some(Input::new(location, bytes)),
        _ => None,
    };
    let bundle = TrustBundle::from_pem(name, Input::new(&ca_location, &bundle), crl, now)?;
    Ok(bundle.into())
}

/// Reads one input file, refusing anything but a regular file of at most
/// [`MAX_INPUT_LEN`] bytes without reading more than that. The buffer is zeroized on drop
/// (it may hold a private key) and sized so that reading does not reallocate it.
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let unreadable = |source| Problem::Unreadable {
        path: path.to_owned(),
        source,
    };
    let too_large = |len| Problem::TooLarge {
        path: path.to_owned(),
        len,
    };
    // Checked before opening: opening a FIFO would block.
    let metadata = fs::metadata(path).map_err(unreadable)?;
    if !metadata.is_file() {
        let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(unreadable(source));
    }
    let limit = MAX_INPUT_LEN as u64;
    if metadata.len() > limit {
        return Err(too_large(metadata.len()));
    }
    let file = fs::File::open(path).map_err(unreadable)?;
    let capacity = usize::try_from(metadata.len()).unwrap_or(MAX_INPUT_LEN) + 64;
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    (&file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > MAX_INPUT_LEN {
        // It grew since we looked.
        let len = file
            .metadata()
            .map_or(limit + 1, |m| m.len().max(limit + 1));
        return Err(too_large(len));
    }
    Ok(bytes)
}
