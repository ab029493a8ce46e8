//! OCSP staples: a DER OCSP response (RFC 6960) for the leaf of a [`CertifiedKey`], served as
//! Envoy's `TlsCertificate.ocsp_staple` (Istio's Secret key `tls.ocsp-staple`).
//!
//! Envoy parses the staple when it loads the secret (`source/common/tls/ocsp/ocsp.cc`) and
//! refuses the whole secret, a NACK, if the parse fails, so sds refuses the staple first, by the
//! same rules or stricter ones; [`OcspStaple`] lists them.

use std::{borrow::Cow, fmt, sync::Arc};

use rustls_pki_types::UnixTime;
use x509_parser::{
    der_parser::asn1_rs::{self, Any, Class, FromDer, Header, Oid},
    nom,
};

use crate::{
    CertifiedKey, Error, ErrorKind, Input, MAX_INPUT_LEN, SecretName,
    credential::{Origin, certified_key_version},
    x509,
};

/// `id-pkix-ocsp-basic` (1.3.6.1.5.5.7.48.1.1): the contents of its DER OID.
const ID_PKIX_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// Longest `responseType` OID, in bytes, that an error spells out in dotted form.
const MAX_OID_LEN: usize = 32;

// === OcspStaple ===

/// A validated OCSP response for the leaf of a [`CertifiedKey`]: its DER, served to Envoy as
/// is, and what it says about the leaf. Attach one with [`CertifiedKey::with_ocsp_staple`].
///
/// It was checked as Envoy's parser (`source/common/tls/ocsp/ocsp.cc`) checks it, or more
/// strictly:
///
/// - exactly one `OCSPResponse` (nothing after it), in DER;
/// - `responseStatus` is `successful`, and `responseBytes` is present;
/// - `responseType` is `id-pkix-ocsp-basic`, and its `BasicOCSPResponse` is well formed:
///   `ResponseData` version v1, a `responderID` by name or by key hash, and exactly one
///   `SingleResponse`, whose `certStatus` is `good`, `revoked` or `unknown` and whose times are
///   UTC `GeneralizedTime`s of the form `YYYYMMDDHHMMSSZ`;
/// - the `SingleResponse` is for the leaf: its serial number is the leaf's (Envoy compares
///   serial numbers only).
///
/// Not checked, as Envoy does not check them either: the signature (the TLS client verifies it)
/// and the times. With Envoy's default `LENIENT_STAPLING` policy, a staple whose `thisUpdate`
/// is in the future or whose `nextUpdate` has passed is simply not stapled; the staple keeps
/// both times so that operators can see when it needs refreshing.
///
/// Cheap to clone. `Debug` prints the status, the times and the length, not the bytes.
#[derive(Clone)]
pub struct OcspStaple {
    der: Arc<[u8]>,
    cert_status: OcspCertStatus,
    this_update: UnixTime,
    next_update: Option<UnixTime>,
}

// === impl OcspStaple ===

impl OcspStaple {
    /// The OCSP response, DER, exactly as given: what Envoy staples.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// What the response says about the leaf.
    pub fn cert_status(&self) -> OcspCertStatus {
        self.cert_status
    }

    /// The response's `thisUpdate`: when the status was known to be correct. Envoy does not
    /// staple the response before then.
    pub fn this_update(&self) -> UnixTime {
        self.this_update
    }

    /// The response's `nextUpdate`, if it has one: when newer information will be available.
    /// Envoy does not staple the response after then.
    pub fn next_update(&self) -> Option<UnixTime> {
        self.next_update
    }
}

impl fmt::Debug for OcspStaple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OcspStaple")
            .field("cert_status", &self.cert_status)
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("len", &self.der.len())
            .finish()
    }
}

/// The status an OCSP response gives the leaf (RFC 6960 `CertStatus`).
///
/// Envoy staples every status; the TLS client decides what to make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OcspCertStatus {
    /// `good`: the certificate is not revoked.
    Good,
    /// `revoked`: the certificate is revoked.
    Revoked,
    /// `unknown`: the responder does not know the certificate.
    Unknown,
}

