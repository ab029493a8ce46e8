//! The one error type of `sds-source-xds`.

use sds_core::SecretName;

/// What went wrong talking to the upstream SDS server. Every variant names the endpoint.
///
/// Rejected secrets are not errors of this type: they are `sds_core::Error`s, NACKed upstream
/// and reported per name through [`sds_core::Update::reject`]. An [`Error`] yielded by the
/// source's stream is ambient: the publisher keeps serving the last good snapshot while the
/// source reconnects, with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint cannot be used: not a valid URI, a scheme other than `http` or `https`, or
    /// `https` without [`XdsSource::tls`](crate::XdsSource::tls).
    #[error("invalid SDS endpoint `{endpoint}`: {problem}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A requested name is not a valid secret name.
    #[error("invalid secret name for SDS endpoint `{endpoint}`")]
    InvalidName {
        /// The endpoint.
        endpoint: String,
        /// Why the name is invalid.
        #[source]
        source: sds_core::Error,
    },

    /// No name to subscribe to: an empty name list would be a wildcard subscription.
    #[error("no secret names to subscribe to at SDS endpoint `{endpoint}`")]
    NoNames {
        /// The endpoint.
        endpoint: String,
    },

    /// The stream could not be opened: the connection, the TLS handshake or the gRPC call
    /// failed.
    #[error("cannot open the SDS stream{} to `{endpoint}`", of(.secret.as_ref()))]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The secret of the stream, for a stream of one name (a stream per name,
        /// [`Streams::PerName`](crate::Streams::PerName)); `None` for a stream of several.
        secret: Option<SecretName>,
        /// Why (tonic's status, with the transport error as its source).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An open stream failed: a transport error, a gRPC status from the server, or a message
    /// that could not be decoded (or is larger than the limit).
    #[error("the SDS stream{} to `{endpoint}` failed", of(.secret.as_ref()))]
    Stream {
        /// The endpoint.
        endpoint: String,
        /// The secret of the stream, for a stream of one name; `None` for a stream of several.
        secret: Option<SecretName>,
        /// Why (tonic's status).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The server ended the stream.
    #[error("SDS endpoint `{endpoint}` closed the stream{}", of(.secret.as_ref()))]
    Closed {
        /// The endpoint.
        endpoint: String,
        /// The secret of the stream, for a stream of one name; `None` for a stream of several.
        secret: Option<SecretName>,
    },

    /// The server sent a response whose nonce is longer than the source accepts (1 KiB). It
    /// cannot be answered, not even NACKed (a NACK echoes the nonce), so the stream is closed
    /// and reopened with backoff.
    #[error(
        "SDS endpoint `{endpoint}` sent a nonce of {len} bytes on the stream{}, more than the \
         {max} accepted; closing the stream",
        of(.secret.as_ref())
    )]
    NonceTooLong {
        /// The endpoint.
        endpoint: String,
        /// The secret of the stream, for a stream of one name; `None` for a stream of several.
        secret: Option<SecretName>,
        /// The nonce's length, in bytes.
        len: usize,
        /// The longest nonce accepted, in bytes.
        max: usize,
    },
}

/// ` of secret `NAME``, or nothing: which stream an error is about.
fn of(secret: Option<&SecretName>) -> String {
    secret.map_or_else(String::new, |name| format!(" of secret `{name}`"))
}

// === impl Error ===

impl Error {
    /// Whether the connection failed or broke (as opposed to a configuration error, after which
    /// the stream ends).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Stream { .. }
                | Error::Closed { .. }
                | Error::NonceTooLong { .. }
        )
    }
}
