//! X.509 certificates and CRLs: parsing, the checks on a certificate chain, and which public
//! keys sds serves.

use std::{collections::HashMap, fmt, time::Duration};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::{
    certificate::X509Certificate,
    der_parser::error::BerError,
    error::X509Error,
    extensions::GeneralName,
    nom,
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
        OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED448, OID_SIG_ED25519, Oid,
    },
    prelude::FromDer,
    public_key::{PublicKey, RSAPublicKey},
    revocation_list::CertificateRevocationList,
    time::ASN1Time,
    x509::{SubjectPublicKeyInfo, X509Name},
};

use crate::{
    CertificateInfo, Error, ErrorKind, KeyAlgorithm, Untrusted,
    credential::{MAX_NAME_CHARS, Origin},
    error::ParseError,
};

/// Smallest RSA modulus Envoy loads: "only RSA certificates with 2048-bit or larger keys are
/// supported" (`source/common/tls/context_impl.cc`, non-FIPS builds).
pub(crate) const MIN_RSA_BITS: u32 = 2048;

/// Largest RSA modulus BoringSSL accepts in a public key (`rsa_check_public_key`).
pub(crate) const MAX_RSA_BITS: u32 = 16384;

/// Parses one DER certificate; trailing bytes after it are an error.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, ParseError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| ParseError::der(Problem(&e)))?;
    if !rest.is_empty() {
        return Err(ParseError::der(format_args!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Parses one DER CRL; trailing bytes after it are an error.
pub(crate) fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, ParseError> {
    let (rest, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| ParseError::der(Problem(&e)))?;
    if !rest.is_empty() {
        return Err(ParseError::der(format_args!(
            "{} bytes of trailing data after the CRL",
            rest.len()
        )));
    }
    Ok(crl)
}

/// An X.509 parser error, told without the bytes some of its variants can carry (`nom`'s
/// `Display` prints the error's `Debug`, and an ASN.1 `InvalidValue` has a free-text message).
struct Problem<'a>(&'a nom::Err<X509Error>);

impl fmt::Display for Problem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            nom::Err::Incomplete(_) => f.write_str("the DER is cut short"),
            nom::Err::Error(e) | nom::Err::Failure(e) => match e {
                X509Error::Der(BerError::InvalidValue { tag, .. }) => {
                    write!(f, "BER error: invalid value in an object with tag {tag:?}")
                }
                // Fixed text, tags, classes, numbers and lengths.
                other => fmt::Display::fmt(other, f),
            },
        }
    }
}

/// What a certificate says about itself, as owned data.
pub(crate) fn info(cert: &X509Certificate<'_>) -> CertificateInfo {
    let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex(cert.raw_serial()),
        not_before: unix_time(validity.not_before),
        not_after: unix_time(validity.not_after),
        dns_names,
        uris,
    }
}

