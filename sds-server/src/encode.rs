//! Domain to wire: the only place that knows how a [`Secret`] and a response look on the wire.
//!
//! Each secret version is encoded once; every stream gets a clone of the same `Bytes`. A
//! response is the stream's own few bytes (the gRPC prefix and its nonce) in front of them.

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
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};
use sds_core::{Secret, SecretName, Version};
use sds_proto::{
    SECRET_TYPE_URL,
    envoy::{
        config::core::v3::{DataSource, data_source::Specifier},
        extensions::transport_sockets::tls::v3 as tls,
        service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse, Resource},
    },
    google::protobuf::Any,
};
use zeroize::Zeroizing;

use crate::{
    framing::{Frame, PREFIX, frame, put_prefix, secret_bytes},
    session::Nonce,
};

/// Encodes secrets into `Any`s, once per (name, version).
///
/// An entry lives while its secret does: once no snapshot and no stream holds a secret
/// (it was rotated or deleted), the next encode drops its bytes, key material included. A
/// name can have several live versions at once (streams still catching up while the next
/// rotation arrives); each is encoded once.
#[derive(Default)]
pub(crate) struct Encoder {
    cache: Mutex<HashMap<SecretName, Vec<Entry>>>,
    encodes: AtomicU64,
}

struct Entry {
    version: Version,
    secret: Weak<Secret>,
    bytes: Bytes,
    /// The state-of-the-world response fields for this secret alone (see
    /// [`Encoder::sotw_fields`]), made with `bytes`.
    sotw: Bytes,
}

impl Encoder {
    /// The `Any` carrying `secret` under `name`, from the cache when this version was encoded
    /// before. `None` for a kind of secret this server cannot encode.
    pub(crate) fn any(&self, name: &SecretName, secret: &Arc<Secret>) -> Option<Any> {
        let value = self.entry(name, secret, |e| e.bytes.clone())?;
        Some(Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value,
        })
    }

    /// The frame of a state-of-the-world response: `resources` (every secret the stream
    /// holds, `version` the response's version) with this stream's `nonce`.
    ///
    /// With one secret (Envoy's one stream per secret) the frame is the nonce field followed
    /// by the fields cached with that secret's encoding: no copy of the secret per stream.
    pub(crate) fn sotw(
        &self,
        resources: &[(SecretName, Arc<Secret>)],
        version: Version,
        nonce: Nonce,
    ) -> Frame {
        if let [(name, secret)] = resources
            && let Some(shared) = self.entry(name, secret, |e| e.sotw.clone())
        {
            debug_assert_eq!(version, secret.version());
            let mut digits = [0; 20];
            let nonce = nonce.digits(&mut digits);
            // DiscoveryResponse.nonce = 5
            let field = 1 + encoded_len_varint(nonce.len() as u64) + nonce.len();
            let mut head = Vec::with_capacity(PREFIX + field);
            put_prefix(&mut head, field + shared.len());
            encode_key(5, WireType::LengthDelimited, &mut head);
            encode_varint(nonce.len() as u64, &mut head);
            head.extend_from_slice(nonce);
            return Frame::split(Bytes::from(head), shared);
        }
        frame(&DiscoveryResponse {
            version_info: version.to_string(),
            resources: resources
                .iter()
                .filter_map(|(name, secret)| self.any(name, secret))
                .collect(),
            canary: false,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce.to_string(),
        })
    }

    /// The frame of an incremental response: `resources` changed, `removed` gone, with this
    /// stream's `nonce`.
    pub(crate) fn delta(
        &self,
        resources: &[(SecretName, Arc<Secret>)],
        removed: &[SecretName],
        nonce: Nonce,
    ) -> Frame {
        frame(&DeltaDiscoveryResponse {
            system_version_info: String::new(),
            resources: resources
                .iter()
                .filter_map(|(name, secret)| {
                    Some(Resource {
                        name: name.as_str().to_owned(),
                        version: secret.version().to_string(),
                        resource: Some(self.any(name, secret)?),
                        aliases: Vec::new(),
                    })
                })
                .collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            removed_resources: removed.iter().map(|n| n.as_str().to_owned()).collect(),
            nonce: nonce.to_string(),
        })
    }

    /// Reads the cache entry of this version of `secret`, encoding it if needed.
    fn entry<T>(
        &self,
        name: &SecretName,
        secret: &Arc<Secret>,
        read: impl FnOnce(&Entry) -> T,
    ) -> Option<T> {
        let version = secret.version();
        let mut cache = self.cache.lock();
        let cached = cache
            .get(name)
            .and_then(|versions| versions.iter().find(|e| e.version == version));
        if let Some(entry) = cached {
            return Some(read(entry));
        }
        let bytes = encode_secret(name, secret)?;
        let sotw = encode_sotw_fields(version, &bytes);
        self.encodes.fetch_add(1, Ordering::Relaxed);
        cache.retain(|_, versions| {
            versions.retain(|entry| entry.secret.strong_count() > 0);
            !versions.is_empty()
        });
        let entry = Entry {
            version,
            secret: Arc::downgrade(secret),
            bytes,
            sotw,
        };
        let value = read(&entry);
        cache.entry(name.clone()).or_default().push(entry);
        Some(value)
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

fn inline(bytes: Bytes) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
    })
}

/// `version_info`, `resources` (one `Any` holding `secret`) and `type_url` of a
/// state-of-the-world `DiscoveryResponse`.
fn encode_sotw_fields(version: Version, secret: &Bytes) -> Bytes {
    let fields = DiscoveryResponse {
        version_info: version.to_string(),
        resources: vec![Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value: secret.clone(),
        }],
        canary: false,
        type_url: SECRET_TYPE_URL.to_owned(),
        // Empty, so not encoded: each stream writes its own.
        nonce: String::new(),
    };
    let mut buf = Zeroizing::new(Vec::with_capacity(fields.encoded_len()));
    fields.encode_raw(&mut *buf);
    secret_bytes(buf)
}

/// Encodes `secret` as an `envoy.extensions.transport_sockets.tls.v3.Secret` named `name`.
fn encode_secret(name: &SecretName, secret: &Secret) -> Option<Bytes> {
    let kind = match secret {
        Secret::TlsCertificate(cert) => {
            let key = cert.key().secret_pem();
            tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: inline(Bytes::from(cert.chain_pem())),
                private_key: inline(secret_bytes(Zeroizing::new(key.as_bytes().to_vec()))),
                ocsp_staple: cert
                    .ocsp_staple()
                    .map(|staple| Bytes::copy_from_slice(staple.der()))
                    .and_then(inline),
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
