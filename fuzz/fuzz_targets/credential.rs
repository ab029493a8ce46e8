//! sds-core's PEM and key parsing and validation: `CertifiedKey::from_pem` (a chain file and a
//! key file, then optionally an OCSP staple) and `TrustBundle::from_pem` (a CA bundle and
//! optionally a CRL file), as both sources call them.
//!
//! Input: up to five files separated by a line `===` (see `sds_fuzz::files`): the chain, the
//! key, the CA bundle, the CRL, the OCSP staple (DER). Validated at `sds_fuzz::NOW_SECS`.
//!
//! Properties: no panic; no error (its message, its sources, its `Debug`) and no `Debug` of a
//! credential shows 16 bytes in a row of the key file's base64 text; what is served (the PEM
//! re-encoded from the validated DER) validates again to the same version.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds_core::{CertifiedKey, Input, SecretName, TrustBundle};
use sds_fuzz::{SecretText, files, now, shown};

fuzz_target!(|data: &[u8]| {
    let files = files(data);
    let part = |i: usize| files.get(i).copied();
    let name = SecretName::new("fuzz-credential").expect("a valid name");
    let now = now();

    if let (Some(chain), Some(key)) = (part(0), part(1)) {
        let secret = SecretText::of(key);
        let result = CertifiedKey::from_pem(
            &name,
            Input::new("tls.crt", chain),
            Input::new("tls.key", key),
            now,
        );
        let result = result.and_then(|certified| match part(4) {
            Some(staple) if !staple.is_empty() => {
                certified.with_ocsp_staple(&name, Input::new("tls.ocsp-staple", staple))
            }
            _ => Ok(certified),
        });
        match result {
            Ok(certified) => {
                secret.assert_absent("a credential's Debug", &format!("{certified:?}"));
                let again = CertifiedKey::from_pem(
                    &name,
                    Input::new("served chain", certified.chain_pem().as_bytes()),
                    Input::new("served key", certified.key().secret_pem().as_bytes()),
                    now,
                )
                .expect("the served chain and key validate again");
                if certified.ocsp_staple().is_none() {
                    assert_eq!(again.version(), certified.version());
                }
                assert_eq!(again.chain(), certified.chain());
            }
            Err(error) => secret.assert_absent("a chain or key error", &shown(&error)),
        }
    }

    if let Some(ca) = part(2) {
        let crl = part(3).filter(|crl| !crl.is_empty());
        let result = TrustBundle::from_pem(
            &name,
            Input::new("ca.crt", ca),
            crl.map(|crl| Input::new("ca.crl", crl)),
            now,
        );
        if let Ok(bundle) = result {
            let crls = bundle.crl_pem();
            let again = TrustBundle::from_pem(
                &name,
                Input::new("served ca", bundle.ca_pem().as_bytes()),
                crls.as_deref()
                    .map(|crl| Input::new("served crl", crl.as_bytes())),
                now,
            )
            .expect("the served CA and CRLs validate again");
            assert_eq!(again.version(), bundle.version());
        }
    }
});
