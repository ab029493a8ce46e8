//! The credential model of `sds`: parsing and validation, content-versioned immutable
//! snapshots, and the [`SecretSource`] trait that directory and Kubernetes sources implement.
//!
//! Data flows one way: a source yields complete [`Update`]s (valid secrets plus rejected
//! names), [`publish`] merges each into a new [`Snapshot`] that keeps the last good version of
//! every rejected credential, and [`Reader`]s (one per server, cheap to clone) watch the whole
//! snapshot or a single secret by name.
//!
//! ```no_run
//! use futures_util::stream;
//! use rustls_pki_types::UnixTime;
//! use sds_core::{CertifiedKey, Input, SecretName, Update};
//!
//! # async fn demo(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let name = SecretName::new("httpbin-credential")?;
//! let cert = CertifiedKey::from_pem(
//!     &name,
//!     Input { location: "tls.crt", bytes: cert_pem },
//!     Input { location: "tls.key", bytes: key_pem },
//!     UnixTime::now(),
//! )?;
//! let mut update = Update::new();
//! update.insert(name.clone(), cert);
//!
//! let source = sds_core::from_stream(stream::iter([Ok::<_, std::io::Error>(update)]));
//! let (mut reader, driver) = sds_core::publish(source);
//! tokio::spawn(driver); // the embedder owns the task
//! let snapshot = reader.ready().await?;
//! assert!(snapshot.get("httpbin-credential").is_some());
//! # Ok(()) }
//! ```
//!
//! # Scope
//! This crate does no I/O: it neither reads files nor talks to Kubernetes (see
//! `sds-source-fs`, `sds-source-k8s`), nor speaks gRPC (see `sds-server`). Validation takes
//! `now` as a parameter; the publisher reads an injected [`Clock`] (for its expiry warnings,
//! see [`Publish`]) and waits with tokio's timers.

mod clock;
mod credential;
mod error;
mod expiry;
pub mod layout;
mod name;
mod ocsp;
mod pem;
mod publish;
mod secret;
mod snapshot;
mod source;
mod untrusted;
mod version;
mod x509;

pub use crate::{
    clock::{Clock, SystemClock},
    credential::{Input, MAX_INPUT_LEN},
    error::{CredentialError, Error, ErrorKind, ParseError},
    name::{CACERT_SUFFIX, MAX_NAME_LEN, SecretName},
    ocsp::{OcspCertStatus, OcspProblem, OcspStaple},
    publish::{Closed, Driver, Publish, Reader, Rejections, SecretWatch, SourceStatus, publish},
    secret::{
        CertificateInfo, CertifiedKey, KeyAlgorithm, KeyFormat, PrivateKey, Secret, TrustBundle,
    },
    snapshot::{Snapshot, Update},
    source::{FromStream, SecretSource, from_stream},
    untrusted::Untrusted,
    version::Version,
};

/// Re-exported from `rustls-pki-types`: the time type validation takes.
pub use rustls_pki_types::UnixTime;
