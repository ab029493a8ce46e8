//! The credential keys of a Secret: what is kept of it, and which keys win.
//!
//! The key names and their precedence are Istio's (and the file names of `sds-source-fs`), so
//! that a Secret and a credential directory with the same keys mean the same thing.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{ByteString, api::core::v1::Secret as KubeSecret};
use ring::digest;
use sds_core::{
    Untrusted,
    layout::{Key, Layout, Presence},
};
use zeroize::Zeroizing;

/// How many key names a "found: …" list shows before "and N more".
const LISTED_KEYS: usize = 10;

/// Most characters of a Kubernetes name (a namespace, a Secret, one of its keys) shown in an
/// error or a log line: the longest name Kubernetes allows (a DNS subdomain).
pub(crate) const MAX_SHOWN_CHARS: usize = 253;

/// A Secret's name and namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SecretId {
    pub(crate) namespace: Box<str>,
    pub(crate) name: Box<str>,
}

// === impl SecretId ===

impl SecretId {
    pub(crate) fn new(namespace: impl Into<Box<str>>, name: impl Into<Box<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The Secret whose name has `suffix` appended, in the same namespace.
    pub(crate) fn with_suffix(&self, suffix: &str) -> Self {
        Self {
            namespace: self.namespace.clone(),
            name: format!("{}{suffix}", self.name).into(),
        }
    }
}

/// `namespace/name`, each escaped and cut short: they come from the API server.
impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            Untrusted::new(&self.namespace, MAX_SHOWN_CHARS),
            Untrusted::new(&self.name, MAX_SHOWN_CHARS)
        )
    }
}

/// What is kept of a Secret that is a credential: the bytes of its credential keys (zeroized on
/// drop), its resourceVersion and a digest of those bytes. Everything else (other keys, labels,
/// annotations, managed fields) is dropped as soon as the object is decoded.
pub(crate) struct Keys {
    values: [Option<Zeroizing<Vec<u8>>>; Key::ALL.len()],
    resource_version: Option<Box<str>>,
    digest: digest::Digest,
    /// The names of all the Secret's keys, kept only when a part is incomplete (for the
    /// "found: …" of the rejection).
    found: Option<Box<str>>,
}

/// A decoded Secret, reduced to what this source keeps.
#[derive(Debug)]
pub(crate) struct Lean {
    pub(crate) id: SecretId,
    /// `None` when the Secret holds none of the credential keys: it is not kept at all.
    pub(crate) keys: Option<Keys>,
}

// === impl Lean ===

impl Lean {
    /// Reduces a decoded Secret to its credential keys, dropping everything else. `None` for an
    /// object without a name (the API server never sends one).
    pub(crate) fn from_secret(secret: KubeSecret, default_namespace: &str) -> Option<Lean> {
        let KubeSecret { metadata, data, .. } = secret;
        let id = SecretId::new(
            metadata
                .namespace
                .unwrap_or_else(|| default_namespace.to_owned()),
            metadata.name?,
        );
        let keys = Keys::take(data.unwrap_or_default(), metadata.resource_version);
        Some(Lean { id, keys })
    }
}

// === impl Keys ===

impl Keys {
    /// Takes the credential keys out of a Secret's `data` (without copying their bytes); `None`
    /// if it holds none of them.
    pub(crate) fn take(
        mut data: BTreeMap<String, ByteString>,
        resource_version: Option<String>,
    ) -> Option<Keys> {
        let values = Key::ALL.map(|key| {
            data.remove(key.name())
                .map(|ByteString(bytes)| Zeroizing::new(bytes))
        });
        let layout = Layout::of(|key| presence(values[key.index()].as_deref()));
        if layout.is_empty() {
            return None;
        }
        let mut context = digest::Context::new(&digest::SHA256);
        for value in &values {
            match value {
                Some(bytes) => {
                    context.update(&[1]);
                    context.update(&(bytes.len() as u64).to_be_bytes());
                    context.update(bytes);
                }
                None => context.update(&[0]),
            }
        }
        let mut keys = Keys {
            values,
            resource_version: resource_version.map(String::into_boxed_str),
            digest: context.finish(),
            found: None,
        };
        let incomplete = matches!(layout.pair, Some(Err(_))) || matches!(layout.ca, Some(Err(_)));
        if incomplete {
            let present: Vec<&'static str> = keys.present().collect();
            let mut names: Vec<&str> = data.keys().map(String::as_str).chain(present).collect();
            names.sort_unstable();
            keys.found = Some(list(&names).into_boxed_str());
        }
        Some(keys)
    }

    /// The names of the credential keys present.
    fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        Key::ALL
            .iter()
            .zip(&self.values)
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.name())
    }

    /// Whether these keys have the same content as `other`'s: the same resourceVersion of the
    /// Secret, or else the same bytes (a resourceVersion changes with any field, e.g. a label,
    /// and may change across an API server restore).
    pub(crate) fn same_content(&self, other: &Keys) -> bool {
        let same_version =
            self.resource_version.is_some() && self.resource_version == other.resource_version;
        same_version || self.digest.as_ref() == other.digest.as_ref()
    }

    /// All key names of the Secret, when a part of it is incomplete: `a, b, c`.
    pub(crate) fn found(&self) -> Option<&str> {
        self.found.as_deref()
    }

    /// The bytes of `key`.
    pub(crate) fn bytes(&self, key: Key) -> &[u8] {
        self.values[key.index()]
            .as_deref()
            .map_or(&[], Vec::as_slice)
    }

    /// Which keys make up the certificate pair and the CA, after Istio's precedence (written
    /// once, in [`sds_core::layout`], for Secrets and credential directories alike).
    pub(crate) fn layout(&self) -> Layout {
        Layout::of(|key| presence(self.values[key.index()].as_deref()))
    }
}

