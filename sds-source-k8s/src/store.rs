//! What the source holds: the credential Secrets of every watch, re-lists buffered until they
//! complete, and the [`Update`] they make under Istio's naming rules.

use std::{collections::HashMap, sync::Arc};

use sds_core::{CACERT_SUFFIX, SecretName, UnixTime, Untrusted, Update};

use crate::{
    keys::{Keys, Lean, MAX_SHOWN_CHARS, SecretId},
    naming,
    parsed::{Parsed, Part},
};

/// One event of a watch, with the Secret already reduced to what is kept of it.
#[derive(Debug)]
pub(crate) enum Change {
    /// A (re-)list starts: the items that follow replace everything, once it is done.
    Relist,
    /// A Secret of the list in progress.
    RelistItem(Lean),
    /// The list is complete.
    RelistDone,
    /// A Secret was added or modified.
    Apply(Lean),
    /// A Secret was deleted.
    Delete(SecretId),
}

/// The credential Secrets of every watch (one per watched namespace, or one for all).
#[derive(Debug)]
pub(crate) struct Store {
    default_namespace: Box<str>,
    watches: Vec<Watched>,
}

/// The Secrets of one watch.
#[derive(Debug, Default)]
struct Watched {
    /// What is served: the state as of the last complete list plus the events since.
    live: HashMap<SecretId, Entry>,
    /// A list in progress, swapped in when it is done; until then `live` stays served.
    relist: Option<HashMap<SecretId, Entry>>,
    /// Whether a list has completed once.
    listed: bool,
}

/// One credential Secret: its keys, and its parts once parsed.
#[derive(Debug)]
struct Entry {
    keys: Arc<Keys>,
    parsed: Option<Parsed>,
}

/// A Secret to parse, off the async runtime.
#[derive(Debug)]
pub(crate) struct Job {
    watch: usize,
    id: SecretId,
    keys: Arc<Keys>,
}

/// A parsed [`Job`].
#[derive(Debug)]
pub(crate) struct Done {
    job: Job,
    parsed: Option<Parsed>,
}

// === impl Job ===

impl Job {
    /// Parses the Secret at `now`. `None` if its name cannot be a resource name.
    pub(crate) fn run(self, now: UnixTime) -> Done {
        let names = SecretName::new(naming::canonical(&self.id))
            .and_then(|c| Ok((SecretName::new(format!("{c}{CACERT_SUFFIX}"))?, c)));
        let parsed = match names {
            Ok((cacert, credential)) => Some(Parsed::parse(
                &self.id,
                &self.keys,
                &credential,
                &cacert,
                now,
            )),
            Err(error) => {
                let error: &dyn std::error::Error = &error;
                tracing::warn!(secret = %self.id, error, "cannot serve a Secret under this name");
                None
            }
        };
        Done { job: self, parsed }
    }
}

// === impl Store ===

impl Store {
    /// An empty store for `watches` watches; bare names are those of `default_namespace`.
    pub(crate) fn new(default_namespace: &str, watches: usize) -> Self {
        Self {
            default_namespace: default_namespace.into(),
            watches: (0..watches).map(|_| Watched::default()).collect(),
        }
    }

    /// Applies a change from watch `watch`. Returns whether what is served may have changed.
    pub(crate) fn apply(&mut self, watch: usize, change: Change) -> bool {
        let Some(watched) = self.watches.get_mut(watch) else {
            return false;
        };
        match change {
            Change::Relist => {
                watched.relist = Some(HashMap::new());
                false
            }
            Change::RelistItem(Lean { id, keys }) => {
                let Some(keys) = keys else { return false };
                let entry = Entry::carry(watched.live.get(&id), keys);
                watched.relist.get_or_insert_default().insert(id, entry);
                false
            }
            Change::RelistDone => {
                let listed = watched.relist.take().unwrap_or_default();
                tracing::debug!(watch, credentials = listed.len(), "listed secrets");
                watched.live = listed;
                watched.listed = true;
                true
            }
            Change::Apply(Lean { id, keys }) => match keys {
                Some(keys) => {
                    let old = watched.live.get(&id);
                    let same = old.is_some_and(|old| old.keys.same_content(&keys));
                    let entry = Entry::carry(old, keys);
                    watched.live.insert(id, entry);
                    !same
                }
                // No longer a credential (or never was): not kept.
                None => watched.live.remove(&id).is_some(),
            },
            Change::Delete(id) => watched.live.remove(&id).is_some(),
        }
    }

