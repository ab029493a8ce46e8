//! Building credentials from PEM inputs ([`CertifiedKey::from_pem`], [`TrustBundle::from_pem`])
//! and writing them back as PEM for Envoy.
//!
//! What is served is always re-encoded from the validated DER, never the input text: comments,
//! `-text` dumps, CRLF line endings and any block that was not asked for (a private key pasted
//! into a certificate file) never reach Envoy.

use std::fmt;

use rustls::crypto::ring::sign::any_supported_type;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer, UnixTime,
    pem::{PemObject, SectionKind},
};
use x509_parser::{
    certificate::X509Certificate, der_parser::der::parse_der_sequence,
    oid_registry::OID_PKCS1_RSAENCRYPTION, x509::SubjectPublicKeyInfo,
};
use zeroize::Zeroizing;

use crate::{
    CertifiedKey, Error, ErrorKind, KeyFormat, PrivateKey, SecretName, TrustBundle, Untrusted,
    Version,
    error::ParseError,
    pem::{self, Block},
    x509,
};

/// Largest input [`CertifiedKey::from_pem`] and [`TrustBundle::from_pem`] accept, in bytes
/// (1 MiB). Real chains, keys and CA bundles are a few kilobytes; the public Mozilla bundle is
/// about 200 KiB.
pub const MAX_INPUT_LEN: usize = 1024 * 1024;

/// Largest RSA modulus ring loads as a private key; larger keys are checked by comparing their
/// public components with the certificate's.
const RING_MAX_RSA_BITS: u32 = 4096;

/// Why a key that is neither loadable nor recognisable as RSA cannot be used.
const NOT_LOADABLE: &str = "not a well-formed RSA, ECDSA P-256/P-384 or Ed25519 private key";

/// What [`ErrorKind::MissingPemBlock`] says a key input should hold.
const KEY_LABELS: &str = "PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY";

/// Most characters of a location an error shows (escaped, see [`Untrusted`]).
const MAX_LOCATION_CHARS: usize = 512;

/// Most characters of a certificate's subject or issuer an error or log line shows.
pub(crate) const MAX_NAME_CHARS: usize = 256;

/// One input blob and where it came from, for error messages: e.g.
/// `/etc/creds/httpbin/tls.key` or ``Secret istio-system/httpbin key `tls.key` ``.
///
/// `Debug` prints the location (escaped and cut short) and the length, never the bytes.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// Where the bytes came from, as the user would recognise it.
    pub location: &'a str,
    /// The bytes, PEM text.
    pub bytes: &'a [u8],
}

// === impl Input ===

impl<'a> Input<'a> {
    /// An input of `bytes` read from `location`.
    pub fn new(location: &'a str, bytes: &'a [u8]) -> Self {
        Self { location, bytes }
    }
}

impl fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field(
                "location",
                &Untrusted::new(self.location, MAX_LOCATION_CHARS),
            )
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Which credential and which input a check is about: the context every error carries.
#[derive(Clone, Copy)]
pub(crate) struct Origin<'a> {
    credential: &'a SecretName,
    location: &'a str,
}

// === impl Origin ===

impl<'a> Origin<'a> {
    pub(crate) fn new(credential: &'a SecretName, location: &'a str) -> Self {
        Self {
            credential,
            location,
        }
    }

    pub(crate) fn credential(&self) -> SecretName {
        self.credential.clone()
    }

    /// The location as errors show it: escaped and cut short.
    pub(crate) fn location(&self) -> String {
        Untrusted::new(self.location, MAX_LOCATION_CHARS).to_string()
    }

    /// The error that `kind` is wrong with this input.
    pub(crate) fn error(&self, kind: ErrorKind) -> Error {
        Error::input(self.credential(), self.location(), kind)
    }
}

// === impl CertifiedKey ===