/// `good`, `revoked` or `unknown`, as RFC 6960 names them.
impl fmt::Display for OcspCertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OcspCertStatus::Good => "good",
            OcspCertStatus::Revoked => "revoked",
            OcspCertStatus::Unknown => "unknown",
        })
    }
}

/// Why an OCSP staple is refused: the problem of an [`ErrorKind::InvalidOcspStaple`].
///
/// Messages tell positions (byte offsets in the staple) and structure, never the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OcspProblem {
    /// The input is PEM text, not DER.
    PemText,

    /// The input is not well-formed DER, or not the structure of an OCSP response.
    Malformed {
        /// Where the problem is: the offset of the faulty value in the staple, from 0.
        offset: usize,
        /// What is wrong, from fixed text and ASN.1 tags only.
        detail: String,
    },

    /// Bytes follow the OCSP response (Envoy: "Data contained more than a single OCSP
    /// response").
    TrailingData {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        len: usize,
    },

    /// The `responseStatus` is not `successful` (Envoy: "OCSP response was unsuccessful").
    Unsuccessful {
        /// The status: 1 `malformedRequest`, 2 `internalError`, 3 `tryLater`,
        /// 5 `sigRequired`, 6 `unauthorized`, anything else unknown.
        status: u8,
    },

    /// The response is successful but has no `responseBytes` (Envoy: "OCSP response has no
    /// body").
    NoResponseBytes,

    /// The `responseType` is not `id-pkix-ocsp-basic`, the one type Envoy knows.
    UnknownResponseType {
        /// The type's OID, dotted (`1.3.6.1.5.5.7.48.1.2`), or its length if it is long or
        /// malformed.
        oid: String,
    },

    /// The `ResponseData` version is not v1, the one version Envoy accepts.
    UnsupportedVersion {
        /// The version number as encoded (0 is v1).
        version: u64,
    },

    /// The response does not hold exactly one `SingleResponse` (Envoy: "OCSP Response must be
    /// for one certificate only").
    ResponseCount {
        /// How many it holds.
        count: usize,
    },
}

impl fmt::Display for OcspProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OcspProblem::PemText => f.write_str(
                "expected a DER OCSP response (as `openssl ocsp -respout` writes), found PEM text",
            ),
            OcspProblem::Malformed { offset, detail } => {
                write!(
                    f,
                    "not a well-formed DER OCSP response: {detail} at byte {offset}"
                )
            }
            OcspProblem::TrailingData { offset, len } => write!(
                f,
                "{len} bytes follow the OCSP response (from byte {offset}); Envoy needs \
                 exactly one response"
            ),
            OcspProblem::Unsuccessful { status } => write!(
                f,
                "OCSP response status is {} ({status}), not successful",
                status_name(*status)
            ),
            OcspProblem::NoResponseBytes => {
                f.write_str("the OCSP response has no responseBytes (Envoy: \"has no body\")")
            }
            OcspProblem::UnknownResponseType { oid } => write!(
                f,
                "the responseType is {oid}, not id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), \
                 the one type Envoy knows"
            ),
            OcspProblem::UnsupportedVersion { version } => write!(
                f,
                "the ResponseData version is v{} ({version}); Envoy accepts only v1 (0)",
                u128::from(*version) + 1
            ),
            OcspProblem::ResponseCount { count } => write!(
                f,
                "the response holds {count} single responses; Envoy needs exactly one"
            ),
        }
    }
}

fn status_name(status: u8) -> &'static str {
    match status {
        0 => "successful",
        1 => "malformedRequest",
        2 => "internalError",
        3 => "tryLater",
        5 => "sigRequired",
        6 => "unauthorized",
        _ => "unknown",
    }
}

// === impl CertifiedKey ===

