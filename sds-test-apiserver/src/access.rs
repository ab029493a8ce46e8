//! Bearer tokens and what each may do (a tiny stand-in for RBAC on `secrets`, on
//! `subjectaccessreviews` and on impersonation), and who a request is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::Error;

/// The user name of requests without a token when
/// [`Builder::anonymous`](crate::Builder::anonymous) allows them.
pub const ANONYMOUS: &str = "system:anonymous";

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

/// What a token's user may do: with Secrets, and with the cluster-scoped
/// `subjectaccessreviews` and impersonation.
///
/// Cluster-wide list and watch (`/api/v1/secrets`) need access to all namespaces, as with
/// RBAC, where only a ClusterRoleBinding grants them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    namespaces: Option<BTreeSet<String>>,
    verbs: BTreeSet<Verb>,
    access_reviews: bool,
    impersonate: bool,
}

/// A user known to the server: the name its token authenticates as and its access.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) access: Access,
}

/// Who a request is, as the authorizer sees it (`user.Info`): the token's user, the
/// anonymous user, or the user it impersonates.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) groups: Vec<String>,
    pub(crate) extra: BTreeMap<String, Vec<String>>,
    pub(crate) access: Access,
}

/// What a request's `Impersonate-*` headers ask for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Impersonation {
    /// `Impersonate-User`.
    pub(crate) user: Option<String>,
    /// `Impersonate-Uid`.
    pub(crate) uid: Option<String>,
    /// `Impersonate-Group`, repeated.
    pub(crate) groups: Vec<String>,
    /// `Impersonate-Extra-{key}`, repeated.
    pub(crate) extra: BTreeMap<String, Vec<String>>,
}

/// The group of every authenticated user.
const AUTHENTICATED: &str = "system:authenticated";
/// The group of the anonymous user.
const UNAUTHENTICATED: &str = "system:unauthenticated";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

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
    /// Every verb on Secrets in every namespace, cluster-wide list and watch, creating
    /// SubjectAccessReviews and impersonating (what `cluster-admin` may do with them).
    pub fn all() -> Self {
        Self {
            namespaces: None,
            verbs: Verb::ALL.into_iter().collect(),
            access_reviews: true,
            impersonate: true,
        }
    }

    /// Every verb on Secrets, but only in these namespaces; no SubjectAccessReviews and no
    /// impersonation (both are cluster-scoped).
    pub fn namespaces<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            namespaces: Some(namespaces.into_iter().map(Into::into).collect()),
            verbs: Verb::ALL.into_iter().collect(),
            access_reviews: false,
            impersonate: false,
        }
    }

    /// Authenticates, but may do nothing.
    pub fn none() -> Self {
        Self {
            namespaces: Some(BTreeSet::new()),
            verbs: BTreeSet::new(),
            access_reviews: false,
            impersonate: false,
        }
    }

    /// Restricts this access to `verbs` on Secrets.
    #[must_use]
    pub fn verbs(mut self, verbs: impl IntoIterator<Item = Verb>) -> Self {
        self.verbs = verbs.into_iter().collect();
        self
    }

    /// Restricts this access to `get`, `list` and `watch` on Secrets.
    #[must_use]
    pub fn read_only(self) -> Self {
        self.verbs([Verb::Get, Verb::List, Verb::Watch])
    }

    /// Grants (or takes away) `create` on `subjectaccessreviews.authorization.k8s.io`, which
    /// a server that delegates authorization to the API server needs (RBAC grants it with the
    /// `system:auth-delegator` ClusterRole). [`Access::all`] has it; Secret verbs and
    /// namespaces do not affect it. SelfSubjectAccessReviews need no grant.
    #[must_use]
    pub fn access_reviews(mut self, allowed: bool) -> Self {
        self.access_reviews = allowed;
        self
    }

    /// Grants (or takes away) `impersonate` on users, groups, service accounts and user
    /// extras: the `Impersonate-User` and `Impersonate-Group` headers that `kubectl --as`
    /// sends. [`Access::all`] has it.
    #[must_use]
    pub fn impersonate(mut self, allowed: bool) -> Self {
        self.impersonate = allowed;
        self
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

    /// Whether the user may create SubjectAccessReviews; see [`Access::access_reviews`].
    pub fn allows_access_reviews(&self) -> bool {
        self.access_reviews
    }

    /// Whether the user may impersonate; see [`Access::impersonate`].
    pub fn allows_impersonation(&self) -> bool {
        self.impersonate
    }
}

// === impl Identity ===

