//! Bearer tokens and what each may do (a tiny stand-in for RBAC on `secrets`).

use std::collections::BTreeSet;
use std::fmt;

/// A verb on `secrets`, as RBAC names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Verb {
    /// `get`.
    Get,
    /// `list`.
    List,
    /// `watch`.
    Watch,
    /// `create`.
    Create,
    /// `update`.
    Update,
    /// `patch`.
    Patch,
    /// `delete`.
    Delete,
}

/// What a token's user may do with Secrets.
///
/// Cluster-wide list and watch (`/api/v1/secrets`) need access to all namespaces, as with
/// RBAC, where only a ClusterRoleBinding grants them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    namespaces: Option<BTreeSet<String>>,
    verbs: BTreeSet<Verb>,
}

/// A user known to the server: the name its token authenticates as and its access.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) access: Access,
}

// === impl Verb ===

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 7] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
    ];

    /// The RBAC spelling, e.g. `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Access ===

impl Access {
    /// Every verb in every namespace, and cluster-wide list and watch.
    pub fn all() -> Self {
        Self {
            namespaces: None,
            verbs: Verb::ALL.into_iter().collect(),
        }
    }

    /// Every verb, but only in these namespaces.
    pub fn namespaces<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            namespaces: Some(namespaces.into_iter().map(Into::into).collect()),
            verbs: Verb::ALL.into_iter().collect(),
        }
    }

    /// Authenticates, but may do nothing with Secrets.
    pub fn none() -> Self {
        Self {
            namespaces: Some(BTreeSet::new()),
            verbs: BTreeSet::new(),
        }
    }

    /// Restricts this access to `verbs`.
    #[must_use]
    pub fn verbs(mut self, verbs: impl IntoIterator<Item = Verb>) -> Self {
        self.verbs = verbs.into_iter().collect();
        self
    }

    /// Restricts this access to `get`, `list` and `watch`.
    #[must_use]
    pub fn read_only(self) -> Self {
        self.verbs([Verb::Get, Verb::List, Verb::Watch])
    }

    /// Whether `verb` is allowed in `namespace` (`None`: at the cluster scope).
    pub fn allows(&self, verb: Verb, namespace: Option<&str>) -> bool {
        if !self.verbs.contains(&verb) {
            return false;
        }
        match (&self.namespaces, namespace) {
            (None, _) => true,
            (Some(set), Some(ns)) => set.contains(ns),
            (Some(_), None) => false,
        }
    }
}