impl CertifiedKey {
    /// Parses and validates a PEM certificate chain (leaf first) and its PEM private key.
    ///
    /// The chain holds one or more `CERTIFICATE` blocks: the leaf, then optionally its
    /// intermediates, each followed by its issuer, and optionally the root. The key input holds
    /// exactly one unencrypted private key, PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`)
    /// or SEC1 (`EC PRIVATE KEY`). Other blocks and text around blocks are ignored, and CRLF
    /// line endings are fine.
    ///
    /// Refused: empty or oversized inputs, DER instead of PEM, malformed PEM or X.509, a chain
    /// out of order or with a certificate twice, a leaf outside its validity window at `now`,
    /// an expired intermediate, a leaf key Envoy cannot use (RSA below 2048 bits, curves other
    /// than P-256 and P-384, anything but RSA, ECDSA and Ed25519), an encrypted key, several
    /// keys, and a key that is not the leaf's.
    pub fn from_pem(
        credential: &SecretName,
        chain: Input<'_>,
        key: Input<'_>,
        now: UnixTime,
    ) -> Result<CertifiedKey, Error> {
        let chain_origin = Origin::new(credential, chain.location);
        let key_origin = Origin::new(credential, key.location);

        let ders = read_certificates(chain_origin, chain.bytes)?;
        let (leaf, key) = {
            let certs = parse_certificates(chain_origin, &ders)?;
            let leaf = certs
                .first()
                .expect("read_certificates returns at least one certificate");
            let algorithm = x509::leaf_key_algorithm(chain_origin, leaf.public_key())?;
            x509::check_chain(chain_origin, &ders, &certs, now)?;

            let key_der = read_private_key(key_origin, key.bytes)?;
            check_key_matches(key_origin, chain.location, &key_der, leaf.public_key())?;
            let key = PrivateKey {
                der: key_der.der,
                format: key_der.format,
                algorithm,
            };
            (x509::info(leaf), key)
        };

        let version = certified_key_version(&ders, &key.der, None);
        Ok(CertifiedKey {
            chain: ders,
            key,
            leaf,
            ocsp: None,
            version,
        })
    }

    /// The chain as PEM, re-encoded from the validated DER (LF line endings, 64-column base64),
    /// as served to Envoy.
    pub fn chain_pem(&self) -> String {
        pem::encode_all(
            pem::CERTIFICATE_LABEL,
            self.chain.iter().map(|c| c.as_ref()),
        )
    }
}

