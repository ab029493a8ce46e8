//! The service over TLS on loopback, accepted as the docs say (`guard(tls::accept(..))`): the
//! policy sees the client certificate's SPIFFE ID, clients without a valid certificate fail the
//! handshake without disturbing others, and the server certificate and client CA follow the
//! reader while open streams go on.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{FutureExt as _, future::BoxFuture};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use sds_core::{CertifiedKey, Input, Reader, SecretName, TrustBundle, UnixTime, Update};
use sds_proto::envoy::service::{
    discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
};
use sds_server::{
    Limits, SdsService,
    connections::{self, ConnectionLimits},
    policy::{Decision, Peer, Policy},
    tls::{self, ServerTls},
};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Uri};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const WAIT: Duration = Duration::from_secs(10);
const SPIFFE_ID: &str = "spiffe://cluster.local/ns/a/sa/gw";
const SERVER_NAME: &str = "sds.example";

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("a valid name")
}

fn credential(n: &str, leaf: &Leaf) -> CertifiedKey {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid credential")
}

fn bundle(ca: &Ca, crl: Option<&str>) -> TrustBundle {
    TrustBundle::from_pem(
        &name("sds-client-ca"),
        Input::new("ca.crt", ca.cert_pem().as_bytes()),
        crl.map(|crl| Input::new("ca.crl", crl.as_bytes())),
        UnixTime::now(),
    )
    .expect("a valid bundle")
}

/// The server's certificate, the client CA, and the credential `a` the clients ask for.
fn update(server: &Leaf, client_ca: TrustBundle, a: &Leaf) -> Update {
    let mut update = Update::new();
    update.insert(name("sds-server"), credential("sds-server", server));
    update.insert(name("sds-client-ca"), client_ca);
    update.insert(name("a"), credential("a", a));
    update
}

/// Allows everything; records every peer it is asked about.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Peer>>>);

impl Policy for Recording {
    fn decide<'a>(&'a self, peer: &'a Peer, _name: &'a SecretName) -> BoxFuture<'a, Decision> {
        self.0.lock().push(peer.clone());
        std::future::ready(Decision::Allow).boxed()
    }
}

struct Harness {
    addr: SocketAddr,
    tls: ServerTls,
    /// Follows the published snapshots, to wait for one.
    reader: Reader,
    updates: mpsc::Sender<Result<Update, io::Error>>,
    policy: Recording,
    server_ca: Ca,
}

impl Harness {
    /// Publishes `update` and waits until the reader has it.
    async fn publish(&mut self, update: Update) {
        self.updates.send(Ok(update)).await.expect("send");
        tokio::time::timeout(WAIT, self.reader.changed())
            .await
            .expect("published in time")
            .expect("published");
    }

    /// Waits until `n` handshakes have failed in all.
    async fn failed_handshakes(&self, n: u64) {
        tokio::time::timeout(WAIT, async {
            while self.tls.failed_handshakes() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} failed handshakes, not {}",
                self.tls.failed_handshakes()
            )
        });
        assert_eq!(self.tls.failed_handshakes(), n);
    }
}

async fn serve(first: Update, server_ca: Ca, limits: ConnectionLimits) -> Harness {
    let (updates, rx) = mpsc::channel(4);
    updates.send(Ok(first)).await.expect("send");
    let (mut reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
    tokio::spawn(driver);
    reader.ready().await.expect("first snapshot");

    let tls = ServerTls::follow(reader.clone(), name("sds-server"), name("sds-client-ca"));
    tls.config().expect("a usable TLS configuration");
    let policy = Recording::default();
    let sds = SdsService::builder(reader.clone())
        .policy(policy.clone())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = connections::guard(
        tls::accept(TcpListenerStream::new(listener), tls.clone()),
        limits,
    );
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
        .add_service(sds.into_server());
    tokio::spawn(server.serve_with_incoming(incoming));
    Harness {
        addr,
        tls,
        reader,
        updates,
        policy,
        server_ca,
    }
}

/// A client trusting `server_ca`, presenting `certificate` if given.
fn client_config(server_ca: &Ca, certificate: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_ca.cert_der().to_vec()))
        .expect("a trust anchor");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
    let mut config = match certificate {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("a chain");
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("a key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(SERVER_NAME).expect("a server name");
    TlsConnector::from(config).connect(server_name, tcp).await
}

/// A gRPC client over a TLS connection with `config`.
async fn client(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> SecretDiscoveryServiceClient<Channel> {
    let channel = Endpoint::try_from(format!("http://{SERVER_NAME}"))
        .expect("an endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let config = Arc::clone(&config);
            async move { Ok::<_, io::Error>(TokioIo::new(tls_connect(addr, config).await?)) }
        }))
        .await
        .expect("connects");
    SecretDiscoveryServiceClient::new(channel)
}

/// The certificate the server presents to a new handshake.
async fn presented(addr: SocketAddr, config: Arc<ClientConfig>) -> Vec<u8> {
    let stream = tls_connect(addr, config).await.expect("a handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .to_vec()
}

/// Asserts that a client with `config` cannot talk to the server: the handshake fails, on
/// the client's side or (TLS 1.3: the server verifies the client last) at the first read.
async fn refused(addr: SocketAddr, config: Arc<ClientConfig>) {
    let Ok(mut stream) = tls_connect(addr, config).await else {
        return;
    };
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0; 64];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("the server answers in time");
    assert!(
        matches!(read, Err(_) | Ok(0)),
        "the server talked to a client it must refuse: {read:?}"
    );
}