impl Identity {
    /// A token's user: its name, the groups the real server gives it
    /// (`system:serviceaccounts` and `system:serviceaccounts:NS` for a service account) and
    /// `system:authenticated`.
    pub(crate) fn authenticated(user: User) -> Self {
        let mut groups = service_account_groups(&user.name);
        groups.push(AUTHENTICATED.to_owned());
        Self {
            name: user.name,
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
            access: user.access,
        }
    }

    /// The anonymous user, in `system:unauthenticated`.
    pub(crate) fn anonymous(user: User) -> Self {
        Self {
            name: user.name,
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.to_owned()],
            extra: BTreeMap::new(),
            access: user.access,
        }
    }

    /// The user `asked` impersonates, as the real server's impersonation filter makes it:
    /// the groups asked for, or a service account's groups when none are; and
    /// `system:authenticated` (`system:unauthenticated` for the anonymous user) unless either
    /// is asked for. Its access is `access_of` its name. Needs
    /// [`Access::impersonate`]; without an `Impersonate-User`, this identity is kept.
    pub(crate) fn impersonate(
        self,
        asked: Impersonation,
        access_of: impl FnOnce(&str) -> Access,
    ) -> Result<Identity, Error> {
        let Some(name) = asked.user else {
            if asked.groups.is_empty() && asked.extra.is_empty() && asked.uid.is_none() {
                return Ok(self);
            }
            return Err(Error::bad_request(
                "requested impersonation of groups, extras or a uid without impersonating a user",
            ));
        };
        if !self.access.allows_impersonation() {
            let (resource, namespace, object) = match service_account(&name) {
                Some((ns, sa)) => ("serviceaccounts", Some(ns.to_owned()), sa.to_owned()),
                None => ("users", None, name.clone()),
            };
            return Err(Error::Forbidden {
                user: self.name,
                verb: "impersonate",
                group: "",
                resource,
                namespace,
                name: Some(object),
            });
        }
        let mut groups = if asked.groups.is_empty() {
            service_account_groups(&name)
        } else {
            asked.groups
        };
        let implied = if name == ANONYMOUS {
            UNAUTHENTICATED
        } else {
            AUTHENTICATED
        };
        if !groups.iter().any(|g| g == implied || g == UNAUTHENTICATED) {
            groups.push(implied.to_owned());
        }
        Ok(Identity {
            access: access_of(&name),
            name,
            uid: asked.uid.unwrap_or_default(),
            groups,
            extra: asked.extra,
        })
    }
}

/// The groups the real server puts a service account's user in (none for other users).
fn service_account_groups(user: &str) -> Vec<String> {
    match service_account(user) {
        Some((namespace, _)) => vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
        ],
        None => Vec::new(),
    }
}

/// `system:serviceaccount:NS:NAME` as `(NS, NAME)`.
fn service_account(user: &str) -> Option<(&str, &str)> {
    user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Identity {
        Identity::authenticated(User {
            name: "admin".to_owned(),
            access: Access::all(),
        })
    }

    fn asked(user: &str, groups: &[&str]) -> Impersonation {
        Impersonation {
            user: Some(user.to_owned()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Impersonation::default()
        }
    }

    #[test]
    fn impersonated_groups_are_those_of_the_real_server() {
        let groups = |user: &str, asked_groups: &[&str]| {
            admin()
                .impersonate(asked(user, asked_groups), |_| Access::none())
                .expect("allowed")
                .groups
        };
        assert_eq!(
            groups("system:serviceaccount:ns:sa", &[]),
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                AUTHENTICATED
            ]
        );
        assert_eq!(
            groups("system:serviceaccount:ns:sa", &["g"]),
            ["g", AUTHENTICATED]
        );
        assert_eq!(groups("alice", &[UNAUTHENTICATED]), [UNAUTHENTICATED]);
        assert_eq!(groups(ANONYMOUS, &[]), [UNAUTHENTICATED]);
        let none = admin()
            .impersonate(Impersonation::default(), |_| Access::none())
            .expect("kept");
        assert_eq!(none.name, "admin");
    }

    #[test]
    fn impersonation_needs_the_grant() {
        let reader = Identity::authenticated(User {
            name: "reader".to_owned(),
            access: Access::all().impersonate(false),
        });
        let err = reader
            .clone()
            .impersonate(asked("alice", &[]), |_| Access::none())
            .expect_err("forbidden");
        assert_eq!(
            err.to_string(),
            r#"users "alice" is forbidden: User "reader" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        let groups_only = Impersonation {
            groups: vec!["g".to_owned()],
            ..Impersonation::default()
        };
        let err = reader
            .impersonate(groups_only, |_| Access::none())
            .expect_err("no user");
        assert_eq!(err.code(), 400);
    }
}
