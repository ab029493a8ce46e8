//! The object store: Secrets keyed like etcd (`namespace/name`), a global resourceVersion
//! counter, and the event log that watches replay and that [`Store::compact`] truncates.
//!
//! Every method is synchronous and runs under the server's lock; nothing here awaits.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;
use crate::json::ListMeta;
use crate::secret::Secret;
use crate::selector::Selectors;
use crate::validate;

/// What a watch event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as the event log keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: EventKind,
    /// The object after the write (for `Deleted`, the last state at the delete's version).
    pub(crate) object: Arc<Secret>,
    /// The object before the write (`None` for `Added`).
    pub(crate) prev: Option<Arc<Secret>>,
}

/// The result of a DELETE.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// The Secret is gone (this was its last state).
    Gone(Arc<Secret>),
    /// Finalizers hold it: only `deletionTimestamp` was set.
    Pending(Arc<Secret>),
}

/// Preconditions of a DELETE (`DeleteOptions.preconditions`).
#[derive(Debug, Default)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// A list request.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub(crate) namespace: Option<String>,
    pub(crate) selectors: Selectors,
    pub(crate) resource_version: Option<String>,
    pub(crate) resource_version_match: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
}

/// The state of the server.
#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<String, Arc<Secret>>,
    rv: u64,
    log: VecDeque<Event>,
    /// Watches and lists at a resourceVersion below this are `410 Expired`.
    compacted: u64,
    /// The newest event dropped by compaction: a live watch that has seen it lost nothing.
    dropped_through: u64,
    uid_seed: u64,
    uid_counter: u64,
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

// === impl Store ===

