//! One credential directory: read, parsed and validated, or reused as it was when nothing in it
//! changed.
//!
//! A reload first looks at the directory and its known file names (a `stat` each, following
//! symlinks). When the directory, every file's identity, size and times, and what each lookup
//! saw are as at the last read, the last read's secrets are reused without opening a file.
//! Otherwise the files are read; when the inputs of a secret (their locations and bytes) have
//! the digest they had, its last parse is reused. A secret rejected for the time (not valid
//! yet, expired) is parsed again at every reload, and a stamp too recent to tell a later write
//! in the same tick apart is confirmed by reading again at the next reload.

use std::{
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use ring::digest;
use sds_core::{
    CertifiedKey, Input, MAX_INPUT_LEN, Secret, SecretName, TrustBundle, UnixTime,
    layout::{Key, Served},
};
use zeroize::Zeroizing;

use crate::{
    layout::{self, Ca, Layout, Pair, Probed, Problem, Seen},
    stamp::{FileId, Stamp},
};

/// kubelet's symlink to the current payload of a Secret volume.
const KUBELET_DATA: &str = "..data";

/// How many times a credential is read when kubelet keeps swapping `..data` under the reader.
const MAX_ATTEMPTS: usize = 5;

/// How many symlinks are followed from a file to find the directories its name goes through
/// (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// A secret read from a credential directory, or why it is rejected.
pub(crate) type Part = (SecretName, Result<Arc<Secret>, sds_core::Error>);

/// What one credential directory gave at its last read, and what it looked like then.
#[derive(Debug)]
pub(crate) struct Credential {
    /// The directory, following symlinks, or why it could not be looked at.
    dir: Result<Stamp, io::ErrorKind>,
    /// What looking up each known file name saw.
    seen: Seen,
    /// Whether a stamp was too recent to be trusted: the next reload reads the files again.
    recent: bool,
    /// The certificate chain and key, with the digest of what they were parsed from.
    pair: Option<Parsed>,
    /// The CA bundle and CRL, likewise.
    ca: Option<Parsed>,
    /// The secrets this directory gives: `<name>` and `<name>-cacert`, each if present.
    parts: Vec<Part>,
    /// Where changes to this credential happen: the directory, then each directory that a
    /// symlink among its files leads into (kubelet's timestamped payload directory).
    watch: Vec<(PathBuf, FileId)>,
}

/// One secret of a credential as parsed, with the digest of its inputs (their locations and
/// bytes); no digest when the inputs could not be read.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    digest: Option<[u8; 32]>,
    result: Result<Arc<Secret>, sds_core::Error>,
}

/// What a reload cost: how many credentials were reused as they were, read, and parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Credential directories reused without reading a file.
    pub(crate) reused: usize,
    /// Credential directories whose files were read.
    pub(crate) read: usize,
    /// Secrets parsed and validated.
    pub(crate) parsed: usize,
    /// Credential directories that give other secrets (or rejections) than before.
    pub(crate) changed: usize,
}

// === impl Credential ===

impl Credential {
    /// The credential `name` in `dir` at `now`: `previous` as it is if the directory (whose
    /// metadata, following symlinks, is `metadata`) and its files look as they did then, read
    /// again otherwise. `looked_at` is when this reload began (file times after it are
    /// "recent"). Blocking.
    pub(crate) fn read(
        name: &SecretName,
        dir: &Path,
        metadata: io::Result<fs::Metadata>,
        now: UnixTime,
        looked_at: SystemTime,
        previous: Option<Credential>,
        work: &mut Work,
    ) -> Credential {
        let metadata = match metadata {
            Ok(metadata) => metadata,
            Err(source) => {
                return Self::unreadable(name, dir, source, previous, work);
            }
        };
        let stamp = Stamp::of(&metadata);
        let (_, seen) = Layout::probe(dir);
        let previous = match previous {
            Some(previous) if previous.is_current(stamp, &seen) => {
                work.reused += 1;
                return previous;
            }
            previous => previous,
        };

        work.read += 1;
        let (old_pair, old_ca) = match &previous {
            Some(previous) => (previous.pair.as_ref(), previous.ca.as_ref()),
            None => (None, None),
        };
        let (present, seen, pair, ca) = consistently(&[dir], || {
            let (Layout { pair, ca, present }, seen) = Layout::probe(dir);
            let pair = pair.map(|pair| pair_part(name, pair, now, old_pair, work));
            let ca = ca.map(|ca| ca_part(&name.cacert(), ca, now, old_ca, work));
            (present, seen, pair, ca)
        });

        let parts = parts(name, pair.as_ref(), ca.as_ref());
        let recent = stamp.is_recent(looked_at)
            || seen
                .iter()
                .any(|s| matches!(s, Probed::Present(s) if s.is_recent(looked_at)));
        let mut watch = vec![(dir.to_owned(), stamp.id())];
        for file in &present {
            link_dirs(file, &mut watch);
        }
        if previous.is_none_or(|p| !same_parts(&p.parts, &parts)) {
            work.changed += 1;
        }
        Credential {
            dir: Ok(stamp),
            seen,
            recent,
            pair,
            ca,
            parts,
            watch,
        }
    }

