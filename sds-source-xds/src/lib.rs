//! Another SDS server as an `sds-core` [`SecretSource`](sds_core::SecretSource): an Envoy
//! xDS v3 `SecretDiscoveryService` client that subscribes to secrets by name, validates every
//! one it receives, and yields complete [`Update`](sds_core::Update)s.
//!
//! With it, a Rust proxy (through `sds-rustls`) takes its certificates from an Istio agent, a
//! SPIRE agent, or another instance of `sds-server`; and `sds-server` over an [`XdsSource`] is a
//! node-local relay.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use sds_source_xds::{Api, Backoff, XdsSource};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let source = XdsSource::unix("/run/spire/sockets/agent.sock")
//!     .names(["default", "ROOTCA"])?
//!     .node("my-proxy", "my-cluster")
//!     .api(Api::Sotw)
//!     .backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(10)));
//! let (mut reader, driver) = sds_core::publish(source);
//! tokio::spawn(driver); // the embedder owns the task; dropping it closes the streams
//! let snapshot = reader.ready().await?; // the first response
//! if let Some(secret) = snapshot.get("default") {
//!     println!("{}: {}", secret.kind(), secret.version());
//! }
//! # Ok(()) }
//! ```
//!
//! Over TCP, `XdsSource::tcp("https://sds.example:8234")?.tls(config)` connects with a
//! `rustls::ClientConfig` (e.g. a client certificate from another source); `http://` connects
//! in clear text.
//!
//! # Protocol
//!
//! The source speaks as Envoy does (see `sds-server`'s `protocol` module for the server side):
//!
//! - **State of the world** ([`Api::Sotw`], the default): one stream per name
//!   ([`Streams::PerName`], as Envoy) or one for all ([`Streams::One`]). The first request of a
//!   stream carries the node, the names, `type_url`, an empty nonce and the last accepted
//!   `version_info` (empty at first, the held version after a reconnection). Every response is
//!   answered: an ACK carries its `version_info` and nonce; a NACK carries the last accepted
//!   `version_info`, the nonce and `error_detail { code: 13 (INTERNAL), message }`, the message
//!   being `sds-core`'s reasons (which never hold key material).
//! - **Delta** ([`Api::Delta`]): one stream; the first request subscribes to every name
//!   (`resource_names_subscribe`) and, after a reconnection, says which versions it holds
//!   (`initial_resource_versions`). Responses are ACKed or NACKed by nonce; a name in
//!   `removed_resources` is dropped from the next update.
//! - A reconnection waits with exponential [`Backoff`] and jitter; the wait resets once a
//!   response arrives.
//!
//! # Validation
//!
//! | received | becomes |
//! | --- | --- |
//! | `tls_certificate` (`certificate_chain`, `private_key` as inline bytes or string PEM, `ocsp_staple` inline DER) | `CertifiedKey::from_pem`, then `with_ocsp_staple` |
//! | `validation_context` (`trusted_ca`, `crl`) | `TrustBundle::from_pem` |
//! | a `filename` or `environment_variable` data source, a generic secret, session ticket keys, an empty secret | rejected: not supported |
//!
//! - Secrets are validated at the current time, when received.
//! - A rejected secret is NACKed with the reason and passed to the publisher as
//!   [`Update::reject`](sds_core::Update::reject): the last good version stays served, a name
//!   never valid is not served. A secret named other than requested is NACKed and dropped.
//! - What a server sends is bounded: responses are at most
//!   [`XdsSource::max_message_size`] (4 MiB by default; a larger one fails the stream, which
//!   is reopened with backoff); a response with more resources (or, in delta, removals) than
//!   names requested is NACKed unread; a wrong `type_url` is NACKed.
//! - What a server sends and the source keeps or echoes is bounded too: a `version_info`
//!   (state of the world) or resource `version` (delta) longer than 1 KiB (1,024 bytes)
//!   refuses the response (NACK, the last accepted version kept), and a nonce longer than
//!   1 KiB cannot even be NACKed (a NACK echoes it): the stream is closed
//!   ([`Error::NonceTooLong`]) and reopened with backoff. Envoy bounds these strings only by
//!   the message size; real servers send tens of bytes (`sds-server`: a 32-hex-digit digest
//!   and a decimal counter; others: timestamps, UUIDs, counters). Names are never kept as received: a secret is held under the requested name
//!   it matches, and names shown in a NACK or a log line are escaped and cut after 128
//!   characters.
//! - A refused response (a wrong `type_url`, too many resources, a version too long, a secret
//!   not requested or not decodable) is logged at WARN with the problem, the upstream's text
//!   in it escaped and cut short; once per kind of problem until a response is accepted, so
//!   an upstream that sends the same bad response in a loop adds one line (the others are at
//!   DEBUG). A rejected secret is logged by the publisher, once per problem.
//!
//! # Updates and errors
//!
//! Every update is complete: every secret held by every stream; a name never received is
//! absent. A connection failure is an ambient [`Error`] item: the publisher logs it and keeps
//! serving the last good snapshot, and the stream goes on, reconnecting. The error names the
//! endpoint and, for a stream of one name (a stream per name, the default), the secret. The
//! publisher's `ready()` completes with the first response of any stream.
//!
//! # Tasks
//!
//! The source spawns none of its own: the driver that polls the stream runs the protocol. The
//! gRPC channel is tonic's, which runs each HTTP/2 connection on a task of the runtime that
//! polls the stream; it is created at the first poll and closed when the stream is dropped.
//!
//! # Why a crate of its own
//!
//! It brings a gRPC client stack (tonic's channel, hyper's client, tower, tokio-rustls as a
//! client) that the directory and Kubernetes sources do not need, and `sds-core` must not
//! depend on: a dependency boundary, which is what the workspace adds crates for.
//!
//! # Features
//!
//! This crate has no Cargo features. TLS is tokio-rustls through the crate's own connector,
//! so tonic's TLS features stay off.
//!
//! # Scope
//!
//! It does not serve SDS (that is `sds-server`), speak ADS or any other xDS resource type,
//! change its subscriptions while running, follow `filename` data sources, resolve DNS other
//! than through tokio, or verify anything about the upstream beyond TLS: whatever it receives
//! is trusted as much as the server that sent it. Secrets received are parsed on the task that
//! polls the stream (the other sources use the blocking pool for large sets): a response holds
//! at most as many secrets as names requested and at most 4 MiB by default, and the protocol
//! is a synchronous state machine (sans IO), which the blocking pool would make asynchronous.

mod backoff;
mod connect;
mod convert;
mod error;
mod session;
mod source;
mod stream;

pub use crate::{
    backoff::Backoff,
    error::Error,
    source::{Api, Streams, XdsSource},
};
