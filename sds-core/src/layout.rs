//! Istio's credential layout: which keys of a Kubernetes Secret (or files of a directory) make
//! up a credential, which of them win, and the names each part is served under.
//!
//! Written once here, so that a Secret read through the API and the same Secret mounted as a
//! volume give exactly the same secrets and the same rejections. A source says what it sees of
//! each [`Key`] ([`Presence`]); [`Layout::of`] picks the keys to read.
//!
//! ```
//! use sds_core::layout::{Key, Layout, Presence};
//!
//! // A `kubernetes.io/tls` Secret with an empty generic `cert` key beside it, as some charts write.
//! let layout = Layout::of(|key| match key {
//!     Key::Cert => Presence::Empty,
//!     Key::TlsCrt | Key::TlsKey | Key::CaCrt => Presence::NonEmpty,
//!     _ => Presence::Absent,
//! });
//! let pair = layout.pair.expect("a pair part").expect("complete");
//! assert_eq!((pair.chain, pair.key), (Key::TlsCrt, Key::TlsKey));
//! let ca = layout.ca.expect("a CA part").expect("complete");
//! assert_eq!((ca.ca, ca.crl), (Key::CaCrt, None));
//! ```

use std::fmt;

use crate::SecretName;

/// One of the keys a credential is made of: a Kubernetes Secret's data key, or a file name in a
/// credential directory.
///
/// Istio's generic keys (`cert`, `key`, `cacert`, `crl`) come before the `kubernetes.io/tls`
/// keys (`tls.crt`, `tls.key`, `ca.crt`, `ca.crl`) within each part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Key {
    /// `cert`: a certificate chain, leaf first (Istio's generic Secret).
    Cert,
    /// `key`: the private key of `cert`.
    Key,
    /// `tls.crt`: a certificate chain, leaf first (`kubernetes.io/tls`).
    TlsCrt,
    /// `tls.key`: the private key of `tls.crt`.
    TlsKey,
    /// `cacert`: CA certificates that verify peers (Istio's generic Secret).
    CaCert,
    /// `ca.crt`: CA certificates that verify peers (`kubernetes.io/tls`).
    CaCrt,
    /// `crl`: certificate revocation lists, with `cacert`.
    Crl,
    /// `ca.crl`: certificate revocation lists, with `ca.crt`.
    CaCrl,
    /// `tls.ocsp-staple`: a DER OCSP response for the leaf, stapled by Envoy.
    OcspStaple,
}

// === impl Key ===

impl Key {
    /// Every key, in precedence order within each part.
    pub const ALL: [Key; 9] = [
        Key::Cert,
        Key::Key,
        Key::TlsCrt,
        Key::TlsKey,
        Key::CaCert,
        Key::CaCrt,
        Key::Crl,
        Key::CaCrl,
        Key::OcspStaple,
    ];

    /// The key's name in a Secret, and the file's name in a directory: e.g. `tls.crt`.
    pub const fn name(self) -> &'static str {
        match self {
            Key::Cert => "cert",
            Key::Key => "key",
            Key::TlsCrt => "tls.crt",
            Key::TlsKey => "tls.key",
            Key::CaCert => "cacert",
            Key::CaCrt => "ca.crt",
            Key::Crl => "crl",
            Key::CaCrl => "ca.crl",
            Key::OcspStaple => "tls.ocsp-staple",
        }
    }

    /// The key of this name, if it is one.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.name() == name)
    }

    /// The position of this key in [`Key::ALL`]: an index for a source's per-key table.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Certificate chain and private key keys, as pairs, generic first.
const PAIRS: [(Key, Key); 2] = [(Key::Cert, Key::Key), (Key::TlsCrt, Key::TlsKey)];
/// CA keys, generic first.
const CAS: [Key; 2] = [Key::CaCert, Key::CaCrt];
/// A CA needed by a CRL: either CA key.
const EITHER_CA: &[Key] = &CAS;

