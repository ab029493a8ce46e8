//! Istio's authorization of gateways, as an `sds-server` [`Policy`]: [`GatewayPolicy`].
//!
//! istiod serves a gateway the credentials of its own namespace only, and only if the
//! gateway's service account may read them (`pilot/pkg/xds/sds.go`,
//! `filterAuthorizedResources`; `pilot/pkg/credentials/kube/secrets.go`, `Authorize`). This
//! is the same rule, for the names [`K8sSource`](crate::K8sSource) serves:
//!
//! 1. **Who.** The peer is the Kubernetes service account named by the SPIFFE ID of its
//!    verified client certificate, `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`:
//!    the first URI SAN of that shape (exactly five segments, the namespace a DNS label, the
//!    service account a DNS subdomain). A peer without one (no client certificate, a
//!    Unix-socket peer, a SPIFFE ID of another shape) gets nothing. Any trust domain is
//!    accepted unless [`GatewayPolicy::trust_domain`] names one.
//! 2. **Which Secret.** `kubernetes://NS/NAME` is the Secret `NS/NAME`; `NAME` and
//!    `kubernetes://NAME` are the Secret `NAME` of the *peer's* namespace (as istiod reads
//!    them; not the source's default namespace) and are served from `kubernetes://NS/NAME`
//!    ([`Decision::AllowAs`]; the response still names what the gateway asked for). Names of
//!    another scheme (`kubernetes-gateway://`, `file://`, …) are denied: `sds://` is removed by
//!    the service before the policy is asked.
//! 3. **Own namespace only.** A Secret of another namespace is denied, without asking the
//!    API server (istiod allows those only through a Gateway API ReferenceGrant, which this
//!    policy does not read).
//! 4. **CA certificates are public.** `…-cacert` names of the peer's namespace are allowed
//!    without a review (istiod's `isCAOnlySecret`).
//! 5. **Anything else needs RBAC.** The API server is asked with a SubjectAccessReview
//!    whether the user `system:serviceaccount:NS:SA` may `list` `secrets` in `NS`: the
//!    credential is allowed if it may, denied with the API server's reason if not.
//!
//! # Reviews and their cache
//!
//! Answers are cached per service account, as istiod caches them: an allowance for 5 minutes
//! ([`GatewayPolicy::ALLOWED_TTL`]), a denial for 1 minute ([`GatewayPolicy::DENIED_TTL`]).
//! A review that fails (the API server is unreachable or answers an error, or does not
//! answer within [`GatewayPolicy::REVIEW_TIMEOUT`], 10 s) is a denial, cached for
//! 5 seconds only ([`GatewayPolicy::FAILED_TTL`]): istiod caches a failure as long as a
//! denial, which would lock gateways out for a minute after a blip of the API server; not
//! caching it at all would let every new stream send a review to an API server that is
//! already failing. Concurrent questions about the same service account share one review.
//!
//! The cache holds at most [`GatewayPolicy::MAX_CACHED_SERVICE_ACCOUNTS`] (10,000) service
//! accounts: when it is full, expired answers (and reviews past their deadline) are dropped
//! first, then the oldest entries. An entry keeps the service account's names and, for a
//! denial or a failure, the API server's words escaped and cut short (a few hundred
//! characters): typically a few hundred bytes, at most a few KiB.
//!
//! The server's own ServiceAccount needs RBAC's `create` on `subjectaccessreviews` (API
//! group `authorization.k8s.io`, cluster-wide), as istiod's has.
//!
//! # When decisions change
//!
//! The service asks the policy when a gateway subscribes to a name, and again, for every
//! open stream, when [`Policy::changed`] resolves. This policy's `changed` resolves every
//! minute ([`GatewayPolicy::RECHECK_INTERVAL`]) once it has asked the API server anything, so
//! open streams see revoked (or newly granted) RBAC as istiod's pushes do: an allowance is
//! asked again after at most 5 minutes, and a stream stops getting a credential at most
//! 6 minutes after its service account lost the right to list Secrets; a denial is asked
//! again after at most 2 minutes. Asking again is a cache lookup until an answer expires;
//! then one review per service account.
//!
//! # Example
//!
//! ```no_run
//! use sds_server::SdsService;
//! use sds_source_k8s::{K8sSource, Scope, istio::GatewayPolicy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let (mut reader, driver) = sds_core::publish(K8sSource::new(client.clone(), Scope::All));
//! tokio::spawn(driver);
//! reader.ready().await?;
//! let policy = GatewayPolicy::new(client).trust_domain("cluster.local");
//! let sds = SdsService::builder(reader).policy(policy).build();
//! # let _ = sds; Ok(()) }
//! ```
//!
//! The transport must verify client certificates (mutual TLS with the mesh's CA) and hand
//! their SANs to the service: without a verified certificate every peer is denied.
//!
//! # Scope
//!
//! Not istiod's other credential types: Gateway API `kubernetes-gateway://` references and
//! ReferenceGrants, ConfigMap CA bundles, credentials of remote clusters. Reasons never hold
//! Secret data; the names in them (which come from a verified certificate and from the
//! client's request) and the API server's words are escaped and cut short.

