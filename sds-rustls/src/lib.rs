//! rustls resolvers and verifiers that follow the secrets an [`sds_core::Reader`]
//! publishes: TLS credentials for Rust proxies, from the same sources (a directory,
//! Kubernetes Secrets) that serve Envoy over SDS, rotated without a restart.
//!
//! | type | rustls trait | secret |
//! | --- | --- | --- |
//! | [`ServerCerts`] | [`ResolvesServerCert`](rustls::server::ResolvesServerCert) | `tls_certificate`s, picked by SNI |
//! | [`ClientVerifier`] | [`ClientCertVerifier`](rustls::server::danger::ClientCertVerifier) | a `validation_context` (`<name>-cacert`), with CRLs |
//! | [`ClientCert`] | [`ResolvesClientCert`](rustls::client::ResolvesClientCert) | a `tls_certificate` |
//! | [`ServerVerifier`] | [`ServerCertVerifier`](rustls::client::danger::ServerCertVerifier) | a `validation_context`, with CRLs |
//!
//! Each is built from a [`Reader`](sds_core::Reader) together with a [`Driver`]: a future
//! that waits for new snapshots and prepares the secrets that changed. This crate spawns
//! nothing; spawn the driver, or call `refresh()` yourself.
//!
//! ```no_run
//! # async fn demo(mut reader: sds_core::Reader) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use sds_core::SecretName;
//! use sds_rustls::{ServerCerts, rustls};
//!
//! reader.ready().await?; // the first snapshot: the first handshake has its certificate
//! let (certs, driver) = ServerCerts::builder(reader)
//!     .host("example.com", SecretName::new("example-credential")?)
//!     .host("*.example.com", SecretName::new("wildcard-credential")?)
//!     .default_secret(SecretName::new("fallback-credential")?)
//!     .build()?;
//! tokio::spawn(driver); // follows rotations; the embedder owns the task
//! certs.refresh()?; // refuse to start without a usable certificate for every host
//! let config = rustls::ServerConfig::builder()
//!     .with_no_client_auth()
//!     .with_cert_resolver(Arc::new(certs));
//! # let _ = config;
//! # Ok(()) }
//! ```
//!
//! # For Rust proxy authors
//! Your proxy terminates TLS for clients and dials upstreams with mutual TLS. Load the
//! credentials with an `sds-source-fs` or `sds-source-k8s` source, [`sds_core::publish`]
//! them, and give the reader to this crate: the same secret names Envoy would ask for work
//! here (`httpbin-credential`, `httpbin-credential-cacert`).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sds_core::SecretName;
//! # use sds_rustls::{ClientCert, ClientVerifier, ServerCerts, ServerVerifier, rustls};
//! # fn demo(reader: sds_core::Reader) -> Result<(), Box<dyn std::error::Error>> {
//! let name = |n: &str| SecretName::new(n);
//! let (certs, d1) = ServerCerts::builder(reader.clone()).host("*.example.com", name("gw")?).build()?;
//! let (clients, d2) = ClientVerifier::follow(reader.clone(), name("gw-cacert")?);
//! let (mine, d3) = ClientCert::follow(reader.clone(), name("upstream")?);
//! let (upstreams, d4) = ServerVerifier::follow(reader, name("upstream-cacert")?);
//! for driver in [d1, d2, d3, d4] { tokio::spawn(driver); }
//! let inbound = rustls::ServerConfig::builder()
//!     .with_client_cert_verifier(Arc::new(clients)).with_cert_resolver(Arc::new(certs));
//! let outbound = rustls::ClientConfig::builder().dangerous()
//!     .with_custom_certificate_verifier(Arc::new(upstreams)).with_client_cert_resolver(Arc::new(mine));
//! # let _ = (inbound, outbound); Ok(()) }
//! ```
//!
//! Put the configs in a `tokio_rustls::TlsAcceptor` / `TlsConnector` (or any rustls user)
//! once, at startup: they stay the same objects while what they present and trust rotates.
//! Connections already established keep the credentials of their handshake.
//!
//! # Design
//! - **Prepared once per version.** A secret is turned into rustls types (ring signing key,
//!   webpki verifier with its CRLs) when its [`Version`](sds_core::Version) changes, never
//!   per handshake; only the secrets that changed are prepared again.
//! - **No lock on the handshake path.** The prepared values sit in an immutable map behind
//!   an [`arc_swap::ArcSwap`]: a handshake loads it (no lock, no `Arc` count on the fast
//!   path) and clones the one `Arc` it needs; an update builds the next map and swaps it in.
//!   A `RwLock`, a `Mutex` or a `tokio::sync::watch` borrow (a `RwLock` inside) would make
//!   every handshake take a lock that an update can hold. `arc-swap` is small (its one
//!   dependency is a build-time macro) and widely used for exactly this, and the workspace
//!   forbids the `unsafe` a home-made one would need. Updates are lock-free too (compare-and-swap), so `refresh()` and the
//!   driver can run at the same time.
//! - **Never a credential sds-core rejected.** A [`Reader`](sds_core::Reader) holds only
//!   validated secrets and keeps the last good version of a rejected one: this crate follows
//!   it. A version that rustls cannot use (a key ring cannot sign with, a bundle with no usable
//!   anchor) keeps the previous prepared value for that name and is logged at WARN with the
//!   secret's name and version, never key material. A secret its source removes stays in use
//!   in its last version, as Envoy keeps it. A followed name absent from the source's first
//!   snapshot (a misspelt name, a credential not created yet) is logged at WARN once; the
//!   handshakes that need it fail until it arrives.
//!
//! # Feature flags
//! None. rustls' ring provider loads the keys and checks signatures (the workspace's rustls
//! features); enable rustls' `tls12` feature in your own crate for TLS 1.2.
//!
//! # Scope
//! This crate does no I/O: it neither listens, dials nor spawns, and it reads no files
//! (sources do, see `sds-source-fs` and `sds-source-k8s`). It does not check OCSP responses
//! of peers, and the client verifier sends no CA names to clients. It validates nothing that
//! sds-core already validated (expiry, key match, chain order).

mod client_cert;
mod client_verifier;
mod error;
mod follow;
mod server_certs;
mod server_verifier;
mod signing;
mod sni;
mod trust;

pub use crate::{
    client_cert::ClientCert,
    client_verifier::ClientVerifier,
    error::Error,
    follow::Driver,
    server_certs::{ServerCerts, ServerCertsBuilder},
    server_verifier::ServerVerifier,
    signing::certified_key,
};

/// The rustls this crate builds on, for naming its types (e.g. [`rustls::ServerConfig`])
/// with the same version.
pub use rustls;
