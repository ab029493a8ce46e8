//! Real OCSP responses (RFC 6960), signed by the issuing CA, with knobs to break them.
//!
//! ```no_run
//! use sds_test_util::{
//!     certs::{Ca, KeyKind, Validity},
//!     ocsp::CertStatus,
//! };
//!
//! let root = Ca::new("Test Root");
//! let issuing = root.intermediate("Test Issuing CA");
//! let leaf = issuing.issue(&["httpbin.example.com"], KeyKind::EcP256Pkcs8, Validity::current());
//! // `openssl ocsp -respin` verifies it with `-issuer` the issuing CA's certificate.
//! let staple: Vec<u8> = issuing.ocsp(&leaf).der();
//! // A response Envoy refuses: two single responses.
//! let broken = issuing.ocsp(&leaf).status(CertStatus::Unknown).single_responses(2).der();
//! # let _ = (staple, broken);
//! ```
//!
//! The CA is its own responder (`responderID` byKey): the response is signed with the CA's key,
//! with the signature algorithm of that key (ecdsa-with-SHA256 or -SHA384,
//! sha256WithRSAEncryption, Ed25519). The `CertID` is computed as `openssl ocsp -issuer` does:
//! SHA-1 of the CA's subject name and of its public key. The DER is written by hand here, so
//! that every field can be broken on request.

use std::{process::Command, time::SystemTime};

use rcgen::{
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256,
    SigningKey as _,
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer as _};

use crate::certs::{Ca, Leaf, Validity};

/// `id-pkix-ocsp-basic`.
const ID_PKIX_OCSP_BASIC: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 1];

/// `id-sha1`, the hash of every `CertID` written here (as `openssl ocsp` writes them).
const ID_SHA1: &[u64] = &[1, 3, 14, 3, 2, 26];

/// The status a response gives the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertStatus {
    /// `good`.
    Good,
    /// `revoked` at this time, with no reason.
    Revoked {
        /// The `revocationTime`.
        revocation_time: SystemTime,
    },
    /// `unknown`.
    Unknown,
}

// === impl Ca ===

impl Ca {
    /// Starts an OCSP response from this CA for `leaf`, which it issued: successful, `good`,
    /// `thisUpdate` 2000-01-01 and `nextUpdate` 2100-01-01 (like [`Ca::crl`]).
    pub fn ocsp(&self, leaf: &Leaf) -> OcspBuilder<'_> {
        OcspBuilder::new(self, leaf)
    }
}

// === OcspBuilder ===

/// An OCSP response under construction; see [`Ca::ocsp`]. Every knob but [`status`],
/// [`valid`], [`this_update`] and [`next_update`] makes a response Envoy (and sds) refuses.
///
/// [`status`]: OcspBuilder::status
/// [`valid`]: OcspBuilder::valid
/// [`this_update`]: OcspBuilder::this_update
/// [`next_update`]: OcspBuilder::next_update
#[derive(Debug)]
pub struct OcspBuilder<'a> {
    ca: &'a Ca,
    serial: Vec<u8>,
    cert_status: CertStatus,
    cert_status_tag: Option<u8>,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    response_status: u8,
    response_bytes: bool,
    response_type: Vec<u64>,
    version: Option<u64>,
    single_responses: usize,
    trailing: Vec<u8>,
}

impl<'a> OcspBuilder<'a> {
    /// A response from `ca` for `leaf`; see [`Ca::ocsp`].
    pub fn new(ca: &'a Ca, leaf: &Leaf) -> Self {
        let wide = Validity::wide();
        Self {
            ca,
            serial: leaf.serial.clone(),
            cert_status: CertStatus::Good,
            cert_status_tag: None,
            this_update: wide.not_before,
            next_update: Some(wide.not_after),
            response_status: 0,
            response_bytes: true,
            response_type: ID_PKIX_OCSP_BASIC.to_vec(),
            version: None,
            single_responses: 1,
            trailing: Vec::new(),
        }
    }

    /// Sets the certificate's status.
    pub fn status(mut self, status: CertStatus) -> Self {
        self.cert_status = status;
        self
    }

