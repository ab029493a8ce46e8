//! Certificates, keys and CRLs generated on the fly, with validity windows chosen by the test.
//!
//! ```no_run
//! use sds_test_util::certs::{Ca, KeyKind, Validity};
//!
//! let root = Ca::new("Test Root");
//! let issuing = root.intermediate("Test Issuing CA");
//! let leaf = issuing.issue(&["httpbin.example.com"], KeyKind::EcP256Sec1, Validity::current());
//! // leaf.chain_pem: leaf + intermediate; leaf.key_pem: `EC PRIVATE KEY`; root.cert_pem(): anchor
//! let crl = issuing.crl().revoke(&leaf).pem();
//! # let _ = crl;
//! ```
//!
//! rcgen (ring backend) generates the ECDSA P-256/P-384 and Ed25519 keys and signs every
//! certificate and CRL. ring cannot generate RSA keys, so the `openssl` command line does that,
//! and also rewrites keys into PKCS#1 or SEC1, encrypts them, and issues the certificates whose
//! key rcgen cannot describe (P-521, secp256k1). Everything panics with a clear message on
//! failure: this is test code.

use std::{
    fmt,
    io::Write as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PublicKeyData, RevokedCertParams,
    SerialNumber, SignatureAlgorithm, SubjectPublicKeyInfo,
};

const DAY: Duration = Duration::from_secs(86_400);

// === KeyKind ===

/// Which key to generate, and in which encoding [`Key::pem`] writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyKind {
    /// RSA with a modulus of this many bits, PKCS#8 (`PRIVATE KEY`).
    RsaPkcs8(u32),
    /// RSA with a modulus of this many bits, PKCS#1 (`RSA PRIVATE KEY`).
    RsaPkcs1(u32),
    /// ECDSA P-256, PKCS#8 (`PRIVATE KEY`).
    EcP256Pkcs8,
    /// ECDSA P-256, SEC1 (`EC PRIVATE KEY`, with the curve parameters).
    EcP256Sec1,
    /// ECDSA P-384, PKCS#8.
    EcP384Pkcs8,
    /// ECDSA P-384, SEC1.
    EcP384Sec1,
    /// Ed25519, PKCS#8 (the only encoding it has).
    Ed25519,
    /// ECDSA P-521, PKCS#8. Envoy loads it; sds refuses it.
    EcP521Pkcs8,
    /// ECDSA secp256k1, PKCS#8. Envoy refuses it.
    EcSecp256k1Pkcs8,
}

impl KeyKind {
    /// Every kind sds serves, one per algorithm and encoding, RSA at 2048 bits.
    pub const SERVABLE: [KeyKind; 7] = [
        KeyKind::RsaPkcs8(2048),
        KeyKind::RsaPkcs1(2048),
        KeyKind::EcP256Pkcs8,
        KeyKind::EcP256Sec1,
        KeyKind::EcP384Pkcs8,
        KeyKind::EcP384Sec1,
        KeyKind::Ed25519,
    ];

    /// The PEM label [`Key::pem`] uses for this kind.
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::RsaPkcs1(_) => "RSA PRIVATE KEY",
            KeyKind::EcP256Sec1 | KeyKind::EcP384Sec1 => "EC PRIVATE KEY",
            KeyKind::RsaPkcs8(_)
            | KeyKind::EcP256Pkcs8
            | KeyKind::EcP384Pkcs8
            | KeyKind::Ed25519
            | KeyKind::EcP521Pkcs8
            | KeyKind::EcSecp256k1Pkcs8 => "PRIVATE KEY",
        }
    }

    /// Whether this is an RSA key.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyKind::RsaPkcs8(_) | KeyKind::RsaPkcs1(_))
    }

    /// Whether this is an elliptic-curve (ECDSA) key.
    pub fn is_ec(self) -> bool {
        matches!(
            self,
            KeyKind::EcP256Pkcs8
                | KeyKind::EcP256Sec1
                | KeyKind::EcP384Pkcs8
                | KeyKind::EcP384Sec1
                | KeyKind::EcP521Pkcs8
                | KeyKind::EcSecp256k1Pkcs8
        )
    }

    /// Whether the PEM is written in the algorithm's traditional encoding (PKCS#1 or SEC1).
    fn is_traditional(self) -> bool {
        matches!(
            self,
            KeyKind::RsaPkcs1(_) | KeyKind::EcP256Sec1 | KeyKind::EcP384Sec1
        )
    }
}

