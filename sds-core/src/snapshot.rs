//! Immutable, shared, content-versioned snapshots of every servable secret.

use std::{collections::BTreeMap, sync::Arc};

use crate::{Error, ErrorKind, Secret, SecretName, Version};

/// What a [`SecretSource`](crate::SecretSource) sees at one moment: every secret whose input is
/// valid, and every name whose input is currently invalid, with the reason.
///
/// An update is always complete: a name absent from both maps no longer exists at the source.
#[derive(Debug, Default)]
pub struct Update {
    secrets: BTreeMap<SecretName, Arc<Secret>>,
    rejected: BTreeMap<SecretName, Error>,
}

// === impl Update ===

impl Update {
    /// An empty update (the source holds nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a valid secret under `name`, replacing anything given for that name before.
    pub fn insert(&mut self, name: SecretName, secret: impl Into<Secret>) {
        self.insert_shared(name, Arc::new(secret.into()));
    }

    /// Adds a valid secret that is already shared: the same parsed credential under several
    /// names (aliases), or one kept from an earlier update because its input did not change.
    pub fn insert_shared(&mut self, name: SecretName, secret: Arc<Secret>) {
        self.rejected.remove(&name);
        self.secrets.insert(name, secret);
    }

    /// Records that the input for `name` is invalid. The last good version of `name`, if any,
    /// stays served; a name never seen valid is not served at all.
    pub fn reject(&mut self, name: SecretName, error: Error) {
        self.secrets.remove(&name);
        self.rejected.insert(name, error);
    }

    /// The names rejected by this update, with the reason.
    pub fn rejected(&self) -> impl ExactSizeIterator<Item = (&SecretName, &Error)> {
        self.rejected.iter()
    }

    /// The earliest `notBefore` among the certificates this update rejects as not valid yet:
    /// the time at which a source should read them again, though nothing changed.
    pub fn recheck_at(&self) -> Option<rustls_pki_types::UnixTime> {
        self.rejected
            .values()
            .filter_map(|e| match e.kind() {
                Some(ErrorKind::NotYetValid { not_before, .. }) => Some(*not_before),
                _ => None,
            })
            .min()
    }

    /// Number of valid secrets in this update.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether this update holds no valid secret.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// An immutable set of validated secrets, keyed by name, with a version derived from content.
///
/// Cloning is cheap (two `Arc`s). Secrets whose content did not change between two snapshots
/// are the same `Arc`, so subscribers can tell "unchanged" without comparing bytes.
#[derive(Clone, Debug)]
pub struct Snapshot {
    version: Version,
    secrets: Arc<BTreeMap<SecretName, Arc<Secret>>>,
    rejected: Arc<BTreeMap<SecretName, Arc<Error>>>,
}

// === impl Snapshot ===

impl Snapshot {
    /// A snapshot with no secrets.
    pub fn empty() -> Self {
        Self::build(None, Update::new())
    }

    /// Builds the snapshot that follows `previous` once `update` is applied.
    ///
    /// - A valid secret whose version equals the previous one's keeps the previous `Arc`.
    /// - A rejected name keeps its previous secret (the last good version), if it had one.
    /// - Names absent from `update` are dropped.
    pub fn build(previous: Option<&Snapshot>, update: Update) -> Self {
        let prev = |name: &SecretName| previous.and_then(|p| p.secrets.get(name));
        let mut secrets = BTreeMap::new();
        for (name, secret) in update.secrets {
            let secret = match prev(&name) {
                Some(old) if old.version() == secret.version() => Arc::clone(old),
                _ => secret,
            };
            secrets.insert(name, secret);
        }
        let mut rejected = BTreeMap::new();
        for (name, error) in update.rejected {
            if let Some(old) = prev(&name) {
                secrets.insert(name.clone(), Arc::clone(old));
            }
            rejected.insert(name, Arc::new(error));
        }
        let version = Version::digest(|h| {
            for (name, secret) in &secrets {
                h.update(name.as_str().as_bytes());
                h.update(secret.version().as_bytes());
            }
        });
        Self {
            version,
            secrets: Arc::new(secrets),
            rejected: Arc::new(rejected),
        }
    }

    /// The version of the whole set: derived from every name and secret version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The secret served under `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Arc<Secret>> {
        self.secrets.get(name)
    }

    /// Every served secret, in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&SecretName, &Arc<Secret>)> {
        self.secrets.iter()
    }

    /// Number of served secrets.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no secret is served.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Names whose current input is invalid, with the reason. A rejected name may still be
    /// served from its last good version (see [`Snapshot::get`]).
    pub fn rejected(&self) -> impl ExactSizeIterator<Item = (&SecretName, &Arc<Error>)> {
        self.rejected.iter()
    }
}
