//! The credential model: what a secret is once it has been parsed and validated.
//!
//! Values of these types exist only after validation succeeded (see [`CertifiedKey::from_pem`]
//! and [`TrustBundle::from_pem`]), so a `Secret` that exists is one Envoy will accept.

use std::fmt;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use zeroize::Zeroizing;

use crate::{OcspStaple, Version};

/// A validated secret, ready to be served.
#[derive(Debug)]
#[non_exhaustive]
pub enum Secret {
    /// A certificate chain and its private key (Envoy's `TlsCertificate`).
    TlsCertificate(CertifiedKey),
    /// Trust anchors and optional CRLs that verify peers (Envoy's `CertificateValidationContext`).
    ValidationContext(TrustBundle),
}

// === impl Secret ===

impl Secret {
    /// The content-derived version of this secret.
    pub fn version(&self) -> Version {
        match self {
            Secret::TlsCertificate(c) => c.version,
            Secret::ValidationContext(v) => v.version,
        }
    }

    /// When this secret stops being usable: its leaf's `notAfter` for a certificate, the
    /// earliest `notAfter` of its CA certificates for a trust bundle (`None` if it holds none).
    pub fn not_after(&self) -> Option<UnixTime> {
        match self {
            Secret::TlsCertificate(c) => Some(c.leaf.not_after),
            Secret::ValidationContext(v) => v.anchor_info.iter().map(|a| a.not_after).min(),
        }
    }

    /// The certificate [`Secret::not_after`] is about: the leaf, or the CA certificate of a
    /// trust bundle that expires first.
    pub fn expiring_certificate(&self) -> Option<&CertificateInfo> {
        match self {
            Secret::TlsCertificate(c) => Some(&c.leaf),
            Secret::ValidationContext(v) => v.anchor_info.iter().min_by_key(|a| a.not_after),
        }
    }

    /// A short human-readable kind, for logs: `tls_certificate` or `validation_context`.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::TlsCertificate(_) => "tls_certificate",
            Secret::ValidationContext(_) => "validation_context",
        }
    }
}

impl From<CertifiedKey> for Secret {
    fn from(c: CertifiedKey) -> Self {
        Secret::TlsCertificate(c)
    }
}

impl From<TrustBundle> for Secret {
    fn from(v: TrustBundle) -> Self {
        Secret::ValidationContext(v)
    }
}

/// A certificate chain, leaf first, and the private key that matches its leaf.
#[derive(Debug)]
pub struct CertifiedKey {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKey,
    pub(crate) leaf: CertificateInfo,
    pub(crate) ocsp: Option<OcspStaple>,
    pub(crate) version: Version,
}

// === impl CertifiedKey ===

impl CertifiedKey {
    /// The chain in DER, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key of the leaf.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// What the leaf says about itself (subject, validity, names).
    pub fn leaf(&self) -> &CertificateInfo {
        &self.leaf
    }

    /// The OCSP response Envoy staples for the leaf, if one was attached with
    /// [`CertifiedKey::with_ocsp_staple`].
    pub fn ocsp_staple(&self) -> Option<&OcspStaple> {
        self.ocsp.as_ref()
    }

    /// The content-derived version of this credential (chain, key and OCSP staple).
    pub fn version(&self) -> Version {
        self.version
    }
}

/// The encoding a private key was given in. Served back to Envoy in the same encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFormat {
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8, any algorithm).
    Pkcs8,
    /// `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1).
    Pkcs1,
    /// `-----BEGIN EC PRIVATE KEY-----` (SEC1).
    Sec1,
}

/// The algorithm of a private key (and of the leaf certificate it matches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size in bits.
        bits: u32,
    },
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

/// `RSA 2048`, `ECDSA P-256`, `ECDSA P-384` or `Ed25519`.
impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyAlgorithm::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyAlgorithm::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyAlgorithm::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// A private key. Never `Clone`; `Debug` prints `[redacted]`; the bytes are zeroized on drop.
pub struct PrivateKey {
    pub(crate) der: Zeroizing<Vec<u8>>,
    pub(crate) format: KeyFormat,
    pub(crate) algorithm: KeyAlgorithm,
}

// === impl PrivateKey ===

impl PrivateKey {
    /// The key's DER bytes. Secret material: never log it.
    pub fn secret_der(&self) -> &[u8] {
        &self.der
    }

    /// The encoding the key was given in.
    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("format", &self.format)
            .field("algorithm", &self.algorithm)
            .field("der", &"[redacted]")
            .finish()
    }
}

/// Trust anchors (CA certificates) and optional certificate revocation lists.
#[derive(Debug)]
pub struct TrustBundle {
    pub(crate) anchors: Vec<CertificateDer<'static>>,
    /// What each of `anchors` says about itself, parsed once at validation.
    pub(crate) anchor_info: Vec<CertificateInfo>,
    pub(crate) crls: Vec<CertificateRevocationListDer<'static>>,
    pub(crate) version: Version,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// The CA certificates, in the order given.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// What each CA certificate says about itself (subject, validity, names), in the order
    /// of [`TrustBundle::anchors`].
    pub fn anchor_info(&self) -> &[CertificateInfo] {
        &self.anchor_info
    }

    /// The CRLs, possibly none.
    pub fn crls(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    /// The content-derived version of this bundle.
    pub fn version(&self) -> Version {
        self.version
    }
}

/// What a certificate says about itself, kept as owned data (the DER is kept separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) serial: String,
    pub(crate) not_before: UnixTime,
    pub(crate) not_after: UnixTime,
    pub(crate) dns_names: Vec<String>,
    pub(crate) uris: Vec<String>,
}

// === impl CertificateInfo ===

impl CertificateInfo {
    /// The subject distinguished name, RFC 4514 style.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer distinguished name, RFC 4514 style.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The serial number in hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Start of the validity window.
    pub fn not_before(&self) -> UnixTime {
        self.not_before
    }

    /// End of the validity window.
    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }

    /// DNS subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// URI subject alternative names, e.g. SPIFFE IDs
    /// (`spiffe://cluster.local/ns/default/sa/httpbin`).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }
}