impl CertifiedKey {
    /// Attaches a DER OCSP response for the leaf, checked as Envoy checks it (see
    /// [`OcspStaple`]), and returns the credential with a new version: a rotated staple
    /// is a new version of the credential. A staple already attached is replaced.
    ///
    /// `credential` is the name errors report, as for [`CertifiedKey::from_pem`].
    ///
    /// Refused: an empty input ([`ErrorKind::EmptyInput`]; a caller that treats an empty
    /// staple as no staple must skip it before calling this), one larger than
    /// [`MAX_INPUT_LEN`] ([`ErrorKind::InputTooLarge`]), PEM text, a response Envoy would not
    /// load ([`ErrorKind::InvalidOcspStaple`]) and one for another certificate
    /// ([`ErrorKind::OcspStapleMismatch`]). Neither the signature nor the times are checked.
    pub fn with_ocsp_staple(
        self,
        credential: &SecretName,
        staple: Input<'_>,
    ) -> Result<CertifiedKey, Error> {
        let origin = Origin::new(credential, staple.location);
        let bytes = staple.bytes;
        if bytes.len() > MAX_INPUT_LEN {
            return Err(origin.error(ErrorKind::InputTooLarge {
                len: bytes.len(),
                max: MAX_INPUT_LEN,
            }));
        }
        if bytes.trim_ascii().is_empty() {
            return Err(origin.error(ErrorKind::EmptyInput));
        }
        let invalid = |problem| origin.error(ErrorKind::InvalidOcspStaple { problem });
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Err(invalid(OcspProblem::PemText));
        }
        let response = parse(bytes).map_err(invalid)?;

        let leaf = self
            .chain
            .first()
            .expect("a CertifiedKey's chain holds at least its leaf");
        let leaf = x509::parse_certificate(leaf)
            .expect("the leaf parsed when this CertifiedKey was built");
        if x509::unsigned(response.serial) != x509::unsigned(leaf.raw_serial()) {
            return Err(origin.error(ErrorKind::OcspStapleMismatch {
                staple_serial: x509::hex(response.serial),
                leaf_serial: self.leaf.serial().to_owned(),
            }));
        }

        let staple = OcspStaple {
            der: Arc::from(bytes),
            cert_status: response.cert_status,
            this_update: response.this_update,
            next_update: response.next_update,
        };
        let version = certified_key_version(&self.chain, &self.key.der, Some(&staple.der));
        Ok(CertifiedKey {
            ocsp: Some(staple),
            version,
            ..self
        })
    }
}

// === parsing ===

/// What sds needs from a parsed OCSP response.
#[derive(Debug)]
struct Response<'a> {
    /// The contents of the single response's `serialNumber` INTEGER.
    serial: &'a [u8],
    cert_status: OcspCertStatus,
    this_update: UnixTime,
    next_update: Option<UnixTime>,
}

/// Parses and checks an OCSP response; see [`OcspStaple`] for what is checked.
fn parse(der: &[u8]) -> Result<Response<'_>, OcspProblem> {
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED,
    //                             responseBytes [0] EXPLICIT ResponseBytes OPTIONAL }
    let mut input = Der::new(der);
    let mut response = input.expect("OCSPResponse", SEQUENCE)?;
    if !input.is_empty() {
        return Err(OcspProblem::TrailingData {
            offset: input.offset,
            len: input.bytes.len(),
        });
    }
    let status = response.expect("responseStatus", ENUMERATED)?;
    match status.bytes {
        [0] => {}
        &[status @ 1..=0x7f] => return Err(OcspProblem::Unsuccessful { status }),
        _ => return Err(status.malformed("responseStatus is not a one-byte ENUMERATED")),
    }
    let Some(mut response_bytes) = response.optional("responseBytes", context(0, true))? else {
        return Err(OcspProblem::NoResponseBytes);
    };
    response.finish("OCSPResponse")?;

    // ResponseBytes ::= SEQUENCE { responseType OBJECT IDENTIFIER, response OCTET STRING }
    let mut bytes = response_bytes.expect("ResponseBytes", SEQUENCE)?;
    response_bytes.finish("responseBytes")?;
    let response_type = bytes.expect("responseType", OID)?;
    if response_type.bytes != ID_PKIX_OCSP_BASIC {
        return Err(OcspProblem::UnknownResponseType {
            oid: describe_oid(response_type.bytes),
        });
    }
    let mut octets = bytes.expect("response", OCTET_STRING)?;
    bytes.finish("ResponseBytes")?;

    // BasicOCSPResponse ::= SEQUENCE { tbsResponseData ResponseData,
    //     signatureAlgorithm AlgorithmIdentifier, signature BIT STRING,
    //     certs [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL }
    let mut basic = octets.expect("BasicOCSPResponse", SEQUENCE)?;
    octets.finish("response")?;
    let data = basic.expect("tbsResponseData", SEQUENCE)?;
    basic.expect("signatureAlgorithm", SEQUENCE)?;
    basic.expect("signature", BIT_STRING)?;
    basic.optional("certs", context(0, true))?;
    basic.finish("BasicOCSPResponse")?;

    let mut responses = response_data(data)?;
    match responses.len() {
        1 => Ok(responses.remove(0)),
        count => Err(OcspProblem::ResponseCount { count }),
    }
}

