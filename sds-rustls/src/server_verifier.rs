//! Verifying servers' certificates (a proxy dialing upstreams) with a CA secret:
//! [`ServerVerifier`].

use std::{fmt, sync::Arc};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use sds_core::{Reader, SecretName, Version};

use crate::{Driver, Error, follow::Follow, trust};

/// A [`ServerCertVerifier`] that requires the server's certificate to chain to the CA
/// certificates of a `validation_context` secret (typically `<name>-cacert`), to be valid for
/// the server name dialed and not revoked by the secret's CRLs, and follows its rotations.
///
/// Built with [`ServerVerifier::follow`], and installed with rustls'
/// `ClientConfig::builder().dangerous().with_custom_certificate_verifier(..)` (the checks are
/// webpki's own; "dangerous" is rustls' name for any custom verifier). Each version of the
/// secret becomes a rustls [`WebPkiServerVerifier`] once, swapped in atomically; every check
/// delegates to the one current then. A version rustls refuses keeps the previous verifier
/// (reported at WARN). Until a usable version exists, every server certificate is refused
/// with an error that names the secret. Signatures are checked with the ring provider.
///
/// Cheap to clone: clones share the verifier.
#[derive(Clone)]
pub struct ServerVerifier {
    inner: Arc<Follow<Arc<WebPkiServerVerifier>>>,
    provider: Arc<CryptoProvider>,
}

// === impl ServerVerifier ===

impl ServerVerifier {
    /// Verifies server certificates with secret `name` of `reader`'s snapshots (a
    /// `validation_context`), prepared from the current snapshot at once; the [`Driver`]
    /// follows the next ones: spawn it.
    pub fn follow(reader: Reader, name: SecretName) -> (ServerVerifier, Driver) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let prepare = {
            let provider = Arc::clone(&provider);
            Box::new(move |name: &SecretName, secret: &sds_core::Secret| {
                trust::server_verifier(name, secret, &provider)
            })
        };
        let (inner, driver) = Follow::new(reader, vec![name], "server CA", prepare);
        (ServerVerifier { inner, provider }, driver)
    }

    /// Prepares the secret now if its version changed: what the [`Driver`] does on every
    /// new snapshot. `Ok` when its current version is in use; otherwise why not (the last
    /// good version, if any, stays in use).
    pub fn refresh(&self) -> Result<(), Error> {
        self.inner.refresh()
    }

    /// The version of the secret new handshakes verify with; `None` while none was usable.
    pub fn version(&self) -> Option<Version> {
        self.inner.version(0)
    }

    /// The followed secret.
    pub fn secret(&self) -> &SecretName {
        &self.inner.names()[0]
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Cloned out of the swap: the check itself holds nothing.
        let verifier = self.inner.get(0).map_err(trust::refuse_peer)?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        trust::verify_tls12_signature(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        trust::verify_tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        trust::supported_verify_schemes(&self.provider)
    }
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("secrets", &self.inner)
            .finish_non_exhaustive()
    }
}
