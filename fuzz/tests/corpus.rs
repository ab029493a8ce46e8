//! The seed corpora in `fuzz/corpus/<target>/`, generated once and checked in:
//!
//! ```sh
//! cargo test --manifest-path fuzz/Cargo.toml --test corpus -- --ignored --nocapture
//! ```
//!
//! Running it again replaces every seed (new keys, new serials): do it only when a seed must
//! change, and commit the result. The certificates and keys are test keys made here with
//! rcgen and openssl (`sds-test-util`), valid from 2025 to 2035 around the time the targets
//! validate at (`sds_fuzz::NOW_SECS`, 2027-01-15) unless a seed is about a window; nobody
//! uses them for anything else. Each seed's expected outcome is checked as it is written.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use sds_core::{CertifiedKey, Input, SecretName, TrustBundle};
use sds_fuzz::{FILE_SEPARATOR, NOW_SECS, now};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy_node::{
        ENVOY_EXTENSIONS, SECRET_TYPE_URL, envoy_node, minimal_node, put_discovery_request,
    },
};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    dir
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2025-01-01 to 2035-01-01.
fn decade() -> Validity {
    Validity::between(at(1_735_689_600), at(2_051_222_400))
}

fn now_time() -> SystemTime {
    at(NOW_SECS)
}

#[test]
#[ignore = "writes the checked-in seed corpora; run by hand"]
fn generate() {
    request_reader();
    let material = Material::new();
    credential(&material);
    k8s_secret(&material);
    rules_file();
}

// === request_reader ===

/// The settings byte: skip `node`, delta, the `MAX_KEPT` and `PENDING` indexes.
fn flags(skip_node: bool, delta: bool, max_kept: u8, pending: u8) -> u8 {
    u8::from(skip_node) | u8::from(delta) << 1 | (max_kept & 7) << 2 | (pending & 7) << 5
}

fn request_seed(flags: u8, offsets: [u16; 8], messages: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags];
    for offset in offsets {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    for m in messages {
        out.push(0);
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn sotw(node: &[u8], version: &str, name: &str, nonce: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_discovery_request(&mut b, node, version, name, nonce);
    b
}

/// A `google.rpc.Status` as field `tag`.
fn put_status(b: &mut Vec<u8>, tag: u32, code: u64, message: &str) {
    let mut status = Vec::new();
    encode_key(1, WireType::Varint, &mut status);
    encode_varint(code, &mut status);
    encode_key(2, WireType::LengthDelimited, &mut status);
    encode_varint(message.len() as u64, &mut status);
    status.extend_from_slice(message.as_bytes());
    encode_key(tag, WireType::LengthDelimited, b);
    encode_varint(status.len() as u64, b);
    b.extend_from_slice(&status);
}

/// A delta request: `node` (1) as Envoy encodes it, then the rest from our schema.
fn delta(node: &[u8], request: &DeltaDiscoveryRequest) -> Vec<u8> {
    let mut b = Vec::new();
    if !node.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut b);
        encode_varint(node.len() as u64, &mut b);
        b.extend_from_slice(node);
    }
    request.encode(&mut b).expect("a Vec grows");
    b
}