/// What a source sees of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presence {
    /// No such key (or file).
    Absent,
    /// The key is there with no bytes (an empty file).
    Empty,
    /// The key is there with some bytes.
    NonEmpty,
    /// Whether the key is there cannot be told (a file whose lookup failed). A part where it
    /// could change the choice is rejected, as [`Incomplete::Unknown`].
    Unknown,
}

/// Which keys make up each part of a credential, after precedence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The certificate chain and private key, served as `<name>`; `None` if no key of it is
    /// there.
    pub pair: Option<Result<PairKeys, Incomplete>>,
    /// The CA certificates and CRL, served as `<name>-cacert`; `None` if no key of it is
    /// there.
    pub ca: Option<Result<CaKeys, Incomplete>>,
}

/// The keys of a certificate pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairKeys {
    /// The certificate chain: `cert` or `tls.crt`.
    pub chain: Key,
    /// Its private key: `key` or `tls.key`.
    pub key: Key,
    /// The OCSP staple, when `tls.ocsp-staple` is there and not empty.
    pub ocsp_staple: Option<Key>,
}

/// The keys of a CA part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaKeys {
    /// The CA certificates: `cacert` or `ca.crt`.
    pub ca: Key,
    /// The CRLs, if any: `crl` or `ca.crl`.
    pub crl: Option<Key>,
}

/// Why a part with some of its keys cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incomplete {
    /// This key is present without the key it needs: a chain without its key (or the other
    /// way round), a CRL without a CA.
    Missing {
        /// The key that is there.
        found: Key,
        /// What is missing: one of these keys.
        missing: &'static [Key],
    },
    /// Whether this key is there cannot be told, and it could decide the part.
    Unknown(Key),
}

// === impl Incomplete ===

impl Incomplete {
    /// The key the part is told by: the one that is there ([`Incomplete::Missing`]), or the
    /// one whose presence is unknown.
    pub fn key(&self) -> Key {
        match self {
            Incomplete::Missing { found, .. } => *found,
            Incomplete::Unknown(key) => *key,
        }
    }

    /// `tls.key`, or `cacert or ca.crt`: what an [`Incomplete::Missing`] part lacks, each name
    /// formatted by `name` (e.g. quoted). Empty for [`Incomplete::Unknown`].
    pub fn missing_names(&self, name: impl Fn(Key) -> String) -> String {
        match self {
            Incomplete::Missing { missing, .. } => missing
                .iter()
                .map(|key| name(*key))
                .collect::<Vec<_>>()
                .join(" or "),
            Incomplete::Unknown(_) => String::new(),
        }
    }
}

// === impl Layout ===

impl Layout {
    /// Picks the keys of each part from what `presence` says of every key, by Istio's rules:
    ///
    /// - the pair is the first one (`cert`+`key`, then `tls.crt`+`tls.key`) with both keys
    ///   non-empty; else the first with both keys present (rejected as empty when parsed); else
    ///   a lone key is reported with its missing partner;
    /// - the CA is the first non-empty of `cacert`, `ca.crt`, else the first present;
    /// - the CRL goes with its CA (`crl` with `cacert`, `ca.crl` with `ca.crt`), else the other
    ///   one is taken: a CRL is never dropped silently (Istio drops it). A CRL without a CA is
    ///   incomplete;
    /// - `tls.ocsp-staple`, when not empty, goes with whichever pair is chosen (Istio reads it
    ///   with `tls.crt` only; it is checked against the leaf's serial either way);
    /// - a key whose presence is [`Presence::Unknown`] rejects its part if it comes before the
    ///   key chosen, or could have been chosen.
    pub fn of(presence: impl Fn(Key) -> Presence) -> Layout {
        let seen = Key::ALL.map(&presence);
        let at = |key: Key| seen[key.index()];
        let pair = pair(&at).map(|pair| {
            let mut pair = pair?;
            pair.ocsp_staple = match at(Key::OcspStaple) {
                Presence::NonEmpty => Some(Key::OcspStaple),
                Presence::Unknown => return Err(Incomplete::Unknown(Key::OcspStaple)),
                Presence::Absent | Presence::Empty => None,
            };
            Ok(pair)
        });
        let ca = match first(&at, &CAS) {
            None => match first(&at, &[Key::Crl, Key::CaCrl]) {
                None => None,
                Some(Err(unknown)) => Some(Err(unknown)),
                Some(Ok(found)) => Some(Err(Incomplete::Missing {
                    found,
                    missing: EITHER_CA,
                })),
            },
            Some(Err(unknown)) => Some(Err(unknown)),
            Some(Ok(ca)) => {
                let crls = match ca {
                    Key::CaCrt => [Key::CaCrl, Key::Crl],
                    _ => [Key::Crl, Key::CaCrl],
                };
                Some(first(&at, &crls).transpose().map(|crl| CaKeys { ca, crl }))
            }
        };
        Layout { pair, ca }
    }

