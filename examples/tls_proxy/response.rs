//! What `tls-proxy` answers: which host (SNI) and which secret served the connection, and
//! with client authentication, who the client is. Built once per connection, after the
//! handshake; every request on the connection gets it, with its own method, path and HTTP
//! version.
//!
//! This is the extension point: a proxy forwards the request to a backend here instead (with
//! `hyper_util::client::legacy::Client`, say), adding the client's identity as a header.

use std::fmt::Write as _;

use sds::core::{SecretName, Untrusted, Version};
use tokio_rustls::rustls::ServerConnection;
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

/// Most characters of a client's text (SNI, certificate names, request path) shown.
const MAX_SHOWN_CHARS: usize = 256;

/// What a connection's handshake settled.
#[derive(Debug)]
pub(crate) struct Served {
    /// The SNI the client sent, escaped.
    sni: Option<String>,
    /// The secret whose certificate was presented, and the version new handshakes use.
    secret: Option<(SecretName, Option<Version>)>,
    /// The verified client certificate's subject and SANs, escaped; `None` without client
    /// authentication.
    client: Option<String>,
}

// === impl Served ===

impl Served {
    /// What `conn` (a completed server handshake) settled, with the secret `secret` the
    /// resolver picks for its SNI and the version `version` in use for it now (a rotation
    /// racing the handshake can make this the version after the one presented).
    pub(crate) fn new(
        conn: &ServerConnection,
        secret: Option<(SecretName, Option<Version>)>,
    ) -> Served {
        let sni = conn
            .server_name()
            .map(|sni| Untrusted::new(sni, MAX_SHOWN_CHARS).to_string());
        // With a verifier, rustls completes a handshake only with a verified certificate.
        let client = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| identity(leaf));
        Served {
            sni,
            secret,
            client,
        }
    }

    /// The response body for a request.
    pub(crate) fn body(&self, method: &hyper::Method, path: &str, http: hyper::Version) -> String {
        let mut body = String::from("hello from tls-proxy\n");
        let _ = writeln!(
            body,
            "host: {}",
            self.sni
                .as_deref()
                .unwrap_or("(no SNI: the default secret)")
        );
        match &self.secret {
            Some((name, Some(version))) => {
                let _ = writeln!(body, "secret: {name} (version {version})");
            }
            Some((name, None)) => {
                let _ = writeln!(body, "secret: {name}");
            }
            None => body.push_str("secret: (none)\n"),
        }
        if let Some(client) = &self.client {
            let _ = writeln!(body, "client: {client}");
        }
        let _ = writeln!(
            body,
            "request: {method} {} {http:?}",
            Untrusted::new(path, MAX_SHOWN_CHARS)
        );
        body
    }
}

/// The subject and SANs of a client's certificate, escaped: `CN=client, DNS:a.example,
/// URI:spiffe://...`. rustls verified it; a certificate x509-parser cannot read (it
/// should not happen) is said to be verified, without names.
fn identity(der: &[u8]) -> String {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return "client certificate verified".to_owned();
    };
    let subject = cert.subject().to_string();
    let mut shown = format!("subject \"{}\"", Untrusted::new(&subject, MAX_SHOWN_CHARS));
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let (kind, value) = match name {
                GeneralName::DNSName(dns) => ("DNS", *dns),
                GeneralName::URI(uri) => ("URI", *uri),
                GeneralName::RFC822Name(email) => ("email", *email),
                _ => continue,
            };
            let _ = write!(shown, ", {kind}:{}", Untrusted::new(value, MAX_SHOWN_CHARS));
        }
    }
    shown
}