    /// Whether every watch has completed a list once: only then is the state complete.
    pub(crate) fn is_listed(&self) -> bool {
        self.watches.iter().all(|w| w.listed)
    }

    /// How many credential Secrets are served.
    pub(crate) fn len(&self) -> usize {
        self.watches.iter().map(|w| w.live.len()).sum()
    }

    /// The served Secrets that must be parsed before [`Store::update`].
    pub(crate) fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (watch, watched) in self.watches.iter().enumerate() {
            for (id, entry) in &watched.live {
                if entry.parsed.is_none() {
                    jobs.push(Job {
                        watch,
                        id: id.clone(),
                        keys: Arc::clone(&entry.keys),
                    });
                }
            }
        }
        jobs
    }

    /// Keeps the results of [`Job::run`] for Secrets that did not change meanwhile.
    pub(crate) fn finish(&mut self, done: Vec<Done>) {
        for Done { job, parsed } in done {
            let entry = self
                .watches
                .get_mut(job.watch)
                .and_then(|w| w.live.get_mut(&job.id));
            if let Some(entry) = entry
                && Arc::ptr_eq(&entry.keys, &job.keys)
            {
                entry.parsed = parsed;
            }
        }
    }

    /// Parses what needs it, in place, and returns the update. For tests: the source parses
    /// off the runtime.
    #[cfg(test)]
    pub(crate) fn update_now(&mut self, now: UnixTime) -> Update {
        let done = self.jobs().into_iter().map(|job| job.run(now)).collect();
        self.finish(done);
        self.update()
    }

    /// The complete update: every served Secret under each of its names (see the crate docs).
    /// Secrets not parsed yet (see [`Store::jobs`]) are left out.
    pub(crate) fn update(&mut self) -> Update {
        let mut update = Update::new();
        for watched in &self.watches {
            for (id, entry) in &watched.live {
                if let Some(parsed) = &entry.parsed {
                    let cacert_secret = watched.live.contains_key(&id.with_suffix(CACERT_SUFFIX));
                    serve(
                        &mut update,
                        &self.default_namespace,
                        id,
                        parsed,
                        cacert_secret,
                    );
                }
            }
        }
        // A rejection that depends on the time is parsed again for the next update.
        for watched in &mut self.watches {
            for entry in watched.live.values_mut() {
                if entry.parsed.as_ref().is_some_and(|p| !p.is_reusable()) {
                    entry.parsed = None;
                }
            }
        }
        update
    }
}

// === impl Entry ===

impl Entry {
    /// The entry for `keys`, keeping the parse of `old` if the content did not change.
    fn carry(old: Option<&Entry>, keys: Keys) -> Entry {
        let parsed = old
            .filter(|old| old.keys.same_content(&keys))
            .and_then(|old| old.parsed.clone());
        Entry {
            keys: Arc::new(keys),
            parsed,
        }
    }
}

/// Adds the names of the Secret `id` to `update`:
///
/// - its own names ([`naming::aliases`]) serve the certificate pair, or the CA if the Secret
///   holds only a CA, or, if the Secret's name ends with `-cacert`, always the CA;
/// - the same names with `-cacert` serve the CA, unless a Secret named `<name>-cacert` exists
///   (`cacert_secret`): that one serves them, as its own names.
fn serve(
    update: &mut Update,
    default_namespace: &str,
    id: &SecretId,
    parsed: &Parsed,
    cacert_secret: bool,
) {
    let aliases = naming::aliases(id, default_namespace);
    let own = if naming::is_cacert(id) {
        Some(parsed.ca.clone().unwrap_or_else(|| Err(not_a_ca(id))))
    } else {
        parsed.pair.clone().or_else(|| parsed.ca.clone())
    };
    if let Some(part) = own {
        for name in &aliases {
            put(update, name, &part);
        }
    }
    if let Some(ca) = &parsed.ca
        && !cacert_secret
    {
        for name in &aliases {
            put(update, &format!("{name}{CACERT_SUFFIX}"), ca);
        }
    }
}

