//! An in-process Kubernetes API server for `core/v1` Secrets and `authorization.k8s.io/v1`
//! access reviews that speaks the real protocol, so the unmodified kube-rs client and
//! `watcher`, and the real `kubectl`, work against it over plain HTTP on `127.0.0.1`. Test
//! support; not published.
//!
//! ```no_run
//! use std::time::Duration;
//! use sds_test_apiserver::{Access, ApiServer, Secret};
//!
//! # async fn demo() -> Result<(), sds_test_apiserver::Error> {
//! let server = ApiServer::builder()
//!     .version("v1.33.1")
//!     .token("admin", Access::all())
//!     .user("sds", "system:serviceaccount:istio-system:sds", Access::namespaces(["istio-system"]))
//!     .bookmark_interval(Duration::from_secs(1))
//!     .start()
//!     .await?;
//! server.create(Secret::new("istio-system", "cred").with_data("key", b"k".to_vec()))?;
//! let kubeconfig = server.kubeconfig("admin", "istio-system")?; // for kubectl --kubeconfig
//! server.compact(); // older resourceVersions now give 410 Expired
//! server.drop_watches(); // clients re-watch, get 410, and re-list
//! # let _ = kubeconfig; Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - `GET /version` (`gitVersion` as configured; the machine's `kubectl` dispatcher picks the
//!   kubectl of that minor version), `/healthz`, `/livez`, `/readyz`: no token needed.
//! - Discovery: `/api`, `/api/v1` (only `secrets`), `/apis` (only `authorization.k8s.io`),
//!   `/apis/authorization.k8s.io/v1` (only `subjectaccessreviews` and
//!   `selfsubjectaccessreviews`), `GET /api/v1/namespaces/{name}` (every namespace exists),
//!   and small OpenAPI documents (`/openapi/v2` in gnostic protobuf for kubectl 1.27 and 1.28,
//!   `/openapi/v3`, `/openapi/v3/api/v1` and `/openapi/v3/apis/authorization.k8s.io/v1` for
//!   1.29 and later) that declare the `fieldValidation` parameter, so kubectl leaves
//!   validation to the server. Legacy discovery only (clients fall back from aggregated
//!   discovery).
//! - Secrets: create, get, update, patch (merge and strategic merge), delete, list
//!   (`limit`/`continue`, `resourceVersion`/`resourceVersionMatch`, label and field
//!   selectors) and watch (replay from a resourceVersion, bookmarks, `timeoutSeconds`,
//!   `sendInitialEvents`), namespaced and cluster-wide (list and watch). Bodies in JSON or
//!   Kubernetes protobuf; responses in JSON, protobuf or `Table` as the client asks.
//! - A real resourceVersion history: a global counter bumped by every write, an event log
//!   that watches replay, no-op writes that bump nothing, and `410 Expired` below the last
//!   [`ApiServer::compact`].
//! - Bearer tokens, each with an [`Access`]; `401` and `403` worded like the real server.
//!   Impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`: `kubectl --as`) for
//!   tokens whose access allows it.
//! - Access reviews (below).
//!
//! # SubjectAccessReviews
//!
//! A server that delegates authorization to the API server (as istiod does for a gateway's
//! credentials) asks it whether a user may do something:
//!
//! ```text
//! POST /apis/authorization.k8s.io/v1/subjectaccessreviews
//! {"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview",
//!  "spec":{"resourceAttributes":{"namespace":"NS","verb":"list","resource":"secrets"},
//!          "user":"system:serviceaccount:NS:SA"}}
//! ```
//!
//! and gets `201 Created` with the same object and its `status` (`allowed`, `denied`,
//! `reason`, `evaluationError`). The answer comes from the rules and callbacks the test
//! installs ([`ApiServer::allow`], [`ApiServer::deny`], [`ApiServer::authorize`]), asked in
//! order like the API server's chain of authorizers; with none, every review is
//! `allowed: false`, reason `"no rule allows it"`, as on a cluster whose RBAC grants nothing.
//! Every valid review is recorded ([`ApiServer::access_reviews`]) so a test can count what was
//! asked, and [`ApiServer::fail_access_reviews`] makes the endpoint answer 500 or hang.
//!
//! Creating one needs [`Access::access_reviews`] (RBAC's `create` on
//! `subjectaccessreviews`; [`Access::all`] has it), else `403`. The body is JSON or
//! Kubernetes protobuf; it is validated like the real server's (1.33): exactly one of
//! `resourceAttributes` and `nonResourceAttributes`, a `user` or `groups`, field and label
//! selector attributes, an empty `metadata`; a failure is `422 Invalid`, an undecodable body
//! `400`, unknown fields a warning (or `400` with `fieldValidation=Strict`).
//! SelfSubjectAccessReviews (`kubectl auth can-i`, also `--as`) are answered by the same
//! rules about the caller, and anyone may create them.
//!
//! ```no_run
//! use sds_test_apiserver::{Access, AccessReview, ApiServer, Decision, ReviewFailure};
//!
//! # async fn demo() -> Result<(), sds_test_apiserver::Error> {
//! let server = ApiServer::builder()
//!     .user(
//!         "sds",
//!         "system:serviceaccount:istio-system:sds",
//!         Access::namespaces(["istio-system"]).read_only().access_reviews(true),
//!     )
//!     .start()
//!     .await?;
//! let gateway = "system:serviceaccount:apps:gateway";
//! server.allow(gateway, "list", "secrets", "apps"); // like a RoleBinding in `apps`
//! server.deny("*", "*", "secrets", "kube-system", "kube-system is off limits");
//! server.authorize(|review: &AccessReview| {
//!     if review.groups.iter().any(|g| g == "system:masters") {
//!         Decision::allow("masters may")
//!     } else {
//!         Decision::no_opinion("") // ask the next rule
//!     }
//! });
//! // … the code under test asks …
//! let asked = server.access_reviews();
//! assert!(asked.iter().all(|r| r.user == gateway && r.verb == "list"));
//! server.fail_access_reviews(Some(ReviewFailure::InternalError)); // 500 from now on
//! # Ok(()) }
//! ```
//!
//! The binary (`cargo run -p sds-test-apiserver -- --port 8001 --anonymous --token admin=secret`)
//! serves the same for a person with kubectl or curl.
//!
//! kubectl sends no credentials to an `http://` server (client-go applies a kubeconfig user's
//! token only over TLS), so a server for kubectl needs [`Builder::anonymous`]; kube-rs does
//! send the bearer token over plain HTTP.
//!
//! # Features
//!
//! None.
//!
//! # Scope
//!
//! Only Secrets and access reviews. No TLS, no HTTP/2, no server-side apply, no JSON patch,
//! no `deletecollection`, no managedFields, no namespaces beyond `GET` of one (always
//! `Active`), no protobuf watch streams, no aggregated discovery, no
//! LocalSubjectAccessReviews or SelfSubjectRulesReviews. The review rules answer reviews
//! only: requests to the server itself are authorized by each token's [`Access`].

mod access;
mod access_review;
mod api;
mod authorizer;
mod body;
mod discovery;
mod error;
mod json;
mod openapi;
mod patch;
mod protobuf;
mod secret;
mod selector;
mod server;
mod store;
mod time;
mod validate;
mod watch;

pub use access::{ANONYMOUS, Access, Verb};
pub use authorizer::{AccessReview, Decision, ReviewFailure};
pub use error::{Error, FieldError};
pub use secret::{OPAQUE, OwnerReference, Secret};
pub use server::{ApiServer, Builder, RequestRecord};
