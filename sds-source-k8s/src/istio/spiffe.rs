//! Who a gateway is: the Kubernetes service account named by the SPIFFE ID of its verified
//! client certificate.

use std::fmt;

use sds_core::Untrusted;
use sds_server::policy::Peer;

use crate::keys::MAX_SHOWN_CHARS;

/// The scheme of SPIFFE IDs.
const SCHEME: &str = "spiffe://";

/// The shape of the SPIFFE IDs the policy accepts, for reasons.
pub(crate) const SHAPE: &str = "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT";

/// A Kubernetes service account: the subject of a SubjectAccessReview and the key of the
/// review cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ServiceAccount {
    pub(crate) namespace: Box<str>,
    pub(crate) name: Box<str>,
}

/// A peer's identity as the policy sees it: the trust domain and service account of the
/// first URI SAN that is a Kubernetes SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) trust_domain: Box<str>,
    pub(crate) account: ServiceAccount,
}

/// Why a peer has no [`Identity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// No verified client certificate (a Unix-socket peer, TLS without client auth).
    Certificate,
    /// A certificate without a URI SAN of the Kubernetes shape.
    SpiffeId,
}

// === impl ServiceAccount ===

impl ServiceAccount {
    /// The Kubernetes user the service account authenticates as:
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub(crate) fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// `namespace/name`, escaped and cut short (they come from a certificate).
impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            Untrusted::new(&self.namespace, MAX_SHOWN_CHARS),
            Untrusted::new(&self.name, MAX_SHOWN_CHARS)
        )
    }
}

// === impl Identity ===

impl Identity {
    /// The identity of `peer`: the first URI SAN of its verified certificate that is a
    /// Kubernetes SPIFFE ID.
    pub(crate) fn of(peer: &Peer) -> Result<Self, Missing> {
        let certificate = peer.certificate().ok_or(Missing::Certificate)?;
        certificate
            .uris
            .iter()
            .find_map(|uri| Self::parse(uri))
            .ok_or(Missing::SpiffeId)
    }

    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/NAME`, as istiod's `spiffe.ParseIdentity`
    /// reads it (exactly five segments), with each part checked as Kubernetes checks it: a
    /// namespace is a DNS label, a service account a DNS subdomain. So no part can add
    /// segments to the username (`:`) or to a Secret's resource name (`/`).
    pub(crate) fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(SCHEME)?;
        let mut parts = rest.split('/');
        let (Some(trust_domain), Some("ns"), Some(namespace), Some("sa"), Some(name), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let valid =
            is_trust_domain(trust_domain) && is_dns_label(namespace) && is_dns_subdomain(name);
        valid.then(|| Self {
            trust_domain: trust_domain.into(),
            account: ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            },
        })
    }
}

/// `spiffe://td/ns/a/sa/gw`, escaped.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            Untrusted::new(&self.trust_domain, MAX_SHOWN_CHARS),
            Untrusted::new(&self.account.namespace, MAX_SHOWN_CHARS),
            Untrusted::new(&self.account.name, MAX_SHOWN_CHARS)
        )
    }
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`, not empty.
fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// A DNS-1123 label (a namespace name): at most 63 lowercase letters, digits and `-`,
/// starting and ending with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_name(s, false)
}

/// A DNS-1123 subdomain (a service account name): at most 253 lowercase letters, digits, `-`
/// and `.`, starting and ending with a letter or digit.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && is_dns_name(s, true)
}

fn is_dns_name(s: &str, dots: bool) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alphanumeric(first)
                && alphanumeric(last)
                && bytes
                    .iter()
                    .all(|&b| alphanumeric(b) || b == b'-' || (dots && b == b'.'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use sds_server::policy::{CertificateIdentity, UnixCredentials};

    use super::*;

    fn account(namespace: &str, name: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn kubernetes_spiffe_ids() {
        let id = Identity::parse("spiffe://cluster.local/ns/apps/sa/gateway").expect("parses");
        assert_eq!(&*id.trust_domain, "cluster.local");
        assert_eq!(id.account, account("apps", "gateway"));
        assert_eq!(id.account.username(), "system:serviceaccount:apps:gateway");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/apps/sa/gateway");
        assert!(Identity::parse("spiffe://td/ns/a-1/sa/istio.gateway-2").is_some());

        for other in [
            "",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/apps",
            "spiffe://cluster.local/ns/apps/sa",
            "spiffe://cluster.local/ns/apps/sa/",
            "spiffe://cluster.local/ns/apps/sa/gw/extra",
            "spiffe://cluster.local/sa/gw/ns/apps",
            "spiffe:///ns/apps/sa/gw",
            "spiffe://cluster.local/ns//sa/gw",
            "https://cluster.local/ns/apps/sa/gw",
            "SPIFFE://cluster.local/ns/apps/sa/gw",
            "spiffe://Cluster.Local/ns/apps/sa/gw",
            // parts that would change the username or the Secret's name
            "spiffe://td/ns/a:b/sa/gw",
            "spiffe://td/ns/apps/sa/gw:x",
            "spiffe://td/ns/a%2Fb/sa/gw",
            "spiffe://td/ns/a.b/sa/gw",
            "spiffe://td/ns/-a/sa/gw",
            "spiffe://td/ns/Apps/sa/gw",
            "spiffe://td/ns/apps/sa/gw\n",
        ] {
            assert_eq!(Identity::parse(other), None, "{other:?}");
        }
        let long = "a".repeat(64);
        assert!(Identity::parse(&format!("spiffe://td/ns/{long}/sa/gw")).is_none());
        assert!(Identity::parse(&format!("spiffe://td/ns/{}/sa/gw", &long[..63])).is_some());
    }

    #[test]
    fn the_first_kubernetes_uri_san_is_the_identity() {
        let address = "127.0.0.1:1".parse().expect("an address");
        let peer = |uris: &[&str]| {
            Peer::tcp(address).with_certificate(CertificateIdentity {
                uris: uris.iter().map(|u| (*u).to_owned()).collect(),
                dns_names: vec!["gw.example.com".to_owned()],
            })
        };
        let id = Identity::of(&peer(&[
            "https://example.com",
            "spiffe://td/workload/x",
            "spiffe://td/ns/a/sa/first",
            "spiffe://td/ns/b/sa/second",
        ]))
        .expect("an identity");
        assert_eq!(id.account, account("a", "first"));
        assert_eq!(
            Identity::of(&peer(&["spiffe://td/workload/x"])),
            Err(Missing::SpiffeId)
        );
        assert_eq!(Identity::of(&peer(&[])), Err(Missing::SpiffeId));
        assert_eq!(Identity::of(&Peer::tcp(address)), Err(Missing::Certificate));
        let unix = Peer::unix(UnixCredentials {
            uid: 0,
            gid: 0,
            pid: None,
        });
        assert_eq!(Identity::of(&unix), Err(Missing::Certificate));
    }
}