impl Store {
    pub(crate) fn new() -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 1,
            log: VecDeque::new(),
            compacted: 0,
            dropped_through: 0,
            uid_seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            uid_counter: 0,
        }
    }

    /// The current (newest) resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Result<Arc<Secret>, Error> {
        self.objects
            .get(&key(namespace, name))
            .cloned()
            .ok_or_else(|| Error::not_found(namespace, name))
    }

    /// Every Secret, in key order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Secret>> {
        self.objects.values()
    }

    pub(crate) fn create(&mut self, mut s: Secret, dry_run: bool) -> Result<Arc<Secret>, Error> {
        if s.name.is_empty() && !s.generate_name.is_empty() {
            s.name = format!("{}{}", s.generate_name, self.random_suffix());
        }
        validate::create(&s)?;
        let k = key(&s.namespace, &s.name);
        if self.objects.contains_key(&k) {
            return Err(Error::AlreadyExists {
                namespace: s.namespace,
                name: s.name,
            });
        }
        if s.secret_type.is_empty() {
            s.secret_type = crate::secret::OPAQUE.to_owned();
        }
        s.uid = self.new_uid();
        s.creation_timestamp = Some(SystemTime::now());
        s.deletion_timestamp = None;
        if dry_run {
            s.resource_version = 0;
            return Ok(Arc::new(s));
        }
        let rv = self.bump();
        s.resource_version = rv;
        let s = Arc::new(s);
        self.objects.insert(k, s.clone());
        self.record(EventKind::Added, s.clone(), None);
        Ok(s)
    }

    /// Replaces a Secret. A non-zero `resource_version` in `s` must match the stored one.
    pub(crate) fn update(&mut self, s: Secret, dry_run: bool) -> Result<Arc<Secret>, Error> {
        let old = self.get(&s.namespace, &s.name)?;
        if s.resource_version != 0 && s.resource_version != old.resource_version {
            return Err(Error::modified(&s.name));
        }
        self.replace(&old, s, dry_run)
    }

    /// Read-modify-write under one lock: `f` computes the new object from the current one.
    pub(crate) fn modify<T>(
        &mut self,
        namespace: &str,
        name: &str,
        dry_run: bool,
        f: impl FnOnce(&Secret) -> Result<(Secret, T), Error>,
    ) -> Result<(Arc<Secret>, T), Error> {
        let old = self.get(namespace, name)?;
        let (new, extra) = f(&old)?;
        if new.resource_version != 0 && new.resource_version != old.resource_version {
            return Err(Error::modified(name));
        }
        Ok((self.replace(&old, new, dry_run)?, extra))
    }

    fn replace(
        &mut self,
        old: &Arc<Secret>,
        mut s: Secret,
        dry_run: bool,
    ) -> Result<Arc<Secret>, Error> {
        if s.secret_type.is_empty() {
            s.secret_type = old.secret_type.clone();
        }
        if !s.uid.is_empty() && s.uid != old.uid {
            return Err(Error::Conflict {
                name: s.name.clone(),
                detail: format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    s.uid, old.uid
                ),
            });
        }
        s.uid = old.uid.clone();
        s.generate_name = old.generate_name.clone();
        s.creation_timestamp = old.creation_timestamp;
        s.deletion_timestamp = old.deletion_timestamp;
        s.resource_version = old.resource_version;
        validate::update(old, &s)?;
        if s == **old || dry_run {
            // The real server skips no-op writes: same resourceVersion, no event.
            return Ok(Arc::new(s));
        }
        let k = key(&s.namespace, &s.name);
        let rv = self.bump();
        s.resource_version = rv;
        if s.deletion_timestamp.is_some() && s.finalizers.is_empty() {
            let s = Arc::new(s);
            self.objects.remove(&k);
            self.record(EventKind::Deleted, s.clone(), Some(old.clone()));
            return Ok(s);
        }
        let s = Arc::new(s);
        self.objects.insert(k, s.clone());
        self.record(EventKind::Modified, s.clone(), Some(old.clone()));
        Ok(s)
    }

    pub(crate) fn delete(
        &mut self,
        namespace: &str,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Deleted, Error> {
        let old = self.get(namespace, name)?;
        if let Some(uid) = pre.uid.as_deref().filter(|u| *u != old.uid) {
            return Err(Error::Conflict {
                name: name.to_owned(),
                detail: format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.uid
                ),
            });
        }
        if let Some(rv) = pre
            .resource_version
            .as_deref()
            .filter(|rv| *rv != old.resource_version.to_string())
        {
            return Err(Error::Conflict {
                name: name.to_owned(),
                detail: format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    old.resource_version
                ),
            });
        }
        if !old.finalizers.is_empty() {
            if old.deletion_timestamp.is_some() || dry_run {
                return Ok(Deleted::Pending(old));
            }
            let mut s = (*old).clone();
            s.deletion_timestamp = Some(SystemTime::now());
            s.resource_version = self.bump();
            let s = Arc::new(s);
            self.objects.insert(key(namespace, name), s.clone());
            self.record(EventKind::Modified, s.clone(), Some(old));
            return Ok(Deleted::Pending(s));
        }
        if dry_run {
            return Ok(Deleted::Gone(old));
        }
        self.objects.remove(&key(namespace, name));
        let mut last = (*old).clone();
        last.resource_version = self.bump();
        let last = Arc::new(last);
        self.record(EventKind::Deleted, last.clone(), Some(old));
        Ok(Deleted::Gone(last))
    }

    /// A list page, with the real server's resourceVersion and continue semantics.
    pub(crate) fn list(&self, q: &ListQuery) -> Result<(ListMeta, Vec<Arc<Secret>>), Error> {
        let rv_param = q.resource_version.as_deref().filter(|rv| !rv.is_empty());
        let (at, after) = match &q.continue_token {
            Some(token) if !token.is_empty() => {
                if rv_param.is_some() {
                    return Err(Error::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, start) = decode_continue(token)?;
                if rv < self.compacted {
                    return Err(Error::Expired {
                        message: CONTINUE_EXPIRED.to_owned(),
                    });
                }
                (rv, Some(start))
            }
            _ => match rv_param {
                None | Some("0") => (self.rv, None),
                Some(text) => {
                    let requested: u64 = text.parse().map_err(|_| {
                        Error::bad_request(format!("invalid resource version: {text:?}"))
                    })?;
                    if requested > self.rv {
                        return Err(Error::TooLargeResourceVersion {
                            requested,
                            current: self.rv,
                        });
                    }
                    if q.resource_version_match.as_deref() == Some("Exact") {
                        (requested, None)
                    } else {
                        (self.rv, None)
                    }
                }
            },
        };
        let snapshot;
        let objects = if at == self.rv {
            &self.objects
        } else {
            snapshot = self.snapshot_at(at)?;
            &snapshot
        };
        let prefix = q.namespace.as_deref().map(|ns| format!("{ns}/"));
        let mut matching = objects
            .iter()
            .filter(|(k, _)| prefix.as_deref().is_none_or(|p| k.starts_with(p)))
            .filter(|(k, _)| after.as_deref().is_none_or(|a| k.as_str() > a))
            .filter(|(_, s)| q.selectors.matches(s));
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let items: Vec<(&String, &Arc<Secret>)> = matching.by_ref().take(limit).collect();
        let remaining = matching.count();
        let mut meta = ListMeta {
            resource_version: at.to_string(),
            ..ListMeta::default()
        };
        if let Some((last, _)) = items.last().filter(|_| remaining > 0) {
            meta.continue_token = Some(encode_continue(at, last));
            if q.selectors.is_empty() {
                meta.remaining_item_count = Some(remaining as u64);
            }
        }
        Ok((meta, items.into_iter().map(|(_, s)| s.clone()).collect()))
    }

    /// The objects as they were at resourceVersion `at`, rebuilt from the event log.
    fn snapshot_at(&self, at: u64) -> Result<BTreeMap<String, Arc<Secret>>, Error> {
        if at < self.compacted {
            return Err(Error::too_old(at, self.compacted));
        }
        let mut objects = self.objects.clone();
        for ev in self.log.iter().rev().take_while(|ev| ev.rv > at) {
            let k = key(&ev.object.namespace, &ev.object.name);
            match (&ev.kind, &ev.prev) {
                (EventKind::Added, _) | (_, None) => {
                    objects.remove(&k);
                }
                (_, Some(prev)) => {
                    objects.insert(k, prev.clone());
                }
            }
        }
        Ok(objects)
    }

    /// Whether a new watch may start at `rv` (else the `410` to send in the stream).
    pub(crate) fn check_watch_start(&self, rv: u64) -> Result<(), Error> {
        if rv < self.compacted {
            Err(Error::too_old(rv, self.compacted))
        } else {
            Ok(())
        }
    }

    /// The events after `cursor`, or `410` if compaction dropped some of them.
    pub(crate) fn events_after(&self, cursor: u64) -> Result<Vec<Event>, Error> {
        if cursor < self.dropped_through {
            return Err(Error::too_old(cursor, self.compacted));
        }
        let start = self.log.partition_point(|ev| ev.rv <= cursor);
        Ok(self.log.range(start..).cloned().collect())
    }

    /// Drops all history and moves the resourceVersion on (as writes to other resources do in
    /// a real cluster): every resourceVersion handed out so far becomes too old to watch from.
    pub(crate) fn compact(&mut self) {
        if let Some(last) = self.log.back() {
            self.dropped_through = last.rv;
        }
        self.log.clear();
        self.rv += 1;
        self.compacted = self.rv;
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, kind: EventKind, object: Arc<Secret>, prev: Option<Arc<Secret>>) {
        self.log.push_back(Event {
            rv: object.resource_version,
            kind,
            object,
            prev,
        });
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64 over a per-server random seed
        self.uid_counter += 1;
        let mut z = self
            .uid_seed
            .wrapping_add(self.uid_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn new_uid(&mut self) -> String {
        let a = self.next_random();
        let b = self.next_random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.next_random();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(r % ALPHABET.len() as u64) as usize];
                r /= ALPHABET.len() as u64;
                char::from(c)
            })
            .collect()
    }
}

