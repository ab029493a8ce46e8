//! Verifying clients' certificates (mutual TLS) with a CA secret: [`ClientVerifier`].

use std::{fmt, sync::Arc};

use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use sds_core::{Reader, SecretName, Version};

use crate::{Driver, Error, follow::Follow, trust};

/// A [`ClientCertVerifier`] that requires a client certificate chaining to the CA
/// certificates of a `validation_context` secret (typically `<name>-cacert`) and not revoked
/// by its CRLs, and follows its rotations.
///
/// Built with [`ClientVerifier::follow`]. Each version of the secret becomes a rustls
/// [`WebPkiClientVerifier`](rustls::server::WebPkiClientVerifier) once, swapped in
/// atomically; every check delegates to the one current then, so a CA rotation applies from
/// the next handshake. A version rustls refuses keeps the previous verifier (reported at
/// WARN). Until a usable version exists, every client certificate is refused with an error
/// that names the secret (e.g. "secret `gw-cacert` is not published").
///
/// Client certificates are mandatory. With CRLs, the whole chain is checked and every CA of
/// a client's chain needs a CRL (as in Envoy). The server sends no CA names in its
/// certificate request (see [`ClientCertVerifier::root_hint_subjects`]): clients offer the
/// certificate they have. Signatures are checked with the ring provider.
///
/// Cheap to clone: clones share the verifier.
#[derive(Clone)]
pub struct ClientVerifier {
    inner: Arc<Follow<Arc<dyn ClientCertVerifier>>>,
    provider: Arc<CryptoProvider>,
}

// === impl ClientVerifier ===

impl ClientVerifier {
    /// Verifies client certificates with secret `name` of `reader`'s snapshots (a
    /// `validation_context`), prepared from the current snapshot at once; the [`Driver`]
    /// follows the next ones: spawn it.
    pub fn follow(reader: Reader, name: SecretName) -> (ClientVerifier, Driver) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let prepare = {
            let provider = Arc::clone(&provider);
            Box::new(move |name: &SecretName, secret: &sds_core::Secret| {
                trust::client_verifier(name, secret, &provider)
            })
        };
        let (inner, driver) = Follow::new(reader, vec![name], "client CA", prepare);
        (ClientVerifier { inner, provider }, driver)
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

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// Empty: rustls lends the hints from the verifier for as long as the connection needs
    /// them, which a verifier swapped at any time cannot do. An empty list tells clients to
    /// offer any certificate they have.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Cloned out of the swap: the check itself holds nothing.
        let verifier = self.inner.get(0).map_err(trust::refuse_peer)?;
        verifier.verify_client_cert(end_entity, intermediates, now)
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

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("secrets", &self.inner)
            .finish_non_exhaustive()
    }
}