    /// Whether no key of a credential is there: then it is not a credential at all.
    pub fn is_empty(&self) -> bool {
        self.pair.is_none() && self.ca.is_none()
    }
}

/// The first non-empty key of `keys`, else the first present; an unknown key before it
/// decides (it might have been the first non-empty one).
fn first(at: &impl Fn(Key) -> Presence, keys: &[Key]) -> Option<Result<Key, Incomplete>> {
    let mut empty = None;
    for &key in keys {
        match at(key) {
            Presence::NonEmpty => return Some(Ok(key)),
            Presence::Unknown => return Some(Err(Incomplete::Unknown(key))),
            Presence::Empty => empty = empty.or(Some(key)),
            Presence::Absent => {}
        }
    }
    empty.map(Ok)
}

/// The pair part: see [`Layout::of`].
fn pair(at: &impl Fn(Key) -> Presence) -> Option<Result<PairKeys, Incomplete>> {
    let found = |chain, key| PairKeys {
        chain,
        key,
        ocsp_staple: None,
    };
    let present = |key| matches!(at(key), Presence::Empty | Presence::NonEmpty);
    for (chain, key) in PAIRS {
        match (at(chain), at(key)) {
            (Presence::NonEmpty, Presence::NonEmpty) => return Some(Ok(found(chain, key))),
            (Presence::Unknown, _) => return Some(Err(Incomplete::Unknown(chain))),
            (_, Presence::Unknown) => return Some(Err(Incomplete::Unknown(key))),
            _ => {}
        }
    }
    if let Some((chain, key)) = PAIRS.into_iter().find(|(c, k)| present(*c) && present(*k)) {
        return Some(Ok(found(chain, key)));
    }
    PAIRS.iter().find_map(|(chain, key)| {
        let lone = |found, missing| Some(Err(Incomplete::Missing { found, missing }));
        match (present(*chain), present(*key)) {
            (true, false) => lone(*chain, std::slice::from_ref(key)),
            (false, true) => lone(*key, std::slice::from_ref(chain)),
            _ => None,
        }
    })
}

/// The names the parts of a credential are served under: the pair as `<name>` (or the CA, when
/// the credential holds only a CA, as Istio serves a CA-only Secret), the CA as
/// `<name>-cacert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served<T> {
    /// What `<name>` serves.
    pub own: Option<T>,
    /// What `<name>-cacert` serves.
    pub cacert: Option<T>,
}

// === impl Served ===

impl<T: Clone> Served<T> {
    /// What each name serves, from the parsed pair and CA parts.
    pub fn new(pair: Option<T>, ca: Option<T>) -> Self {
        Served {
            own: pair.or_else(|| ca.clone()),
            cacert: ca,
        }
    }

    /// The secrets of the credential `name`, each with the name it is served under.
    pub fn named(self, name: &SecretName) -> impl Iterator<Item = (SecretName, T)> {
        let own = self.own.map(|part| (name.clone(), part));
        let cacert = self.cacert.map(|part| (name.cacert(), part));
        own.into_iter().chain(cacert)
    }
}