use std::{fmt, sync::Arc, time::Duration};

use futures_util::future::{BoxFuture, FutureExt as _};
use kube::Client;
use sds_core::{SecretName, Untrusted};
use sds_server::policy::{Decision, Peer, Policy};

use crate::{keys::MAX_SHOWN_CHARS, naming};

use self::{
    resource::resolve,
    reviews::{Reviews, Verdict},
    spiffe::{Identity, Missing},
};

mod resource;
mod reviews;
mod spiffe;

/// Istio's gateway authorization rule (see the [module docs](self)): a peer identified by
/// the SPIFFE ID of its client certificate gets the Secrets of its own namespace that its
/// service account may list, as a SubjectAccessReview answers, and their CA certificates.
///
/// Cheap to clone; clones share the cache of reviews.
#[derive(Clone)]
pub struct GatewayPolicy {
    trust_domain: Option<Arc<str>>,
    reviews: Arc<Reviews>,
}

// === impl GatewayPolicy ===

impl GatewayPolicy {
    /// How long a review's allowance is cached: 5 minutes, as istiod.
    pub const ALLOWED_TTL: Duration = reviews::ALLOWED_TTL;
    /// How long a review's denial is cached: 1 minute, as istiod.
    pub const DENIED_TTL: Duration = reviews::DENIED_TTL;
    /// How long a failed review (a denial) is cached: 5 seconds.
    pub const FAILED_TTL: Duration = reviews::FAILED_TTL;
    /// How long a review may take; then it has failed: 10 seconds.
    pub const REVIEW_TIMEOUT: Duration = reviews::REVIEW_TIMEOUT;
    /// How many service accounts the cache of reviews holds at most: 10,000.
    pub const MAX_CACHED_SERVICE_ACCOUNTS: usize = reviews::MAX_CACHED;
    /// How often [`Policy::changed`] resolves, once a review was made: every minute.
    pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

    /// The policy, asking SubjectAccessReviews through `client` (which needs `create` on
    /// `subjectaccessreviews`). Accepts SPIFFE IDs of any trust domain.
    pub fn new(client: Client) -> Self {
        Self::with_reviews(Reviews::new(client))
    }