fn request_reader() {
    let dir = corpus("request_reader");
    let write = |name: &str, seed: Vec<u8>| {
        fs::write(dir.join(name), &seed).expect("write a seed");
    };
    let full = envoy_node(ENVOY_EXTENSIONS);
    let small = envoy_node(12);
    let minimal = minimal_node();
    let name = "kubernetes://istio-system/httpbin-credential";
    let version = "7d9e6f0a1b2c3d4e5f60718293a4b5c6";
    let nonce = "3";

    // Envoy 1.40's first request with its whole Node (61 KB), cut inside the Node.
    let first = sotw(&full, "", name, "");
    let first_seed = request_seed(
        flags(false, false, 0, 0),
        [5, 9, 300, 4_096, 16_384, 16_385, 40_000, 61_000],
        &[&first],
    );
    write("envoy-first-request-full-node", first_seed);

    let small_first = sotw(&small, "", name, "");
    write(
        "first-request",
        request_seed(
            flags(false, false, 0, 0),
            [1, 5, 6, 7, 64, 65, 200, 900],
            &[&small_first],
        ),
    );
    let ack = sotw(&small, version, name, nonce);
    write(
        "ack-node-skipped",
        request_seed(
            flags(true, false, 0, 0),
            [3, 40, 41, 42, 500, 501, 502, 1000],
            &[&ack],
        ),
    );
    let minimal_ack = sotw(&minimal, version, name, nonce);
    write(
        "ack-minimal-node",
        request_seed(
            flags(true, false, 0, 0),
            [0, 0, 2, 4, 6, 8, 10, 12],
            &[&minimal_ack],
        ),
    );
    write(
        "first-request-then-ack",
        request_seed(
            flags(false, false, 0, 0),
            [4, 5, 6, 800, 801, 1_500, 1_501, 1_502],
            &[&small_first, &ack],
        ),
    );

    let mut nack = sotw(&minimal, version, name, nonce);
    put_status(
        &mut nack,
        6,
        13,
        "Failed to load incomplete private key from path: ",
    );
    write(
        "nack",
        request_seed(
            flags(true, false, 0, 0),
            [10, 20, 30, 40, 50, 60, 70, 80],
            &[&nack],
        ),
    );
    let mut long_nack = sotw(&minimal, version, name, nonce);
    put_status(&mut long_nack, 6, 3, &"x".repeat(1_100));
    write(
        "nack-long-message",
        request_seed(
            flags(false, false, 0, 0),
            [200, 400, 600, 800, 1000, 1100, 1200, 1300],
            &[&long_nack],
        ),
    );

    let subscribe = DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.to_owned(),
        resource_names_subscribe: vec![name.to_owned(), format!("{name}-cacert")],
        initial_resource_versions: [(name.to_owned(), version.to_owned())].into(),
        ..DeltaDiscoveryRequest::default()
    };
    let delta_first = delta(&small, &subscribe);
    write(
        "delta-first-request",
        request_seed(
            flags(false, true, 0, 0),
            [2, 3, 90, 91, 700, 701, 702, 703],
            &[&delta_first],
        ),
    );
    let delta_ack = DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        resource_names_unsubscribe: vec![format!("{name}-cacert")],
        ..DeltaDiscoveryRequest::default()
    };
    write(
        "delta-ack-node-skipped",
        request_seed(
            flags(true, true, 0, 0),
            [1, 2, 3, 4, 5, 6, 7, 8],
            &[&delta(&minimal, &delta_ack)],
        ),
    );
    let mut delta_nack = delta(&[], &delta_ack);
    put_status(&mut delta_nack, 7, 13, "Failed to load certificate chain");
    write(
        "delta-nack",
        request_seed(
            flags(false, true, 0, 0),
            [9, 19, 29, 39, 49, 59, 69, 79],
            &[&delta_nack],
        ),
    );

    // Limits: many names against a small `max_kept`, a small connection budget.
    let mut many = Vec::new();
    put_discovery_request(&mut many, &minimal, "", name, "");
    for i in 0..40 {
        let extra = format!("kubernetes://istio-system/credential-{i:02}");
        encode_key(3, WireType::LengthDelimited, &mut many);
        encode_varint(extra.len() as u64, &mut many);
        many.extend_from_slice(extra.as_bytes());
    }
    write(
        "many-names-small-limit",
        request_seed(
            flags(false, false, 5, 0),
            [100, 200, 300, 400, 500, 600, 700, 800],
            &[&many],
        ),
    );
    write(
        "small-connection-budget",
        request_seed(
            flags(false, false, 0, 4),
            [100, 200, 300, 400, 500, 600, 700, 800],
            &[&many],
        ),
    );
    // A body that ends inside a request, a compressed request, a request over 4 MiB.
    let mut truncated = request_seed(flags(false, false, 0, 0), [7; 8], &[&small_first]);
    truncated.truncate(truncated.len() - 10);
    write("ends-inside-a-request", truncated);
    let mut compressed = request_seed(flags(false, false, 0, 0), [1; 8], &[&minimal_ack]);
    compressed[17] = 1;
    write("compressed", compressed);
    let mut huge = request_seed(flags(false, false, 0, 0), [2; 8], &[&minimal_ack]);
    huge[18..22].copy_from_slice(&(4u32 << 20 | 1).to_be_bytes());
    write("over-4-mib", huge);

    // Each decodes as prost decodes it.
    let decoded = DiscoveryRequest::decode(&ack[..]).expect("prost decodes the ACK");
    assert_eq!(decoded.resource_names, [name]);
}

