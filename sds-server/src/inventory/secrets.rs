//! What each served secret is: [`SecretInfo`], read from a snapshot's parsed metadata.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use sds_core::{
    CertificateInfo, CertifiedKey, KeyAlgorithm, OcspCertStatus, Secret, SecretName, Snapshot,
    TrustBundle, UnixTime, Version,
};

/// One served secret: its name, version and what it is. Never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SecretInfo {
    /// The name it is served under.
    #[cfg_attr(feature = "serde", serde(serialize_with = "super::serialize::display"))]
    pub name: SecretName,
    /// Its content-derived version, as sent to Envoy.
    #[cfg_attr(feature = "serde", serde(serialize_with = "super::serialize::display"))]
    pub version: Version,
    /// What it is (`"kind"` in JSON: `tls_certificate` or `validation_context`).
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub details: Details,
    /// Why the latest input for this name was rejected, if it was: what is served is the
    /// last good version.
    pub rejected: Option<String>,
}

/// What a secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Details {
    /// A certificate chain and its private key.
    TlsCertificate(CertificateDetails),
    /// CA certificates (and CRLs) that verify peers.
    ValidationContext(TrustBundleDetails),
}

/// A certificate chain and its key: what the leaf says, and how long the chain is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CertificateDetails {
    /// The leaf certificate.
    pub leaf: Certificate,
    /// Certificates in the chain, the leaf included.
    pub chain_length: usize,
    /// The algorithm of the leaf's key.
    #[cfg_attr(feature = "serde", serde(serialize_with = "super::serialize::display"))]
    pub key_algorithm: KeyAlgorithm,
    /// The OCSP response stapled for the leaf, if any.
    pub ocsp_staple: Option<Staple>,
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Certificate {
    /// The subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// The issuer distinguished name, RFC 4514 style.
    pub issuer: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// Start of the validity window.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::unix_seconds")
    )]
    pub not_before: SystemTime,
    /// End of the validity window.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::unix_seconds")
    )]
    pub not_after: SystemTime,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs).
    pub uris: Vec<String>,
}

/// An OCSP staple: what it says about the leaf, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Staple {
    /// `good`, `revoked` or `unknown`.
    #[cfg_attr(feature = "serde", serde(serialize_with = "super::serialize::display"))]
    pub status: OcspCertStatus,
    /// When the status was known to be correct; Envoy does not staple it before.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::unix_seconds")
    )]
    pub this_update: SystemTime,
    /// When newer information will be available; Envoy does not staple it after.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::option_unix_seconds")
    )]
    pub next_update: Option<SystemTime>,
}

/// CA certificates and CRLs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TrustBundleDetails {
    /// The CA certificates, in the order served.
    pub cas: Vec<Certificate>,
    /// How many CRLs are served with them.
    pub crls: usize,
}

/// Every secret `snapshot` serves, in name order.
pub fn secrets(snapshot: &Snapshot) -> Vec<SecretInfo> {
    let rejected: BTreeMap<_, _> = snapshot.rejected().collect();
    snapshot
        .iter()
        .filter_map(|(name, secret)| {
            Some(SecretInfo {
                name: name.clone(),
                version: secret.version(),
                details: Details::of(secret)?,
                rejected: rejected.get(name).map(|error| with_sources(&***error)),
            })
        })
        .collect()
}

// === impl Details ===

impl Details {
    /// `None` for a kind of secret this version of sds-server does not know (`Secret` is
    /// non-exhaustive).
    fn of(secret: &Secret) -> Option<Self> {
        Some(match secret {
            Secret::TlsCertificate(key) => Details::TlsCertificate(CertificateDetails::of(key)),
            Secret::ValidationContext(bundle) => {
                Details::ValidationContext(TrustBundleDetails::of(bundle))
            }
            _ => return None,
        })
    }
}

impl CertificateDetails {
    fn of(key: &CertifiedKey) -> Self {
        Self {
            leaf: Certificate::of(key.leaf()),
            chain_length: key.chain().len(),
            key_algorithm: key.key().algorithm(),
            ocsp_staple: key.ocsp_staple().map(|staple| Staple {
                status: staple.cert_status(),
                this_update: system_time(staple.this_update()),
                next_update: staple.next_update().map(system_time),
            }),
        }
    }
}

impl TrustBundleDetails {
    fn of(bundle: &TrustBundle) -> Self {
        Self {
            cas: bundle.anchor_info().iter().map(Certificate::of).collect(),
            crls: bundle.crls().len(),
        }
    }
}

impl Certificate {
    fn of(info: &CertificateInfo) -> Self {
        Self {
            subject: info.subject().to_owned(),
            issuer: info.issuer().to_owned(),
            serial: info.serial().to_owned(),
            not_before: system_time(info.not_before()),
            not_after: system_time(info.not_after()),
            dns_names: info.dns_names().to_vec(),
            uris: info.uris().to_vec(),
        }
    }
}

/// `time` as a `SystemTime` (whole seconds).
pub(crate) fn system_time(time: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(time.as_secs())
}

/// An error and its sources, `: `-separated (each message says only its own part).
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
