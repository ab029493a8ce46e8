//! Test credentials with a 4 KiB leaf certificate (about a hundred DNS names), the size of a
//! busy gateway's certificate.

use sds::core::{CertifiedKey, Input, SecretName, UnixTime};
use sds_test_util::certs::{Ca, KeyKind, Validity};

/// DNS names per leaf: makes the DER leaf about 4 KiB.
const SANS: usize = 96;

/// A credential as its files hold it.
pub(crate) struct Pem {
    pub(crate) chain: String,
    pub(crate) key: String,
}

/// Issues credentials from one test CA.
pub(crate) struct Issuer {
    ca: Ca,
}

impl Issuer {
    pub(crate) fn new() -> Issuer {
        Issuer {
            ca: Ca::new("sds load test CA"),
        }
    }

    /// A fresh credential for `name` (a new key and serial each call), with a ~4 KiB leaf.
    pub(crate) fn issue(&self, name: &str) -> Pem {
        let names: Vec<String> = (0..SANS)
            .map(|i| format!("svc-{i:03}.{name}.gateway.example.com"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let leaf = self
            .ca
            .issue(&names, KeyKind::EcP256Pkcs8, Validity::current());
        Pem {
            chain: leaf.chain_pem,
            key: leaf.key_pem,
        }
    }
}

/// Parses and validates `pem` as the credential `name`, the way a source does on reload.
pub(crate) fn parse(name: &SecretName, pem: &Pem) -> CertifiedKey {
    CertifiedKey::from_pem(
        name,
        Input {
            location: "tls.crt",
            bytes: pem.chain.as_bytes(),
        },
        Input {
            location: "tls.key",
            bytes: pem.key.as_bytes(),
        },
        UnixTime::now(),
    )
    .expect("a valid test credential")
}