// === credential ===

/// The certificates and keys every credential seed is made of.
struct Material {
    root: Ca,
    intermediate: Ca,
    leaves: Vec<(&'static str, Leaf)>,
}

impl Material {
    fn new() -> Self {
        let root = Ca::root("sds fuzz root", KeyKind::EcP256Pkcs8, Validity::wide());
        let intermediate = root.intermediate("sds fuzz intermediate");
        let host = ["httpbin.example.com"];
        let leaves = [
            ("rsa2048-pkcs8", KeyKind::RsaPkcs8(2048)),
            ("rsa2048-pkcs1", KeyKind::RsaPkcs1(2048)),
            ("p256-pkcs8", KeyKind::EcP256Pkcs8),
            ("p256-sec1", KeyKind::EcP256Sec1),
            ("p384-pkcs8", KeyKind::EcP384Pkcs8),
            ("p384-sec1", KeyKind::EcP384Sec1),
            ("ed25519", KeyKind::Ed25519),
        ]
        .into_iter()
        .map(|(name, kind)| (name, root.issue(&host, kind, decade())))
        .collect();
        Self {
            root,
            intermediate,
            leaves,
        }
    }

    fn leaf(&self, name: &str) -> &Leaf {
        &self
            .leaves
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a leaf")
            .1
    }
}

/// The files of a `credential` input, joined by the separator line.
fn credential_seed(files: &[&[u8]]) -> Vec<u8> {
    files.join(FILE_SEPARATOR)
}

/// Whether the chain and key validate, and the CA and CRL (when given) too, as the target
/// calls them.
fn outcome(files: &[&[u8]]) -> (Option<bool>, Option<bool>) {
    let name = SecretName::new("fuzz-credential").expect("a valid name");
    let pair = (files.len() >= 2).then(|| {
        let certified = CertifiedKey::from_pem(
            &name,
            Input::new("tls.crt", files[0]),
            Input::new("tls.key", files[1]),
            now(),
        );
        match (certified, files.get(4).filter(|s| !s.is_empty())) {
            (Ok(c), Some(staple)) => c
                .with_ocsp_staple(&name, Input::new("tls.ocsp-staple", staple))
                .is_ok(),
            (certified, _) => certified.is_ok(),
        }
    });
    let ca = files.get(2).map(|ca| {
        let crl = files.get(3).filter(|c| !c.is_empty());
        TrustBundle::from_pem(
            &name,
            Input::new("ca.crt", ca),
            crl.map(|c| Input::new("ca.crl", c)),
            now(),
        )
        .is_ok()
    });
    (pair, ca)
}

fn credential(m: &Material) {
    let dir = corpus("credential");
    let write = |name: &str, files: &[&[u8]], expected: (Option<bool>, Option<bool>)| {
        assert_eq!(outcome(files), expected, "seed {name}");
        fs::write(dir.join(name), credential_seed(files)).expect("write a seed");
    };
    let root = m.root.cert_pem().as_bytes();
    let crl = m.root.crl().valid(decade()).pem();
    let ok = (Some(true), None);

    // Every key kind and encoding we accept, with the CA and a CRL for some.
    for (name, leaf) in &m.leaves {
        let files: Vec<&[u8]> = if name.starts_with("p256") {
            vec![
                leaf.cert_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                root,
                crl.as_bytes(),
            ]
        } else {
            vec![leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()]
        };
        let expected = if files.len() > 2 {
            (Some(true), Some(true))
        } else {
            ok
        };
        write(&format!("ok-{name}"), &files, expected);
    }
    let p256 = m.leaf("p256-pkcs8");
    let rsa = m.leaf("rsa2048-pkcs8");

    // A chain through an intermediate, with the root appended; CRLF and text around blocks.
    let leaf = m
        .intermediate
        .issue(&["chain.example.com"], KeyKind::EcP384Pkcs8, decade());
    write(
        "ok-intermediate-and-root",
        &[
            leaf.chain_with_root_pem().as_bytes(),
            leaf.key_pem.as_bytes(),
        ],
        ok,
    );
    let crlf = format!(
        "subject=CN=httpbin.example.com\r\n{}",
        p256.cert_pem.replace('\n', "\r\n")
    );
    let key_crlf = format!("# the key\r\n{}", p256.key_pem.replace('\n', "\r\n"));
    write(
        "ok-crlf-and-comments",
        &[crlf.as_bytes(), key_crlf.as_bytes()],
        ok,
    );
    // An OCSP staple for the leaf.
    let staple = m.root.ocsp(p256).der();
    write(
        "ok-ocsp-staple",
        &[
            p256.cert_pem.as_bytes(),
            p256.key_pem.as_bytes(),
            b"",
            b"",
            &staple,
        ],
        (Some(true), Some(false)),
    );
    let other_staple = m.root.ocsp(rsa).der();
    write(
        "bad-ocsp-staple-for-another-leaf",
        &[
            p256.cert_pem.as_bytes(),
            p256.key_pem.as_bytes(),
            b"",
            b"",
            &other_staple,
        ],
        (Some(false), Some(false)),
    );

    // What we refuse.
    let bad = (Some(false), None);
    write(
        "bad-mismatched-pair",
        &[
            p256.cert_pem.as_bytes(),
            m.leaf("p256-sec1").key_pem.as_bytes(),
        ],
        bad,
    );
    let encrypted = p256.key.encrypted_pkcs8_pem("fuzz");
    write(
        "bad-encrypted-pkcs8",
        &[p256.cert_pem.as_bytes(), encrypted.as_bytes()],
        bad,
    );
    let legacy = m.leaf("p256-sec1").key.encrypted_legacy_pem("fuzz");
    write(
        "bad-encrypted-legacy",
        &[m.leaf("p256-sec1").cert_pem.as_bytes(), legacy.as_bytes()],
        bad,
    );
    let expired = m.root.issue(
        &["old.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::expired_at(now_time()),
    );
    write(
        "bad-expired",
        &[expired.cert_pem.as_bytes(), expired.key_pem.as_bytes()],
        bad,
    );
    let early = m.root.issue(
        &["new.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::not_yet_valid_at(now_time()),
    );
    write(
        "bad-not-yet-valid",
        &[early.cert_pem.as_bytes(), early.key_pem.as_bytes()],
        bad,
    );
    let weak = m
        .root
        .issue(&["weak.example.com"], KeyKind::RsaPkcs8(1024), decade());
    write(
        "bad-rsa1024",
        &[weak.cert_pem.as_bytes(), weak.key_pem.as_bytes()],
        bad,
    );
    let p521 = m
        .root
        .issue(&["p521.example.com"], KeyKind::EcP521Pkcs8, decade());
    write(
        "bad-p521",
        &[p521.cert_pem.as_bytes(), p521.key_pem.as_bytes()],
        bad,
    );
    let two_keys = format!("{}{}", p256.key_pem, m.leaf("ed25519").key_pem);
    write(
        "bad-two-keys",
        &[p256.cert_pem.as_bytes(), two_keys.as_bytes()],
        bad,
    );
    let reversed = format!("{}{}", m.intermediate.cert_pem(), leaf.cert_pem);
    write(
        "bad-chain-out-of-order",
        &[reversed.as_bytes(), leaf.key_pem.as_bytes()],
        bad,
    );
    write(
        "bad-key-in-certificate-file",
        &[p256.key_pem.as_bytes(), p256.key_pem.as_bytes()],
        bad,
    );
    let one_line: String = m
        .leaf("ed25519")
        .key_pem
        .lines()
        .collect::<Vec<_>>()
        .join(" ");
    write(
        "bad-key-lost-line-breaks",
        &[m.leaf("ed25519").cert_pem.as_bytes(), one_line.as_bytes()],
        bad,
    );
    write(
        "bad-der-not-pem",
        &[&p256.cert_der, p256.key_pem.as_bytes()],
        bad,
    );
    write("bad-empty-key", &[p256.cert_pem.as_bytes(), b""], bad);

    // CA bundles: several roots and a CRL; an expired CRL; no certificate.
    let other_root = Ca::root("sds fuzz other root", KeyKind::EcP384Pkcs8, decade());
    let bundle = format!("{}{}", m.root.cert_pem(), other_root.cert_pem());
    let revoking = m.root.crl().revoke(p256).valid(decade()).pem();
    write(
        "ok-ca-bundle-and-crl",
        &[b"", b"", bundle.as_bytes(), revoking.as_bytes()],
        (Some(false), Some(true)),
    );
    let stale = m.root.crl().valid(Validity::expired_at(now_time())).pem();
    write(
        "bad-ca-expired-crl",
        &[b"", b"", root, stale.as_bytes()],
        (Some(false), Some(false)),
    );
    let crl_in_ca = format!("{}{}", m.root.cert_pem(), crl);
    write(
        "ok-ca-with-crl-inside",
        &[b"", b"", crl_in_ca.as_bytes()],
        (Some(false), Some(true)),
    );
    write(
        "bad-ca-without-certificate",
        &[b"", b"", crl.as_bytes()],
        (Some(false), Some(false)),
    );
}

// === k8s_secret ===

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn secret_json(
    namespace: Option<&str>,
    name: &str,
    type_: &str,
    data: &[(&str, &[u8])],
) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(b64(v))))
        .collect();
    let mut metadata = serde_json::json!({
        "name": name,
        "resourceVersion": "1042",
        "uid": "6f1c1f5e-2d1b-4c6e-9a57-7c1f0c1e2a3b",
    });
    if let Some(namespace) = namespace {
        metadata["namespace"] = namespace.into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": type_,
        "data": data,
    })
}