// === Key ===

/// A freshly generated private key, with its PEM in the encoding its [`KeyKind`] asks for.
///
/// `Debug` does not print the key.
pub struct Key {
    kind: KeyKind,
    pem: String,
    pkcs8_pem: String,
    spki_der: Vec<u8>,
}

impl Key {
    /// Generates a new key of `kind`.
    pub fn generate(kind: KeyKind) -> Key {
        let (pkcs8_pem, spki_der) = match kind {
            KeyKind::EcP256Pkcs8 | KeyKind::EcP256Sec1 => rcgen_key(&PKCS_ECDSA_P256_SHA256),
            KeyKind::EcP384Pkcs8 | KeyKind::EcP384Sec1 => rcgen_key(&PKCS_ECDSA_P384_SHA384),
            KeyKind::Ed25519 => rcgen_key(&PKCS_ED25519),
            KeyKind::RsaPkcs8(bits) | KeyKind::RsaPkcs1(bits) => openssl_key(&[
                "-algorithm",
                "RSA",
                "-pkeyopt",
                &format!("rsa_keygen_bits:{bits}"),
            ]),
            KeyKind::EcP521Pkcs8 => {
                openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"])
            }
            KeyKind::EcSecp256k1Pkcs8 => openssl_key(&[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ]),
        };
        let pem = if kind.is_traditional() {
            text(openssl(&["pkey", "-traditional"], pkcs8_pem.as_bytes()))
        } else {
            pkcs8_pem.clone()
        };
        Key {
            kind,
            pem,
            pkcs8_pem,
            spki_der,
        }
    }

    /// The kind of this key.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key as PEM, in the encoding of its kind.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The key as PKCS#8 PEM (`PRIVATE KEY`), whatever its kind.
    pub fn pkcs8_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// The DER SubjectPublicKeyInfo of the key's public half.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The key encrypted as PKCS#8 (`ENCRYPTED PRIVATE KEY`, PBES2 with AES-256-CBC), as made by
    /// `openssl pkcs8 -topk8 -v2 aes-256-cbc`.
    pub fn encrypted_pkcs8_pem(&self, passphrase: &str) -> String {
        let pass = format!("pass:{passphrase}");
        text(openssl(
            &["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", &pass],
            self.pkcs8_pem.as_bytes(),
        ))
    }

    /// The key in its traditional encoding (PKCS#1 or SEC1) with the legacy OpenSSL encryption
    /// (`Proc-Type: 4,ENCRYPTED` and `DEK-Info` headers), as made by `openssl rsa -aes256` in
    /// OpenSSL 1.x. Only for RSA and ECDSA keys.
    pub fn encrypted_legacy_pem(&self, passphrase: &str) -> String {
        assert!(
            self.kind.is_rsa() || self.kind.is_ec(),
            "{:?} keys have no traditional encoding to encrypt",
            self.kind
        );
        let pass = format!("pass:{passphrase}");
        text(openssl(
            &["pkey", "-traditional", "-aes256", "-passout", &pass],
            self.pkcs8_pem.as_bytes(),
        ))
    }

    /// The key as an rcgen signing key, for keys ring can sign with (ECDSA P-256/P-384, Ed25519,
    /// RSA of 2048 to 4096 bits).
    pub(crate) fn key_pair(&self) -> KeyPair {
        KeyPair::from_pem(&self.pkcs8_pem)
            .unwrap_or_else(|e| panic!("ring cannot sign with a {:?} key: {e}", self.kind))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kind", &self.kind)
            .field("pem", &"[redacted]")
            .finish()
    }
}

fn rcgen_key(alg: &'static SignatureAlgorithm) -> (String, Vec<u8>) {
    let key = KeyPair::generate_for(alg).expect("ring generates ECDSA and Ed25519 keys");
    (key.serialize_pem(), key.subject_public_key_info())
}

fn openssl_key(genpkey_args: &[&str]) -> (String, Vec<u8>) {
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey_args);
    let pem = text(openssl(&args, b""));
    let spki = openssl(&["pkey", "-pubout", "-outform", "DER"], pem.as_bytes());
    (pem, spki)
}

