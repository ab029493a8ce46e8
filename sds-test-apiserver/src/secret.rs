//! The Secret model the server stores, independent of any wire format.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// The default `type` of a Secret.
pub const OPAQUE: &str = "Opaque";

/// A `core/v1` Secret as the server stores it.
///
/// Build one with [`Secret::new`] and the `with_*` methods to seed the server from Rust
/// ([`ApiServer::create`](crate::ApiServer::create)). The fields under "set by the server"
/// are ignored on create and filled in by the server; on update a non-zero
/// [`resource_version`](Self::resource_version) is a precondition, as over HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name` (empty together with a non-empty `generate_name` on create).
    pub name: String,
    /// `metadata.generateName`.
    pub generate_name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.ownerReferences`.
    pub owner_references: Vec<OwnerReference>,
    /// `metadata.finalizers`: while non-empty, a delete only sets
    /// [`deletion_timestamp`](Self::deletion_timestamp).
    pub finalizers: Vec<String>,
    /// `data`, already base64-decoded.
    pub data: BTreeMap<String, Vec<u8>>,
    /// `type`; empty means [`OPAQUE`].
    pub secret_type: String,
    /// `immutable`.
    pub immutable: Option<bool>,
    /// Set by the server: `metadata.uid`.
    pub uid: String,
    /// Set by the server: `metadata.resourceVersion` (the global counter at the last write).
    pub resource_version: u64,
    /// Set by the server: `metadata.creationTimestamp`.
    pub creation_timestamp: Option<SystemTime>,
    /// Set by the server: `metadata.deletionTimestamp`, while finalizers hold a deleted Secret.
    pub deletion_timestamp: Option<SystemTime>,
}

/// An entry of `metadata.ownerReferences`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OwnerReference {
    /// `apiVersion` of the owner.
    pub api_version: String,
    /// `kind` of the owner.
    pub kind: String,
    /// `name` of the owner.
    pub name: String,
    /// `uid` of the owner.
    pub uid: String,
    /// `controller`.
    pub controller: Option<bool>,
    /// `blockOwnerDeletion`.
    pub block_owner_deletion: Option<bool>,
}

// === impl Secret ===

impl Secret {
    /// An empty `Opaque` Secret called `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            generate_name: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            owner_references: Vec::new(),
            finalizers: Vec::new(),
            data: BTreeMap::new(),
            secret_type: OPAQUE.to_owned(),
            immutable: None,
            uid: String::new(),
            resource_version: 0,
            creation_timestamp: None,
            deletion_timestamp: None,
        }
    }

    /// Sets `type` (for example `kubernetes.io/tls`).
    #[must_use]
    pub fn with_type(mut self, secret_type: impl Into<String>) -> Self {
        self.secret_type = secret_type.into();
        self
    }

    /// Adds (or replaces) the `data` entry `key`.
    #[must_use]
    pub fn with_data(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) the label `key`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) the annotation `key`.
    #[must_use]
    pub fn with_annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Sets `metadata.resourceVersion`, a precondition for
    /// [`ApiServer::update`](crate::ApiServer::update).
    #[must_use]
    pub fn with_resource_version(mut self, resource_version: u64) -> Self {
        self.resource_version = resource_version;
        self
    }

    /// `type`, with the empty string read as [`OPAQUE`].
    pub fn effective_type(&self) -> &str {
        if self.secret_type.is_empty() {
            OPAQUE
        } else {
            &self.secret_type
        }
    }
}