#[cfg(test)]
mod tests {
    use super::{Incomplete, Key as K, Layout, Presence, Served};
    use crate::SecretName;
    use K::*;

    fn missing<T>(found: K, missing: &'static [K]) -> Option<Result<T, Incomplete>> {
        Some(Err(Incomplete::Missing { found, missing }))
    }

    fn unknown<T>(key: K) -> Option<Result<T, Incomplete>> {
        Some(Err(Incomplete::Unknown(key)))
    }

    /// The layout of a credential with these keys, `""` for an empty one, `"?"` for unknown.
    fn layout(keys: &[(K, &str)]) -> Layout {
        Layout::of(|key| match keys.iter().find(|(k, _)| *k == key) {
            None => Presence::Absent,
            Some((_, "")) => Presence::Empty,
            Some((_, "?")) => Presence::Unknown,
            Some(_) => Presence::NonEmpty,
        })
    }

    type PairPart = Option<Result<(K, K, Option<K>), Incomplete>>;

    fn pair(keys: &[(K, &str)]) -> PairPart {
        layout(keys)
            .pair
            .map(|p| p.map(|p| (p.chain, p.key, p.ocsp_staple)))
    }

    fn ca(keys: &[(K, &str)]) -> Option<Result<(K, Option<K>), Incomplete>> {
        layout(keys).ca.map(|c| c.map(|c| (c.ca, c.crl)))
    }

    #[test]
    fn names_round_trip() {
        for key in K::ALL {
            assert_eq!(K::from_name(key.name()), Some(key));
            assert_eq!(K::ALL[key.index()], key);
        }
        assert_eq!(K::from_name("tls.pem"), None);
    }

    #[test]
    fn generic_keys_win() {
        let all = [
            (Cert, "c"),
            (Key, "k"),
            (TlsCrt, "c"),
            (TlsKey, "k"),
            (CaCert, "a"),
            (CaCrt, "a"),
            (Crl, "r"),
            (CaCrl, "r"),
        ];
        assert_eq!(pair(&all), Some(Ok((Cert, Key, None))));
        assert_eq!(ca(&all), Some(Ok((CaCert, Some(Crl)))));
        assert_eq!(pair(&all[2..]), Some(Ok((TlsCrt, TlsKey, None))));
        assert_eq!(ca(&all[5..]), Some(Ok((CaCrt, Some(CaCrl)))));
    }