// === Validity ===

/// A certificate's validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: SystemTime,
    /// Last instant of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from `not_before` to `not_after`.
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    /// Valid from an hour before `at` to 30 days after it.
    pub fn around(at: SystemTime) -> Self {
        Self::between(at - Duration::from_secs(3600), at + 30 * DAY)
    }

    /// Valid from 30 days before `at` until a day before it: expired at `at`.
    pub fn expired_at(at: SystemTime) -> Self {
        Self::between(at - 30 * DAY, at - DAY)
    }

    /// Valid from a day after `at` to 30 days after it: not yet valid at `at`.
    pub fn not_yet_valid_at(at: SystemTime) -> Self {
        Self::between(at + DAY, at + 30 * DAY)
    }

    /// [`Validity::around`] the current time: for tests against a real Envoy or client.
    pub fn current() -> Self {
        Self::around(SystemTime::now())
    }

    /// [`Validity::expired_at`] the current time.
    pub fn expired() -> Self {
        Self::expired_at(SystemTime::now())
    }

    /// [`Validity::not_yet_valid_at`] the current time.
    pub fn not_yet_valid() -> Self {
        Self::not_yet_valid_at(SystemTime::now())
    }

    /// 2000-01-01 to 2100-01-01: the default for CAs and CRLs, valid at any time a test picks.
    pub fn wide() -> Self {
        Self::between(
            UNIX_EPOCH + Duration::from_secs(946_684_800),
            UNIX_EPOCH + Duration::from_secs(4_102_444_800),
        )
    }

    /// Whether `at` is inside the window (both ends included).
    pub fn contains(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

// === Ca ===

/// A certificate authority: a self-signed root or an intermediate, which issues leaves,
/// intermediates and CRLs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    key: Key,
    cert_der: Vec<u8>,
    cert_pem: String,
    /// This CA's certificate and those of its issuing intermediates, nearest first; empty for
    /// a root.
    intermediates_pem: String,
    root_pem: String,
}

impl Ca {
    /// A self-signed root with an ECDSA P-256 key, valid 2000 to 2100.
    pub fn new(common_name: &str) -> Ca {
        Ca::root(common_name, KeyKind::EcP256Pkcs8, Validity::wide())
    }

    /// A self-signed root with a key of `key` kind (one ring can sign with) and `validity`.
    pub fn root(common_name: &str, key: KeyKind, validity: Validity) -> Ca {
        let key = Key::generate(key);
        let params = ca_params(common_name, validity);
        let key_pair = key.key_pair();
        let cert = params
            .self_signed(&key_pair)
            .expect("rcgen signs a root certificate");
        let cert_pem = cert.pem();
        Ca {
            issuer: Issuer::new(params, key_pair),
            key,
            cert_der: cert.der().to_vec(),
            root_pem: cert_pem.clone(),
            cert_pem,
            intermediates_pem: String::new(),
        }
    }

    /// An intermediate CA issued by this one, with an ECDSA P-256 key, valid 2000 to 2100.
    pub fn intermediate(&self, common_name: &str) -> Ca {
        self.intermediate_with(common_name, KeyKind::EcP256Pkcs8, Validity::wide())
    }

    /// An intermediate CA issued by this one, with a key of `key` kind (one ring can sign
    /// with) and `validity` (e.g. [`Validity::expired`]).
    pub fn intermediate_with(&self, common_name: &str, key: KeyKind, validity: Validity) -> Ca {
        let key = Key::generate(key);
        let params = ca_params(common_name, validity);
        let key_pair = key.key_pair();
        let cert = params
            .signed_by(&key_pair, &self.issuer)
            .expect("rcgen signs an intermediate certificate");
        let cert_pem = cert.pem();
        Ca {
            issuer: Issuer::new(params, key_pair),
            key,
            cert_der: cert.der().to_vec(),
            intermediates_pem: format!("{cert_pem}{}", self.intermediates_pem),
            root_pem: self.root_pem.clone(),
            cert_pem,
        }
    }

