//! sds-core trust bundles as rustls verifies peers with them: `validation_context` secrets
//! become webpki verifiers (with their CRLs), once per version.

use std::{fmt, sync::Arc};

use rustls::{
    CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme,
    client::{WebPkiServerVerifier, danger::HandshakeSignatureValid},
    crypto::CryptoProvider,
    pki_types::CertificateDer,
    server::{VerifierBuilderError, WebPkiClientVerifier, danger::ClientCertVerifier},
};
use sds_core::{Secret, SecretName, TrustBundle};

use crate::Error;

/// The kind of secret a trust bundle is, as [`Secret::kind`] names it.
pub(crate) const VALIDATION_CONTEXT: &str = "validation_context";

/// A verifier of client certificates chaining to one of the anchors of `secret`, not revoked
/// by its CRLs; or why there is none.
pub(crate) fn client_verifier(
    name: &SecretName,
    secret: &Secret,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let bundle = trust_bundle(name, secret)?;
    WebPkiClientVerifier::builder_with_provider(roots(name, bundle), Arc::clone(provider))
        .with_crls(bundle.crls().iter().cloned())
        .build()
        .map_err(refused(name, bundle))
}

/// A verifier of server certificates chaining to one of the anchors of `secret`, not revoked
/// by its CRLs; or why there is none.
pub(crate) fn server_verifier(
    name: &SecretName,
    secret: &Secret,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, Error> {
    let bundle = trust_bundle(name, secret)?;
    WebPkiServerVerifier::builder_with_provider(roots(name, bundle), Arc::clone(provider))
        .with_crls(bundle.crls().iter().cloned())
        .build()
        .map_err(refused(name, bundle))
}

/// The error a peer's certificate gets while there is no verifier: `cause` says why (the
/// secret is not published, or not a usable trust bundle). Its alert is
/// `certificate_unknown`; its message names the secret.
pub(crate) fn refuse_peer(cause: Error) -> rustls::Error {
    let refusal = Refusal { cause };
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
}

/// Why a peer certificate is refused without being looked at. rustls shows it with `Debug`
/// (inside `CertificateError::Other`), so `Debug` is the message too.
struct Refusal {
    cause: Error,
}

impl fmt::Display for Refusal {
    /// The cause with its whole chain (why rustls refused the bundle, say), since rustls
    /// shows only this text to whoever reads the handshake error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cause)?;
        let mut source = std::error::Error::source(&self.cause);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        f.write_str("; every peer certificate is refused until it is usable")
    }
}

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// No `source`: the message holds the cause and its chain already.
impl std::error::Error for Refusal {}

/// Checks a TLS 1.2 handshake signature: it depends on the peer's certificate only, not on
/// the trust bundle, so it needs no verifier.
pub(crate) fn verify_tls12_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Checks a TLS 1.3 handshake signature, like [`verify_tls12_signature`].
pub(crate) fn verify_tls13_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// The signature schemes `provider` verifies.
pub(crate) fn supported_verify_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// The trust bundle of `secret`, or why it is not one.
fn trust_bundle<'s>(name: &SecretName, secret: &'s Secret) -> Result<&'s TrustBundle, Error> {
    match secret {
        Secret::ValidationContext(bundle) => Ok(bundle),
        other => Err(Error::WrongKind {
            name: name.clone(),
            expected: VALIDATION_CONTEXT,
            found: other.kind(),
        }),
    }
}

/// The anchors of `bundle` that webpki can use; the others are ignored, with a warning.
fn roots(name: &SecretName, bundle: &TrustBundle) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(bundle.anchors().iter().cloned());
    if ignored > 0 {
        tracing::warn!(
            secret = %name, version = %bundle.version(), ignored,
            "CA certificates that cannot be trust anchors are ignored"
        );
    }
    Arc::new(roots)
}

fn refused(name: &SecretName, bundle: &TrustBundle) -> impl FnOnce(VerifierBuilderError) -> Error {
    let name = name.clone();
    let version = bundle.version();
    move |error| Error::TrustRefused {
        name,
        version,
        source: match error {
            VerifierBuilderError::InvalidCrl(crl) => rustls::Error::InvalidCertRevocationList(crl),
            other => rustls::Error::General(other.to_string()),
        },
    }
}
