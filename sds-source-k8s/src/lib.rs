//! Kubernetes Secrets as an `sds-core` [`SecretSource`](sds_core::SecretSource), with Istio's
//! conventions: the same keys, precedence and resource names as istiod's credentials
//! controller, so that a Gateway's `credentialName` works unchanged.
//!
//! [`K8sSource`] lists the Secrets of its [`Scope`] (one namespace, several, or all) through
//! kube-rs, then watches them, and yields the complete set of credentials after every change,
//! debounced. Each Secret is parsed and validated once per content; the same parsed credential
//! is shared by all the names it is served under.
//!
//! [`istio::GatewayPolicy`] decides which gateway gets which of them, as istiod does: an
//! `sds-server` policy that serves a peer, identified by the SPIFFE ID of its client
//! certificate, the Secrets of its own namespace that a SubjectAccessReview says its service
//! account may list (see [Authorization](#authorization)).
//!
//! # Keys
//!
//! | keys | served as |
//! | --- | --- |
//! | `cert` + `key` (generic Secret), or `tls.crt` + `tls.key` (`kubernetes.io/tls`) | a TLS certificate: the chain (leaf first) and its private key |
//! | `cacert`, or `ca.crt` | a validation context: CA certificates that verify peers |
//! | `crl`, or `ca.crl` | attached to the validation context: certificate revocation lists |
//! | `tls.ocsp-staple` | attached to the TLS certificate: a DER OCSP response for the leaf, which Envoy staples |
//!
//! - Precedence is Istio's, written once in [`sds_core::layout`] for Secrets and credential
//!   directories alike (a Secret mounted as a volume and read by `sds-source-fs` gives the
//!   same secrets): a complete, non-empty `cert` + `key` pair wins over `tls.crt` +
//!   `tls.key`; a non-empty `cacert` wins over `ca.crt`; the CRL that goes with the CA wins
//!   (`crl` with `cacert`, `ca.crl` with `ca.crt`), else the other is taken (Istio would drop
//!   it); an empty `tls.ocsp-staple` is no staple. The Secret's `type` does not matter.
//! - A Secret without any of these keys is not a credential: it is dropped as soon as it is
//!   decoded, and only its absence is remembered. Of a credential Secret only these keys' bytes
//!   (zeroized when dropped) and its `resourceVersion` are kept.
//! - A Secret whose keys do not make a credential is rejected, with a message that names the
//!   Secret and the key: a chain without its key ("found Secret istio-system/httpbin key
//!   `tls.crt` but no key `tls.key` (expected keys (cert and key) or (tls.crt and tls.key);
//!   found: ca.crt, tls.crt)"), a CRL without a CA, an empty key, a key that does not match the
//!   chain, an expired leaf. The publisher keeps serving the last good version of a rejected
//!   name, and never serves a name that was never valid.
//!
//! # Names
//!
//! For a Secret `ns/foo`, with `default` the source's default namespace
//! ([`K8sSource::default_namespace`]):
//!
//! | resource name | serves |
//! | --- | --- |
//! | `kubernetes://ns/foo` | the certificate of `ns/foo`; its CA if it holds only a CA |
//! | `foo`, `kubernetes://foo` | the same, when `ns` is `default` |
//! | `kubernetes://ns/foo-cacert` (and `foo-cacert`, `kubernetes://foo-cacert` in `default`) | the CA of `ns/foo`, from the Secret `ns/foo-cacert` if it exists, else from the CA keys of `ns/foo` |
//!
//! - The suffix `-cacert` asks for the CA part, as Istio's `credentialName` with mode `MUTUAL`
//!   does. A separate Secret named `<name>-cacert` takes precedence over the `cacert` key of
//!   `<name>` (Istio 1.7's order, restored in istio#29856). Every update is derived from all
//!   Secrets together, so a change to either is reflected in the other's names at once.
//! - A Secret whose own name ends with `-cacert` is a CA Secret: all its names serve its CA, and
//!   if it has no CA key those names are rejected (a certificate pair in it is not served). A
//!   Secret without any of the keys above is ignored whatever its name, so an unrelated
//!   `<name>-cacert` does not hide the `cacert` key of `<name>`.
//! - A Secret that holds only a CA is served as a validation context under its own names and
//!   under the `-cacert` ones.
//!
//! # Updates, errors, deletions
//!
//! - The first update comes once every namespace of the scope has been listed. Then the
//!   Secrets are watched from the list's `resourceVersion`, with bookmarks. When the watch
//!   expires (`410 Gone`, e.g. after etcd compaction) the source lists again; the new list is
//!   buffered and replaces the old state in one update when it is complete, so a credential is
//!   never withdrawn while it is being re-listed.
//! - Failures (the API server is unreachable, answers an error, or refuses with 403) are
//!   ambient [`Error`] items: the publisher logs them and keeps serving the last snapshot, and
//!   the source retries with backoff. It never yields an empty update because of an error. A
//!   403 is reported as [`Error::Forbidden`], with the RBAC rule to grant.
//! - A deleted Secret disappears from the next update, as a removed directory does in
//!   `sds-source-fs`: it is no longer offered to new subscribers. Envoy keeps using the last
//!   secret it received, because SDS cannot take a secret back (state-of-the-world has no
//!   deletion; the delta protocol's `removed_resources` is ignored by Envoy for secrets).
//! - A credential is validated when its Secret changes, at the current time: a certificate that
//!   expires while its Secret stays unchanged stays served. A Secret rejected because it is not
//!   valid yet or has expired is validated again with every update.
//!
//! # Logging
//!
//! Nothing this crate logs or reports holds Secret data: a rejection names the Secret and the
//! key and says what is wrong by position (see `sds_core::Error`), and Kubernetes names and the
//! API server's messages are escaped and cut short. An answer that cannot be decoded is
//! reported by kind and position only. One caveat is kube-rs's own: when a list answer cannot
//! be decoded, `kube_client` logs the whole answer, every Secret of the page with its data, at
//! WARN. Keep that target at ERROR in production, e.g. `RUST_LOG=info,kube_client=error`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use sds_source_k8s::{K8sSource, Scope};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?; // in-cluster config or kubeconfig
//! let source = K8sSource::new(client, Scope::Namespace("istio-system".into()))
//!     .debounce(Duration::from_millis(50));
//! let (mut reader, driver) = sds_core::publish(source);
//! tokio::spawn(driver); // the embedder owns the task; dropping it closes the watches
//! let snapshot = reader.ready().await?; // every namespace listed once
//! if let Some(secret) = snapshot.get("kubernetes://istio-system/httpbin-credential") {
//!     println!("{}: {}", secret.kind(), secret.version());
//! }
//! # Ok(()) }
//! ```
//!
//! The source needs `get`, `list` and `watch` on `secrets` (API group `""`) in each namespace of
//! its scope: a Role and RoleBinding per namespace, or a ClusterRole and ClusterRoleBinding for
//! [`Scope::All`].
//!
//! # Authorization
//!
//! [`K8sSource`] serves every Secret of its scope under the names above, to whoever the
//! server lets in. With Istio's gateways, give the server [`istio::GatewayPolicy`]: the peer
//! is the service account of the SPIFFE ID in its verified client certificate; it gets only
//! its own namespace's Secrets, bare names (`foo`, `kubernetes://foo`) mean its namespace's
//! (served from `kubernetes://ns/foo`), `-cacert` names are public, and any other credential
//! needs a SubjectAccessReview allowing `list` `secrets` in its namespace, cached as istiod
//! caches it (an allowance 5 minutes, a denial 1 minute, a failure 5 seconds; at most 10,000
//! service accounts). The server's ServiceAccount then also needs `create` on
//! `subjectaccessreviews` (API group `authorization.k8s.io`).
//!
//! ```no_run
//! # async fn demo(reader: sds_core::Reader) -> Result<(), Box<dyn std::error::Error>> {
//! use sds_source_k8s::istio::GatewayPolicy;
//!
//! let client = kube::Client::try_default().await?;
//! let policy = GatewayPolicy::new(client).trust_domain("cluster.local");
//! let sds = sds_server::SdsService::builder(reader).policy(policy).build();
//! # let _ = sds; Ok(()) }
//! ```
//!
//! # Features
//!
//! This crate has no Cargo features. It depends on `k8s-openapi` without choosing a Kubernetes
//! version, as libraries must: the binary that uses it enables one, e.g.
//! `k8s-openapi = { version = "0.29", features = ["v1_33"] }` (any version works: only
//! core/v1 Secrets and authorization/v1 SubjectAccessReviews are used). Its tests, examples
//! and `cargo clippy --all-targets` get the version from a dev-dependency
//! (`features = ["latest"]`). Commands that build the library alone, without
//! dev-dependencies, take it from the environment instead:
//! `K8S_OPENAPI_ENABLED_VERSION=1.37 cargo doc -p sds-source-k8s` (also `cargo check`,
//! `cargo build` and `cargo clippy` without `--all-targets`). docs.rs enables
//! `k8s-openapi/latest` through `[package.metadata.docs.rs]`.
//!
//! # Scope
//!
//! This crate reads Secrets; it never writes them (it creates SubjectAccessReviews, which
//! change nothing). It does not validate credentials itself (that is `sds-core`), serve SDS
//! (`sds-server`; this crate only implements its `Policy` trait), check Gateway API
//! ReferenceGrants, read ConfigMaps or Gateway API references, or talk to more than one
//! cluster.

#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub mod __fuzz;
mod error;
pub mod istio;
mod keys;
mod naming;
mod parsed;
mod scope;
mod source;
mod store;

pub use crate::{
    error::{ApiError, Error},
    scope::Scope,
    source::K8sSource,
};
