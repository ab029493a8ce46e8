//! A streaming Envoy SDS service (`envoy.service.secret.v3.SecretDiscoveryService`) over any
//! [`sds_core::SecretSource`], for embedding in your own tonic server.
//!
//! ```no_run
//! # async fn demo(reader: sds_core::Reader) -> Result<(), Box<dyn std::error::Error>> {
//! use sds_server::SdsService;
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
//! tonic::transport::Server::builder()
//!     .add_service(sds.into_server())
//!     .serve_with_shutdown("127.0.0.1:15012".parse()?, stop)
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

#[doc(hidden)]
pub mod __bench;
mod encode;
pub mod protocol;
mod requests;
mod service;
mod session;
mod shutdown;
mod wire;

pub use crate::{
    service::{ResponseStream, SdsService, Stats},
    wire::SecretDiscoveryServer,
};
