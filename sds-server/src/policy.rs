//! Who may have which secret: the [`Policy`] an [`SdsService`](crate::SdsService) asks for
//! every name a client subscribes to, and the built-in policies.
//!
//! A policy decides for a [`Peer`] (what the transport proves about the client: Unix-socket
//! credentials, a verified client certificate) and the name of the credential served (for a
//! requested `sds://NAME`, the credential `NAME`). The `Node` a client sends is never part of
//! the decision. The service then:
//!
//! - does not send a denied name, and keeps serving the other names of the same stream (as
//!   istiod does); the denial is logged once per stream and name, with the peer and the
//!   reason, and counted in [`Stats::denied`](crate::Stats::denied);
//! - grants `<name>-cacert` whenever it grants `<name>` (the CA that goes with a credential);
//! - answers a `FetchSecrets` that names a denied secret with `PERMISSION_DENIED`, naming it;
//! - asks again, for every open stream, when [`Policy::changed`] resolves (a rules file was
//!   edited, a cache expired): a name newly denied gets no further pushes on that stream, a
//!   name newly allowed is sent.
//!
//! [`RulesFile`] grants secrets to peers by glob, from a YAML file reloaded when it changes.
//!
//! ```
//! use sds_server::{SdsService, policy::{self, Policy as _, UnixPeers}};
//!
//! # fn demo(reader: sds_core::Reader) {
//! // The server's own user, root, and the group the proxies run as.
//! let policy = policy::any_of([
//!     UnixPeers::same_user().boxed(),
//!     UnixPeers::new().gid(1337).boxed(),
//! ]);
//! let sds = SdsService::builder(reader).policy(policy).build();
//! # let _ = sds; }
//! ```

use std::{borrow::Cow, collections::BTreeSet, fmt, future, sync::Arc};

use futures_util::future::{BoxFuture, FutureExt};
use sds_core::SecretName;

pub use crate::error::{RulesError, RulesProblem};
pub use crate::peer::{CertificateIdentity, Identity, Peer, UnixCredentials};
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub use rules::ParsedRules;
pub use rules::{RulesDriver, RulesFile};

mod rules;

/// Decides whether a peer may have a secret.
///
/// Implement it to plug in your own authorization (an external service, a database); compose
/// built-ins with [`any_of`]. Decisions are asked for when a client subscribes to a name, not
/// per push, and again for every subscribed name when [`Policy::changed`] resolves.
pub trait Policy: Send + Sync + 'static {
    /// Whether `peer` may have the secret `name`, and if not, why (the reason is logged with
    /// the peer, and sent to a `FetchSecrets` client).
    fn decide<'a>(&'a self, peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision>;

    /// Resolves when decisions may have changed since this call: then every open stream asks
    /// again for the names it holds. The default never resolves (decisions never change).
    fn changed(&self) -> BoxFuture<'static, ()> {
        future::pending().boxed()
    }

    /// This policy as a shared trait object, e.g. for [`any_of`].
    fn boxed(self) -> Arc<dyn Policy>
    where
        Self: Sized,
    {
        Arc::new(self)
    }
}

impl<P: Policy + ?Sized> Policy for Arc<P> {
    fn decide<'a>(&'a self, peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        (**self).decide(peer, name)
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        (**self).changed()
    }
}

/// A policy's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The peer may have the secret.
    Allow,
    /// The peer may have what it named, served from this secret instead: for names whose
    /// meaning depends on the peer, e.g. Istio's bare `httpbin` asked for by a gateway of
    /// namespace `apps`, which is `kubernetes://apps/httpbin`. The response still names the
    /// resource as the client asked for it.
    AllowAs(SecretName),
    /// The peer may not have the secret, for this reason (e.g. "uid 1000 is not allowed").
    Deny(Cow<'static, str>),
}

// === impl Decision ===

impl Decision {
    /// A denial for `reason`.
    pub fn deny(reason: impl Into<Cow<'static, str>>) -> Self {
        Decision::Deny(reason.into())
    }

    /// Whether this allows the secret ([`Decision::Allow`] or [`Decision::AllowAs`]).
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow | Decision::AllowAs(_))
    }
}

/// Every client that reaches the server gets every secret it names.
///
/// Only for a socket nobody else can reach (a Unix socket whose permissions admit only the
/// proxy, in a pod of its own) or for tests: any local process that can connect to a TCP port
/// reads every private key.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAnyPeer;

impl Policy for AllowAnyPeer {
    fn decide<'a>(&'a self, _peer: &'a Peer, _name: &'a SecretName) -> BoxFuture<'a, Decision> {
        future::ready(Decision::Allow).boxed()
    }
}

/// Unix-socket peers by user or group id: a peer whose uid, or gid, is listed gets every
/// secret; any other peer, and every peer not on a Unix socket, gets none.
///
/// [`UnixPeers::same_user`] (the server's own uid, and root) is what
/// [`SdsService::new`](crate::SdsService::new) uses when no policy is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixPeers {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

// === impl UnixPeers ===

impl UnixPeers {
    /// A policy that allows no one yet: add users and groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// The user the server runs as, and root (uid 0), who can read the server's memory anyway.
    pub fn same_user() -> Self {
        Self::new().uid(0).uid(rustix::process::getuid().as_raw())
    }

