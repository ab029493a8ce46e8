//! Who is on the other end of a stream: the [`Peer`] a [`Policy`](crate::policy::Policy)
//! decides for.
//!
//! A peer's identity is what the transport proves: the credentials of a Unix-socket peer
//! (`SO_PEERCRED`: uid, gid, pid) and the names in a verified client certificate (URI SANs such
//! as SPIFFE IDs, DNS SANs). The `Node` id and cluster a client sends are claims anyone can
//! make: they are never part of a `Peer`.

use std::{fmt, net::SocketAddr};

use sds_core::Untrusted;

/// The identity the transport proves for a client, and its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Peer {
    unix: Option<UnixCredentials>,
    certificate: Option<CertificateIdentity>,
    address: Option<SocketAddr>,
}

/// The credentials of a Unix-socket peer, as the kernel reports them (`SO_PEERCRED`): those of
/// the process that connected, when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct UnixCredentials {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, when the platform reports it.
    pub pid: Option<i32>,
}

/// The names of a client certificate the server verified: its subject alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CertificateIdentity {
    /// URI SANs, e.g. SPIFFE IDs `spiffe://cluster.local/ns/a/sa/gateway`.
    pub uris: Vec<String>,
    /// DNS SANs, e.g. `gateway.example.com`.
    pub dns_names: Vec<String>,
}

/// One identity of a peer, as policies match it: `uid:N`, `gid:N`, a URI SAN as it is
/// (`spiffe://…`), or `dns:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Identity {
    /// A Unix peer's user id.
    Uid(u32),
    /// A Unix peer's group id.
    Gid(u32),
    /// A URI SAN of a verified client certificate (a SPIFFE ID).
    Uri(String),
    /// A DNS SAN of a verified client certificate.
    Dns(String),
}

/// Most characters of one certificate name shown in a log line.
const SHOWN_CHARS: usize = 256;

// === impl Peer ===

impl Peer {
    /// A peer of which nothing is known (a transport this crate does not recognise).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A Unix-socket peer with these credentials.
    pub fn unix(credentials: UnixCredentials) -> Self {
        Self {
            unix: Some(credentials),
            ..Self::default()
        }
    }

    /// A TCP peer at `address`, without a verified certificate.
    pub fn tcp(address: SocketAddr) -> Self {
        Self {
            address: Some(address),
            ..Self::default()
        }
    }

    /// This peer, with a verified client certificate naming `identity`.
    pub fn with_certificate(mut self, identity: CertificateIdentity) -> Self {
        self.certificate = Some(identity);
        self
    }

    /// The Unix-socket credentials, for a Unix-socket peer.
    pub fn unix_credentials(&self) -> Option<&UnixCredentials> {
        self.unix.as_ref()
    }

    /// The verified client certificate's names, for a TLS peer that presented one.
    pub fn certificate(&self) -> Option<&CertificateIdentity> {
        self.certificate.as_ref()
    }

    /// The peer's address, for a TCP peer.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Every identity of the peer: uid and gid of a Unix peer, then the URI and DNS SANs of
    /// its verified certificate. Empty for a peer the transport proves nothing about.
    pub fn identities(&self) -> Vec<Identity> {
        let mut out = Vec::new();
        if let Some(unix) = &self.unix {
            out.push(Identity::Uid(unix.uid));
            out.push(Identity::Gid(unix.gid));
        }
        if let Some(certificate) = &self.certificate {
            out.extend(certificate.uris.iter().cloned().map(Identity::Uri));
            out.extend(certificate.dns_names.iter().cloned().map(Identity::Dns));
        }
        out
    }
}

/// For logs: `uid:1000 gid:1000 pid:42`, `spiffe://td/ns/a/sa/gw dns:gw.example.com
/// (127.0.0.1:50312)`, or `127.0.0.1:50312 (no identity)`. Certificate names are escaped and
/// cut short.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.identities().iter().map(Identity::to_string).collect();
        if let Some(pid) = self.unix.and_then(|u| u.pid) {
            parts.push(format!("pid:{pid}"));
        }
        let identities = parts.join(" ");
        match (identities.is_empty(), self.address) {
            (true, Some(address)) => write!(f, "{address} (no identity)"),
            (true, None) => f.write_str("an unknown peer"),
            (false, Some(address)) => write!(f, "{identities} ({address})"),
            (false, None) => f.write_str(&identities),
        }
    }
}

// === impl Identity ===

/// `uid:N`, `gid:N`, the URI, or `dns:NAME`, names escaped and cut short.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Uid(uid) => write!(f, "uid:{uid}"),
            Identity::Gid(gid) => write!(f, "gid:{gid}"),
            Identity::Uri(uri) => write!(f, "{}", Untrusted::new(uri, SHOWN_CHARS)),
            Identity::Dns(name) => write!(f, "dns:{}", Untrusted::new(name, SHOWN_CHARS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_display() {
        let unix = Peer::unix(UnixCredentials {
            uid: 1000,
            gid: 1337,
            pid: Some(42),
        });
        assert_eq!(
            unix.identities(),
            [Identity::Uid(1000), Identity::Gid(1337)]
        );
        assert_eq!(unix.to_string(), "uid:1000 gid:1337 pid:42");

        let address: SocketAddr = "127.0.0.1:50312".parse().expect("an address");
        let tls = Peer::tcp(address).with_certificate(CertificateIdentity {
            uris: vec!["spiffe://cluster.local/ns/a/sa/gw".to_owned()],
            dns_names: vec!["gw.example.com\n".to_owned()],
        });
        assert_eq!(
            tls.identities(),
            [
                Identity::Uri("spiffe://cluster.local/ns/a/sa/gw".to_owned()),
                Identity::Dns("gw.example.com\n".to_owned())
            ]
        );
        assert_eq!(
            tls.to_string(),
            "spiffe://cluster.local/ns/a/sa/gw dns:gw.example.com\\n (127.0.0.1:50312)"
        );
        assert_eq!(
            Peer::tcp(address).to_string(),
            "127.0.0.1:50312 (no identity)"
        );
        assert!(Peer::tcp(address).identities().is_empty());
        assert_eq!(Peer::unknown().to_string(), "an unknown peer");
    }
}
