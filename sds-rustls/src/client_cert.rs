//! The client certificate a proxy presents to upstreams that require one: [`ClientCert`].

use std::{fmt, sync::Arc};

use rustls::{SignatureScheme, client::ResolvesClientCert, sign};
use sds_core::{Reader, SecretName, Version};

use crate::{Driver, Error, follow::Follow, signing};

/// A [`ResolvesClientCert`] that presents a `tls_certificate` secret of a [`Reader`] to
/// servers that ask for a client certificate, and follows its rotations.
///
/// Built with [`ClientCert::follow`]. The secret is turned into a
/// [`rustls::sign::CertifiedKey`] once per version and swapped in atomically; a handshake
/// reads it without a lock. A version rustls cannot use keeps the previous one (reported at
/// WARN). Until a usable version exists, no certificate is offered (and a server that
/// requires one refuses the handshake).
///
/// Cheap to clone: clones share the prepared key.
#[derive(Clone)]
pub struct ClientCert {
    inner: Arc<Follow<Arc<sign::CertifiedKey>>>,
}

// === impl ClientCert ===

impl ClientCert {
    /// Presents secret `name` of `reader`'s snapshots (a `tls_certificate`), prepared from
    /// the current snapshot at once; the [`Driver`] follows the next ones: spawn it.
    pub fn follow(reader: Reader, name: SecretName) -> (ClientCert, Driver) {
        let (inner, driver) = Follow::new(
            reader,
            vec![name],
            "client certificate",
            Box::new(signing::prepare),
        );
        (ClientCert { inner }, driver)
    }

    /// Prepares the secret now if its version changed: what the [`Driver`] does on every
    /// new snapshot. `Ok` when its current version is in use; otherwise why not (the last
    /// good version, if any, stays in use).
    pub fn refresh(&self) -> Result<(), Error> {
        self.inner.refresh()
    }

    /// The version of the secret new handshakes present; `None` while none was usable.
    pub fn version(&self) -> Option<Version> {
        self.inner.version(0)
    }

    /// The followed secret.
    pub fn secret(&self) -> &SecretName {
        &self.inner.names()[0]
    }
}

impl ResolvesClientCert for ClientCert {
    /// The current certificate, whatever CA names the server hints: the secret is the one
    /// the embedder chose for this upstream.
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<sign::CertifiedKey>> {
        self.inner.value(0)
    }

    fn has_certs(&self) -> bool {
        self.inner.version(0).is_some()
    }
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("secrets", &self.inner)
            .finish()
    }
}
