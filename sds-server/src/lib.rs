//! A streaming Envoy SDS service (`envoy.service.secret.v3.SecretDiscoveryService`) over any
//! [`sds_core::SecretSource`], for embedding in your own tonic server.
//!
//! ```no_run
//! # async fn demo(reader: sds_core::Reader) -> Result<(), Box<dyn std::error::Error>> {
//! use sds_server::{Limits, SdsService, connections};
//! use tokio_stream::wrappers::TcpListenerStream;
//!
//! let sds = SdsService::new(reader);
//! let stop = {
//!     let sds = sds.clone();
//!     async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         // SDS streams never end on their own: end them so the server can drain.
//!         sds.shutdown();
//!     }
//! };
//! // Close connections that never start HTTP/2; pause accepting at the descriptor limit.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15012").await?;
//! let incoming = connections::guard(TcpListenerStream::new(listener), Default::default());
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
//! embedder owns the server, its TLS, interceptors and shutdown. It does not authorize
//! clients: any client that reaches it gets any secret it names, so serve it on a Unix socket
//! or loopback address only its proxies can reach.
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

#[cfg(feature = "__bench")]
#[doc(hidden)]
pub mod __bench;
pub mod connections;
mod encode;
mod fetch;
mod framing;
mod limits;
pub mod protocol;
mod pump;
mod requests;
mod server;
mod service;
mod session;
mod shutdown;
mod status;
mod warnings;

pub use crate::{
    limits::Limits,
    server::SecretDiscoveryServer,
    service::{SdsService, Stats},
};