/// The single responses of a `ResponseData`, each checked.
fn response_data(mut data: Der<'_>) -> Result<Vec<Response<'_>>, OcspProblem> {
    // ResponseData ::= SEQUENCE { version [0] EXPLICIT Version DEFAULT v1,
    //     responderID ResponderID, producedAt GeneralizedTime,
    //     responses SEQUENCE OF SingleResponse,
    //     responseExtensions [1] EXPLICIT Extensions OPTIONAL }
    if let Some(mut explicit) = data.optional("version", context(0, true))? {
        let version = explicit.expect("version", INTEGER)?;
        explicit.finish("version")?;
        let value = integer(version, "version")?;
        if value.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(version.malformed("version is negative"));
        }
        let value = x509::unsigned(value);
        if value.len() > 8 {
            return Err(version.malformed("version is too large"));
        }
        let version = value.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
        if version != 0 {
            return Err(OcspProblem::UnsupportedVersion { version });
        }
    }
    // ResponderID ::= CHOICE { byName [1] EXPLICIT Name, byKey [2] EXPLICIT KeyHash }
    let responder = data.next("responderID")?;
    if responder.kind != context(1, true) && responder.kind != context(2, true) {
        return Err(responder.unexpected("responderID ([1] byName or [2] byKey)"));
    }
    data.expect("producedAt", GENERALIZED_TIME)?;
    let mut list = data.expect("responses", SEQUENCE)?;
    data.optional("responseExtensions", context(1, true))?;
    data.finish("ResponseData")?;

    let mut responses = Vec::with_capacity(1);
    while !list.is_empty() {
        responses.push(single_response(list.expect("SingleResponse", SEQUENCE)?)?);
    }
    Ok(responses)
}

