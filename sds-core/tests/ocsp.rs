//! OCSP staples: what `CertifiedKey::with_ocsp_staple` accepts and refuses, with real signed
//! responses from `sds-test-util` (and one from `openssl ocsp` itself), at a fixed `now`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;
use sds_core::{
    CertifiedKey, Error, ErrorKind, Input, MAX_INPUT_LEN, OcspCertStatus, OcspProblem, SecretName,
};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    ocsp::{self, CertStatus},
};

const NOW_SECS: u64 = 2_000_000_000; // 2033-05-18
const STAPLE: &str = "/d/httpbin/tls.ocsp-staple";

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW_SECS))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn unix(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

fn name() -> SecretName {
    SecretName::new("httpbin").expect("valid name")
}

/// An issuing CA (under a root) and a leaf it issued, valid at `now`.
fn fixture() -> (Ca, Ca, Leaf) {
    let root = Ca::new("Test Root");
    let issuing = root.intermediate("Test Issuing CA");
    let leaf = issuing.issue(
        &["httpbin.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::around(at(NOW_SECS)),
    );
    (root, issuing, leaf)
}

fn load(leaf: &Leaf) -> CertifiedKey {
    CertifiedKey::from_pem(
        &name(),
        Input::new("/d/httpbin/tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("/d/httpbin/tls.key", leaf.key_pem.as_bytes()),
        now(),
    )
    .expect("a valid credential")
}

fn staple(leaf: &Leaf, der: &[u8]) -> Result<CertifiedKey, Error> {
    load(leaf).with_ocsp_staple(&name(), Input::new(STAPLE, der))
}

fn problem(err: &Error) -> &OcspProblem {
    match err.kind() {
        Some(ErrorKind::InvalidOcspStaple { problem }) => problem,
        other => panic!("expected an invalid OCSP staple, got {other:?}: {err}"),
    }
}

#[test]
fn a_good_staple_is_attached_and_changes_the_version() {
    let (_, issuing, leaf) = fixture();
    let der = issuing.ocsp(&leaf).der();

    let plain = load(&leaf);
    assert!(plain.ocsp_staple().is_none());
    let stapled = staple(&leaf, &der).expect("a good staple");
    let ocsp = stapled.ocsp_staple().expect("the staple is attached");
    assert_eq!(ocsp.der(), der);
    assert_eq!(ocsp.cert_status(), OcspCertStatus::Good);
    assert_eq!(ocsp.this_update(), unix(946_684_800));
    assert_eq!(ocsp.next_update(), Some(unix(4_102_444_800)));
    assert_eq!(stapled.chain(), plain.chain());
    assert_ne!(stapled.version(), plain.version());
    let debug = format!("{ocsp:?}");
    assert!(debug.contains("Good") && debug.contains("len"), "{debug}");

    // The same content gives the same version; another staple, another one.
    let again = staple(&leaf, &der).expect("a good staple");
    assert_eq!(again.version(), stapled.version());
    let fresher = issuing.ocsp(&leaf).this_update(at(NOW_SECS)).der();
    let rotated = stapled
        .with_ocsp_staple(&name(), Input::new(STAPLE, &fresher))
        .expect("a newer staple replaces the old one");
    assert_eq!(rotated.ocsp_staple().map(|o| o.der()), Some(&fresher[..]));
    assert_ne!(rotated.version(), again.version());
}

#[test]
fn every_status_is_accepted_and_reported() {
    let (_, issuing, leaf) = fixture();
    let revoked = CertStatus::Revoked {
        revocation_time: at(NOW_SECS - 3600),
    };
    for (status, expected) in [
        (CertStatus::Good, OcspCertStatus::Good),
        (revoked, OcspCertStatus::Revoked),
        (CertStatus::Unknown, OcspCertStatus::Unknown),
    ] {
        let stapled = staple(&leaf, &issuing.ocsp(&leaf).status(status).der())
            .unwrap_or_else(|e| panic!("{status:?}: {e}"));
        let ocsp = stapled.ocsp_staple().expect("attached");
        assert_eq!(ocsp.cert_status(), expected);
    }
}

#[test]
fn times_are_reported_not_checked() {
    let (_, issuing, leaf) = fixture();

    let open_ended = issuing
        .ocsp(&leaf)
        .this_update(at(NOW_SECS))
        .next_update(None);
    let stapled = staple(&leaf, &open_ended.der()).expect("no nextUpdate is fine");
    let ocsp = stapled.ocsp_staple().expect("attached");
    assert_eq!(ocsp.this_update(), now());
    assert_eq!(ocsp.next_update(), None);

    // Not valid yet, and expired: Envoy (LENIENT_STAPLING) just leaves such staples out.
    for validity in [
        Validity::not_yet_valid_at(at(NOW_SECS)),
        Validity::expired_at(at(NOW_SECS)),
    ] {
        let stapled = staple(&leaf, &issuing.ocsp(&leaf).valid(validity).der())
            .unwrap_or_else(|e| panic!("{validity:?}: {e}"));
        let ocsp = stapled.ocsp_staple().expect("attached");
        assert_eq!(
            ocsp.this_update().as_secs(),
            validity
                .not_before
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_secs()
        );
        assert_eq!(
            ocsp.next_update().map(|t| t.as_secs()),
            validity
                .not_after
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        );
    }
}

#[test]
fn an_explicit_v1_is_accepted() {
    let (_, issuing, leaf) = fixture();
    staple(&leaf, &issuing.ocsp(&leaf).version(0).der()).expect("version 0 is v1");
}

#[test]
fn refusals_say_precisely_why() {
    let (_, issuing, leaf) = fixture();
    let good = issuing.ocsp(&leaf).der();
    // ECDSA signatures vary in length: offsets are taken from the response itself.
    let trailing = issuing.ocsp(&leaf).trailing_bytes(&[0x05, 0x00]).der();
    let pem = format!(
        "-----BEGIN OCSP RESPONSE-----\n{}\n-----END OCSP RESPONSE-----\n",
        "MIIB" // the body does not matter
    );
    let malformed = |offset: usize, detail: &str| OcspProblem::Malformed {
        offset,
        detail: detail.to_owned(),
    };
    let cases: Vec<(&str, Vec<u8>, OcspProblem, &str)> = vec![
        (
            "PEM text",
            pem.into_bytes(),
            OcspProblem::PemText,
            "expected a DER OCSP response (as `openssl ocsp -respout` writes), found PEM text",
        ),
        (
            "not DER",
            b"not an OCSP response".to_vec(),
            malformed(0, "OCSPResponse runs past the end of its enclosing value"),
            "not a well-formed DER OCSP response: OCSPResponse runs past the end of its \
             enclosing value at byte 0",
        ),
        (
            "an INTEGER",
            vec![0x02, 0x01, 0x00],
            malformed(0, "expected OCSPResponse (SEQUENCE), found INTEGER"),
            "not a well-formed DER OCSP response: expected OCSPResponse (SEQUENCE), found \
             INTEGER at byte 0",
        ),
        (
            "cut short",
            good[..good.len() - 1].to_vec(),
            malformed(0, "OCSPResponse runs past the end of its enclosing value"),
            "runs past the end of its enclosing value at byte 0",
        ),
        (
            "trailing bytes",
            trailing.clone(),
            OcspProblem::TrailingData {
                offset: trailing.len() - 2,
                len: 2,
            },
            "2 bytes follow the OCSP response",
        ),
        (
            "tryLater",
            issuing
                .ocsp(&leaf)
                .response_status(3)
                .without_response_bytes()
                .der(),
            OcspProblem::Unsuccessful { status: 3 },
            "OCSP response status is tryLater (3), not successful",
        ),
        (
            "unauthorized, with a body",
            issuing.ocsp(&leaf).response_status(6).der(),
            OcspProblem::Unsuccessful { status: 6 },
            "OCSP response status is unauthorized (6), not successful",
        ),
        (
            "no responseBytes",
            issuing.ocsp(&leaf).without_response_bytes().der(),
            OcspProblem::NoResponseBytes,
            "has no responseBytes",
        ),
        (
            "another response type",
            issuing
                .ocsp(&leaf)
                .response_type(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 2])
                .der(),
            OcspProblem::UnknownResponseType {
                oid: "1.3.6.1.5.5.7.48.1.2".to_owned(),
            },
            "the responseType is 1.3.6.1.5.5.7.48.1.2, not id-pkix-ocsp-basic",
        ),
        (
            "version v2",
            issuing.ocsp(&leaf).version(1).der(),
            OcspProblem::UnsupportedVersion { version: 1 },
            "the ResponseData version is v2 (1); Envoy accepts only v1 (0)",
        ),
        (
            "no single response",
            issuing.ocsp(&leaf).single_responses(0).der(),
            OcspProblem::ResponseCount { count: 0 },
            "the response holds 0 single responses; Envoy needs exactly one",
        ),
        (
            "two single responses",
            issuing.ocsp(&leaf).single_responses(2).der(),
            OcspProblem::ResponseCount { count: 2 },
            "the response holds 2 single responses; Envoy needs exactly one",
        ),
    ];
    for (case, der, expected, message) in cases {
        let err = staple(&leaf, &der).expect_err(case);
        assert_eq!(problem(&err), &expected, "{case}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "credential `httpbin`: {STAPLE}: invalid OCSP staple: "
            )),
            "{case}: {text}"
        );
        assert!(text.contains(message), "{case}: {text}");
        assert_eq!(err.location(), Some(STAPLE), "{case}");
        assert!(!err.depends_on_time(), "{case}");
        assert!(err.same_problem(&err.clone()), "{case}");
    }
}