    /// A credential whose directory cannot be looked at (`stat` fails): rejected for that.
    fn unreadable(
        name: &SecretName,
        dir: &Path,
        source: io::Error,
        previous: Option<Credential>,
        work: &mut Work,
    ) -> Credential {
        let kind = source.kind();
        if let Some(previous) = previous.filter(|p| p.dir == Err(kind)) {
            work.reused += 1;
            return previous;
        }
        work.changed += 1;
        let problem = Problem::Unreadable {
            path: dir.to_owned(),
            source,
        };
        Credential {
            dir: Err(kind),
            seen: [Probed::Absent; Key::ALL.len()],
            recent: false,
            pair: None,
            ca: None,
            parts: vec![(name.clone(), Err(problem.into_error(name)))],
            watch: Vec::new(),
        }
    }

    /// The secrets this directory gives, and the rejections.
    pub(crate) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The directories to watch for changes to this credential, with what each is.
    pub(crate) fn watch(&self) -> &[(PathBuf, FileId)] {
        &self.watch
    }

    /// Whether every directory of this credential is watched (`watched` says whether one is):
    /// then a change to it is reported.
    pub(crate) fn is_watched(&self, watched: &dyn Fn(FileId) -> bool) -> bool {
        !self.watch.is_empty() && self.watch.iter().all(|(_, id)| watched(*id))
    }

    /// Whether this read still holds for a directory that looks like `dir` and `seen` now.
    fn is_current(&self, dir: Stamp, seen: &Seen) -> bool {
        self.dir == Ok(dir) && self.seen == *seen && !self.recent && !self.depends_on_time()
    }

    /// Whether a secret is rejected for the time: it must be validated again at every reload.
    fn depends_on_time(&self) -> bool {
        self.parts
            .iter()
            .any(|(_, result)| result.as_ref().is_err_and(sds_core::Error::depends_on_time))
    }
}

/// The secrets of one credential directory: `<name>` and `<name>-cacert`, each if present.
fn parts(name: &SecretName, pair: Option<&Parsed>, ca: Option<&Parsed>) -> Vec<Part> {
    let result = |parsed: &Parsed| parsed.result.clone();
    Served::new(pair.map(result), ca.map(result))
        .named(name)
        .collect()
}

/// Whether two reads give the same secrets and the same rejections.
fn same_parts(a: &[Part], b: &[Part]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((n1, r1), (n2, r2))| n1 == n2 && same_result(r1, r2))
}

/// Whether two reads of one secret give the same secret, or the same rejection.
pub(crate) fn same_result(
    a: &Result<Arc<Secret>, sds_core::Error>,
    b: &Result<Arc<Secret>, sds_core::Error>,
) -> bool {
    match (a, b) {
        (Ok(s1), Ok(s2)) => Arc::ptr_eq(s1, s2) || s1.version() == s2.version(),
        (Err(e1), Err(e2)) => e1.same_problem(e2),
        _ => false,
    }
}

/// Runs `read` again while kubelet's `..data` symlink in one of `dirs` changes under it (at
/// most [`MAX_ATTEMPTS`] times), so that the files of a Secret volume read together come from
/// one version of the Secret: a chain and its key, not the chain of one and the key of the
/// next. Blocking.
pub(crate) fn consistently<T>(dirs: &[&Path], mut read: impl FnMut() -> T) -> T {
    let data = || {
        dirs.iter()
            .map(|dir| fs::read_link(dir.join(KUBELET_DATA)).ok())
            .collect::<Vec<_>>()
    };
    let mut attempt = 1;
    loop {
        let before = data();
        let result = read();
        if before == data() || attempt == MAX_ATTEMPTS {
            return result;
        }
        let dir = dirs
            .first()
            .map(|dir| layout::shown(dir))
            .unwrap_or_default();
        tracing::debug!(%dir, attempt, "..data changed while reading; reading again");
        attempt += 1;
    }
}

/// Adds to `out` the directory of every symlink on the way from `file` to what it names (its
/// canonical path), unless a directory already there is the same one.
pub(crate) fn link_dirs(file: &Path, out: &mut Vec<(PathBuf, FileId)>) {
    let mut path = file.to_owned();
    for _ in 0..MAX_LINKS {
        let Ok(target) = fs::read_link(&path) else {
            return;
        };
        let Some(next) = path.parent().map(|parent| parent.join(target)) else {
            return;
        };
        if let Some(dir) = next.parent()
            && let Ok(dir) = fs::canonicalize(dir)
            && let Ok(metadata) = fs::metadata(&dir)
        {
            let id = FileId::of(&metadata);
            if !out.iter().any(|(_, known)| *known == id) {
                out.push((dir, id));
            }
        }
        path = next;
    }
}