    /// Sets `thisUpdate` to `validity.not_before` and `nextUpdate` to `validity.not_after`.
    pub fn valid(mut self, validity: Validity) -> Self {
        self.this_update = validity.not_before;
        self.next_update = Some(validity.not_after);
        self
    }

    /// Sets `thisUpdate` (and `producedAt`).
    pub fn this_update(mut self, at: SystemTime) -> Self {
        self.this_update = at;
        self
    }

    /// Sets `nextUpdate`, or leaves it out (`None`).
    pub fn next_update(mut self, at: Option<SystemTime>) -> Self {
        self.next_update = at;
        self
    }

    /// Sets `responseStatus` (0 `successful`, 3 `tryLater`, …). The body is kept unless
    /// [`without_response_bytes`](OcspBuilder::without_response_bytes) drops it.
    pub fn response_status(mut self, status: u8) -> Self {
        self.response_status = status;
        self
    }

    /// Leaves out `responseBytes`: a response without a body.
    pub fn without_response_bytes(mut self) -> Self {
        self.response_bytes = false;
        self
    }

    /// Sets `responseType` to this OID (arcs) instead of `id-pkix-ocsp-basic`.
    pub fn response_type(mut self, arcs: &[u64]) -> Self {
        self.response_type = arcs.to_vec();
        self
    }

    /// Writes `version` explicitly in `ResponseData` (0 is v1, the default, left out
    /// otherwise).
    pub fn version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// Repeats the `SingleResponse` `count` times (0 for none).
    pub fn single_responses(mut self, count: usize) -> Self {
        self.single_responses = count;
        self
    }

    /// Puts this serial number (big-endian, unsigned) in the `CertID` instead of the leaf's.
    pub fn serial(mut self, serial: &[u8]) -> Self {
        self.serial = serial.to_vec();
        self
    }

    /// Writes `certStatus` as an empty primitive value with this identifier octet (e.g. `0x83`,
    /// an undefined `[3]`), whatever [`status`](OcspBuilder::status) says.
    pub fn cert_status_tag(mut self, identifier: u8) -> Self {
        self.cert_status_tag = Some(identifier);
        self
    }

    /// Appends these bytes after the response.
    pub fn trailing_bytes(mut self, bytes: &[u8]) -> Self {
        self.trailing = bytes.to_vec();
        self
    }

    /// The response, DER: what `openssl ocsp -respout` writes.
    pub fn der(&self) -> Vec<u8> {
        let status = enumerated(self.response_status);
        let mut fields = vec![status];
        if self.response_bytes {
            let response_bytes = sequence(&[oid(&self.response_type), octet_string(&self.basic())]);
            fields.push(tlv(0xa0, &response_bytes));
        }
        let mut der = sequence(&fields);
        der.extend_from_slice(&self.trailing);
        der
    }

    /// The signed `BasicOCSPResponse`.
    fn basic(&self) -> Vec<u8> {
        let ca = X509Certificate::from_der(self.ca.cert_der())
            .expect("the CA certificate parses")
            .1;
        let name_hash = sha1(ca.subject().as_raw());
        let key_hash = sha1(&ca.public_key().subject_public_key.data);

        let cert_id = sequence(&[
            sequence(&[oid(ID_SHA1), NULL.to_vec()]),
            octet_string(&name_hash),
            octet_string(&key_hash),
            integer(&self.serial),
        ]);
        let cert_status = match (self.cert_status_tag, self.cert_status) {
            (Some(identifier), _) => tlv(identifier, &[]),
            (None, CertStatus::Good) => tlv(0x80, &[]),
            (None, CertStatus::Revoked { revocation_time }) => {
                tlv(0xa1, &generalized_time(revocation_time))
            }
            (None, CertStatus::Unknown) => tlv(0x82, &[]),
        };
        let mut single = vec![cert_id, cert_status, generalized_time(self.this_update)];
        if let Some(next_update) = self.next_update {
            single.push(tlv(0xa0, &generalized_time(next_update)));
        }
        let single = sequence(&single);

        let mut data = Vec::new();
        if let Some(version) = self.version {
            data.push(tlv(0xa0, &integer(&version.to_be_bytes())));
        }
        data.push(tlv(0xa2, &octet_string(&key_hash)));
        data.push(generalized_time(self.this_update));
        data.push(sequence(&vec![single; self.single_responses]));
        let tbs = sequence(&data);

        let key = self.ca.key().key_pair();
        let signature = key.sign(&tbs).expect("ring signs with the CA's key");
        sequence(&[tbs, signature_algorithm(&key), bit_string(&signature)])
    }
}