#[test]
fn an_unknown_cert_status_is_refused_where_it_is() {
    let (_, issuing, leaf) = fixture();
    let der = issuing.ocsp(&leaf).cert_status_tag(0x83).der();
    let err = staple(&leaf, &der).expect_err("[3] is no certStatus");
    let OcspProblem::Malformed { offset, detail } = problem(&err) else {
        panic!("expected a malformed response: {err}");
    };
    assert_eq!(
        detail,
        "expected certStatus (good [0], revoked [1] or unknown [2]), found [3] (primitive)"
    );
    assert_eq!(der[*offset], 0x83, "the offset points at the certStatus");
    assert_eq!(der[offset + 1], 0x00);

    // Good and unknown are NULLs: primitive and empty; revoked is constructed.
    let constructed_good = issuing.ocsp(&leaf).cert_status_tag(0xa0).der();
    let err = staple(&leaf, &constructed_good).expect_err("[0] constructed is no certStatus");
    assert!(err.to_string().contains("found [0] (constructed)"), "{err}");
}

#[test]
fn a_staple_for_another_certificate_is_refused() {
    let (_, issuing, leaf) = fixture();
    let other = issuing.issue(
        &["other.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::wide(),
    );
    let err = staple(&leaf, &issuing.ocsp(&other).der()).expect_err("another leaf's staple");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match err.kind() {
        Some(ErrorKind::OcspStapleMismatch {
            staple_serial,
            leaf_serial,
        }) => {
            assert_eq!(staple_serial, &hex(&other.serial));
            assert_eq!(leaf_serial, &hex(&leaf.serial));
            assert_eq!(leaf_serial, load(&leaf).leaf().serial());
        }
        other => panic!("expected a mismatch, got {other:?}: {err}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "credential `httpbin`: {STAPLE}: the OCSP staple is for serial 0x{}, but the leaf's \
             serial is 0x{}",
            hex(&other.serial),
            hex(&leaf.serial)
        )
    );
    assert!(!err.depends_on_time());

    // Serials show as the INTEGER's contents, with the sign byte, as the leaf's do.
    let err = staple(&leaf, &issuing.ocsp(&leaf).serial(&[0x80, 0x01]).der())
        .expect_err("another serial");
    assert!(
        matches!(err.kind(), Some(ErrorKind::OcspStapleMismatch { staple_serial, .. })
            if staple_serial == "008001"),
        "{err}"
    );
}

#[test]
fn empty_and_oversized_inputs_are_refused() {
    let (_, _, leaf) = fixture();
    for empty in [&b""[..], b" \n"] {
        let err = staple(&leaf, empty).expect_err("empty");
        assert!(matches!(err.kind(), Some(ErrorKind::EmptyInput)), "{err}");
    }
    let err = staple(&leaf, &vec![0x30; MAX_INPUT_LEN + 1]).expect_err("too large");
    assert!(
        matches!(err.kind(), Some(ErrorKind::InputTooLarge { len, max })
            if *len == MAX_INPUT_LEN + 1 && *max == MAX_INPUT_LEN),
        "{err}"
    );
}

/// What Istio users actually hold: a response written by `openssl ocsp -respout`.
#[test]
fn a_staple_from_openssl_is_accepted() {
    let (_, issuing, leaf) = fixture();
    let der = ocsp::openssl_response(&issuing, &leaf, 7);
    let stapled = staple(&leaf, &der).expect("openssl's response is accepted");
    let ocsp = stapled.ocsp_staple().expect("attached");
    assert_eq!(ocsp.cert_status(), OcspCertStatus::Good);
    let next = ocsp.next_update().expect("-ndays sets nextUpdate");
    assert_eq!(next.as_secs() - ocsp.this_update().as_secs(), 7 * 86_400);
}