/// The version of a [`CertifiedKey`]: the digest of its chain, its private key and its OCSP
/// staple. The one place this rule is written.
pub(crate) fn certified_key_version(
    chain: &[CertificateDer<'_>],
    key: &[u8],
    ocsp_staple: Option<&[u8]>,
) -> Version {
    Version::digest(|h| {
        h.update(b"tls_certificate");
        h.update(&(chain.len() as u64).to_be_bytes());
        for der in chain {
            h.update(der);
        }
        h.update(key);
        if let Some(staple) = ocsp_staple {
            h.update(b"ocsp_staple");
            h.update(staple);
        }
    })
}

// === impl PrivateKey ===

impl PrivateKey {
    /// The key as PEM under its original format's label, re-encoded from DER. Secret material:
    /// the text is zeroized when dropped; never log it.
    pub fn secret_pem(&self) -> Zeroizing<String> {
        let label = match self.format {
            KeyFormat::Pkcs8 => "PRIVATE KEY",
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
        };
        // Exact capacity: encode_into never reallocates, so no copy is left behind unzeroized.
        let mut out = Zeroizing::new(String::with_capacity(pem::encoded_len(
            label,
            self.der.len(),
        )));
        pem::encode_into(&mut out, label, &self.der);
        out
    }
}

// === impl TrustBundle ===

impl TrustBundle {
    /// Parses a PEM CA bundle (one or more CA certificates) and optional PEM CRL(s).
    ///
    /// Every `CERTIFICATE` block of `ca` must parse as X.509; `X509 CRL` blocks in `ca` are
    /// taken as CRLs, as Envoy does. `crl`, if given, must hold at least one `X509 CRL` block.
    /// Expired or non-CA certificates are accepted, as Envoy accepts them, and logged as
    /// warnings. A CRL past its `nextUpdate` is refused: with it, Envoy fails every client
    /// handshake ("CRL has expired").
    pub fn from_pem(
        credential: &SecretName,
        ca: Input<'_>,
        crl: Option<Input<'_>>,
        now: UnixTime,
    ) -> Result<TrustBundle, Error> {
        let ca_origin = Origin::new(credential, ca.location);
        let blocks = pem::blocks(ca_origin, ca.bytes)?;
        let mut anchors = Vec::new();
        let mut crls = Vec::new();
        for block in &blocks {
            if block.label == pem::CERTIFICATE {
                anchors.push(block.decode::<CertificateDer<'static>>(ca_origin)?);
            } else if block.label == pem::CRL {
                crls.push(block.decode::<CertificateRevocationListDer<'static>>(ca_origin)?);
            }
        }
        if anchors.is_empty() {
            return Err(pem::missing(ca_origin, "CERTIFICATE", &blocks, ca.bytes));
        }
        let parsed = parse_certificates(ca_origin, &anchors)?;
        for (cert, position) in parsed.iter().zip(1..) {
            warn_about_anchor(ca_origin, position, cert, now);
        }
        let anchor_info = parsed.iter().map(x509::info).collect();
        drop(parsed);
        check_crls(ca_origin, &crls, now)?;

        if let Some(crl) = crl {
            let crl_origin = Origin::new(credential, crl.location);
            let blocks = pem::blocks(crl_origin, crl.bytes)?;
            let given = blocks
                .iter()
                .filter(|b| b.label == pem::CRL)
                .map(|b| b.decode::<CertificateRevocationListDer<'static>>(crl_origin))
                .collect::<Result<Vec<_>, _>>()?;
            if given.is_empty() {
                return Err(pem::missing(crl_origin, "X509 CRL", &blocks, crl.bytes));
            }
            check_crls(crl_origin, &given, now)?;
            crls.extend(given);
        }

        let version = Version::digest(|h| {
            h.update(b"validation_context");
            h.update(&(anchors.len() as u64).to_be_bytes());
            for der in &anchors {
                h.update(der);
            }
            h.update(&(crls.len() as u64).to_be_bytes());
            for der in &crls {
                h.update(der);
            }
        });
        Ok(TrustBundle {
            anchors,
            anchor_info,
            crls,
            version,
        })
    }

    /// The CA certificates as PEM, re-encoded from the validated DER, as served to Envoy.
    pub fn ca_pem(&self) -> String {
        pem::encode_all(
            pem::CERTIFICATE_LABEL,
            self.anchors.iter().map(|c| c.as_ref()),
        )
    }

    /// The CRLs as PEM, re-encoded from the validated DER; `None` when there are none.
    pub fn crl_pem(&self) -> Option<String> {
        if self.crls.is_empty() {
            return None;
        }
        Some(pem::encode_all(
            pem::CRL_LABEL,
            self.crls.iter().map(|c| c.as_ref()),
        ))
    }
}

// === certificates ===

/// The DER of every `CERTIFICATE` block; at least one.
fn read_certificates(
    origin: Origin<'_>,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let blocks = pem::blocks(origin, bytes)?;
    let ders = blocks
        .iter()
        .filter(|b| b.label == pem::CERTIFICATE)
        .map(|b| b.decode::<CertificateDer<'static>>(origin))
        .collect::<Result<Vec<_>, _>>()?;
    if ders.is_empty() {
        return Err(pem::missing(origin, "CERTIFICATE", &blocks, bytes));
    }
    Ok(ders)
}

fn parse_certificates<'a>(
    origin: Origin<'_>,
    ders: &'a [CertificateDer<'_>],
) -> Result<Vec<X509Certificate<'a>>, Error> {
    ders.iter()
        .zip(1..)
        .map(|(der, position)| {
            x509::parse_certificate(der)
                .map_err(|source| origin.error(ErrorKind::InvalidCertificate { position, source }))
        })
        .collect()
}

/// Expired, not yet valid or non-CA trust anchors: Envoy loads them, so they are no error.
fn warn_about_anchor(
    origin: Origin<'_>,
    position: usize,
    cert: &X509Certificate<'_>,
    now: UnixTime,
) {
    let validity = cert.validity();
    if now > x509::unix_time(validity.not_after) || now < x509::unix_time(validity.not_before) {
        tracing::warn!(
            credential = %origin.credential,
            location = %origin.location(),
            position,
            subject = %Untrusted::new(&cert.subject().to_string(), MAX_NAME_CHARS),
            "CA certificate is outside its validity window",
        );
    }
    if !cert.is_ca() {
        tracing::warn!(
            credential = %origin.credential,
            location = %origin.location(),
            position,
            subject = %Untrusted::new(&cert.subject().to_string(), MAX_NAME_CHARS),
            "certificate in a CA bundle is not a CA certificate",
        );
    }
}

fn check_crls(
    origin: Origin<'_>,
    crls: &[CertificateRevocationListDer<'_>],
    now: UnixTime,
) -> Result<(), Error> {
    for (der, position) in crls.iter().zip(1..) {
        let crl = x509::parse_crl(der)
            .map_err(|source| origin.error(ErrorKind::InvalidCrl { position, source }))?;
        if let Some(next) = crl.next_update().map(x509::unix_time)
            && now > next
        {
            return Err(origin.error(ErrorKind::CrlExpired {
                position,
                issuer: Untrusted::new(&crl.issuer().to_string(), MAX_NAME_CHARS).to_string(),
                next_update: next,
                now,
            }));
        }
    }
    Ok(())
}

// === private keys ===

/// A private key's DER as decoded from PEM, zeroized on drop.
struct KeyDer {
    format: KeyFormat,
    der: Zeroizing<Vec<u8>>,
}

impl PemObject for KeyDer {
    fn from_pem(kind: SectionKind, der: Vec<u8>) -> Option<Self> {
        let der = Zeroizing::new(der);
        let format = match kind {
            SectionKind::PrivateKey => KeyFormat::Pkcs8,
            SectionKind::RsaPrivateKey => KeyFormat::Pkcs1,
            SectionKind::EcPrivateKey => KeyFormat::Sec1,
            _ => return None,
        };
        Some(KeyDer { format, der })
    }
}

// === impl KeyDer ===

impl KeyDer {
    fn as_private_key_der(&self) -> PrivateKeyDer<'_> {
        match self.format {
            KeyFormat::Pkcs8 => PrivatePkcs8KeyDer::from(&self.der[..]).into(),
            KeyFormat::Pkcs1 => PrivatePkcs1KeyDer::from(&self.der[..]).into(),
            KeyFormat::Sec1 => PrivateSec1KeyDer::from(&self.der[..]).into(),
        }
    }

    /// The modulus and public exponent of an RSA key (PKCS#1, or PKCS#8 wrapping PKCS#1), read
    /// from the DER structure without loading the key.
    fn rsa_public_components(&self) -> Option<(&[u8], &[u8])> {
        let rsa_private_key = match self.format {
            KeyFormat::Pkcs1 => &self.der[..],
            KeyFormat::Pkcs8 => {
                // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING, .. }
                let (_, info) = parse_der_sequence(&self.der).ok()?;
                let fields = info.as_sequence().ok()?;
                let algorithm = fields.get(1)?.as_sequence().ok()?.first()?.as_oid().ok()?;
                if *algorithm != OID_PKCS1_RSAENCRYPTION {
                    return None;
                }
                fields.get(2)?.as_slice().ok()?
            }
            KeyFormat::Sec1 => return None,
        };
        // RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, .. }
        let (_, key) = parse_der_sequence(rsa_private_key).ok()?;
        let fields = key.as_sequence().ok()?;
        Some((
            fields.get(1)?.as_slice().ok()?,
            fields.get(2)?.as_slice().ok()?,
        ))
    }

    /// Why ring refuses this key as an RSA key, if it does.
    fn ring_rsa_rejection(&self) -> Option<ring::error::KeyRejected> {
        let loaded = match self.format {
            KeyFormat::Pkcs8 => ring::rsa::KeyPair::from_pkcs8(&self.der),
            KeyFormat::Pkcs1 => ring::rsa::KeyPair::from_der(&self.der),
            KeyFormat::Sec1 => return None,
        };
        loaded.err()
    }
}

fn is_private_key_label(label: &[u8]) -> bool {
    label.ends_with(b"PRIVATE KEY")
}

/// The one private key of the input; not encrypted, in a format we know.
fn read_private_key(origin: Origin<'_>, bytes: &[u8]) -> Result<KeyDer, Error> {
    let blocks = pem::blocks(origin, bytes)?;
    let keys: Vec<&Block<'_>> = blocks
        .iter()
        .filter(|b| is_private_key_label(b.label))
        .collect();
    let block = match keys[..] {
        [block] => block,
        [] => return Err(pem::missing(origin, KEY_LABELS, &blocks, bytes)),
        _ => {
            return Err(origin.error(ErrorKind::MultipleKeys { count: keys.len() }));
        }
    };
    let encryption = if block.label == pem::ENCRYPTED_KEY {
        Some("PKCS#8 `ENCRYPTED PRIVATE KEY` block")
    } else if block.encrypted {
        Some("legacy `Proc-Type: 4,ENCRYPTED` header")
    } else {
        None
    };
    if let Some(encryption) = encryption {
        return Err(origin.error(ErrorKind::EncryptedKey { encryption }));
    }
    if ![pem::PKCS8_KEY, pem::PKCS1_KEY, pem::SEC1_KEY].contains(&block.label) {
        return Err(pem::missing(origin, KEY_LABELS, &blocks, bytes));
    }
    block.decode::<KeyDer>(origin)
}

/// Proves that `key` is the private key of the leaf whose public key is `leaf`.
///
/// The key is loaded with ring (through rustls), which checks its internal consistency, and
/// the public key it computes must be the leaf's. RSA keys above ring's 4096-bit limit cannot
/// be loaded; their modulus and exponent are compared with the leaf's instead, which is what
/// BoringSSL's own key/certificate check compares.
fn check_key_matches(
    origin: Origin<'_>,
    chain_location: &str,
    key: &KeyDer,
    leaf: &SubjectPublicKeyInfo<'_>,
) -> Result<(), Error> {
    let mismatch = || {
        origin.error(ErrorKind::KeyMismatch {
            chain_location: Origin::new(origin.credential, chain_location).location(),
        })
    };
    let invalid = |source| {
        origin.error(ErrorKind::InvalidKey {
            format: key.format,
            source,
        })
    };

    match any_supported_type(&key.as_private_key_der()) {
        Ok(signing_key) => match signing_key.public_key() {
            Some(spki) if x509::same_public_key(leaf, spki.as_ref()) => Ok(()),
            Some(_) => Err(mismatch()),
            None => Err(invalid(ParseError::key(
                "sds cannot compute the public key of this kind of key",
            ))),
        },
        Err(_) => match key.rsa_public_components() {
            Some((n, e)) if !x509::leaf_has_rsa_key(leaf, n, e) => Err(mismatch()),
            Some((n, _)) if x509::bit_len(n) > RING_MAX_RSA_BITS => Ok(()),
            Some(_) => Err(invalid(match key.ring_rsa_rejection() {
                Some(rejected) => ParseError::key(format_args!("invalid RSA key: {rejected}")),
                None => ParseError::key(NOT_LOADABLE),
            })),
            None => Err(invalid(ParseError::key(NOT_LOADABLE))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_debug_hides_bytes() {
        let input = Input::new("/d/tls.key", b"-----BEGIN PRIVATE KEY-----");
        let debug = format!("{input:?}");
        assert!(debug.contains("/d/tls.key"), "{debug}");
        assert!(!debug.contains("BEGIN"), "{debug}");
    }

    #[test]
    fn names_and_ca_subjects_are_kept_for_operators() {
        use sds_test_util::certs::{Ca, KeyKind, Validity};

        let name = SecretName::new("spiffe").expect("a valid name");
        let root = Ca::new("Info Root");
        let leaf = root.issue_with_uris(
            &["spiffe://cluster.local/ns/a/sa/gw"],
            &["gw.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        );
        let cert = CertifiedKey::from_pem(
            &name,
            Input::new("tls.crt", leaf.chain_pem.as_bytes()),
            Input::new("tls.key", leaf.key_pem.as_bytes()),
            UnixTime::now(),
        )
        .expect("a valid credential");
        assert_eq!(cert.leaf().uris(), ["spiffe://cluster.local/ns/a/sa/gw"]);
        assert_eq!(cert.leaf().dns_names(), ["gw.example.com"]);
        assert_eq!(cert.key().algorithm().to_string(), "ECDSA P-256");

        let other = Ca::new("Other Root");
        let cas = format!("{}{}", root.cert_pem(), other.cert_pem());
        let bundle = TrustBundle::from_pem(
            &name,
            Input::new("ca.crt", cas.as_bytes()),
            None,
            UnixTime::now(),
        )
        .expect("a valid bundle");
        let subjects: Vec<&str> = bundle.anchor_info().iter().map(|c| c.subject()).collect();
        assert_eq!(subjects, ["CN=Info Root", "CN=Other Root"]);
        assert!(bundle.anchor_info()[0].not_after() > UnixTime::now());
    }
}