/// One `SingleResponse`, checked.
fn single_response(mut single: Der<'_>) -> Result<Response<'_>, OcspProblem> {
    // SingleResponse ::= SEQUENCE { certID CertID, certStatus CertStatus,
    //     thisUpdate GeneralizedTime, nextUpdate [0] EXPLICIT GeneralizedTime OPTIONAL,
    //     singleExtensions [1] EXPLICIT Extensions OPTIONAL }
    // CertID ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, issuerNameHash OCTET STRING,
    //     issuerKeyHash OCTET STRING, serialNumber CertificateSerialNumber }
    let mut cert_id = single.expect("certID", SEQUENCE)?;
    cert_id.expect("hashAlgorithm", SEQUENCE)?;
    cert_id.expect("issuerNameHash", OCTET_STRING)?;
    cert_id.expect("issuerKeyHash", OCTET_STRING)?;
    let serial = integer(cert_id.expect("serialNumber", INTEGER)?, "serialNumber")?;
    cert_id.finish("CertID")?;

    // CertStatus ::= CHOICE { good [0] IMPLICIT NULL, revoked [1] IMPLICIT RevokedInfo,
    //     unknown [2] IMPLICIT UnknownInfo }, UnknownInfo ::= NULL
    let status = single.next("certStatus")?;
    let cert_status = if status.kind == context(0, false) {
        OcspCertStatus::Good
    } else if status.kind == context(1, true) {
        OcspCertStatus::Revoked
    } else if status.kind == context(2, false) {
        OcspCertStatus::Unknown
    } else {
        return Err(status.unexpected("certStatus (good [0], revoked [1] or unknown [2])"));
    };
    if cert_status != OcspCertStatus::Revoked && !status.contents.is_empty() {
        return Err(status.contents.malformed("certStatus is not an empty NULL"));
    }

    let this_update = generalized_time(single.expect("thisUpdate", GENERALIZED_TIME)?)?;
    let next_update = match single.optional("nextUpdate", context(0, true))? {
        Some(mut explicit) => {
            let time = explicit.expect("nextUpdate", GENERALIZED_TIME)?;
            explicit.finish("nextUpdate")?;
            Some(generalized_time(time)?)
        }
        None => None,
    };
    single.optional("singleExtensions", context(1, true))?;
    single.finish("SingleResponse")?;
    Ok(Response {
        serial,
        cert_status,
        this_update,
        next_update,
    })
}

/// The contents of a DER INTEGER, which must be minimally encoded.
fn integer<'a>(value: Der<'a>, field: &'static str) -> Result<&'a [u8], OcspProblem> {
    match value.bytes {
        [] => Err(value.malformed(format_args!("{field} is an empty INTEGER"))),
        [0x00, next, ..] if next & 0x80 == 0 => Err(value.malformed(format_args!(
            "{field} is an INTEGER with a redundant leading byte"
        ))),
        [0xff, next, ..] if next & 0x80 != 0 => Err(value.malformed(format_args!(
            "{field} is an INTEGER with a redundant leading byte"
        ))),
        bytes => Ok(bytes),
    }
}

/// A `GeneralizedTime` of the one form Envoy and RFC 5280 accept: `YYYYMMDDHHMMSSZ`.
fn generalized_time(value: Der<'_>) -> Result<UnixTime, OcspProblem> {
    let malformed =
        || value.malformed("a time is not a GeneralizedTime of the form YYYYMMDDHHMMSSZ");
    let [digits @ .., b'Z'] = value.bytes else {
        return Err(malformed());
    };
    if digits.len() != 14 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let number = |range: std::ops::Range<usize>| {
        digits[range]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
    };
    let (year, month, day) = (number(0..4), number(4..6), number(6..8));
    let (hour, minute, second) = (number(8..10), number(10..12), number(12..14));
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(malformed());
    }
    if year < 1970 {
        return Err(value.malformed("a time is before 1970"));
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        secs,
    )))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date from 1970 on, proleptic Gregorian (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year % 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An OID for an error message: dotted if short and well formed, else its length.
fn describe_oid(contents: &[u8]) -> String {
    let oid = Oid::new(Cow::Borrowed(contents));
    match oid.iter() {
        Some(arcs) if !contents.is_empty() && contents.len() <= MAX_OID_LEN => arcs
            .map(|arc| arc.to_string())
            .collect::<Vec<_>>()
            .join("."),
        _ => format!("an OID of {} bytes", contents.len()),
    }
}

// === DER reading ===

/// The identifier of a DER value: class, form and tag number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kind {
    class: Class,
    constructed: bool,
    tag: u32,
}

const SEQUENCE: Kind = universal(16, true);
const INTEGER: Kind = universal(2, false);
const BIT_STRING: Kind = universal(3, false);
const OCTET_STRING: Kind = universal(4, false);
const OID: Kind = universal(6, false);
const ENUMERATED: Kind = universal(10, false);
const GENERALIZED_TIME: Kind = universal(24, false);

const fn universal(tag: u32, constructed: bool) -> Kind {
    Kind {
        class: Class::Universal,
        constructed,
        tag,
    }
}