fn k8s_secret(m: &Material) {
    let dir = corpus("k8s_secret");
    let write = |name: &str, value: serde_json::Value| {
        let text = serde_json::to_vec_pretty(&value).expect("JSON");
        fs::write(dir.join(name), text).expect("write a seed");
    };
    let ns = Some("istio-system");
    let leaf = m.leaf("p256-pkcs8");
    let (cert, key) = (leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes());
    let root = m.root.cert_pem().as_bytes();
    let crl = m.root.crl().valid(decade()).pem();

    write(
        "tls-secret",
        secret_json(
            ns,
            "httpbin-credential",
            "kubernetes.io/tls",
            &[("tls.crt", cert), ("tls.key", key), ("ca.crt", root)],
        ),
    );
    write(
        "istio-generic-cert-key-cacert",
        secret_json(
            ns,
            "httpbin-credential",
            "Opaque",
            &[
                ("cert", cert),
                ("key", key),
                ("cacert", root),
                ("crl", crl.as_bytes()),
            ],
        ),
    );
    let staple = m.root.ocsp(leaf).der();
    write(
        "tls-secret-ocsp-staple-and-crl",
        secret_json(
            ns,
            "stapled",
            "kubernetes.io/tls",
            &[
                ("tls.crt", cert),
                ("tls.key", key),
                ("tls.ocsp-staple", &staple),
                ("ca.crt", root),
                ("ca.crl", crl.as_bytes()),
            ],
        ),
    );
    let rsa = m.leaf("rsa2048-pkcs1");
    write(
        "generic-empty-keys-and-tls-keys",
        secret_json(
            None,
            "precedence",
            "Opaque",
            &[
                ("cert", b""),
                ("key", b""),
                ("tls.crt", rsa.cert_pem.as_bytes()),
                ("tls.key", rsa.key_pem.as_bytes()),
            ],
        ),
    );
    write(
        "list-credential-and-cacert-secret",
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "SecretList",
            "metadata": {"resourceVersion": "2001"},
            "items": [
                secret_json(ns, "httpbin", "Opaque", &[("cert", cert), ("key", key), ("cacert", root)]),
                secret_json(ns, "httpbin-cacert", "Opaque", &[("cacert", root)]),
                secret_json(Some("default"), "bare", "kubernetes.io/tls", &[("tls.crt", cert), ("tls.key", key)]),
            ],
        }),
    );
    write(
        "array-with-non-credentials",
        serde_json::Value::Array(vec![
            secret_json(
                ns,
                "sh.helm.release.v1.gw.v1",
                "helm.sh/release.v1",
                &[("release", b"H4sIAAAAAAAC")],
            ),
            secret_json(
                ns,
                "token",
                "kubernetes.io/service-account-token",
                &[("token", b"eyJhbGciOi"), ("ca.crt", root)],
            ),
            secret_json(
                ns,
                "ed",
                "Opaque",
                &[
                    ("cert", m.leaf("ed25519").cert_pem.as_bytes()),
                    ("key", m.leaf("ed25519").key_pem.as_bytes()),
                ],
            ),
        ]),
    );
    write(
        "incomplete-only-tls-crt",
        secret_json(
            ns,
            "half",
            "kubernetes.io/tls",
            &[("tls.crt", cert), ("ca.crl", crl.as_bytes())],
        ),
    );
    write(
        "mismatched-key",
        secret_json(
            ns,
            "mismatch",
            "Opaque",
            &[
                ("cert", cert),
                ("key", m.leaf("p256-sec1").key_pem.as_bytes()),
            ],
        ),
    );
    write(
        "cacert-secret-without-ca",
        serde_json::Value::Array(vec![
            secret_json(ns, "gw-cacert", "Opaque", &[("cert", cert), ("key", key)]),
            secret_json(ns, "gw", "Opaque", &[("cacert", root)]),
        ]),
    );
}

