//! sds-core credentials as rustls signs with them: `tls_certificate` secrets become
//! [`rustls::sign::CertifiedKey`]s, once per version.

use std::sync::Arc;

use rustls::{
    pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer},
    sign,
};
use sds_core::{CertifiedKey, KeyFormat, Secret, SecretName};

use crate::Error;

/// The kind of secret a certificate is, as [`Secret::kind`] names it.
pub(crate) const TLS_CERTIFICATE: &str = "tls_certificate";

/// The certificate of `secret`, or why it is not one.
pub(crate) fn prepare(
    name: &SecretName,
    secret: &Secret,
) -> Result<Arc<sign::CertifiedKey>, Error> {
    match secret {
        Secret::TlsCertificate(credential) => {
            certified_key(credential)
                .map(Arc::new)
                .map_err(|source| Error::KeyRefused {
                    name: name.clone(),
                    version: credential.version(),
                    source,
                })
        }
        other => Err(Error::WrongKind {
            name: name.clone(),
            expected: TLS_CERTIFICATE,
            found: other.kind(),
        }),
    }
}

/// `credential` as rustls signs with it (ring), with its OCSP staple: what [`ServerCerts`]
/// and [`ClientCert`] present, and what `sds-server` presents on its own TLS channel. The
/// key bytes are borrowed, not copied: ring keeps its own parsed key. Call it once per
/// version, not per handshake.
///
/// # Errors
/// A key rustls' ring provider cannot sign with (e.g. an RSA key larger than ring loads, or
/// an encoding it does not read), or one that does not match the leaf.
///
/// [`ServerCerts`]: crate::ServerCerts
/// [`ClientCert`]: crate::ClientCert
pub fn certified_key(credential: &CertifiedKey) -> Result<sign::CertifiedKey, rustls::Error> {
    let secret = credential.key().secret_der();
    let der = match credential.key().format() {
        KeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(secret)),
        KeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(secret)),
        KeyFormat::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(secret)),
        other => {
            return Err(rustls::Error::General(format!(
                "private keys in {other:?} encoding are not supported"
            )));
        }
    };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)?;
    let mut key = sign::CertifiedKey::new(credential.chain().to_vec(), signing_key);
    match key.keys_match() {
        // sds-core checked that the key is the leaf's; ring may not say.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(error) => return Err(error),
    }
    key.ocsp = credential.ocsp_staple().map(|staple| staple.der().to_vec());
    Ok(key)
}