const fn context(tag: u32, constructed: bool) -> Kind {
    Kind {
        class: Class::ContextSpecific,
        constructed,
        tag,
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = if self.constructed {
            "constructed"
        } else {
            "primitive"
        };
        let name = match (self.constructed, self.tag) {
            (true, 16) => Some("SEQUENCE"),
            (true, 17) => Some("SET"),
            (false, 1) => Some("BOOLEAN"),
            (false, 2) => Some("INTEGER"),
            (false, 3) => Some("BIT STRING"),
            (false, 4) => Some("OCTET STRING"),
            (false, 5) => Some("NULL"),
            (false, 6) => Some("OBJECT IDENTIFIER"),
            (false, 10) => Some("ENUMERATED"),
            (false, 23) => Some("UTCTime"),
            (false, 24) => Some("GeneralizedTime"),
            _ => None,
        };
        match (self.class, name) {
            (Class::Universal, Some(name)) => f.write_str(name),
            (Class::Universal, None) => write!(f, "universal tag {} ({form})", self.tag),
            (Class::ContextSpecific, _) => write!(f, "[{}] ({form})", self.tag),
            (Class::Application, _) => write!(f, "application tag {} ({form})", self.tag),
            (Class::Private, _) => write!(f, "private tag {} ({form})", self.tag),
        }
    }
}

/// DER values one after another (the whole staple, or the contents of a constructed value),
/// and where they start in the staple, for error messages.
#[derive(Clone, Copy, Debug)]
struct Der<'a> {
    bytes: &'a [u8],
    offset: usize,
}

/// One DER value read from a [`Der`].
#[derive(Clone, Copy, Debug)]
struct Value<'a> {
    kind: Kind,
    /// Where the value (its identifier) starts in the staple.
    offset: usize,
    contents: Der<'a>,
}

// === impl Der ===

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// An error about these bytes.
    fn malformed(&self, detail: impl fmt::Display) -> OcspProblem {
        OcspProblem::Malformed {
            offset: self.offset,
            detail: detail.to_string(),
        }
    }

    /// Reads the next value, whatever its kind; `field` names it in errors.
    fn next(&mut self, field: &'static str) -> Result<Value<'a>, OcspProblem> {
        if self.bytes.is_empty() {
            return Err(self.malformed(format_args!("{field} is missing")));
        }
        let (rest, any) = Any::from_der(self.bytes)
            .map_err(|e| self.malformed(format_args!("{field} {}", HeaderProblem(&e))))?;
        let header = &any.header;
        let tag_len = header.raw_tag().map_or(1, <[u8]>::len);
        let header_len = self.bytes.len() - rest.len() - any.data.len();
        // BoringSSL, under Envoy, refuses the non-minimal forms asn1-rs lets through.
        if (header.tag().0 < 31 && tag_len != 1)
            || header_len != tag_len + length_octets(any.data.len())
        {
            return Err(self.malformed(format_args!(
                "{field} has a tag or length not in DER's minimal form"
            )));
        }
        let value = Value {
            kind: Kind {
                class: header.class(),
                constructed: header.is_constructed(),
                tag: header.tag().0,
            },
            offset: self.offset,
            contents: Der {
                bytes: any.data,
                offset: self.offset + header_len,
            },
        };
        self.offset += self.bytes.len() - rest.len();
        self.bytes = rest;
        Ok(value)
    }

    /// Reads the next value, which must be `field` of kind `kind`, and returns its contents.
    fn expect(&mut self, field: &'static str, kind: Kind) -> Result<Der<'a>, OcspProblem> {
        let value = self.next(field)?;
        if value.kind != kind {
            return Err(value.unexpected(format_args!("{field} ({kind})")));
        }
        Ok(value.contents)
    }

    /// Reads the next value if it is of kind `kind` (an optional `field`).
    fn optional(
        &mut self,
        field: &'static str,
        kind: Kind,
    ) -> Result<Option<Der<'a>>, OcspProblem> {
        let next = Header::from_der(self.bytes).ok().map(|(_, header)| Kind {
            class: header.class(),
            constructed: header.is_constructed(),
            tag: header.tag().0,
        });
        if next == Some(kind) {
            self.expect(field, kind).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks that nothing is left after the last field of `container`.
    fn finish(self, container: &'static str) -> Result<(), OcspProblem> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        Err(self.malformed(format_args!(
            "{} unexpected bytes at the end of {container}",
            self.bytes.len()
        )))
    }
}

