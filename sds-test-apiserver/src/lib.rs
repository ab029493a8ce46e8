//! An in-process Kubernetes API server for `core/v1` Secrets that speaks the real protocol,
//! so the unmodified kube-rs client and `watcher`, and the real `kubectl`, work against it
//! over plain HTTP on `127.0.0.1`. Test support; not published.
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
//! - Discovery: `/api`, `/api/v1` (only `secrets`), `/apis` (no groups),
//!   `GET /api/v1/namespaces/{name}` (every namespace exists), and small OpenAPI
//!   documents (`/openapi/v2` in gnostic protobuf for kubectl 1.27 and 1.28, `/openapi/v3` and
//!   `/openapi/v3/api/v1` for 1.29 and later) that declare the `fieldValidation` parameter, so
//!   kubectl leaves validation to the server.
//! - Secrets: create, get, update, patch (merge and strategic merge), delete, list
//!   (`limit`/`continue`, `resourceVersion`/`resourceVersionMatch`, label and field
//!   selectors) and watch (replay from a resourceVersion, bookmarks, `timeoutSeconds`,
//!   `sendInitialEvents`), namespaced and cluster-wide (list and watch). Bodies in JSON or
//!   Kubernetes protobuf; responses in JSON, protobuf or `Table` as the client asks.
//! - A real resourceVersion history: a global counter bumped by every write, an event log
//!   that watches replay, no-op writes that bump nothing, and `410 Expired` below the last
//!   [`ApiServer::compact`].
//! - Bearer tokens, each with an [`Access`]; `401` and `403` worded like the real server.
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
//! Only Secrets. No TLS, no HTTP/2, no server-side apply, no JSON patch, no
//! `deletecollection`, no managedFields, no namespaces beyond `GET` of one (always `Active`), no protobuf watch streams.

mod access;
mod api;
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

pub use access::{Access, Verb};
pub use error::{Error, FieldError};
pub use secret::{OPAQUE, OwnerReference, Secret};
pub use server::{ANONYMOUS, ApiServer, Builder, RequestRecord};