    /// Issues a leaf for `dns_names` (the first is also the common name) with a new key of
    /// `key` kind, valid for `validity`, usable for both server and client authentication.
    ///
    /// P-521 and secp256k1 leaves are issued with `openssl x509 -new`, which cannot set a
    /// window: they are valid from now for the number of whole days `validity` ends after now
    /// (at least one).
    pub fn issue(&self, dns_names: &[&str], key: KeyKind, validity: Validity) -> Leaf {
        self.issue_for(dns_names, Key::generate(key), validity)
    }

    /// Issues a leaf like [`Ca::issue`], for an existing key (e.g. to pair a certificate with
    /// somebody else's key).
    pub fn issue_for(&self, dns_names: &[&str], key: Key, validity: Validity) -> Leaf {
        let serial = next_serial();
        let (cert_pem, cert_der) = match SubjectPublicKeyInfo::from_der(key.spki_der()) {
            Ok(public_key) => {
                let cert = leaf_params(dns_names, validity, &serial)
                    .signed_by(&public_key, &self.issuer)
                    .expect("rcgen signs a leaf certificate");
                (cert.pem(), cert.der().to_vec())
            }
            // rcgen (ring) has no name for this key's algorithm: let openssl issue it.
            Err(_) => {
                let pem = self.issue_with_openssl(dns_names, &key, validity, &serial);
                let der = openssl(&["x509", "-outform", "DER"], pem.as_bytes());
                (pem, der)
            }
        };
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.intermediates_pem),
            root_pem: self.root_pem.clone(),
            key_pem: key.pem().to_owned(),
            cert_pem,
            cert_der,
            serial,
            key,
        }
    }

    /// Issues a leaf like [`Ca::issue`] whose subject alternative names are the URIs `uris`
    /// (e.g. SPIFFE IDs) and then the DNS names `dns_names`, for a key rcgen can describe
    /// (not P-521 or secp256k1).
    pub fn issue_with_uris(
        &self,
        uris: &[&str],
        dns_names: &[&str],
        key: KeyKind,
        validity: Validity,
    ) -> Leaf {
        let key = Key::generate(key);
        let serial = next_serial();
        let mut params = leaf_params(dns_names, validity, &serial);
        let dns = std::mem::take(&mut params.subject_alt_names);
        params.subject_alt_names = uris
            .iter()
            .map(|&uri| {
                let uri = rcgen::string::Ia5String::try_from(uri)
                    .unwrap_or_else(|e| panic!("{uri:?} is not a valid URI SAN: {e}"));
                rcgen::SanType::URI(uri)
            })
            .chain(dns)
            .collect();
        let public_key = SubjectPublicKeyInfo::from_der(key.spki_der())
            .unwrap_or_else(|e| panic!("rcgen cannot describe a {:?} key: {e}", key.kind()));
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .expect("rcgen signs a leaf certificate");
        let cert_pem = cert.pem();
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.intermediates_pem),
            root_pem: self.root_pem.clone(),
            key_pem: key.pem().to_owned(),
            cert_pem,
            cert_der: cert.der().to_vec(),
            serial,
            key,
        }
    }

    /// The CA's certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate of the root this CA descends from (itself for a root): the trust
    /// anchor, as PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// This CA's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Starts a CRL signed by this CA, revoking nothing, valid 2000 to 2100.
    pub fn crl(&self) -> CrlBuilder<'_> {
        CrlBuilder {
            ca: self,
            revoked: Vec::new(),
            validity: Validity::wide(),
        }
    }

    fn issue_with_openssl(
        &self,
        dns_names: &[&str],
        key: &Key,
        validity: Validity,
        serial: &[u8],
    ) -> String {
        let dir = tempfile::tempdir().expect("creates a temporary directory");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let (ca_cert, ca_key, public_key) = (path("ca.pem"), path("ca.key"), path("leaf.pub"));
        std::fs::write(&ca_cert, &self.cert_pem).expect("writes the CA certificate");
        std::fs::write(&ca_key, self.key.pkcs8_pem()).expect("writes the CA key");
        let public_pem = openssl(&["pkey", "-pubin", "-inform", "DER"], key.spki_der());
        std::fs::write(&public_key, public_pem).expect("writes the leaf's public key");

        let days = validity
            .not_after
            .duration_since(SystemTime::now())
            .map_or(1, |left| (left.as_secs() / 86_400).max(1));
        let subject = format!("/CN={}", dns_names.first().copied().unwrap_or("leaf"));
        let serial = format!("0x{}", hex(serial));
        let days = days.to_string();
        text(openssl(
            &[
                "x509",
                "-new",
                "-subj",
                &subject,
                "-force_pubkey",
                &public_key,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                &days,
            ],
            b"",
        ))
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("issuer", &self.issuer)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(SerialNumber::from_slice(&next_serial()));
    params.use_authority_key_identifier_extension = true;
    params
}