/// Opens a stream subscribed to `a`; returns it with its first response.
async fn subscribe(
    client: &mut SecretDiscoveryServiceClient<Channel>,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
    DiscoveryResponse,
) {
    let (requests, rx) = mpsc::channel(4);
    requests
        .send(DiscoveryRequest {
            resource_names: vec!["a".to_owned()],
            type_url: TYPE_URL.to_owned(),
            ..Default::default()
        })
        .await
        .expect("send");
    let mut responses = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("a stream")
        .into_inner();
    let first = next(&mut responses).await;
    (requests, responses, first)
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("no stream error")
        .expect("the stream is open")
}

fn ack(response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        resource_names: vec!["a".to_owned()],
        type_url: TYPE_URL.to_owned(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

fn issue(ca: &Ca, dns: &str) -> Leaf {
    ca.issue(&[dns], KeyKind::EcP256Pkcs8, Validity::current())
}

fn gateway(client_ca: &Ca) -> Leaf {
    client_ca.issue_with_uris(&[SPIFFE_ID], &[], KeyKind::EcP256Pkcs8, Validity::current())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_sees_the_certificate_and_rotation_keeps_open_streams() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (server_v1, a_v1) = (issue(&server_ca, SERVER_NAME), issue(&server_ca, "a"));
    let first = update(&server_v1, bundle(&client_ca, None), &a_v1);
    let mut h = serve(first, server_ca, ConnectionLimits::default()).await;
    let gw = client_config(&h.server_ca, Some(&gateway(&client_ca)));

    let mut client = client(h.addr, Arc::clone(&gw)).await;
    let (requests, mut responses, first) = subscribe(&mut client).await;
    assert_eq!(
        first.version_info,
        credential("a", &a_v1).version().to_string()
    );
    requests.send(ack(&first)).await.expect("ack");
    let peer = h.policy.0.lock()[0].clone();
    let identity = peer.certificate().expect("a verified certificate");
    assert_eq!(identity.uris, [SPIFFE_ID]);
    assert!(identity.dns_names.is_empty());
    assert_eq!(peer.address().map(|a| a.ip()), Some([127, 0, 0, 1].into()));
    assert_eq!(presented(h.addr, Arc::clone(&gw)).await, server_v1.cert_der);

    // The server certificate rotates, and so does `a`: the open stream gets the new `a` over
    // its old connection, and new handshakes present the new certificate.
    let (server_v2, a_v2) = (issue(&h.server_ca, SERVER_NAME), issue(&h.server_ca, "a"));
    h.publish(update(&server_v2, bundle(&client_ca, None), &a_v2))
        .await;
    let pushed = next(&mut responses).await;
    assert_eq!(
        pushed.version_info,
        credential("a", &a_v2).version().to_string()
    );
    assert_eq!(presented(h.addr, Arc::clone(&gw)).await, server_v2.cert_der);
    let mut again = self::client(h.addr, gw).await;
    let (_requests, _responses, fresh) = subscribe(&mut again).await;
    assert_eq!(fresh.version_info, pushed.version_info);
    assert_eq!(h.tls.failed_handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_fail_the_handshake() {
    let (server_ca, client_ca, other_ca) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("other CA"),
    );
    let (server, a) = (issue(&server_ca, SERVER_NAME), issue(&server_ca, "a"));
    let mut h = serve(
        update(&server, bundle(&client_ca, None), &a),
        server_ca,
        ConnectionLimits::default(),
    )
    .await;
    let gateway = gateway(&client_ca);
    let gw = client_config(&h.server_ca, Some(&gateway));
    let mut client = client(h.addr, Arc::clone(&gw)).await;
    let (requests, mut responses, first) = subscribe(&mut client).await;
    requests.send(ack(&first)).await.expect("ack");

    refused(h.addr, client_config(&h.server_ca, None)).await;
    h.failed_handshakes(1).await;
    let stranger =
        other_ca.issue_with_uris(&[SPIFFE_ID], &[], KeyKind::EcP256Pkcs8, Validity::current());
    refused(h.addr, client_config(&h.server_ca, Some(&stranger))).await;
    h.failed_handshakes(2).await;

    // The client CA now revokes the gateway's certificate: its new handshakes fail, its open
    // stream goes on.
    let crl = client_ca.crl().revoke(&gateway).pem();
    let a_v2 = issue(&h.server_ca, "a");
    h.publish(update(&server, bundle(&client_ca, Some(&crl)), &a_v2))
        .await;
    let pushed = next(&mut responses).await;
    assert_eq!(
        pushed.version_info,
        credential("a", &a_v2).version().to_string()
    );
    refused(h.addr, gw).await;
    h.failed_handshakes(3).await;
    assert!(
        h.policy
            .0
            .lock()
            .iter()
            .all(|peer| { peer.certificate().is_some_and(|c| c.uris == [SPIFFE_ID]) })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_deadline_covers_the_tls_handshake() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (server, a) = (issue(&server_ca, SERVER_NAME), issue(&server_ca, "a"));
    let mut limits = ConnectionLimits::default();
    limits.handshake_timeout = Duration::from_millis(200);
    let h = serve(
        update(&server, bundle(&client_ca, None), &a),
        server_ca,
        limits,
    )
    .await;

    // A client that connects and says nothing is closed at the deadline.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(h.addr).await.expect("connect");
    let mut buf = [0; 64];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed at the deadline"
    );
}