    /// Accepts only SPIFFE IDs of the trust domain `trust_domain` (e.g. `cluster.local`,
    /// compared exactly): a peer of another trust domain is denied.
    pub fn trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = Some(trust_domain.into().into());
        self
    }

    fn with_reviews(reviews: Reviews) -> Self {
        Self {
            trust_domain: None,
            reviews: Arc::new(reviews),
        }
    }

    async fn decision(&self, peer: &Peer, name: &SecretName) -> Decision {
        let identity = match Identity::of(peer) {
            Ok(identity) => identity,
            Err(Missing::Certificate) => {
                return Decision::deny(format!(
                    "the peer presented no verified client certificate; Istio's gateway policy \
                     identifies a gateway by the SPIFFE ID in its certificate ({})",
                    spiffe::SHAPE
                ));
            }
            Err(Missing::SpiffeId) => {
                return Decision::deny(format!(
                    "the peer's certificate has no URI SAN of the form {}, by which Istio's \
                     gateway policy identifies a gateway",
                    spiffe::SHAPE
                ));
            }
        };
        if let Some(expected) = &self.trust_domain
            && *identity.trust_domain != **expected
        {
            return Decision::deny(format!(
                "the peer's SPIFFE ID {identity} is of the trust domain {}, not {}",
                Untrusted::new(&identity.trust_domain, MAX_SHOWN_CHARS),
                Untrusted::new(expected, MAX_SHOWN_CHARS)
            ));
        }
        let account = &identity.account;
        let secret = match resolve(name.as_str(), &account.namespace) {
            Ok(secret) => secret,
            Err(problem) => return Decision::deny(problem.to_string()),
        };
        let canonical = naming::canonical(&secret);
        if secret.namespace != account.namespace {
            return Decision::deny(format!(
                "secret {} is in namespace {}; a gateway of namespace {} gets only its own \
                 namespace's secrets",
                Untrusted::new(&canonical, MAX_SHOWN_CHARS),
                Untrusted::new(&secret.namespace, MAX_SHOWN_CHARS),
                Untrusted::new(&account.namespace, MAX_SHOWN_CHARS)
            ));
        }
        let allowed = match SecretName::new(&canonical) {
            Ok(served) if served == *name => Decision::Allow,
            Ok(served) => Decision::AllowAs(served),
            Err(_) => {
                return Decision::deny(format!(
                    "secret {} is too long once its namespace is added",
                    Untrusted::new(name.as_str(), MAX_SHOWN_CHARS)
                ));
            }
        };
        if naming::is_cacert(&secret) {
            return allowed;
        }
        match self.reviews.verdict(account).await {
            Verdict::Allowed => allowed,
            Verdict::Denied(reason) => Decision::deny(format!(
                "the service account {account} may not list secrets in namespace {} \
                 (SubjectAccessReview: {reason})",
                Untrusted::new(&account.namespace, MAX_SHOWN_CHARS)
            )),
            Verdict::Failed(failure) => Decision::deny(format!(
                "cannot tell whether the service account {account} may list secrets in \
                 namespace {}, so it may not for now (asked again after {} s): \
                 SubjectAccessReview failed: {failure}",
                Untrusted::new(&account.namespace, MAX_SHOWN_CHARS),
                Self::FAILED_TTL.as_secs()
            )),
        }
    }
}

impl fmt::Debug for GatewayPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayPolicy")
            .field("trust_domain", &self.trust_domain)
            .field("cached_service_accounts", &self.reviews.len())
            .finish()
    }
}