/// A `good` response for `leaf` from `openssl ocsp` itself, acting as `ca`'s responder
/// (`-index`, `-rsigner`), valid for `days` days from now: what Istio users hold, made by the
/// other implementation.
pub fn openssl_response(ca: &Ca, leaf: &Leaf, days: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("creates a temporary directory");
    let path = |name: &str| dir.path().join(name);
    let serial: String = leaf.serial.iter().map(|b| format!("{b:02X}")).collect();
    // The index of `openssl ca`: status, expiry, revocation, serial, file, subject.
    let index = format!("V\t991231235959Z\t\t{serial}\tunknown\t/CN=leaf\n");
    std::fs::write(path("index.txt"), index).expect("writes the index");
    std::fs::write(path("ca.pem"), ca.cert_pem()).expect("writes the CA certificate");
    std::fs::write(path("ca.key"), ca.key().pkcs8_pem()).expect("writes the CA key");
    std::fs::write(path("leaf.pem"), &leaf.cert_pem).expect("writes the leaf");
    let output = Command::new("openssl")
        .arg("ocsp")
        .arg("-index")
        .arg(path("index.txt"))
        .arg("-rsigner")
        .arg(path("ca.pem"))
        .arg("-rkey")
        .arg(path("ca.key"))
        .arg("-CA")
        .arg(path("ca.pem"))
        .arg("-issuer")
        .arg(path("ca.pem"))
        .arg("-cert")
        .arg(path("leaf.pem"))
        .arg("-ndays")
        .arg(days.to_string())
        .arg("-respout")
        .arg(path("resp.der"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `openssl ocsp` (is openssl installed?): {e}"));
    assert!(
        output.status.success(),
        "`openssl ocsp` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(path("resp.der")).expect("openssl wrote the response")
}

/// The `AlgorithmIdentifier` of the signatures rcgen (ring) makes with `key`.
fn signature_algorithm(key: &KeyPair) -> Vec<u8> {
    let algorithm = key.algorithm();
    if algorithm == &PKCS_ECDSA_P256_SHA256 {
        sequence(&[oid(&[1, 2, 840, 10045, 4, 3, 2])])
    } else if algorithm == &PKCS_ECDSA_P384_SHA384 {
        sequence(&[oid(&[1, 2, 840, 10045, 4, 3, 3])])
    } else if algorithm == &PKCS_ED25519 {
        sequence(&[oid(&[1, 3, 101, 112])])
    } else if algorithm == &PKCS_RSA_SHA256 {
        sequence(&[oid(&[1, 2, 840, 113549, 1, 1, 11]), NULL.to_vec()])
    } else {
        panic!("no OCSP signature algorithm for a {algorithm:?} CA key")
    }
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

// === DER writing ===

const NULL: [u8; 2] = [0x05, 0x00];

/// One value: identifier octet, DER length, contents.
fn tlv(identifier: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![identifier];
    match u8::try_from(contents.len()) {
        Ok(len) if len < 0x80 => out.push(len),
        _ => {
            let len = contents.len().to_be_bytes();
            let first = len.iter().position(|&b| b != 0).unwrap_or(len.len() - 1);
            let octets = &len[first..];
            out.push(0x80 | u8::try_from(octets.len()).expect("a usize has at most 8 bytes"));
            out.extend_from_slice(octets);
        }
    }
    out.extend_from_slice(contents);
    out
}

fn sequence(fields: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &fields.concat())
}

/// An INTEGER holding the unsigned big-endian `value`, minimally encoded.
fn integer(value: &[u8]) -> Vec<u8> {
    let start = value.iter().position(|&b| b != 0).unwrap_or(value.len());
    let mut contents = Vec::with_capacity(value.len() - start + 1);
    match value.get(start) {
        None => contents.push(0),
        Some(&first) if first & 0x80 != 0 => contents.push(0),
        Some(_) => {}
    }
    contents.extend_from_slice(&value[start..]);
    tlv(0x02, &contents)
}

fn enumerated(value: u8) -> Vec<u8> {
    let mut out = integer(&[value]);
    out[0] = 0x0a;
    out
}

fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut contents = vec![0];
    contents.extend_from_slice(bytes);
    tlv(0x03, &contents)
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let [first, second, rest @ ..] = arcs else {
        panic!("an OID has at least two arcs");
    };
    let mut contents = Vec::new();
    for arc in std::iter::once(first * 40 + second).chain(rest.iter().copied()) {
        let mut base128 = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            base128.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        contents.extend(base128.iter().rev());
    }
    tlv(0x06, &contents)
}

/// A `GeneralizedTime` of the form `YYYYMMDDHHMMSSZ`.
fn generalized_time(at: SystemTime) -> Vec<u8> {
    let at = time::OffsetDateTime::from(at);
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    tlv(0x18, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::certs::KeyKind;

    #[test]
    fn der_helpers() {
        assert_eq!(
            oid(ID_PKIX_OCSP_BASIC),
            [
                0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01
            ]
        );
        assert_eq!(
            oid(&[1, 2, 840, 113549]),
            [0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
        assert_eq!(integer(&[0x00, 0x00, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(&[0, 0]), [0x02, 0x01, 0x00]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        let y2k = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(generalized_time(y2k)[2..], *b"20000101000000Z");
    }

    /// `openssl ocsp` verifies the signature against the issuer and reports the leaf's status.
    #[test]
    fn openssl_verifies_the_responses() {
        let root = Ca::root("OCSP Root", KeyKind::EcP256Pkcs8, Validity::wide());
        let revoked_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cases = [
            (KeyKind::EcP256Pkcs8, CertStatus::Good, "good"),
            (KeyKind::EcP384Pkcs8, CertStatus::Unknown, "unknown"),
            (
                KeyKind::Ed25519,
                CertStatus::Revoked {
                    revocation_time: revoked_at,
                },
                "revoked",
            ),
            (KeyKind::RsaPkcs8(2048), CertStatus::Good, "good"),
        ];
        for (ca_key, status, expected) in cases {
            let issuing = root.intermediate_with("OCSP Issuing", ca_key, Validity::wide());
            let leaf = issuing.issue(&["a.example"], KeyKind::EcP256Pkcs8, Validity::current());
            let der = issuing.ocsp(&leaf).status(status).der();

            let dir = tempfile::tempdir().expect("creates a temporary directory");
            let write = |name: &str, bytes: &[u8]| {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).expect("writes a file");
                path
            };
            let (response, root_pem, issuer_pem, leaf_pem) = (
                write("resp.der", &der),
                write("root.pem", root.cert_pem().as_bytes()),
                write("issuer.pem", issuing.cert_pem().as_bytes()),
                write("leaf.pem", leaf.cert_pem.as_bytes()),
            );
            let output = Command::new("openssl")
                .arg("ocsp")
                .arg("-respin")
                .arg(&response)
                .arg("-resp_text")
                .arg("-CAfile")
                .arg(&root_pem)
                .arg("-issuer")
                .arg(&issuer_pem)
                .arg("-cert")
                .arg(&leaf_pem)
                .output()
                .expect("runs openssl ocsp");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let all = format!("{stdout}{stderr}");
            assert!(output.status.success(), "{ca_key:?}: {all}");
            assert!(all.contains("Response verify OK"), "{ca_key:?}: {all}");
            assert!(
                stdout.contains(&format!("{}: {expected}", leaf_pem.display())),
                "{ca_key:?}: {all}"
            );
            // "WARNING: no nonce in response" is expected: there was no request.
            assert!(!all.contains("Status times invalid"), "{ca_key:?}: {all}");
        }
    }
}