/// What a Secret's `data` holds for one key.
fn presence(value: Option<&Vec<u8>>) -> Presence {
    match value {
        None => Presence::Absent,
        Some(bytes) if bytes.is_empty() => Presence::Empty,
        Some(_) => Presence::NonEmpty,
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("present", &self.present().collect::<Vec<_>>())
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

/// `a, b, c` or `a, b, …, j, and 3 more`, each name escaped and cut short.
fn list(names: &[&str]) -> String {
    let mut out = names
        .iter()
        .take(LISTED_KEYS)
        .map(|name| Untrusted::new(name, MAX_SHOWN_CHARS).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LISTED_KEYS {
        out.push_str(&format!(", and {} more", names.len() - LISTED_KEYS));
    }
    out
}

/// The location of a key in messages and [`sds_core::Input`]:
/// ``Secret istio-system/httpbin key `tls.key` ``.
pub(crate) fn location(id: &SecretId, key: &str) -> String {
    format!("Secret {id} key `{key}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> Option<Keys> {
        keys_at(pairs, Some("7"))
    }

    fn keys_at(pairs: &[(&str, &str)], resource_version: Option<&str>) -> Option<Keys> {
        let data = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect();
        Keys::take(data, resource_version.map(str::to_owned))
    }

    #[test]
    fn not_a_credential() {
        assert!(keys(&[]).is_none());
        assert!(keys(&[("username", "u"), ("password", "p"), ("token", "t")]).is_none());
        // A staple alone is no credential either.
        assert!(keys(&[("tls.ocsp-staple", "s")]).is_none());
    }

    #[test]
    fn empty_keys_tell_the_layout() {
        // Which keys win is sds_core's layout; this source only tells it what is empty.
        let keys = keys_of(&[
            ("cert", ""),
            ("key", ""),
            ("tls.crt", "c"),
            ("tls.key", "k"),
        ]);
        let pair = keys.layout().pair.expect("a pair").expect("complete");
        assert_eq!((pair.chain, pair.key), (Key::TlsCrt, Key::TlsKey));
    }

    #[test]
    fn incomplete_parts_list_the_keys_found() {
        let keys = keys(&[("tls.crt", "c"), ("ca.crt", "a"), ("other", "x")]).expect("credential");
        assert!(matches!(keys.layout().pair, Some(Err(_))));
        assert_eq!(keys.found(), Some("ca.crt, other, tls.crt"));
    }

    fn keys_of(pairs: &[(&str, &str)]) -> Keys {
        keys(pairs).expect("a credential")
    }

    #[test]
    fn keeps_only_credential_keys() {
        let keys = keys_of(&[("tls.crt", "c"), ("tls.key", "SECRET-BYTES"), ("blob", "x")]);
        assert_eq!(keys.present().collect::<Vec<_>>(), ["tls.crt", "tls.key"]);
        assert_eq!(keys.found(), None, "complete credentials keep no key list");
        assert_eq!(keys.resource_version.as_deref(), Some("7"));
        assert_eq!(keys.bytes(Key::TlsCrt), b"c");
        assert_eq!(keys.bytes(Key::Cert), b"");
        let debug = format!("{keys:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
    }

    #[test]
    fn digest_tells_content() {
        let at = |pairs: &[(&str, &str)], rv| keys_at(pairs, rv).expect("a credential");
        let a = at(&[("cert", "c"), ("key", "k")], Some("1"));
        let b = at(
            &[("cert", "c"), ("key", "k"), ("unrelated", "z")],
            Some("2"),
        );
        let c = at(&[("cert", "ck"), ("key", "")], Some("3"));
        assert!(a.same_content(&b));
        assert!(!a.same_content(&c));
        assert!(!at(&[("cert", "c")], None).same_content(&at(&[("cert", "d")], None)));
        // The same resourceVersion is the same object.
        assert!(a.same_content(&at(&[("cert", "c"), ("key", "k")], Some("1"))));
    }

    #[test]
    fn outside_names_are_escaped_and_cut_short() {
        let id = SecretId::new("ns\n", format!("a\u{1b}[2J{}", "x".repeat(10_000)));
        let shown = id.to_string();
        assert!(shown.starts_with("ns\\n/a\\u{1b}[2Jxxx"), "{shown}");
        assert!(shown.ends_with("…(9752 more bytes)"), "{shown}");
        assert_eq!(list(&["b\r", "a\"b"]), "b\\r, a\\\"b");
    }

    #[test]
    fn lists_at_most_ten_names() {
        let names: Vec<String> = (0..13).map(|i| format!("k{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            list(&refs),
            "k00, k01, k02, k03, k04, k05, k06, k07, k08, k09, and 3 more"
        );
    }
}
