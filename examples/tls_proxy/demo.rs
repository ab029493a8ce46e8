//! `--demo`: a CA, a server credential and a client certificate made on the spot, and the
//! `curl` lines that use them.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// The host the demo credential is for, and the secret holding it.
pub(crate) const HOST: &str = "httpbin.example.com";
pub(crate) const SECRET: &str = "httpbin-credential";

/// What `--demo` wrote.
#[derive(Debug)]
pub(crate) struct Demo {
    /// The credential directory to serve: `DIR/httpbin-credential/`.
    pub(crate) credentials: PathBuf,
    /// The demo CA, for `curl --cacert`.
    ca: PathBuf,
    /// A client certificate and key from the demo CA, for `curl --cert --key`.
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// Writes, under `root`: `example.com.crt` (the CA), `credentials/httpbin-credential/`
/// (`tls.crt`, `tls.key` for [`HOST`], and `ca.crt`: the same CA, served as
/// `httpbin-credential-cacert` for `--client-ca`), and `client.crt` + `client.key`.
pub(crate) fn prepare(root: &Path) -> Result<Demo, Box<dyn std::error::Error>> {
    let credentials = root.join("credentials");
    let credential = credentials.join(SECRET);
    fs::create_dir_all(&credential)?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::OrganizationName, "example Inc.");
    ca.distinguished_name
        .push(DnType::CommonName, "example.com");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![HOST.to_owned()])?;
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    let cert = leaf.signed_by(&key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "demo client");
    client.subject_alt_names = vec![SanType::URI("spiffe://example.com/demo-client".try_into()?)];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    let demo = Demo {
        credentials,
        ca: root.join("example.com.crt"),
        client_cert: root.join("client.crt"),
        client_key: root.join("client.key"),
    };
    fs::write(&demo.ca, ca_cert.pem())?;
    fs::write(credential.join("ca.crt"), ca_cert.pem())?;
    fs::write(credential.join("tls.key"), key.serialize_pem())?;
    fs::write(credential.join("tls.crt"), cert.pem())?;
    fs::write(&demo.client_key, client_key.serialize_pem())?;
    fs::write(&demo.client_cert, client_cert.pem())?;
    Ok(demo)
}

impl Demo {
    /// Prints how to call the proxy listening on `address`, with or without a client
    /// certificate.
    pub(crate) fn print(&self, address: SocketAddr, client_auth: bool) {
        let port = address.port();
        let curl = format!(
            "curl --resolve {HOST}:{port}:{} --cacert {} \\\n          https://{HOST}:{port}/",
            address.ip(),
            self.ca.display()
        );
        let client = format!(
            "--cert {} --key {}",
            self.client_cert.display(),
            self.client_key.display()
        );
        let call = match client_auth {
            true => format!("{curl} {client}"),
            false => curl,
        };
        println!(
            "\nDemo credential `{SECRET}` for {HOST} written to {}\n\
             \n  Call the proxy:\n     {call}\n\
             \nRotate by replacing tls.crt and tls.key there: new connections get the new \
             certificate.\n{}",
            self.credentials.join(SECRET).display(),
            match client_auth {
                true => String::new(),
                false => format!(
                    "Add --client-ca {SECRET}-cacert for mutual TLS, and {client} to curl.\n"
                ),
            }
        );
    }
}