impl Policy for GatewayPolicy {
    fn decide<'a>(&'a self, peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        self.decision(peer, name).boxed()
    }

    /// Every [`GatewayPolicy::RECHECK_INTERVAL`] once a review was made (an answer may have
    /// expired; asking again is a cache lookup until one has).
    fn changed(&self) -> BoxFuture<'static, ()> {
        let reviews = Arc::clone(&self.reviews);
        // From this call, not from the first poll.
        let mut deadline = tokio::time::Instant::now() + Self::RECHECK_INTERVAL;
        async move {
            loop {
                tokio::time::sleep_until(deadline).await;
                if reviews.len() > 0 {
                    return;
                }
                deadline += Self::RECHECK_INTERVAL;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use sds_server::policy::{CertificateIdentity, UnixCredentials};

    use super::{
        reviews::{Reviewer, Verdict},
        *,
    };

    /// A policy whose reviews allow the service accounts of namespace `apps` and deny the
    /// others, counting them.
    fn policy() -> (GatewayPolicy, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let reviewer = Reviewer::Fake(Arc::new(move |account: &spiffe::ServiceAccount| {
            count.fetch_add(1, Ordering::SeqCst);
            let verdict = match &*account.namespace {
                "apps" => Verdict::Allowed,
                _ => Verdict::Denied("RBAC: no rule allows it".into()),
            };
            futures_util::future::ready(verdict).boxed()
        }));
        let reviews = Reviews::with(reviewer, reviews::MAX_CACHED);
        (GatewayPolicy::with_reviews(reviews), asked)
    }

    fn gateway(uri: &str) -> Peer {
        Peer::tcp("127.0.0.1:1".parse().expect("an address")).with_certificate(
            CertificateIdentity {
                uris: vec![uri.to_owned()],
                dns_names: vec![],
            },
        )
    }

    async fn decide(policy: &GatewayPolicy, peer: &Peer, name: &str) -> Decision {
        let name = SecretName::new(name).expect("a valid name");
        policy.decide(peer, &name).await
    }

    fn served(name: &str) -> Decision {
        Decision::AllowAs(SecretName::new(name).expect("a valid name"))
    }

    fn reason(decision: Decision) -> String {
        match decision {
            Decision::Deny(reason) => reason.into_owned(),
            allowed => panic!("expected a denial, got {allowed:?}"),
        }
    }

    #[tokio::test]
    async fn the_rule() {
        let (policy, asked) = policy();
        let apps = gateway("spiffe://cluster.local/ns/apps/sa/gateway");
        let table = [
            ("kubernetes://apps/httpbin", Decision::Allow),
            ("httpbin", served("kubernetes://apps/httpbin")),
            ("kubernetes://httpbin", served("kubernetes://apps/httpbin")),
            ("httpbin-cacert", served("kubernetes://apps/httpbin-cacert")),
            ("kubernetes://apps/httpbin-cacert", Decision::Allow),
        ];
        for (name, expected) in table {
            assert_eq!(decide(&policy, &apps, name).await, expected, "{name}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one review, cached");

        assert_eq!(
            reason(decide(&policy, &apps, "kubernetes://b/x").await),
            "secret kubernetes://b/x is in namespace b; a gateway of namespace apps gets only \
             its own namespace's secrets"
        );
        assert!(
            !decide(&policy, &apps, "kubernetes://b/x-cacert")
                .await
                .is_allowed()
        );
        assert!(
            reason(decide(&policy, &apps, "file:///etc/key").await)
                .contains("of the scheme file://")
        );
        assert!(
            reason(decide(&policy, &apps, "apps/x").await)
                .contains("is not the name of a Kubernetes Secret")
        );

        let other = gateway("spiffe://cluster.local/ns/other/sa/gateway");
        assert_eq!(
            reason(decide(&policy, &other, "httpbin").await),
            "the service account other/gateway may not list secrets in namespace other \
             (SubjectAccessReview: RBAC: no rule allows it)"
        );
        // CA certificates need no review.
        assert_eq!(
            decide(&policy, &other, "httpbin-cacert").await,
            served("kubernetes://other/httpbin-cacert")
        );
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn peers_without_a_kubernetes_spiffe_id() {
        let (policy, asked) = policy();
        let tcp = Peer::tcp("127.0.0.1:1".parse().expect("an address"));
        assert!(
            reason(decide(&policy, &tcp, "httpbin-cacert").await).starts_with(
                "the peer presented no verified client certificate; Istio's gateway policy \
             identifies a gateway by the SPIFFE ID in its certificate \
             (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)"
            )
        );
        let unix = Peer::unix(UnixCredentials {
            uid: 0,
            gid: 0,
            pid: None,
        });
        assert!(!decide(&policy, &unix, "httpbin").await.is_allowed());
        let workload = gateway("spiffe://cluster.local/workload/gw");
        assert_eq!(
            reason(decide(&policy, &workload, "httpbin").await),
            "the peer's certificate has no URI SAN of the form \
             spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT, by which Istio's gateway \
             policy identifies a gateway"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn trust_domains() {
        let (policy, _) = policy();
        let elsewhere = gateway("spiffe://elsewhere/ns/apps/sa/gateway");
        assert!(decide(&policy, &elsewhere, "httpbin").await.is_allowed());
        let policy = policy.trust_domain("cluster.local");
        assert_eq!(
            reason(decide(&policy, &elsewhere, "httpbin").await),
            "the peer's SPIFFE ID spiffe://elsewhere/ns/apps/sa/gateway is of the trust domain \
             elsewhere, not cluster.local"
        );
        let local = gateway("spiffe://cluster.local/ns/apps/sa/gateway");
        assert!(decide(&policy, &local, "httpbin").await.is_allowed());
        assert!(format!("{policy:?}").contains("cluster.local"));
    }

    #[tokio::test(start_paused = true)]
    async fn changed_ticks_once_reviews_were_made() {
        let (policy, _) = policy();
        let idle = tokio::time::timeout(3 * GatewayPolicy::RECHECK_INTERVAL, policy.changed());
        assert!(idle.await.is_err(), "nothing to ask again");

        let changed = policy.changed();
        let apps = gateway("spiffe://cluster.local/ns/apps/sa/gateway");
        assert!(decide(&policy, &apps, "httpbin").await.is_allowed());
        let start = tokio::time::Instant::now();
        changed.await;
        assert_eq!(start.elapsed(), GatewayPolicy::RECHECK_INTERVAL);
    }
}