    #[test]
    fn a_complete_non_empty_pair_wins() {
        let tls = [(TlsCrt, "c"), (TlsKey, "k")];
        let with = |extra: &[(K, &'static str)]| [extra, &tls].concat();
        assert_eq!(
            pair(&with(&[(Cert, ""), (Key, "")])),
            Some(Ok((TlsCrt, TlsKey, None)))
        );
        assert_eq!(
            pair(&with(&[(Cert, "c"), (Key, "")])),
            Some(Ok((TlsCrt, TlsKey, None)))
        );
        assert_eq!(
            pair(&with(&[(Cert, "c")])),
            Some(Ok((TlsCrt, TlsKey, None)))
        );
        // Nothing better: the empty pair is chosen (and rejected as empty when parsed).
        assert_eq!(pair(&[(Cert, ""), (Key, "")]), Some(Ok((Cert, Key, None))));
        assert_eq!(
            pair(&[(Cert, ""), (Key, ""), (TlsCrt, "")]),
            Some(Ok((Cert, Key, None)))
        );
    }

    #[test]
    fn lone_keys_name_their_partner() {
        assert_eq!(pair(&[(TlsCrt, "c")]), missing(TlsCrt, &[TlsKey][..]));
        assert_eq!(pair(&[(Key, "k")]), missing(Key, &[Cert][..]));
        assert_eq!(
            pair(&[(Cert, "c"), (TlsKey, "k")]),
            missing(Cert, &[Key][..])
        );
        assert_eq!(ca(&[(CaCrl, "r")]), missing(CaCrl, &[CaCert, CaCrt][..]));
        let incomplete = layout(&[(Crl, "r")])
            .ca
            .expect("a CA part")
            .expect_err("incomplete");
        assert_eq!(
            incomplete.missing_names(|k| format!("`{k}`")),
            "`cacert` or `ca.crt`"
        );
    }

    #[test]
    fn a_crl_goes_with_its_ca_else_the_other_is_taken() {
        assert_eq!(
            ca(&[(CaCrt, "a"), (Crl, "r"), (CaCrl, "r")]),
            Some(Ok((CaCrt, Some(CaCrl))))
        );
        assert_eq!(
            ca(&[(CaCrt, "a"), (Crl, "r")]),
            Some(Ok((CaCrt, Some(Crl))))
        );
        assert_eq!(
            ca(&[(CaCert, "a"), (CaCrl, "r")]),
            Some(Ok((CaCert, Some(CaCrl))))
        );
        // An empty CA key loses to a non-empty one, and an empty CRL to a non-empty one.
        assert_eq!(
            ca(&[(CaCert, ""), (CaCrt, "a"), (CaCrl, ""), (Crl, "r")]),
            Some(Ok((CaCrt, Some(Crl))))
        );
        assert_eq!(ca(&[(CaCert, "")]), Some(Ok((CaCert, None))));
    }

    #[test]
    fn the_staple_goes_with_the_pair() {
        let tls = [(TlsCrt, "c"), (TlsKey, "k"), (OcspStaple, "s")];
        assert_eq!(pair(&tls), Some(Ok((TlsCrt, TlsKey, Some(OcspStaple)))));
        let generic = [(Cert, "c"), (Key, "k"), (OcspStaple, "s")];
        assert_eq!(pair(&generic), Some(Ok((Cert, Key, Some(OcspStaple)))));
        assert_eq!(
            pair(&[(TlsCrt, "c"), (TlsKey, "k"), (OcspStaple, "")]),
            Some(Ok((TlsCrt, TlsKey, None)))
        );
        // A staple alone is no credential.
        assert!(layout(&[(OcspStaple, "s")]).is_empty());
        assert!(layout(&[]).is_empty());
    }

    #[test]
    fn unknown_keys_reject_the_part_they_could_decide() {
        assert_eq!(
            pair(&[(Cert, "?"), (TlsCrt, "c"), (TlsKey, "k")]),
            unknown(Cert)
        );
        assert_eq!(pair(&[(TlsCrt, "c"), (TlsKey, "?")]), unknown(TlsKey));
        // After the winner, an unknown key does not matter.
        assert_eq!(
            pair(&[(Cert, "c"), (Key, "k"), (TlsCrt, "?")]),
            Some(Ok((Cert, Key, None)))
        );
        assert_eq!(
            pair(&[(Cert, "c"), (Key, "k"), (OcspStaple, "?")]),
            unknown(OcspStaple)
        );
        assert_eq!(ca(&[(CaCert, "?"), (CaCrt, "a")]), unknown(CaCert));
        assert_eq!(ca(&[(CaCert, "a"), (CaCrt, "?")]), Some(Ok((CaCert, None))));
        assert_eq!(ca(&[(CaCert, "a"), (Crl, "?")]), unknown(Crl));
        assert_eq!(ca(&[(Crl, "?")]), unknown(Crl));
    }

    #[test]
    fn served_names() {
        let name = SecretName::new("httpbin").expect("valid");
        let named = |served: Served<&'static str>| {
            served
                .named(&name)
                .map(|(n, p)| (n.to_string(), p))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            named(Served::new(Some("pair"), Some("ca"))),
            [
                ("httpbin".to_owned(), "pair"),
                ("httpbin-cacert".to_owned(), "ca")
            ]
        );
        assert_eq!(
            named(Served::new(None, Some("ca"))),
            [
                ("httpbin".to_owned(), "ca"),
                ("httpbin-cacert".to_owned(), "ca")
            ]
        );
        assert_eq!(
            named(Served::new(Some("pair"), None)),
            [("httpbin".to_owned(), "pair")]
        );
    }
}
