//! The server's own certificates, picked by SNI: [`ServerCerts`].

use std::{collections::HashMap, fmt, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign,
};
use sds_core::{Reader, SecretName, Untrusted, Version};

use crate::{Driver, Error, follow::Follow, signing, sni::Hosts};

/// Most characters of a client's SNI a log line shows.
const MAX_SNI_CHARS: usize = 64;

/// A [`ResolvesServerCert`] that presents the `tls_certificate` secrets of a [`Reader`],
/// picked by the client's SNI, and follows their rotations.
///
/// Built with [`ServerCerts::builder`]. Each secret is turned into a
/// [`rustls::sign::CertifiedKey`] (chain, ring signing key, OCSP staple) once per version;
/// a handshake only reads the prepared keys through an atomic pointer (no lock) and clones
/// one `Arc`. A new version is used from the first handshake after the [`Driver`] (or
/// [`ServerCerts::refresh`]) prepared it; handshakes in progress keep the key they picked.
///
/// A version rustls cannot use (e.g. an RSA key larger than ring loads) is reported at WARN
/// and the previous version stays in use. A secret the source removes stays in use in its
/// last version, as Envoy keeps it. With no SNI, or an SNI no host matches, the default
/// secret is presented if one was given; otherwise, or while the picked secret has never
/// been usable, the handshake fails with an `access_denied` alert.
///
/// Cheap to clone: clones share the prepared keys.
#[derive(Clone)]
pub struct ServerCerts {
    hosts: Arc<Hosts>,
    certs: Arc<Follow<Arc<sign::CertifiedKey>>>,
}

/// Configures a [`ServerCerts`]: which secret each host gets. See [`ServerCerts::builder`].
#[derive(Debug)]
pub struct ServerCertsBuilder {
    reader: Reader,
    hosts: Vec<(String, SecretName)>,
    default: Option<SecretName>,
}

// === impl ServerCerts ===

impl ServerCerts {
    /// Starts a resolver over the secrets of `reader`'s snapshots. Map hosts to secrets with
    /// [`ServerCertsBuilder::host`], then [`build`](ServerCertsBuilder::build) it.
    pub fn builder(reader: Reader) -> ServerCertsBuilder {
        ServerCertsBuilder {
            reader,
            hosts: Vec::new(),
            default: None,
        }
    }

    /// Prepares the secrets that changed in the reader's current snapshot, now: what the
    /// [`Driver`] does on every new snapshot, for tests and embedders without one.
    ///
    /// `Ok` when every mapped secret is in use in its current version. Otherwise the first
    /// problem ([`Error::NotPublished`], [`Error::WrongKind`], [`Error::KeyRefused`], ...):
    /// the secrets concerned keep their last good version, if they had one.
    pub fn refresh(&self) -> Result<(), Error> {
        self.certs.refresh()
    }

    /// The version of secret `name` that new handshakes present; `None` if it is not mapped
    /// or was never usable.
    pub fn version(&self, name: &SecretName) -> Option<Version> {
        let slot = self.certs.names().iter().position(|n| n == name)?;
        self.certs.version(slot)
    }

    /// The secret a handshake with this SNI (`None`: without SNI) presents, by the host
    /// mapping alone.
    pub fn secret_for(&self, sni: Option<&str>) -> Option<&SecretName> {
        let slot = self.hosts.slot(sni)?;
        self.certs.names().get(slot)
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<sign::CertifiedKey>> {
        let sni = client_hello.server_name();
        let Some(slot) = self.hosts.slot(sni) else {
            tracing::debug!(
                sni = %Untrusted::new(sni.unwrap_or(""), MAX_SNI_CHARS),
                "no certificate for this server name and no default; refusing the handshake"
            );
            return None;
        };
        let key = self.certs.value(slot);
        if key.is_none() {
            tracing::debug!(
                secret = ?self.certs.names().get(slot),
                "the certificate for this server name was never usable; refusing the handshake"
            );
        }
        key
    }
}

impl fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.certs.names();
        let (patterns, default) = self.hosts.patterns();
        let hosts: Vec<(String, Option<&SecretName>)> = patterns
            .into_iter()
            .map(|(pattern, slot)| (pattern, names.get(slot)))
            .collect();
        f.debug_struct("ServerCerts")
            .field("hosts", &hosts)
            .field("default", &default.and_then(|slot| names.get(slot)))
            .field("secrets", &self.certs)
            .finish()
    }
}

// === impl ServerCertsBuilder ===

impl ServerCertsBuilder {
    /// Presents secret `name` to clients whose SNI matches `pattern`: a host name
    /// (`example.com`), or `*.` and a domain (`*.example.com`) for any host one label below
    /// it (`www.example.com`, not `example.com` nor `a.b.example.com`). Case-insensitive. An
    /// exact host wins over a wildcard. Several patterns may share one secret; it is
    /// prepared once.
    pub fn host(mut self, pattern: impl Into<String>, name: SecretName) -> Self {
        self.hosts.push((pattern.into(), name));
        self
    }

    /// Presents secret `name` to clients that send no SNI, or one no pattern matches.
    /// Without it, those handshakes fail.
    pub fn default_secret(mut self, name: SecretName) -> Self {
        self.default = Some(name);
        self
    }

    /// The resolver, prepared from the reader's current snapshot (if it has one; see
    /// [`Reader::ready`]), and the [`Driver`] that follows the next ones: spawn it.
    ///
    /// Fails on an invalid or duplicate host pattern, never on the secrets themselves:
    /// call [`ServerCerts::refresh`] to know whether they are usable now.
    pub fn build(self) -> Result<(ServerCerts, Driver), Error> {
        let mut names: Vec<SecretName> = Vec::new();
        let mut slots: HashMap<SecretName, usize> = HashMap::new();
        let mut slot_of = |name: SecretName| {
            *slots.entry(name.clone()).or_insert_with(|| {
                names.push(name);
                names.len() - 1
            })
        };
        let mut hosts = Hosts::default();
        for (pattern, name) in self.hosts {
            hosts.insert(&pattern, slot_of(name))?;
        }
        if let Some(name) = self.default {
            hosts.set_default(slot_of(name));
        }
        let (certs, driver) = Follow::new(
            self.reader,
            names,
            "server certificate",
            Box::new(signing::prepare),
        );
        let resolver = ServerCerts {
            hosts: Arc::new(hosts),
            certs,
        };
        Ok((resolver, driver))
    }
}
