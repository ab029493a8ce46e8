//! Which secret a handshake's SNI picks: exact hosts, `*.` wildcards over exactly one label,
//! and a default for no SNI or no match. Fixed when the resolver is built; matched without
//! allocating unless the SNI has upper-case letters.

use std::{borrow::Cow, collections::HashMap, fmt};

use rustls::pki_types::DnsName;
use sds_core::Untrusted;

use crate::Error;

/// Most characters of an invalid host pattern an error shows.
const MAX_SHOWN_CHARS: usize = 64;

/// Host patterns, each mapped to a slot (an index into the resolver's secrets).
#[derive(Default)]
pub(crate) struct Hosts {
    /// Lowercased host names, without a trailing dot.
    exact: HashMap<Box<str>, usize>,
    /// Keyed by the domain under the wildcard: `*.example.com` is `example.com`.
    wildcard: HashMap<Box<str>, usize>,
    default: Option<usize>,
}

// === impl Hosts ===

impl Hosts {
    /// Maps `pattern` (`example.com`, or `*.example.com` for any one label under
    /// `example.com`) to `slot`. Case-insensitive; a trailing dot is ignored.
    pub(crate) fn insert(&mut self, pattern: &str, slot: usize) -> Result<(), Error> {
        let invalid = |problem| Error::InvalidHost {
            host: Untrusted::new(pattern, MAX_SHOWN_CHARS).to_string(),
            problem,
        };
        let host = pattern.strip_suffix('.').unwrap_or(pattern);
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(invalid(
                "a wildcard must be a whole first label (`*.example.com`)",
            ));
        }
        if DnsName::try_from(host).is_err() {
            return Err(invalid("not a DNS name"));
        }
        let host = host.to_ascii_lowercase();
        let map = match wildcard {
            true => &mut self.wildcard,
            false => &mut self.exact,
        };
        if map.contains_key(host.as_str()) {
            let host = match wildcard {
                true => format!("*.{host}"),
                false => host,
            };
            return Err(Error::DuplicateHost { host });
        }
        map.insert(host.into(), slot);
        Ok(())
    }

    /// Uses `slot` when a client sends no SNI, or one no pattern matches.
    pub(crate) fn set_default(&mut self, slot: usize) {
        self.default = Some(slot);
    }

    /// The slot for a handshake whose SNI is `sni`: an exact host first, then a wildcard
    /// over its first label, then the default.
    pub(crate) fn slot(&self, sni: Option<&str>) -> Option<usize> {
        let Some(sni) = sni else {
            return self.default;
        };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        // rustls lowercases the SNI already; this is for other callers.
        let sni: Cow<'_, str> = match sni.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(sni.to_ascii_lowercase()),
            false => Cow::Borrowed(sni),
        };
        if let Some(&slot) = self.exact.get(&*sni) {
            return Some(slot);
        }
        if let Some((label, domain)) = sni.split_once('.')
            && !label.is_empty()
            && let Some(&slot) = self.wildcard.get(domain)
        {
            return Some(slot);
        }
        self.default
    }

    /// Every pattern with its slot, sorted, and the default slot: for `Debug`.
    pub(crate) fn patterns(&self) -> (Vec<(String, usize)>, Option<usize>) {
        let mut patterns: Vec<(String, usize)> = self
            .exact
            .iter()
            .map(|(host, &slot)| (host.to_string(), slot))
            .chain(
                self.wildcard
                    .iter()
                    .map(|(domain, &slot)| (format!("*.{domain}"), slot)),
            )
            .collect();
        patterns.sort();
        (patterns, self.default)
    }
}

impl fmt::Debug for Hosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (patterns, default) = self.patterns();
        f.debug_struct("Hosts")
            .field("patterns", &patterns)
            .field("default", &default)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Hosts {
        let mut hosts = Hosts::default();
        hosts.insert("example.com", 0).expect("valid");
        hosts.insert("*.example.com", 1).expect("valid");
        hosts.insert("API.Example.com.", 2).expect("valid");
        hosts
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let mut hosts = hosts();
        let table = [
            (Some("example.com"), Some(0)),
            (Some("EXAMPLE.com"), Some(0)),
            (Some("example.com."), Some(0)),
            (Some("www.example.com"), Some(1)),
            (Some("WWW.Example.COM"), Some(1)),
            (Some("api.example.com"), Some(2)),
            (Some("a.b.example.com"), None),
            (Some(".example.com"), None),
            (Some("example.org"), None),
            (Some("com"), None),
            (None, None),
        ];
        for (sni, want) in table {
            assert_eq!(hosts.slot(sni), want, "{sni:?}");
        }
        hosts.set_default(3);
        for (sni, want) in table {
            assert_eq!(hosts.slot(sni), want.or(Some(3)), "{sni:?} with a default");
        }
    }

    #[test]
    fn invalid_and_duplicate_patterns_are_refused() {
        let mut hosts = hosts();
        for bad in [
            "",
            "*",
            "*.",
            "a.*.example.com",
            "w*.example.com",
            "*.*.example.com",
            "exa mple.com",
            "192.0.2.1",
            "-bad-.example.com",
        ] {
            assert!(
                matches!(hosts.insert(bad, 9), Err(Error::InvalidHost { .. })),
                "{bad:?}"
            );
        }
        for (dup, shown) in [
            ("Example.COM", "example.com"),
            ("*.EXAMPLE.com", "*.example.com"),
        ] {
            match hosts.insert(dup, 9) {
                Err(Error::DuplicateHost { host }) => assert_eq!(host, shown),
                other => panic!("{dup:?}: {other:?}"),
            }
        }
        let long = format!("{}\n.example.com", "x".repeat(500));
        let Err(error) = hosts.insert(&long, 9) else {
            panic!("a name with a newline is refused")
        };
        let shown = error.to_string();
        assert!(!shown.contains('\n') && shown.len() < 200, "{shown}");
    }
}
