//! Parsing a Secret's credential keys once into its two parts: the certificate pair and the CA.

use std::sync::Arc;

use sds_core::{
    CertifiedKey, Input, Secret, SecretName, TrustBundle, UnixTime,
    layout::{Incomplete, Key},
};

use crate::keys::{Keys, SecretId, location};

/// What Istio says a Secret needs, appended to "found … but no …" for a lone pair key.
const EXPECTED_PAIR: &str = "expected keys (cert and key) or (tls.crt and tls.key)";

/// A part of a Secret: validated and shared, or why it cannot be served.
pub(crate) type Part = Result<Arc<Secret>, sds_core::Error>;

/// The parts of one Secret, each parsed once and shared by every name it is served under.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    /// The certificate chain and key (`cert`+`key` or `tls.crt`+`tls.key`), if any key of it.
    pub(crate) pair: Option<Part>,
    /// The CA and CRL (`cacert`/`ca.crt`, `crl`/`ca.crl`), if any key of it.
    pub(crate) ca: Option<Part>,
}

// === impl Parsed ===

impl Parsed {
    /// Parses and validates the credential keys of the Secret `id` at `now`. Errors name
    /// `credential` (the pair) or `cacert` (the CA), and the Secret and key.
    pub(crate) fn parse(
        id: &SecretId,
        keys: &Keys,
        credential: &SecretName,
        cacert: &SecretName,
        now: UnixTime,
    ) -> Self {
        let layout = keys.layout();
        let pair = layout.pair.map(|pair| {
            let pair = pair.map_err(|i| incomplete(id, keys, credential, i, true))?;
            let (chain_location, key_location) = (
                location(id, pair.chain.name()),
                location(id, pair.key.name()),
            );
            let mut certified = CertifiedKey::from_pem(
                credential,
                Input::new(&chain_location, keys.bytes(pair.chain)),
                Input::new(&key_location, keys.bytes(pair.key)),
                now,
            )?;
            if let Some(staple) = pair.ocsp_staple {
                let staple_location = location(id, staple.name());
                certified = certified.with_ocsp_staple(
                    credential,
                    Input::new(&staple_location, keys.bytes(staple)),
                )?;
            }
            Ok(Arc::new(Secret::from(certified)))
        });
        let ca = layout.ca.map(|ca| {
            let ca = ca.map_err(|i| incomplete(id, keys, cacert, i, false))?;
            let (ca, crl) = (ca.ca, ca.crl);
            let ca_location = location(id, ca.name());
            let crl_location = crl.map(|crl: Key| (location(id, crl.name()), crl));
            let bundle = TrustBundle::from_pem(
                cacert,
                Input::new(&ca_location, keys.bytes(ca)),
                crl_location
                    .as_ref()
                    .map(|(loc, crl)| Input::new(loc, keys.bytes(*crl))),
                now,
            )?;
            Ok(Arc::new(Secret::from(bundle)))
        });
        Self { pair, ca }
    }

    /// Whether this parse stays right while the Secret does not change. A rejection that
    /// depends on the time (not yet valid, expired) is not: the Secret is parsed again with the
    /// next update.
    pub(crate) fn is_reusable(&self) -> bool {
        [&self.pair, &self.ca]
            .into_iter()
            .all(|part| !matches!(part, Some(Err(error)) if error.depends_on_time()))
    }
}

/// The rejection of a part with a key but not its partner, with Istio's wording.
fn incomplete(
    id: &SecretId,
    keys: &Keys,
    credential: &SecretName,
    incomplete: Incomplete,
    pair: bool,
) -> sds_core::Error {
    let found = incomplete.key();
    let mut missing = match incomplete {
        // Every key of a Secret is known: this source never says `Presence::Unknown`.
        Incomplete::Unknown(_) => "a readable key".to_owned(),
        missing => format!("key {}", missing.missing_names(|key| format!("`{key}`"))),
    };
    match (pair, keys.found()) {
        (true, Some(found)) => missing.push_str(&format!(" ({EXPECTED_PAIR}; found: {found})")),
        (true, None) => missing.push_str(&format!(" ({EXPECTED_PAIR})")),
        (false, Some(found)) => missing.push_str(&format!(" (found: {found})")),
        (false, None) => {}
    }
    sds_core::Error::missing_input(credential.clone(), location(id, found.name()), missing)
}