/// Checks a chain given leaf first: no certificate twice, each certificate followed by its
/// issuer, the leaf inside its validity window and no intermediate expired.
///
/// Intermediates that are not yet valid, and an expired self-issued root at the end (which
/// clients ignore: they use their own copy of the root) are left to the client.
pub(crate) fn check_chain(
    origin: Origin<'_>,
    ders: &[CertificateDer<'_>],
    certs: &[X509Certificate<'_>],
    now: UnixTime,
) -> Result<(), Error> {
    let mut seen: HashMap<&[u8], usize> = HashMap::with_capacity(ders.len());
    for (der, position) in ders.iter().zip(1..) {
        if let Some(&first) = seen.get(der.as_ref()) {
            return Err(origin.error(ErrorKind::DuplicateCertificate {
                first,
                second: position,
            }));
        }
        seen.insert(der.as_ref(), position);
    }

    for (i, pair) in certs.windows(2).enumerate() {
        let [cert, next] = pair else { continue };
        if !same_name(cert.issuer(), next.subject()) {
            return Err(origin.error(ErrorKind::ChainOrder {
                position: i + 1,
                issuer: Untrusted::new(&cert.issuer().to_string(), MAX_NAME_CHARS).to_string(),
                next_subject: Untrusted::new(&next.subject().to_string(), MAX_NAME_CHARS)
                    .to_string(),
            }));
        }
    }

    for (i, cert) in certs.iter().enumerate() {
        let validity = cert.validity();
        let (not_before, not_after) = (
            unix_time(validity.not_before),
            unix_time(validity.not_after),
        );
        let is_leaf = i == 0;
        let is_root = i + 1 == certs.len() && !is_leaf && same_name(cert.issuer(), cert.subject());
        if is_leaf && now < not_before {
            return Err(origin.error(ErrorKind::NotYetValid {
                position: i + 1,
                not_before,
                now,
            }));
        }
        if !is_root && now > not_after {
            return Err(origin.error(ErrorKind::Expired {
                position: i + 1,
                not_after,
                now,
            }));
        }
    }
    Ok(())
}

/// The algorithm of the leaf's key, if sds serves that kind of key; see [`policy`].
pub(crate) fn leaf_key_algorithm(
    origin: Origin<'_>,
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<KeyAlgorithm, Error> {
    let key = LeafKey::of(spki).map_err(|source| {
        origin.error(ErrorKind::InvalidCertificate {
            position: 1,
            source,
        })
    })?;
    policy(&key).map_err(|reason| {
        origin.error(ErrorKind::UnsupportedKey {
            key: key.to_string(),
            reason,
        })
    })
}

/// Which leaf keys sds serves: those Envoy 1.40 (BoringSSL, non-FIPS) loads, and for which
/// sds can prove that the private key belongs to the certificate. This is the one place to
/// adjust as the facts about Envoy firm up.
///
/// - RSA (`rsaEncryption`) from [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`] bits.
/// - ECDSA on P-256 and P-384. Envoy also loads P-521, but ring cannot check a P-521 key
///   against its certificate, and older Envoys refuse anything but P-256; refused for now.
/// - Ed25519 (Envoy's non-FIPS builds load it).
/// - Nothing else: RSA-PSS keys, Ed448, DSA and other curves are not loaded by BoringSSL or
///   Envoy.
fn policy(key: &LeafKey) -> Result<KeyAlgorithm, &'static str> {
    match key {
        LeafKey::Rsa { bits } if *bits < MIN_RSA_BITS => {
            Err("Envoy only supports RSA certificates with 2048-bit or larger keys")
        }
        LeafKey::Rsa { bits } if *bits > MAX_RSA_BITS => {
            Err("BoringSSL refuses RSA keys larger than 16384 bits")
        }
        LeafKey::Rsa { bits } => Ok(KeyAlgorithm::Rsa { bits: *bits }),
        LeafKey::Ec(Curve::P256) => Ok(KeyAlgorithm::EcdsaP256),
        LeafKey::Ec(Curve::P384) => Ok(KeyAlgorithm::EcdsaP384),
        LeafKey::Ec(Curve::P521) => Err(
            "sds cannot check that a P-521 private key matches its certificate; \
             use a P-256 or P-384 key",
        ),
        LeafKey::Ec(_) => Err(
            "Envoy only supports P-256, P-384 or P-521 ECDSA certificates, and sds only \
             P-256 and P-384",
        ),
        LeafKey::Ed25519 => Ok(KeyAlgorithm::Ed25519),
        LeafKey::RsaPss => Err(
            "BoringSSL does not load RSA-PSS (id-RSASSA-PSS) certificate keys; \
             use an rsaEncryption key",
        ),
        LeafKey::Ed448 | LeafKey::Other(_) => {
            Err("Envoy supports RSA, ECDSA (P-256, P-384) and Ed25519 certificate keys")
        }
    }
}

/// Whether the SubjectPublicKeyInfo `key_spki` (e.g. computed from a private key) is the
/// leaf's public key. Compares the algorithm, the curve, and the key itself, so that
/// equivalent encodings (an RSA key without leading zero, a compressed EC point in the
/// certificate) still match.
pub(crate) fn same_public_key(leaf: &SubjectPublicKeyInfo<'_>, key_spki: &[u8]) -> bool {
    let Ok((_, key)) = SubjectPublicKeyInfo::from_der(key_spki) else {
        return false;
    };
    if leaf.algorithm.algorithm != key.algorithm.algorithm {
        return false;
    }
    match (leaf.parsed(), key.parsed()) {
        (Ok(PublicKey::RSA(leaf)), Ok(PublicKey::RSA(key))) => {
            same_rsa_key(&leaf, key.modulus, key.exponent)
        }
        (Ok(PublicKey::EC(leaf_point)), Ok(PublicKey::EC(key_point))) => {
            curve_oid(&leaf.algorithm.parameters) == curve_oid(&key.algorithm.parameters)
                && same_ec_point(leaf_point.data(), key_point.data())
        }
        (Ok(PublicKey::Unknown(leaf)), Ok(PublicKey::Unknown(key))) => leaf == key,
        _ => false,
    }
}

/// Whether the leaf's RSA public key has this modulus and public exponent (big-endian).
pub(crate) fn leaf_has_rsa_key(leaf: &SubjectPublicKeyInfo<'_>, n: &[u8], e: &[u8]) -> bool {
    leaf.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION
        && matches!(leaf.parsed(), Ok(PublicKey::RSA(rsa)) if same_rsa_key(&rsa, n, e))
}

fn same_rsa_key(key: &RSAPublicKey<'_>, n: &[u8], e: &[u8]) -> bool {
    unsigned(key.modulus) == unsigned(n) && unsigned(key.exponent) == unsigned(e)
}

/// An EC point from a certificate against the uncompressed point computed from a private key.
fn same_ec_point(cert: &[u8], key: &[u8]) -> bool {
    if cert == key {
        return true;
    }
    match (cert, key) {
        ([prefix @ (2 | 3), x @ ..], [4, xy @ ..]) if xy.len() == 2 * x.len() => {
            let (key_x, key_y) = xy.split_at(x.len());
            key_x == x && key_y.last().map(|y| y & 1) == Some(prefix & 1)
        }
        _ => false,
    }
}

/// A big-endian unsigned integer without leading zero bytes.
pub(crate) fn unsigned(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

pub(crate) fn bit_len(bytes: &[u8]) -> u32 {
    match unsigned(bytes) {
        [] => 0,
        [first, rest @ ..] => {
            let rest_bits = u32::try_from(rest.len()).unwrap_or(u32::MAX / 16) * 8;
            rest_bits + (8 - first.leading_zeros())
        }
    }
}

fn curve_oid<'a>(
    parameters: &Option<x509_parser::der_parser::asn1_rs::Any<'a>>,
) -> Option<Oid<'a>> {
    parameters.as_ref().and_then(|p| Oid::try_from(p).ok())
}

/// Two names are the same if their DER is, or failing that their text forms are equal ignoring
/// ASCII case (encodings differ between issuers: `PrintableString` vs `UTF8String`).
pub(crate) fn same_name(a: &X509Name<'_>, b: &X509Name<'_>) -> bool {
    if a.as_raw() == b.as_raw() {
        return true;
    }
    let registry = x509_parser::objects::oid_registry();
    match (
        a.to_string_with_registry(registry),
        b.to_string_with_registry(registry),
    ) {
        (Ok(a), Ok(b)) => a.eq_ignore_ascii_case(&b),
        _ => false,
    }
}

/// An ASN.1 time as `UnixTime`; times before 1970 become the epoch.
pub(crate) fn unix_time(time: ASN1Time) -> UnixTime {
    let secs = u64::try_from(time.timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// Bytes as lowercase hex without separators: how [`CertificateInfo::serial`] and errors
/// show serial numbers.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The kind of public key a certificate holds, as far as the policy cares.
enum LeafKey {
    Rsa { bits: u32 },
    RsaPss,
    Ec(Curve),
    Ed25519,
    Ed448,
    Other(String),
}

enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
    Other(String),
}

// === impl LeafKey ===

impl LeafKey {
    fn of(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, ParseError> {
        let algorithm = &spki.algorithm.algorithm;
        Ok(if *algorithm == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => LeafKey::Rsa {
                    bits: bit_len(rsa.modulus),
                },
                _ => return Err(ParseError::der("the leaf's RSA public key is malformed")),
            }
        } else if *algorithm == OID_PKCS1_RSASSAPSS {
            LeafKey::RsaPss
        } else if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            LeafKey::Ec(match curve_oid(&spki.algorithm.parameters) {
                Some(oid) if oid == OID_EC_P256 => Curve::P256,
                Some(oid) if oid == OID_NIST_EC_P384 => Curve::P384,
                Some(oid) if oid == OID_NIST_EC_P521 => Curve::P521,
                Some(oid) if oid.to_id_string() == "1.3.132.0.10" => Curve::Secp256k1,
                Some(oid) => Curve::Other(oid.to_id_string()),
                None => Curve::Other("with explicit parameters".to_owned()),
            })
        } else if *algorithm == OID_SIG_ED25519 {
            LeafKey::Ed25519
        } else if *algorithm == OID_SIG_ED448 {
            LeafKey::Ed448
        } else {
            LeafKey::Other(algorithm.to_id_string())
        })
    }
}

