//! What the integration tests share: credentials made from sds-test-util's generated
//! certificates, a reader fed through a channel, and real TLS handshakes (tokio-rustls over
//! an in-memory pipe).

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::{io, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
    client::{ResolvesClientCert, danger::ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
};
use sds_core::{CertifiedKey, Input, Reader, Secret, SecretName, TrustBundle, UnixTime, Update};
use sds_test_util::certs::{Ca, Leaf};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;

/// The longest a test waits for something that happens at once (a driver reacting to a
/// snapshot): a guard against hanging forever, not a timing assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("a valid name")
}

/// A `tls_certificate` secret holding `leaf`'s chain and key.
pub(crate) fn credential(n: &str, leaf: &Leaf) -> Secret {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid credential")
    .into()
}

/// A `validation_context` secret trusting `cas`, with an optional CRL.
pub(crate) fn bundle(n: &str, cas: &[&Ca], crl: Option<&str>) -> Secret {
    let pem: String = cas.iter().map(|ca| ca.cert_pem()).collect();
    TrustBundle::from_pem(
        &name(n),
        Input::new("ca.crt", pem.as_bytes()),
        crl.map(|crl| Input::new("ca.crl", crl.as_bytes())),
        UnixTime::now(),
    )
    .expect("a valid bundle")
    .into()
}

/// An update holding these secrets.
pub(crate) fn update(secrets: Vec<(&str, Secret)>) -> Update {
    let mut update = Update::new();
    for (n, secret) in secrets {
        update.insert(name(n), secret);
    }
    update
}

/// A source fed by a channel, published through `sds_core::publish`.
pub(crate) struct Feed {
    tx: mpsc::Sender<Result<Update, io::Error>>,
    reader: Reader,
}

impl Feed {
    /// Publishes `first` and waits for it to be the reader's snapshot.
    pub(crate) async fn start(first: Update) -> Feed {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(first)).await.expect("the publisher is running");
        let (mut reader, driver) =
            sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(driver);
        reader.ready().await.expect("the first snapshot");
        Feed { tx, reader }
    }

    /// Publishes `update` (which must change something) and waits until the reader has it.
    pub(crate) async fn publish(&mut self, update: Update) {
        self.tx
            .send(Ok(update))
            .await
            .expect("the publisher is running");
        tokio::time::timeout(PATIENCE, self.reader.changed())
            .await
            .expect("the update is published")
            .expect("the publisher is running");
    }

    /// A reader of the published snapshots.
    pub(crate) fn reader(&self) -> Reader {
        self.reader.clone()
    }
}

/// Waits until `done` holds (checked after each short sleep), or panics after [`PATIENCE`].
pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("never happened: {what}"));
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn roots(cas: &[&Ca]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .expect("a valid anchor");
    }
    Arc::new(roots)
}

fn chain(leaf: &Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("a PEM chain");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("a PEM key");
    (chain, key)
}

/// A server that presents what `certs` resolves, and verifies clients with `clients` if
/// given. No session tickets: every handshake is a full one.
pub(crate) fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let mut config = match clients {
        Some(clients) => builder.with_client_cert_verifier(clients),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(certs);
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A server that presents `leaf` and requires a client certificate `client_ca` verifies.
pub(crate) fn static_server_config(leaf: &Leaf, client_ca: &Ca) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&[client_ca]), provider())
        .build()
        .expect("a client verifier");
    let (chain, key) = chain(leaf);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("a usable server certificate");
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A client of `versions` that trusts `server_ca` and presents `leaf`, if given.
pub(crate) fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    server_ca: &Ca,
    leaf: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("ring supports these versions")
        .with_root_certificates(roots(&[server_ca]));
    let config = match leaf {
        Some(leaf) => {
            let (chain, key) = chain(leaf);
            builder
                .with_client_auth_cert(chain, key)
                .expect("a usable client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A client that verifies servers with `verifier` and presents what `certs` resolves.
pub(crate) fn custom_client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    certs: Arc<dyn ResolvesClientCert>,
) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certs);
    Arc::new(config)
}

/// What each side of a handshake made of it.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The leaf the server presented, as the client saw it, or why the client failed.
    pub(crate) client: io::Result<Vec<u8>>,
    /// The leaf the client presented (if any), as the server saw it, or why the server
    /// failed.
    pub(crate) server: io::Result<Option<Vec<u8>>>,
}

impl Outcome {
    /// The server's leaf; panics unless both sides completed the handshake.
    pub(crate) fn server_leaf(&self) -> &[u8] {
        match (&self.client, &self.server) {
            (Ok(leaf), Ok(_)) => leaf,
            _ => panic!("the handshake failed: {self:?}"),
        }
    }

    /// The client's leaf; panics unless both sides completed the handshake and the client
    /// presented a certificate.
    pub(crate) fn client_leaf(&self) -> &[u8] {
        match (&self.client, &self.server) {
            (Ok(_), Ok(Some(leaf))) => leaf,
            _ => panic!("no client certificate was accepted: {self:?}"),
        }
    }

    /// The server's error; panics if the server completed the handshake.
    pub(crate) fn server_error(&self) -> String {
        match &self.server {
            Err(error) => error.to_string(),
            Ok(_) => panic!("the server accepted the handshake: {self:?}"),
        }
    }

    /// The rustls error the client failed with; panics if it did not fail.
    pub(crate) fn client_error(&self) -> rustls::Error {
        match &self.client {
            Err(error) => rustls_error(error).unwrap_or_else(|| panic!("not rustls: {error}")),
            Ok(_) => panic!("the client completed the handshake: {self:?}"),
        }
    }
}

/// The rustls error inside an error of tokio-rustls.
pub(crate) fn rustls_error(error: &io::Error) -> Option<rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

/// One TLS handshake between `client` and `server` over an in-memory pipe, dialing
/// `server_name` (sent as SNI if the client config enables it). After it, the server sends
/// one byte that the client reads, so that a client certificate the server refuses after the
/// client finished (TLS 1.3) fails the client too.
pub(crate) async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    server_name: &str,
) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_name = ServerName::try_from(server_name.to_owned()).expect("a valid name");
    let client = async {
        let mut stream = TlsConnector::from(client)
            .connect(server_name, client_io)
            .await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.to_vec())
            .ok_or_else(|| io::Error::other("the server presented no certificate"))?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        Ok(leaf)
    };
    let server = async {
        let mut stream = TlsAcceptor::from(server).accept(server_io).await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.to_vec());
        stream.write_all(b"!").await?;
        stream.flush().await?;
        Ok(leaf)
    };
    let (client, server) = tokio::join!(client, server);
    Outcome { client, server }
}
