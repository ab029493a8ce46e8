//! The one error type of `sds-rustls`.

use sds_core::{SecretName, Version};

/// Why a secret cannot be used with rustls (which secret, and why), or why a host mapping is
/// invalid.
///
/// Kept in shared state and handed to rustls inside verifier errors, so it is `Clone`. No
/// message or `Debug` output holds key material: a key is described by its name, version and
/// encoding only.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The reader's snapshot holds no secret of this name: not published yet (or no snapshot
    /// yet), or removed by its source.
    #[error("secret `{name}` is not published")]
    NotPublished {
        /// The secret.
        name: SecretName,
    },

    /// The secret is of the other kind: a validation context where a certificate was
    /// expected, or the reverse.
    #[error("secret `{name}` is a {found}, where a {expected} is expected")]
    WrongKind {
        /// The secret.
        name: SecretName,
        /// The kind this use needs, as [`Secret::kind`](sds_core::Secret::kind) names it:
        /// `tls_certificate` or `validation_context`.
        expected: &'static str,
        /// The kind the secret is.
        found: &'static str,
    },

    /// rustls (with the ring provider) cannot sign with the secret's key, e.g. an RSA key
    /// larger than ring loads, which sds-core accepts for Envoy, or a key encoding newer than
    /// this crate.
    #[error("rustls refused the key of secret `{name}` (version {version})")]
    KeyRefused {
        /// The secret.
        name: SecretName,
        /// The secret's version.
        version: Version,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },

    /// rustls cannot build a certificate verifier from the secret's trust bundle: no CA
    /// certificate usable as a trust anchor, or a CRL it cannot parse.
    #[error("rustls refused the trust bundle of secret `{name}` (version {version})")]
    TrustRefused {
        /// The secret.
        name: SecretName,
        /// The secret's version.
        version: Version,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },

    /// A host pattern given to [`ServerCertsBuilder::host`](crate::ServerCertsBuilder::host)
    /// is not a DNS name, nor `*.` followed by one.
    #[error("invalid host pattern `{host}`: {problem}")]
    InvalidHost {
        /// The pattern, escaped and cut short for printing.
        host: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// The same host pattern was mapped to a secret twice.
    #[error("host pattern `{host}` is mapped twice")]
    DuplicateHost {
        /// The pattern, lowercased.
        host: String,
    },
}

// === impl Error ===

impl Error {
    /// The secret the error is about; `None` for a host pattern error.
    pub fn secret(&self) -> Option<&SecretName> {
        match self {
            Error::NotPublished { name }
            | Error::WrongKind { name, .. }
            | Error::KeyRefused { name, .. }
            | Error::TrustRefused { name, .. } => Some(name),
            Error::InvalidHost { .. } | Error::DuplicateHost { .. } => None,
        }
    }
}
