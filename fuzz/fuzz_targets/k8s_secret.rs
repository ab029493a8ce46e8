//! sds-source-k8s's decoding of Secrets: a JSON body (what kube-rs hands the watcher: it asks
//! the API server for JSON only, so there is no protobuf body to fuzz) through serde into
//! `k8s_openapi`'s `Secret`, then the source's reduction to credential keys, Istio's
//! precedence and names, and validation (`sds-source-k8s/src/keys.rs`, `parsed.rs`,
//! `store.rs`).
//!
//! Input: JSON, a Secret, a list of Secrets (`[...]`) or a `SecretList` (`{"items": [...]}`).
//! Validated at `sds_fuzz::NOW_SECS`, bare names in the namespace `istio-system`.
//!
//! Properties: no panic; no rejection shows 16 bytes in a row of a `key` or `tls.key` value's
//! base64 text (unless a name shows it: names are shown); the Secrets listed give the same secrets and rejections as the same Secrets
//! added one by one by watch events (for Secrets with distinct, well-formed names, as an API
//! server sends them).

#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::{List, api::core::v1::Secret};
use libfuzzer_sys::fuzz_target;
use sds_core::{Snapshot, Update};
use sds_fuzz::{SecretText, now, shown};
use sds_source_k8s::__fuzz::{applied, listed};

const NAMESPACE: &str = "istio-system";

fuzz_target!(|data: &[u8]| {
    let secrets: Vec<Secret> = if let Ok(secrets) = serde_json::from_slice(data) {
        secrets
    } else if let Ok(secret) = serde_json::from_slice::<Secret>(data) {
        vec![secret]
    } else if let Ok(list) = serde_json::from_slice::<List<Secret>>(data) {
        list.items
    } else {
        return;
    };

    let mut secret = SecretText::default();
    for s in &secrets {
        for (key, value) in s.data.iter().flatten() {
            if key == "key" || key == "tls.key" {
                secret.add(&value.0);
            }
        }
    }
    // Names are shown in errors: text there is not secret, even if a key holds it too.
    for s in &secrets {
        let names = [&s.metadata.name, &s.metadata.namespace];
        for name in names.into_iter().flatten() {
            secret.forget(name.as_bytes());
        }
        for key in s.data.iter().flatten().map(|(key, _)| key) {
            secret.forget(key.as_bytes());
        }
    }

    let update = listed(secrets.clone(), NAMESPACE, now());
    for (_, error) in update.rejected() {
        secret.assert_absent("a rejection", &shown(error));
    }

    if well_formed(&secrets) {
        let by_events = applied(secrets, NAMESPACE, now());
        assert_eq!(
            outcome(update),
            outcome(by_events),
            "a list and the same Secrets as events differ"
        );
    }
});

/// Whether every Secret has a name, the names are distinct, and names and namespaces are
/// DNS subdomains (so that no two Secrets share a resource name).
fn well_formed(secrets: &[Secret]) -> bool {
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let mut seen = std::collections::HashSet::new();
    secrets.iter().all(|s| {
        let namespace = s.metadata.namespace.as_deref().unwrap_or(NAMESPACE);
        match s.metadata.name.as_deref() {
            Some(name) => dns(name) && dns(namespace) && seen.insert((namespace, name)),
            None => false,
        }
    })
}

/// The served names with their versions, and the rejected names with their messages.
fn outcome(update: Update) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let rejected = update
        .rejected()
        .map(|(name, error)| (name.to_string(), error.to_string()))
        .collect();
    let snapshot = Snapshot::build(None, update);
    let served = snapshot
        .iter()
        .map(|(name, secret)| (name.to_string(), secret.version().to_string()))
        .collect();
    (served, rejected)
}