fn put(update: &mut Update, name: &str, part: &Part) {
    let name = match SecretName::new(name) {
        Ok(name) => name,
        Err(error) => {
            let error: &dyn std::error::Error = &error;
            tracing::warn!(
                name = %Untrusted::new(name, MAX_SHOWN_CHARS),
                error,
                "cannot serve a Secret under this name"
            );
            return;
        }
    };
    match part {
        Ok(secret) => update.insert_shared(name, Arc::clone(secret)),
        Err(error) => update.reject(name, error.clone()),
    }
}

/// The rejection of a Secret named `<name>-cacert` without CA keys: it is where the CA of
/// `<name>` is looked up first, so it must hold one.
fn not_a_ca(id: &SecretId) -> sds_core::Error {
    let canonical = naming::canonical(id);
    match SecretName::new(&canonical) {
        Ok(credential) => sds_core::Error::missing_input(
            credential,
            format!("Secret {id}"),
            format!(
                "key `cacert` or `ca.crt` (a Secret named `<name>{CACERT_SUFFIX}` holds the CA \
                 certificates of the Secret `<name>`)"
            ),
        ),
        // Not reached: `Job::run` parsed this Secret under the same name.
        Err(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        ByteString, api::core::v1::Secret as KubeSecret,
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use sds_core::{Secret, Snapshot};
    use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};

    use super::*;

    const NS: &str = "istio-system";

    fn secret(namespace: &str, name: &str, rv: &str, data: &[(&str, &str)]) -> KubeSecret {
        KubeSecret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                resource_version: Some(rv.to_owned()),
                labels: Some(BTreeMap::from([("app".to_owned(), "x".repeat(100))])),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            type_: Some("Opaque".to_owned()),
            ..KubeSecret::default()
        }
    }

    fn lean(secret: KubeSecret) -> Lean {
        Lean::from_secret(secret, NS).expect("named")
    }

    fn leaf(ca: &Ca, host: &str) -> Leaf {
        ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current())
    }

    /// A store with one watch, listed with `secrets`.
    fn listed(secrets: Vec<KubeSecret>) -> Store {
        let mut store = Store::new(NS, 1);
        store.apply(0, Change::Relist);
        for s in secrets {
            store.apply(0, Change::RelistItem(lean(s)));
        }
        assert!(store.apply(0, Change::RelistDone));
        store
    }

    fn snapshot(store: &mut Store) -> Snapshot {
        Snapshot::build(None, store.update_now(UnixTime::now()))
    }

    fn names(snapshot: &Snapshot) -> Vec<&str> {
        snapshot.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn rejection(snapshot: &Snapshot, name: &str) -> String {
        snapshot
            .rejected()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, e)| e.to_string())
            .unwrap_or_else(|| panic!("{name} is not rejected"))
    }

    fn chain_of(secret: &Secret) -> Vec<u8> {
        match secret {
            Secret::TlsCertificate(c) => c.chain()[0].to_vec(),
            other => panic!("not a certificate: {}", other.kind()),
        }
    }

    fn anchors_of(secret: &Secret) -> Vec<u8> {
        match secret {
            Secret::ValidationContext(b) => b.anchors()[0].to_vec(),
            other => panic!("not a CA: {}", other.kind()),
        }
    }

    #[test]
    fn aliases_share_one_parse() {
        let ca = Ca::new("example.com");
        let l = leaf(&ca, "httpbin.example.com");
        let mut store = listed(vec![
            secret(
                NS,
                "httpbin",
                "1",
                &[
                    ("tls.crt", &l.chain_pem),
                    ("tls.key", &l.key_pem),
                    ("ca.crt", &l.root_pem),
                ],
            ),
            secret(
                "apps",
                "web",
                "2",
                &[("cert", &l.chain_pem), ("key", &l.key_pem)],
            ),
        ]);
        let snap = snapshot(&mut store);
        assert_eq!(
            names(&snap),
            [
                "httpbin",
                "httpbin-cacert",
                "kubernetes://apps/web",
                "kubernetes://httpbin",
                "kubernetes://httpbin-cacert",
                "kubernetes://istio-system/httpbin",
                "kubernetes://istio-system/httpbin-cacert",
            ]
        );
        let get = |n: &str| snap.get(n).unwrap_or_else(|| panic!("{n}"));
        let cert = get("kubernetes://istio-system/httpbin");
        assert!(Arc::ptr_eq(cert, get("httpbin")));
        assert!(Arc::ptr_eq(cert, get("kubernetes://httpbin")));
        let ca_part = get("kubernetes://istio-system/httpbin-cacert");
        assert!(Arc::ptr_eq(ca_part, get("httpbin-cacert")));
        assert!(Arc::ptr_eq(ca_part, get("kubernetes://httpbin-cacert")));
        assert_eq!(anchors_of(ca_part), ca.cert_der());
    }

    #[test]
    fn generic_keys_win_over_tls_keys() {
        let ca = Ca::new("example.com");
        let (a, b) = (leaf(&ca, "a.example.com"), leaf(&ca, "b.example.com"));
        let other_ca = Ca::new("other.example.com");
        let mut store = listed(vec![secret(
            NS,
            "both",
            "1",
            &[
                ("cert", &a.chain_pem),
                ("key", &a.key_pem),
                ("tls.crt", &b.chain_pem),
                ("tls.key", &b.key_pem),
                ("cacert", other_ca.cert_pem()),
                ("ca.crt", ca.cert_pem()),
            ],
        )]);
        let snap = snapshot(&mut store);
        let cert = snap.get("both").expect("served");
        assert_eq!(chain_of(cert), a.cert_der);
        let roots = snap.get("both-cacert").expect("served");
        assert_eq!(anchors_of(roots), other_ca.cert_der());

        // Empty generic keys do not hide a complete TLS pair.
        let mut store = listed(vec![secret(
            NS,
            "both",
            "1",
            &[
                ("cert", ""),
                ("key", ""),
                ("tls.crt", &b.chain_pem),
                ("tls.key", &b.key_pem),
            ],
        )]);
        let snap = snapshot(&mut store);
        assert_eq!(chain_of(snap.get("both").expect("served")), b.cert_der);
    }

    #[test]
    fn cacert_secret_takes_precedence_and_stays_in_sync() {
        let ca = Ca::new("example.com");
        let other = Ca::new("other.example.com");
        let l = leaf(&ca, "httpbin.example.com");
        let with_key = secret(
            NS,
            "httpbin",
            "1",
            &[
                ("cert", &l.chain_pem),
                ("key", &l.key_pem),
                ("cacert", ca.cert_pem()),
            ],
        );
        let mut store = listed(vec![with_key]);
        let snap = snapshot(&mut store);
        assert_eq!(
            anchors_of(snap.get("httpbin-cacert").expect("served")),
            ca.cert_der()
        );

        // A Secret named `httpbin-cacert` wins over the key, under every name.
        let separate = secret(NS, "httpbin-cacert", "2", &[("ca.crt", other.cert_pem())]);
        assert!(store.apply(0, Change::Apply(lean(separate))));
        let snap = snapshot(&mut store);
        for name in [
            "httpbin-cacert",
            "kubernetes://httpbin-cacert",
            "kubernetes://istio-system/httpbin-cacert",
        ] {
            assert_eq!(
                anchors_of(snap.get(name).expect("served")),
                other.cert_der(),
                "{name}"
            );
        }
        // `httpbin` still serves its certificate.
        assert_eq!(chain_of(snap.get("httpbin").expect("served")), l.cert_der);

        // A change to `httpbin`'s own CA key does not override it ...
        let changed = secret(
            NS,
            "httpbin",
            "3",
            &[
                ("cert", &l.chain_pem),
                ("key", &l.key_pem),
                ("cacert", &format!("{}{}", ca.cert_pem(), other.cert_pem())),
            ],
        );
        store.apply(0, Change::Apply(lean(changed)));
        let snap = snapshot(&mut store);
        let served = snap.get("httpbin-cacert").expect("served");
        assert_eq!(anchors_of(served), other.cert_der());
        let Secret::ValidationContext(bundle) = &**served else {
            panic!("a CA")
        };
        assert_eq!(bundle.anchors().len(), 1);

        // ... and deleting the separate Secret brings the key back at once.
        let id = SecretId::new(NS, "httpbin-cacert");
        assert!(store.apply(0, Change::Delete(id)));
        let snap = snapshot(&mut store);
        let Secret::ValidationContext(bundle) = &**snap.get("httpbin-cacert").expect("served")
        else {
            panic!("a CA")
        };
        assert_eq!(bundle.anchors().len(), 2);
    }

    #[test]
    fn ca_only_secret_is_a_validation_context() {
        let ca = Ca::new("example.com");
        let crl = ca.crl().pem();
        let mut store = listed(vec![secret(
            NS,
            "client-roots",
            "1",
            &[("ca.crt", ca.cert_pem()), ("ca.crl", &crl)],
        )]);
        let snap = snapshot(&mut store);
        assert_eq!(
            names(&snap),
            [
                "client-roots",
                "client-roots-cacert",
                "kubernetes://client-roots",
                "kubernetes://client-roots-cacert",
                "kubernetes://istio-system/client-roots",
                "kubernetes://istio-system/client-roots-cacert",
            ]
        );
        let own = snap.get("client-roots").expect("served");
        assert!(Arc::ptr_eq(
            own,
            snap.get("client-roots-cacert").expect("served")
        ));
        let Secret::ValidationContext(bundle) = &**own else {
            panic!("a CA")
        };
        assert_eq!(bundle.crls().len(), 1);
    }

    #[test]
    fn cacert_secret_without_a_ca_is_rejected() {
        let ca = Ca::new("example.com");
        let l = leaf(&ca, "a.example.com");
        let mut store = listed(vec![
            secret(
                NS,
                "a",
                "1",
                &[
                    ("tls.crt", &l.chain_pem),
                    ("tls.key", &l.key_pem),
                    ("ca.crt", ca.cert_pem()),
                ],
            ),
            secret(
                NS,
                "a-cacert",
                "2",
                &[("tls.crt", &l.chain_pem), ("tls.key", &l.key_pem)],
            ),
        ]);
        let snap = snapshot(&mut store);
        assert!(snap.get("a-cacert").is_none());
        assert_eq!(
            rejection(&snap, "a-cacert"),
            "credential `kubernetes://istio-system/a-cacert`: found Secret istio-system/a-cacert \
             but no key `cacert` or `ca.crt` (a Secret named `<name>-cacert` holds the CA \
             certificates of the Secret `<name>`)"
        );
        assert!(snap.get("a").is_some());
    }

    #[test]
    fn malformed_secret_is_rejected_naming_secret_and_key() {
        let ca = Ca::new("example.com");
        let l = leaf(&ca, "a.example.com");
        let other = leaf(&ca, "b.example.com");
        let mut store = listed(vec![
            secret(
                NS,
                "garbage",
                "1",
                &[("tls.crt", "not pem"), ("tls.key", &l.key_pem)],
            ),
            secret(
                NS,
                "mismatch",
                "1",
                &[("tls.crt", &l.chain_pem), ("tls.key", &other.key_pem)],
            ),
            secret(
                NS,
                "lonely",
                "1",
                &[
                    ("tls.crt", &l.chain_pem),
                    ("ca.crt", ca.cert_pem()),
                    ("note", "x"),
                ],
            ),
            secret(NS, "empty", "1", &[("cert", ""), ("key", "")]),
            secret(NS, "crl-only", "1", &[("crl", "x")]),
        ]);
        let snap = snapshot(&mut store);
        assert!(snap.get("garbage").is_none());
        let garbage = rejection(&snap, "kubernetes://istio-system/garbage");
        assert!(
            garbage.starts_with(
                "credential `kubernetes://istio-system/garbage`: Secret istio-system/garbage key `tls.crt`: "
            ),
            "{garbage}"
        );
        assert_eq!(garbage, rejection(&snap, "garbage"));
        let mismatch = rejection(&snap, "mismatch");
        assert!(
            mismatch
                .contains("Secret istio-system/mismatch key `tls.key`: private key does not match")
                && mismatch.contains("Secret istio-system/mismatch key `tls.crt`"),
            "{mismatch}"
        );
        assert_eq!(
            rejection(&snap, "lonely"),
            "credential `kubernetes://istio-system/lonely`: found Secret istio-system/lonely key \
             `tls.crt` but no key `tls.key` (expected keys (cert and key) or (tls.crt and \
             tls.key); found: ca.crt, note, tls.crt)"
        );
        // Its CA part is fine and served.
        assert!(snap.get("lonely-cacert").is_some());
        let empty = rejection(&snap, "empty");
        assert!(
            empty.contains("Secret istio-system/empty key `cert`: input is empty"),
            "{empty}"
        );
        assert_eq!(
            rejection(&snap, "crl-only-cacert"),
            "credential `kubernetes://istio-system/crl-only-cacert`: found Secret \
             istio-system/crl-only key `crl` but no key `cacert` or `ca.crt` (found: crl)"
        );
    }

    #[test]
    fn non_credentials_are_not_kept() {
        let mut store = listed(Vec::new());
        let blob = "x".repeat(10 * 1024);
        for i in 0..1000 {
            let s = secret(
                NS,
                &format!("app-{i}"),
                "1",
                &[("config", &blob), ("password", "p")],
            );
            assert!(
                !store.apply(0, Change::Apply(lean(s))),
                "nothing served changed"
            );
        }
        assert_eq!(store.len(), 0);
        assert!(snapshot(&mut store).is_empty());
    }

    #[test]
    fn a_secret_that_stops_being_a_credential_is_dropped() {
        let ca = Ca::new("example.com");
        let mut store = listed(vec![secret(NS, "roots", "1", &[("ca.crt", ca.cert_pem())])]);
        assert_eq!(snapshot(&mut store).len(), 6);
        assert!(store.apply(
            0,
            Change::Apply(lean(secret(NS, "roots", "2", &[("other", "x")])))
        ));
        assert_eq!(store.len(), 0);
        assert!(snapshot(&mut store).is_empty());
    }

    #[test]
    fn relist_is_swapped_in_when_complete() {
        let ca = Ca::new("example.com");
        let (a, b) = (leaf(&ca, "a.example.com"), leaf(&ca, "b.example.com"));
        let sa = || {
            secret(
                NS,
                "a",
                "1",
                &[("tls.crt", &a.chain_pem), ("tls.key", &a.key_pem)],
            )
        };
        let mut store = listed(vec![sa()]);
        let first = snapshot(&mut store);
        let served_a = Arc::clone(first.get("a").expect("served"));

        // A re-list (after 410 Gone) that is not done yet changes nothing served.
        assert!(!store.apply(0, Change::Relist));
        let sb = secret(
            NS,
            "b",
            "5",
            &[("tls.crt", &b.chain_pem), ("tls.key", &b.key_pem)],
        );
        assert!(!store.apply(0, Change::RelistItem(lean(sb))));
        assert_eq!(names(&snapshot(&mut store)), names(&first));

        // A list interrupted by an error starts over; `live` is still intact.
        assert!(!store.apply(0, Change::Relist));
        let sb = secret(
            NS,
            "b",
            "5",
            &[("tls.crt", &b.chain_pem), ("tls.key", &b.key_pem)],
        );
        store.apply(0, Change::RelistItem(lean(sb)));
        store.apply(0, Change::RelistItem(lean(sa())));
        assert!(store.apply(0, Change::RelistDone));
        let snap = snapshot(&mut store);
        assert_eq!(snap.len(), 6);
        // `a` was not parsed again: the same `Arc`.
        assert!(Arc::ptr_eq(&served_a, snap.get("a").expect("served")));
    }

    #[test]
    fn unchanged_content_is_not_parsed_again() {
        let ca = Ca::new("example.com");
        let a = leaf(&ca, "a.example.com");
        let data = [("tls.crt", a.chain_pem.as_str()), ("tls.key", &a.key_pem)];
        let mut store = listed(vec![secret(NS, "a", "1", &data)]);
        let first = Arc::clone(snapshot(&mut store).get("a").expect("served"));
        // A new resourceVersion with the same keys (e.g. a label changed).
        assert!(!store.apply(0, Change::Apply(lean(secret(NS, "a", "2", &data)))));
        assert!(store.jobs().is_empty());
        let again = snapshot(&mut store);
        assert!(Arc::ptr_eq(&first, again.get("a").expect("served")));
    }

    #[test]
    fn time_dependent_rejections_are_checked_again() {
        let ca = Ca::new("example.com");
        let l = ca.issue(
            &["a.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::expired(),
        );
        let mut store = listed(vec![secret(
            NS,
            "a",
            "1",
            &[("tls.crt", &l.chain_pem), ("tls.key", &l.key_pem)],
        )]);
        let snap = snapshot(&mut store);
        assert!(rejection(&snap, "a").contains("expired"));
        assert_eq!(store.jobs().len(), 1, "parsed again with the next update");
    }

    #[test]
    fn first_update_waits_for_every_watch() {
        let mut store = Store::new(NS, 2);
        store.apply(0, Change::Relist);
        assert!(store.apply(0, Change::RelistDone));
        assert!(!store.is_listed());
        store.apply(1, Change::Relist);
        assert!(store.apply(1, Change::RelistDone));
        assert!(store.is_listed());
    }
}