    /// Also allows peers whose effective user id is `uid`.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uids.insert(uid);
        self
    }

    /// Also allows peers whose effective group id is `gid`.
    pub fn gid(mut self, gid: u32) -> Self {
        self.gids.insert(gid);
        self
    }

    fn decision(&self, peer: &Peer) -> Decision {
        let Some(unix) = peer.unix_credentials() else {
            return Decision::deny(
                "the policy allows Unix-socket peers by uid and gid only, \
                 and this peer is not on a Unix socket",
            );
        };
        if self.uids.contains(&unix.uid) || self.gids.contains(&unix.gid) {
            return Decision::Allow;
        }
        Decision::deny(format!(
            "uid {} and gid {} are not allowed (allowed: {})",
            unix.uid, unix.gid, self
        ))
    }
}

/// `uid 0, 1000; gid 1337`, or `nobody`.
impl fmt::Display for UnixPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ids: &BTreeSet<u32>| {
            ids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.uids.is_empty(), self.gids.is_empty()) {
            (true, true) => f.write_str("nobody"),
            (false, true) => write!(f, "uid {}", list(&self.uids)),
            (true, false) => write!(f, "gid {}", list(&self.gids)),
            (false, false) => write!(f, "uid {}; gid {}", list(&self.uids), list(&self.gids)),
        }
    }
}

impl Policy for UnixPeers {
    fn decide<'a>(&'a self, peer: &'a Peer, _name: &'a SecretName) -> BoxFuture<'a, Decision> {
        future::ready(self.decision(peer)).boxed()
    }
}

/// The union of `policies`: a peer may have a secret if any of them allows it. Denied with
/// every policy's reason otherwise; changes when any of them changes.
pub fn any_of(policies: impl IntoIterator<Item = Arc<dyn Policy>>) -> AnyOf {
    AnyOf {
        policies: policies.into_iter().collect(),
    }
}

/// The union of policies: see [`any_of`].
#[derive(Clone)]
pub struct AnyOf {
    policies: Vec<Arc<dyn Policy>>,
}

impl fmt::Debug for AnyOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyOf")
            .field("policies", &self.policies.len())
            .finish()
    }
}

impl Policy for AnyOf {
    fn decide<'a>(&'a self, peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        async move {
            let mut reasons = Vec::new();
            for policy in &self.policies {
                match policy.decide(peer, name).await {
                    Decision::Deny(reason) => reasons.push(reason),
                    allowed => return allowed,
                }
            }
            if reasons.is_empty() {
                return Decision::deny("no policy is configured");
            }
            Decision::deny(reasons.join("; "))
        }
        .boxed()
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        if self.policies.is_empty() {
            return future::pending().boxed();
        }
        let changes = self.policies.iter().map(|p| p.changed());
        futures_util::future::select_all(changes)
            .map(|_| ())
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    fn decide(policy: &dyn Policy, peer: &Peer) -> Decision {
        let name = SecretName::new("httpbin").expect("valid");
        policy
            .decide(peer, &name)
            .now_or_never()
            .expect("decides at once")
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::unix(UnixCredentials {
            uid,
            gid,
            pid: None,
        })
    }

    #[test]
    fn unix_peers_by_uid_and_gid() {
        let policy = UnixPeers::new().uid(1000).gid(1337);
        assert_eq!(decide(&policy, &unix(1000, 1)), Decision::Allow);
        assert_eq!(decide(&policy, &unix(7, 1337)), Decision::Allow);
        assert_eq!(
            decide(&policy, &unix(7, 8)),
            Decision::deny("uid 7 and gid 8 are not allowed (allowed: uid 1000; gid 1337)")
        );
        let tcp = Peer::tcp("127.0.0.1:1".parse().expect("an address"));
        assert!(!decide(&policy, &tcp).is_allowed());
        assert_eq!(UnixPeers::new().to_string(), "nobody");
    }

    #[test]
    fn same_user_is_the_server_and_root() {
        let me = rustix::process::getuid().as_raw();
        let policy = UnixPeers::same_user();
        assert!(decide(&policy, &unix(me, 12345)).is_allowed());
        assert!(decide(&policy, &unix(0, 0)).is_allowed());
        let other = if me == 65534 { 65533 } else { 65534 };
        assert!(!decide(&policy, &unix(other, 65534)).is_allowed());
    }

    #[test]
    fn any_of_is_the_union() {
        let policy = any_of([
            UnixPeers::new().uid(1).boxed(),
            UnixPeers::new().gid(2).boxed(),
        ]);
        assert!(decide(&policy, &unix(1, 9)).is_allowed());
        assert!(decide(&policy, &unix(9, 2)).is_allowed());
        let Decision::Deny(reason) = decide(&policy, &unix(9, 9)) else {
            panic!("denied");
        };
        assert!(reason.contains("(allowed: uid 1)") && reason.contains("(allowed: gid 2)"));
        assert!(!decide(&any_of([]), &unix(0, 0)).is_allowed());
        assert!(decide(&AllowAnyPeer, &Peer::unknown()).is_allowed());
    }
}