impl fmt::Display for LeafKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafKey::Rsa { bits } => write!(f, "an RSA {bits}-bit"),
            LeafKey::RsaPss => f.write_str("an RSA-PSS"),
            LeafKey::Ec(Curve::P256) => f.write_str("an ECDSA P-256"),
            LeafKey::Ec(Curve::P384) => f.write_str("an ECDSA P-384"),
            LeafKey::Ec(Curve::P521) => f.write_str("an ECDSA P-521"),
            LeafKey::Ec(Curve::Secp256k1) => f.write_str("an ECDSA secp256k1"),
            LeafKey::Ec(Curve::Other(curve)) => write!(f, "an ECDSA (curve {curve})"),
            LeafKey::Ed25519 => f.write_str("an Ed25519"),
            LeafKey::Ed448 => f.write_str("an Ed448"),
            LeafKey::Other(oid) => write!(f, "a {oid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x01, 0]), 9);
        let mut n = vec![0u8; 257];
        n[1] = 0xc0;
        assert_eq!(bit_len(&n), 2048);
    }

    #[test]
    fn ec_points_compare_across_compression() {
        let uncompressed = [4, 1, 2, 3, 4, 5, 7];
        assert!(same_ec_point(&uncompressed, &uncompressed));
        assert!(same_ec_point(&[3, 1, 2, 3], &uncompressed));
        assert!(!same_ec_point(&[2, 1, 2, 3], &uncompressed));
        assert!(!same_ec_point(&[3, 1, 2, 9], &uncompressed));
        assert!(!same_ec_point(&[], &uncompressed));
    }
}
