//! A streaming Envoy SDS service (`envoy.service.secret.v3.SecretDiscoveryService`) over any
//! [`sds_core::SecretSource`], for embedding in your own tonic server.
//!
//! ```no_run
//! # async fn demo(reader: sds_core::Reader) -> Result<(), Box<dyn std::error::Error>> {
//! use sds_server::{Limits, SdsService, connections};
//! use tokio_stream::wrappers::UnixListenerStream;
//!
//! // Only the server's own user (and root) gets secrets: see the `policy` module for others.
//! let sds = SdsService::new(reader);
//! let stop = {
//!     let sds = sds.clone();
//!     async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         // SDS streams never end on their own: end them so the server can drain.
//!         sds.shutdown();
//!     }
//! };
//! // A socket only this user may connect to; close connections that never start HTTP/2.
//! let listener = connections::bind_unix("/run/sds/sds.sock".as_ref(), 0o600).await?;
//! let incoming = connections::guard(UnixListenerStream::new(listener), Default::default());
//! tonic::transport::Server::builder()
//!     .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
//!     .add_service(sds.into_server())
//!     .serve_with_incoming_shutdown(incoming, stop)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! It serves `StreamSecrets` (state of the world), `DeltaSecrets` (incremental) and
//! `FetchSecrets`, one or many secrets per stream; see [`protocol`] for the exact rules.
//!
//! # Scope
//! The service never binds a socket, spawns a listener or installs a signal handler: the
//! embedder owns the server, its TLS, interceptors and shutdown ([`connections::bind_unix`]
//! binds a private Unix socket for it).
//! Over TCP, [`tls`] adds TLS with required client certificates, its server certificate and
//! client CA following the snapshot.
//!
//! # Who may have which secret
//! Every name a client subscribes to is decided by a [`policy::Policy`] for the client's
//! [`policy::Peer`]: what the transport proves (Unix-socket credentials, a verified client
//! certificate), never the `Node` it claims. A denied name is not sent, the other names of the
//! stream are. By default ([`SdsService::new`]) only the server's own user and root, on a Unix
//! socket, get anything; choose another policy with [`SdsService::builder`].
//!
//! # What one client may cost
//! Every stream is held to [`Limits`] (names and bytes of names per stream, subscriptions
//! and partly received requests per connection, subscriptions in all), and a stream that asks
//! for more ends with `RESOURCE_EXHAUSTED` while the others go on. A request is read as its HTTP/2 frames arrive and only the fields the protocol uses are
//! kept, at most [`Limits`]' names plus 16 KiB; Envoy's `Node` beyond its id and cluster,
//! unknown fields and NACK details are skipped, and a NACK message over 1 KiB is replaced by
//! its length. A request that cannot be read ends its stream with its real status
//! (`INTERNAL`, `UNIMPLEMENTED` for compression, `RESOURCE_EXHAUSTED` over 4 MiB). Client text
//! (node id, names, NACK messages, type URLs) is escaped and cut short wherever it is logged
//! or echoed, NACKs are logged at WARN at most once a minute per stream, client-caused WARN
//! lines at most 10 a second in all, and no `grpc-message` is longer than 1 KiB. What the embedding server must add: announce
//! [`Limits::MAX_CONCURRENT_STREAMS`] and accept through [`connections::guard`], as above.
//!
//! # What every client holds
//! [`SdsService::clients`] lists the open streams: the peer, the node id and cluster it
//! claims, and for each name it subscribes to the version sent, the version ACKed, the last
//! NACK with Envoy's message, a denial by the policy and since when it waits for a secret that
//! does not exist. [`SdsService::secrets`] tells what is served: names, versions, certificate
//! names and validity, CAs, OCSP staples, never key material. See [`inventory`].
//! [`SdsService::register_metrics`] adds Prometheus metrics to your `prometheus-client`
//! registry (see [`metrics`]), and with the `admin` feature `admin::Admin` serves them with
//! the two dumps, `/healthz` and `/readyz` on an HTTP server of yours.
//!
//! # Logs
//! At INFO, once per stream: its first request (`client subscribed`: peer, node id, cluster,
//! names), its first ACK, and its end (`stream closed`, with how long it lived); later
//! requests that add names at most once a minute per stream. Once per new version of a
//! secret, for all streams together: `pushed to N streams, all ACKed in X ms` (or how many
//! ACKed, NACKed and did not answer, after 10 s or when a newer version replaced it). NACKs
//! at WARN, bounded as above. Every push, ACK and other subscription change at DEBUG.
//!
//! # Features
//! - `serde`: `serde::Serialize` for the [`inventory`] types (the JSON of
//!   [`SdsService::clients`] and [`SdsService::secrets`]).
//! - `admin` (with `serde`): [`admin::Admin`], an HTTP handler for `/metrics`,
//!   `/debug/clients`, `/debug/secrets`, `/healthz` and `/readyz` to mount on your server.

#[cfg(feature = "__bench")]
#[doc(hidden)]
pub mod __bench;
#[cfg(feature = "admin")]
pub mod admin;
pub mod connections;
mod encode;
mod error;
mod fetch;
mod framing;
pub mod inventory;
mod limits;
pub mod metrics;
mod peer;
pub mod policy;
pub mod protocol;
mod pump;
mod requests;
mod rollout;
mod server;
mod service;
mod session;
mod shutdown;
mod status;
mod stream;
pub mod tls;
mod warnings;

pub use crate::{
    error::Error,
    limits::Limits,
    server::SecretDiscoveryServer,
    service::{Builder, SdsService, Stats},
};