// === impl Value ===

impl Value<'_> {
    /// The error that this value is not the `expected` one.
    fn unexpected(&self, expected: impl fmt::Display) -> OcspProblem {
        OcspProblem::Malformed {
            offset: self.offset,
            detail: format!("expected {expected}, found {}", self.kind),
        }
    }
}

/// How many octets DER's minimal length encoding of `len` takes.
fn length_octets(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    }
}

/// Why asn1-rs could not read a value's header or contents, from fixed text only.
struct HeaderProblem<'a>(&'a nom::Err<asn1_rs::Error>);

impl fmt::Display for HeaderProblem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            nom::Err::Incomplete(_) => f.write_str("runs past the end of its enclosing value"),
            nom::Err::Error(asn1_rs::Error::DerConstraintFailed(
                asn1_rs::DerConstraint::IndefiniteLength,
            ))
            | nom::Err::Failure(asn1_rs::Error::DerConstraintFailed(
                asn1_rs::DerConstraint::IndefiniteLength,
            )) => f.write_str("has an indefinite length (BER, not DER)"),
            nom::Err::Error(_) | nom::Err::Failure(_) => {
                f.write_str("has a malformed tag or length")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(value: &[u8]) -> Result<u64, OcspProblem> {
        generalized_time(Der::new(value)).map(|t| t.as_secs())
    }

    #[test]
    fn generalized_times() {
        assert_eq!(time(b"19700101000000Z"), Ok(0));
        assert_eq!(time(b"20000229000000Z"), Ok(951_782_400));
        assert_eq!(time(b"20240229123456Z"), Ok(1_709_210_096));
        assert_eq!(time(b"20991231235959Z"), Ok(4_102_444_799));
        for bad in [
            &b"20240229123456"[..],
            b"20240229123456.5Z",
            b"202402291234Z",
            b"20240229123456+0100",
            b"20230229000000Z",
            b"20241301000000Z",
            b"20240101240000Z",
            b"20240101006000Z",
            b"2024010100000aZ",
            b"19691231235959Z",
        ] {
            assert!(time(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn der_lengths_must_be_minimal() {
        // SEQUENCE { NULL } with the length in long form.
        let mut der = Der::new(&[0x30, 0x81, 0x02, 0x05, 0x00]);
        let problem = der.next("x").expect_err("non-minimal length");
        assert!(problem.to_string().contains("minimal form"), "{problem}");
        let mut der = Der::new(&[0x30, 0x02, 0x05, 0x00]);
        assert_eq!(der.expect("x", SEQUENCE).expect("minimal").bytes, [5, 0]);
        assert_eq!(length_octets(0x7f), 1);
        assert_eq!(length_octets(0x80), 2);
        assert_eq!(length_octets(0x100), 3);
    }

    #[test]
    fn der_errors_say_where() {
        let mut der = Der::new(&[0x30, 0x05, 0x05, 0x00]);
        let problem = der.next("OCSPResponse").expect_err("cut short");
        assert_eq!(
            problem.to_string(),
            "not a well-formed DER OCSP response: OCSPResponse runs past the end of its \
             enclosing value at byte 0"
        );
        let mut der = Der::new(&[0x30, 0x02, 0x02, 0x00]);
        let mut contents = der.expect("OCSPResponse", SEQUENCE).expect("a sequence");
        let problem = contents
            .expect("responseStatus", ENUMERATED)
            .expect_err("an INTEGER");
        assert_eq!(
            problem,
            OcspProblem::Malformed {
                offset: 2,
                detail: "expected responseStatus (ENUMERATED), found INTEGER".to_owned(),
            }
        );
    }

    #[test]
    fn oids_are_described_without_bytes() {
        assert_eq!(describe_oid(ID_PKIX_OCSP_BASIC), "1.3.6.1.5.5.7.48.1.1");
        assert_eq!(describe_oid(&[0x80; 40]), "an OID of 40 bytes");
        assert_eq!(describe_oid(&[]), "an OID of 0 bytes");
    }
}