// === parsing, with reuse by digest ===

/// The certificate chain and key of `name`, parsed unless `previous` was parsed from the same
/// inputs.
pub(crate) fn pair_part(
    name: &SecretName,
    pair: Result<Pair, Problem>,
    now: UnixTime,
    previous: Option<&Parsed>,
    work: &mut Work,
) -> Parsed {
    let read = |pair: Pair| {
        let staple = match &pair.ocsp_staple {
            Some(path) => Some((layout::location(path), read(path)?)),
            None => None,
        };
        Ok::<_, Problem>((read(&pair.cert)?, read(&pair.key)?, staple, pair))
    };
    let (chain, key, staple, pair) = match pair.and_then(read) {
        Ok(inputs) => inputs,
        Err(problem) => return Parsed::problem(problem.into_error(name)),
    };
    let (chain_location, key_location) =
        (layout::location(&pair.cert), layout::location(&pair.key));
    let mut inputs = vec![
        (chain_location.as_str(), &chain[..]),
        (key_location.as_str(), &key[..]),
    ];
    inputs.extend(
        staple
            .as_ref()
            .map(|(location, bytes)| (location.as_str(), &bytes[..])),
    );
    let digest = digest(b"pair", &inputs);
    if let Some(previous) = Parsed::reusable(previous, digest) {
        return previous;
    }
    work.parsed += 1;
    let result = CertifiedKey::from_pem(
        name,
        Input::new(&chain_location, &chain),
        Input::new(&key_location, &key),
        now,
    )
    .and_then(|certified| match &staple {
        Some((location, bytes)) => certified.with_ocsp_staple(name, Input::new(location, bytes)),
        None => Ok(certified),
    });
    Parsed {
        digest: Some(digest),
        result: result.map(|certified| Arc::new(certified.into())),
    }
}

/// The CA bundle served as `cacert`, parsed unless `previous` was parsed from the same inputs.
pub(crate) fn ca_part(
    cacert: &SecretName,
    ca: Result<Ca, Problem>,
    now: UnixTime,
    previous: Option<&Parsed>,
    work: &mut Work,
) -> Parsed {
    let read = |ca: Ca| {
        let crl = match &ca.crl {
            Some(path) => Some((layout::location(path), read(path)?)),
            None => None,
        };
        Ok::<_, Problem>((read(&ca.ca)?, crl, ca))
    };
    let (bundle, crl, ca) = match ca.and_then(read) {
        Ok(inputs) => inputs,
        Err(problem) => return Parsed::problem(problem.into_error(cacert)),
    };
    let ca_location = layout::location(&ca.ca);
    let mut inputs = vec![(ca_location.as_str(), &bundle[..])];
    inputs.extend(
        crl.as_ref()
            .map(|(location, bytes)| (location.as_str(), &bytes[..])),
    );
    let digest = digest(b"ca", &inputs);
    if let Some(previous) = Parsed::reusable(previous, digest) {
        return previous;
    }
    work.parsed += 1;
    let crl = crl
        .as_ref()
        .map(|(location, bytes)| Input::new(location, bytes));
    let result = TrustBundle::from_pem(cacert, Input::new(&ca_location, &bundle), crl, now);
    Parsed {
        digest: Some(digest),
        result: result.map(|bundle| Arc::new(bundle.into())),
    }
}

/// The digest of a secret's inputs: a domain tag, then each location and its bytes, each
/// prefixed with its length.
fn digest(tag: &[u8], inputs: &[(&str, &[u8])]) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut field = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    };
    field(tag);
    for (location, bytes) in inputs {
        field(location.as_bytes());
        field(bytes);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

// === impl Parsed ===

impl Parsed {
    /// The secret, or why it is rejected.
    pub(crate) fn result(&self) -> &Result<Arc<Secret>, sds_core::Error> {
        &self.result
    }

    fn problem(error: sds_core::Error) -> Self {
        Self {
            digest: None,
            result: Err(error),
        }
    }

    /// `previous`, if it was parsed from inputs of this digest and its outcome does not depend
    /// on the time.
    fn reusable(previous: Option<&Parsed>, digest: [u8; 32]) -> Option<Parsed> {
        previous
            .filter(|p| {
                p.digest == Some(digest)
                    && !p
                        .result
                        .as_ref()
                        .is_err_and(sds_core::Error::depends_on_time)
            })
            .cloned()
    }
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