fn encode_continue(rv: u64, last_key: &str) -> String {
    let token =
        serde_json::json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}") });
    URL_SAFE_NO_PAD.encode(crate::json::to_vec(&token))
}

fn decode_continue(token: &str) -> Result<(u64, String), Error> {
    let bad = || {
        Error::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = value
        .get("rv")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(bad)?;
    let start = value
        .get("start")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(bad)?;
    // `start` is the first key to return: the last key of the previous page plus "\0".
    let after = start.strip_suffix('\u{0}').ok_or_else(bad)?;
    Ok((rv, after.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five() -> Store {
        let mut st = Store::new();
        for n in ["a", "b", "c", "d", "e"] {
            st.create(Secret::new("ns", n), false).expect("create");
        }
        st
    }

    #[test]
    fn pages_are_consistent_snapshots() {
        let mut st = five();
        let mut q = ListQuery {
            limit: Some(2),
            ..ListQuery::default()
        };
        let (meta, page) = st.list(&q).expect("page 1");
        assert_eq!(page.len(), 2);
        assert_eq!(meta.remaining_item_count, Some(3));
        // writes between pages do not show up in later pages
        st.delete("ns", "c", &Preconditions::default(), false)
            .expect("delete");
        st.create(Secret::new("ns", "cc"), false).expect("create");
        q.continue_token = meta.continue_token;
        let (meta2, page2) = st.list(&q).expect("page 2");
        assert_eq!(meta2.resource_version, meta.resource_version);
        let names: Vec<_> = page2.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["c", "d"]);
        st.compact();
        q.continue_token = meta2.continue_token;
        assert_eq!(st.list(&q).expect_err("expired").code(), 410);
    }

    #[test]
    fn no_op_updates_do_not_bump() {
        let mut st = five();
        let a = st.get("ns", "a").expect("a");
        let rv = st.rv();
        let same = st.update((*a).clone(), false).expect("update");
        assert_eq!(same.resource_version, a.resource_version);
        assert_eq!(st.rv(), rv);
        let stale = Secret::new("ns", "a").with_resource_version(1);
        assert_eq!(st.update(stale, false).expect_err("conflict").code(), 409);
    }

    #[test]
    fn watch_windows() {
        let mut st = five();
        let rv = st.rv();
        st.create(Secret::new("ns", "f"), false).expect("create");
        assert_eq!(st.events_after(rv).expect("events").len(), 1);
        st.compact();
        assert!(st.check_watch_start(rv).is_err());
        assert!(st.events_after(rv).is_err(), "missed the f event");
        assert!(st.events_after(rv + 1).is_ok(), "saw everything");
    }
}