// === rules_file ===

fn rules_file() {
    let dir = corpus("rules_file");
    let seeds: &[(&str, &str)] = &[
        // README, "As an Istio gateway's external SDS server".
        (
            "readme-gateway-uid",
            "rules:\n  - peers: [\"uid:1337\"]\n    secrets: [\"*\"]\n",
        ),
        // README, "Who may have which secret".
        (
            "readme-spiffe-and-dns",
            "rules:\n  - peers: [\"spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account\"]\n    secrets: [\"httpbin-credential\", \"kubernetes://istio-system/*\"]\n  - peers: [\"dns:gateway.example.com\", \"gid:1337\"]\n    secrets: [\"*\"]\n",
        ),
        // sds-server/tests/policy_rules.rs.
        (
            "one-rule",
            "rules:\n  - peers: [uid:1000]\n    secrets: [a-*]\n",
        ),
        (
            "json",
            r#"{"rules": [{"peers": ["spiffe://td/ns/a/sa/*"], "secrets": ["kubernetes://a/*"]}]}"#,
        ),
        (
            "bad-peer-form",
            "rules:\n  - peers: [uid:1]\n    secrets: [a]\n  - peers: [user:1000]\n    secrets: [a]\n",
        ),
        (
            "bad-extra-key",
            "rules:\n  - peers: [uid:1]\n    secrets: [a]\n    extra: true\n",
        ),
        (
            "bad-misspelt-key",
            "rules:\n  - peers: [uid:1000]\n    secrets: [a-*]\n    secret: [b]\n",
        ),
        // Anchors and aliases, globs with `?`, flow and block styles, a comment.
        (
            "anchors-and-globs",
            "# who gets what\nrules:\n  - peers: &gw [\"uid:10?\", \"gid:*\", \"dns:*.example.com\"]\n    secrets: [\"sds://*\", \"a?c-*-cacert\"]\n  - peers: *gw\n    secrets:\n      - \"kubernetes://ns/*\"\n",
        ),
        (
            "bad-empty-lists",
            "rules:\n  - peers: []\n    secrets: []\n",
        ),
        // The glob property: a pattern line, then a name line.
        ("glob-stars", "*a*b?c*\nxxaybbzcq\n"),
        (
            "glob-backtrack",
            "a*a*a*a*b\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\n",
        ),
        (
            "glob-brackets",
            "kubernetes://[a]/\\*\nkubernetes://[a]/\\x\n",
        ),
    ];
    for (name, text) in seeds {
        fs::write(dir.join(name), text).expect("write a seed");
    }
    fs::write(
        dir.join("bad-not-utf8"),
        b"rules:\n  - peers: [\"uid:1\"]\n    secrets: [\"\xff\"]\n",
    )
    .expect("write a seed");
}
