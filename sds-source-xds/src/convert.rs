//! Wire to domain: a received `Secret` proto to a validated `sds_core::Secret`.
//!
//! The only place that knows how a secret looks on the wire, as `sds-server/src/encode.rs` is
//! for the other direction. Only inline data is accepted: a `filename` or
//! `environment_variable` data source names something on the upstream's machine, not ours.

use std::{io, sync::Arc};

use prost::Message as _;
use sds_core::{CertifiedKey, ErrorKind, Input, Secret, SecretName, TrustBundle, UnixTime};
use sds_proto::{
    SECRET_TYPE_URL,
    envoy::{
        config::core::v3::{DataSource, data_source::Specifier},
        extensions::transport_sockets::tls::v3 as tls,
    },
    google::protobuf::Any,
};

/// Unpacks an `Any` into a `Secret` proto; `Err` says why not (no key material: prost's
/// decode errors name fields, not bytes).
pub(crate) fn unpack(any: &Any) -> Result<tls::Secret, String> {
    if any.type_url != SECRET_TYPE_URL {
        return Err(format!(
            "resource type `{}` is not `{SECRET_TYPE_URL}`",
            sds_core::Untrusted::new(&any.type_url, 128)
        ));
    }
    tls::Secret::decode(any.value.clone()).map_err(|e| format!("cannot decode the Secret: {e}"))
}

/// Validates `secret` (already known to be named `name`) at `now`. `origin` prefixes the
/// locations errors report, e.g. `sds unix:/run/spire/agent.sock`.
pub(crate) fn secret(
    name: &SecretName,
    secret: tls::Secret,
    origin: &str,
    now: UnixTime,
) -> Result<Secret, sds_core::Error> {
    let at = |field: &str| format!("{origin} secret `{name}` {field}");
    match secret.r#type {
        Some(tls::secret::Type::TlsCertificate(cert)) => {
            let chain_at = at("tls_certificate.certificate_chain");
            let key_at = at("tls_certificate.private_key");
            let chain = inline(name, &chain_at, cert.certificate_chain.as_ref())?;
            let key = inline(name, &key_at, cert.private_key.as_ref())?;
            let mut parsed = CertifiedKey::from_pem(
                name,
                Input::new(&chain_at, chain),
                Input::new(&key_at, key),
                now,
            )?;
            if let Some(staple) = cert.ocsp_staple.as_ref() {
                let staple_at = at("tls_certificate.ocsp_staple");
                let bytes = inline(name, &staple_at, Some(staple))?;
                if !bytes.is_empty() {
                    parsed = parsed.with_ocsp_staple(name, Input::new(&staple_at, bytes))?;
                }
            }
            Ok(parsed.into())
        }
        Some(tls::secret::Type::ValidationContext(context)) => {
            let ca_at = at("validation_context.trusted_ca");
            let crl_at = at("validation_context.crl");
            let ca = inline(name, &ca_at, context.trusted_ca.as_ref())?;
            let crl = match context.crl.as_ref() {
                Some(crl) => Some(Input::new(&crl_at, inline(name, &crl_at, Some(crl))?)),
                None => None,
            };
            Ok(TrustBundle::from_pem(name, Input::new(&ca_at, ca), crl, now)?.into())
        }
        None => Err(unsupported(
            name,
            at(""),
            "holds neither a tls_certificate nor a validation_context; \
             session ticket keys, generic secrets and empty secrets are not supported",
        )),
    }
}

/// The bytes of an inline data source.
fn inline<'a>(
    name: &SecretName,
    location: &str,
    source: Option<&'a DataSource>,
) -> Result<&'a [u8], sds_core::Error> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => Ok(bytes),
        Some(Specifier::InlineString(text)) => Ok(text.as_bytes()),
        Some(Specifier::Filename(_)) => Err(unsupported(
            name,
            location.to_owned(),
            "is a filename data source; only inline_bytes and inline_string are supported",
        )),
        Some(Specifier::EnvironmentVariable(_)) => Err(unsupported(
            name,
            location.to_owned(),
            "is an environment_variable data source; only inline_bytes and inline_string are supported",
        )),
        None => Err(sds_core::Error::input(
            name.clone(),
            location,
            ErrorKind::EmptyInput,
        )),
    }
}

/// A secret this source cannot use, for a reason sds-core has no kind for.
pub(crate) fn unsupported(
    name: &SecretName,
    location: String,
    reason: &'static str,
) -> sds_core::Error {
    sds_core::Error::input(
        name.clone(),
        location,
        ErrorKind::Unreadable {
            source: Arc::new(io::Error::new(io::ErrorKind::Unsupported, reason)),
        },
    )
}

/// `error` and its sources, joined with `: `: the text of a NACK's `error_detail`.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
