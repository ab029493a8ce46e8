//! Domain to proto: the only place that knows how a [`Secret`] looks on the wire.
//!
//! Each secret version is encoded once; every stream gets a clone of the same `Bytes`.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use sds_core::{Secret, SecretName, Version};
use sds_proto::{
    envoy::{
        config::core::v3::{DataSource, data_source::Specifier},
        extensions::transport_sockets::tls::v3 as tls,
    },
    google::protobuf::Any,
};
use zeroize::Zeroizing;

use crate::session::SECRET_TYPE_URL;

/// Encodes secrets into `Any`s, once per (name, version).
///
/// An entry lives while its secret does: once no snapshot and no stream holds a secret
/// (it was rotated or deleted), the next encode drops its bytes, key material included.
#[derive(Default)]
pub(crate) struct Encoder {
    cache: Mutex<HashMap<SecretName, Entry>>,
    encodes: AtomicU64,
}

struct Entry {
    version: Version,
    secret: Weak<Secret>,
    bytes: Bytes,
}

impl Encoder {
    /// The `Any` carrying `secret` under `name`, from the cache when this version was encoded
    /// before. `None` for a kind of secret this server cannot encode.
    pub(crate) fn any(&self, name: &SecretName, secret: &Arc<Secret>) -> Option<Any> {
        let version = secret.version();
        let mut cache = self.cache.lock();
        let value = match cache.get(name) {
            Some(entry) if entry.version == version => entry.bytes.clone(),
            _ => {
                let bytes = encode_secret(name, secret)?;
                self.encodes.fetch_add(1, Ordering::Relaxed);
                cache.retain(|_, entry| entry.secret.strong_count() > 0);
                cache.insert(
                    name.clone(),
                    Entry {
                        version,
                        secret: Arc::downgrade(secret),
                        bytes: bytes.clone(),
                    },
                );
                bytes
            }
        };
        Some(Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value,
        })
    }

    /// How many encodes were performed so far.
    pub(crate) fn encodes(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Encoder {
    // Never the cached bytes: they hold private keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("cached", &self.cache.lock().len())
            .field("encodes", &self.encodes())
            .finish()
    }
}

/// Bytes that are zeroized when the last clone is dropped (they may hold a private key).
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn secret_bytes(bytes: Zeroizing<Vec<u8>>) -> Bytes {
    Bytes::from_owner(ZeroizingBytes(bytes))
}

fn inline(bytes: Bytes) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
    })
}

/// Encodes `secret` as an `envoy.extensions.transport_sockets.tls.v3.Secret` named `name`.
fn encode_secret(name: &SecretName, secret: &Secret) -> Option<Bytes> {
    let kind = match secret {
        Secret::TlsCertificate(cert) => {
            let key = cert.key().secret_pem();
            tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: inline(Bytes::from(cert.chain_pem())),
                private_key: inline(secret_bytes(Zeroizing::new(key.as_bytes().to_vec()))),
                ocsp_staple: None,
            })
        }
        Secret::ValidationContext(bundle) => {
            tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
                trusted_ca: inline(Bytes::from(bundle.ca_pem())),
                crl: bundle.crl_pem().map(Bytes::from).and_then(inline),
                only_verify_leaf_cert_crl: false,
            })
        }
        // `Secret` is non-exhaustive: a kind added to sds-core later is not served by this
        // version of the server (never sent half-encoded).
        other => {
            tracing::error!(secret = %name, kind = other.kind(), "cannot encode this kind of secret; not served");
            return None;
        }
    };
    let message = tls::Secret {
        name: name.as_str().to_owned(),
        r#type: Some(kind),
    };
    let mut buf = Zeroizing::new(Vec::with_capacity(message.encoded_len()));
    message.encode_raw(&mut *buf);
    Some(secret_bytes(buf))
}