fn leaf_params(dns_names: &[&str], validity: Validity, serial: &[u8]) -> CertificateParams {
    let names: Vec<String> = dns_names.iter().map(|&n| n.to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("valid DNS names");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().copied().unwrap_or("leaf"),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.use_authority_key_identifier_extension = true;
    params
}

// === Leaf ===

/// An issued end-entity certificate with its key. `Debug` does not print the key.
pub struct Leaf {
    /// The leaf certificate alone, PEM.
    pub cert_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PEM in the encoding its [`KeyKind`] asks for.
    pub key_pem: String,
    /// The leaf followed by the intermediates up to (not including) the root, PEM: what a
    /// server sends.
    pub chain_pem: String,
    /// The root certificate: the trust anchor that verifies this leaf, PEM.
    pub root_pem: String,
    /// The certificate's serial number (big-endian), e.g. to revoke it.
    pub serial: Vec<u8>,
    /// The key, to re-encode or encrypt it.
    pub key: Key,
}

impl Leaf {
    /// [`Leaf::chain_pem`] followed by the root.
    pub fn chain_with_root_pem(&self) -> String {
        format!("{}{}", self.chain_pem, self.root_pem)
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("serial", &hex(&self.serial))
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

// === CrlBuilder ===

/// A CRL under construction; see [`Ca::crl`].
#[derive(Debug)]
pub struct CrlBuilder<'a> {
    ca: &'a Ca,
    revoked: Vec<Vec<u8>>,
    validity: Validity,
}

impl CrlBuilder<'_> {
    /// Revokes `leaf`.
    pub fn revoke(self, leaf: &Leaf) -> Self {
        self.revoke_serial(&leaf.serial)
    }

    /// Revokes the certificate with this serial number.
    pub fn revoke_serial(mut self, serial: &[u8]) -> Self {
        self.revoked.push(serial.to_vec());
        self
    }

    /// Sets `thisUpdate` and `nextUpdate`.
    pub fn valid(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }

    /// The signed CRL, DER.
    pub fn der(&self) -> Vec<u8> {
        self.build().der().to_vec()
    }

    /// The signed CRL, PEM (`X509 CRL`).
    pub fn pem(&self) -> String {
        self.build().pem().expect("rcgen encodes a CRL as PEM")
    }

    fn build(&self) -> rcgen::CertificateRevocationList {
        let params = CertificateRevocationListParams {
            this_update: self.validity.not_before.into(),
            next_update: self.validity.not_after.into(),
            crl_number: SerialNumber::from_slice(&next_serial()),
            issuing_distribution_point: None,
            revoked_certs: self
                .revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: self.validity.not_before.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.ca.issuer)
            .expect("rcgen signs a CRL")
    }
}

// === helpers ===

/// A positive serial number, unique in this process: the process id and a counter.
fn next_serial() -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut serial = vec![0x01];
    serial.extend_from_slice(&std::process::id().to_be_bytes());
    serial.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    serial
}

/// Runs `openssl` with `args` and `stdin`, returning its stdout; panics with its stderr.
fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let command = format!("openssl {}", args.join(" "));
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}` (is openssl installed?): {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .unwrap_or_else(|e| panic!("cannot write to `{command}`: {e}"));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`{command}` did not finish: {e}"));
    assert!(
        output.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("openssl writes PEM as ASCII")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_servable_kind_issues() {
        let root = Ca::new("root");
        let issuing = root.intermediate("issuing");
        for kind in KeyKind::SERVABLE {
            let leaf = issuing.issue(&["a.example"], kind, Validity::current());
            assert!(
                leaf.key_pem
                    .starts_with(&format!("-----BEGIN {}-----", kind.label()))
            );
            assert_eq!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        }
    }
}
