//! Istio's gateway rule (`--policy istio`) through the real `serve-k8s` (a child process, built
//! on first use with `cargo build --features k8s --example serve-k8s`) over mutual TLS, against
//! the project's test API server (`sds-test-apiserver`, in this process): a gateway of
//! namespace `a` gets the Secrets of `a` once a SubjectAccessReview allows its service account,
//! also under bare names (which mean the gateway's namespace, not the server's default one);
//! Secrets of another namespace are refused without a review; a review's denial is refused
//! with the API server's reason while the CA certificates need no review; another trust
//! domain is refused; and an answer is cached per service account.
//!
//! The gateways are TLS clients with SPIFFE IDs in their certificates, speaking gRPC on the
//! `h2` crate as `tests/examples_authz.rs` does.
//!
//! `serve-k8s` needs the `k8s` feature; without it this file is empty.

#![cfg(feature = "k8s")]

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use h2::{RecvStream, SendStream, client::SendRequest};
use http::HeaderMap;
use prost::Message as _;
use sds::{
    proto::{
        SECRET_TYPE_URL,
        envoy::{
            config::core::v3::{DataSource, Node, data_source::Specifier},
            extensions::transport_sockets::tls::v3::{Secret, secret},
            service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
        },
    },
    server::tls::rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    },
};
use sds_test_apiserver::{Access, AccessReview, ApiServer, Secret as KubeSecret};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use support::example::Example;
use tokio::net::TcpStream;

/// How long the server may take to start, and any one wait.
const WAIT: Duration = Duration::from_secs(20);
const SERVER_NAME: &str = "sds.example";
/// The token of the SDS server's own ServiceAccount, in its kubeconfig.
const TOKEN: &str = "sds-token";
/// The kubeconfig's namespace: `serve-k8s -A` serves bare names from it.
const DEFAULT_NAMESPACE: &str = "istio-system";
const TRUST_DOMAIN: &str = "cluster.local";
/// The gateways: service account `gw` of namespace `a`, of `b`, and one of `a` in a trust
/// domain the server does not accept.
const GATEWAY_A: &str = "spiffe://cluster.local/ns/a/sa/gw";
const GATEWAY_B: &str = "spiffe://cluster.local/ns/b/sa/gw";
const EVIL_A: &str = "spiffe://evil.local/ns/a/sa/gw";
/// The gateways' service accounts as Kubernetes users.
const USER_A: &str = "system:serviceaccount:a:gw";
const USER_B: &str = "system:serviceaccount:b:gw";
const FETCH_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets";
const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
/// gRPC's `PERMISSION_DENIED`.
const PERMISSION_DENIED: u32 = 7;

// === The serve-k8s binary ===

/// `serve-k8s` as a child process (see `support::example`).
struct ServeK8s;

impl ServeK8s {
    /// Starts `serve-k8s ARGS` with `KUBECONFIG=kubeconfig`, logging (at the default INFO
    /// level) into `log`.
    fn start(log: PathBuf, kubeconfig: &Path, args: &[&str]) -> Example {
        tokio::task::block_in_place(|| {
            Example::start("serve-k8s", log, args, &[("KUBECONFIG", kubeconfig)])
        })
    }
}

// === The cluster ===

/// The credentials in the cluster: `a/a-cred` and `b/b-cred` (each with its CA in `ca.crt`),
/// and a decoy `istio-system/a-cred` in the server's default namespace.
struct Credentials {
    ca: Ca,
    a: Leaf,
    b: Leaf,
    decoy: Leaf,
}

impl Credentials {
    fn new() -> Credentials {
        let ca = Ca::new("Credential CA");
        let leaf = |host: &str| ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current());
        let (a, b, decoy) = (
            leaf("a.example.com"),
            leaf("b.example.com"),
            leaf("default.example.com"),
        );
        Credentials { ca, a, b, decoy }
    }

    /// The Secret `namespace/name` holding `leaf`, and the CA if `with_ca`.
    fn secret(&self, namespace: &str, name: &str, leaf: &Leaf, with_ca: bool) -> KubeSecret {
        let secret = KubeSecret::new(namespace, name)
            .with_type("kubernetes.io/tls")
            .with_data("tls.crt", leaf.chain_pem.as_bytes().to_vec())
            .with_data("tls.key", leaf.key_pem.as_bytes().to_vec());
        if with_ca {
            secret.with_data("ca.crt", self.ca.cert_pem().as_bytes().to_vec())
        } else {
            secret
        }
    }

    /// Which of the credentials' leaves `der` is, for readable failures.
    fn which(&self, der: &[u8]) -> &'static str {
        if der == self.a.cert_der {
            "a/a-cred"
        } else if der == self.b.cert_der {
            "b/b-cred"
        } else if der == self.decoy.cert_der {
            "istio-system/a-cred"
        } else {
            "another certificate"
        }
    }

    fn ca_der(&self) -> Vec<u8> {
        self.ca.cert_der().to_vec()
    }
}

/// The test API server with the credentials, and `serve-k8s -A --policy istio` over it.
struct Cluster {
    /// Dropped first: the child goes before the API server it watches.
    server: Example,
    api: ApiServer,
    addr: SocketAddr,
    server_ca: Ca,
    client_ca: Ca,
    credentials: Credentials,
    _work: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let credentials = Credentials::new();
        // The SDS server may read every Secret and create SubjectAccessReviews, as istiod.
        let api = ApiServer::builder()
            .user(
                TOKEN,
                "system:serviceaccount:istio-system:sds",
                Access::all().read_only().access_reviews(true),
            )
            .start()
            .await
            .expect("the test API server starts");
        for secret in [
            credentials.secret("a", "a-cred", &credentials.a, true),
            credentials.secret("b", "b-cred", &credentials.b, true),
            credentials.secret(DEFAULT_NAMESPACE, "a-cred", &credentials.decoy, false),
        ] {
            api.create(secret).expect("create a Secret");
        }
        let kubeconfig = api
            .kubeconfig(TOKEN, DEFAULT_NAMESPACE)
            .expect("a kubeconfig");

        let work = tempfile::tempdir().expect("a temporary directory");
        let (server_ca, client_ca) = (Ca::new("SDS server CA"), Ca::new("SDS client CA"));
        let server_leaf =
            server_ca.issue(&[SERVER_NAME], KeyKind::EcP256Pkcs8, Validity::current());
        let file = |name: &str, contents: &str| {
            let path = work.path().join(name);
            fs::write(&path, contents).expect("write a TLS file");
            path.display().to_string()
        };
        let (cert, key, ca) = (
            file("server.crt", &server_leaf.chain_pem),
            file("server.key", &server_leaf.key_pem),
            file("client-ca.crt", client_ca.cert_pem()),
        );
        let mut server = ServeK8s::start(
            work.path().join("serve-k8s.log"),
            &kubeconfig,
            &[
                "-A",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--client-ca",
                &ca,
                "--policy",
                "istio",
                "--trust-domain",
                TRUST_DOMAIN,
                "--debounce",
                "20ms",
            ],
        );
        let policy = server.line("who may have which secret").await;
        assert!(
            policy.contains("Istio gateways") && policy.contains("trust domain cluster.local"),
            "{policy}"
        );
        // Logged once the first snapshot is served.
        let addr = server.address_async("listening (TLS over TCP)").await;
        Cluster {
            server,
            api,
            addr,
            server_ca,
            client_ca,
            credentials,
            _work: work,
        }
    }

    /// A new connection of the gateway whose client certificate has the URI SAN `spiffe_id`.
    async fn gateway(&self, spiffe_id: &str) -> Grpc {
        let leaf = self.client_ca.issue_with_uris(
            &[spiffe_id],
            &[],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        );
        let config = client_config(&self.server_ca, &leaf);
        let tls = connect(self.addr, config).await.expect("a handshake");
        Grpc::handshake(tls).await.expect("an HTTP/2 connection")
    }

    fn reviews(&self) -> Vec<AccessReview> {
        self.api.access_reviews()
    }
}

/// What the policy asks the API server about the gateway `user` of `namespace`.
fn review(user: &str, namespace: &str) -> AccessReview {
    AccessReview {
        user: user.to_owned(),
        resource_request: true,
        verb: "list".to_owned(),
        resource: "secrets".to_owned(),
        namespace: namespace.to_owned(),
        ..AccessReview::default()
    }
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_gets_its_own_namespace_after_one_review_bare_names_included() {
    let cluster = Cluster::start().await;
    let creds = &cluster.credentials;
    cluster.api.allow(USER_A, "list", "secrets", "a");
    assert!(
        cluster.reviews().is_empty(),
        "nothing asked before a request"
    );

    let mut gateway = cluster.gateway(GATEWAY_A).await;
    let fetched = gateway
        .fetch(&["kubernetes://a/a-cred"])
        .await
        .expect("served");
    assert_eq!(names(&fetched), ["kubernetes://a/a-cred"]);
    assert_eq!(
        creds.which(&certificate(&fetched, "kubernetes://a/a-cred")),
        "a/a-cred"
    );
    assert_eq!(cluster.reviews(), [review(USER_A, "a")]);

    // Bare names are the gateway's namespace (`a`), not the server's default namespace
    // (which has an `a-cred` of its own); the response names them as asked.
    for name in ["a-cred", "kubernetes://a-cred"] {
        let fetched = gateway.fetch(&[name]).await.expect("served");
        assert_eq!(names(&fetched), [name]);
        assert_eq!(
            creds.which(&certificate(&fetched, name)),
            "a/a-cred",
            "{name}"
        );
    }
    let fetched = gateway.fetch(&["a-cred-cacert"]).await.expect("served");
    assert_eq!(names(&fetched), ["a-cred-cacert"]);
    assert_eq!(trusted_ca(&fetched, "a-cred-cacert"), creds.ca_der());

    // A stream, too; it follows the Secret of namespace `a`.
    let mut stream = gateway.stream(&["a-cred", "kubernetes://a/a-cred"]).await;
    let first = stream
        .until_both("a-cred", "kubernetes://a/a-cred", &creds.a.cert_der)
        .await;
    for response in &first {
        for name in names(response) {
            let sent = creds.which(&certificate(response, &name));
            assert_eq!(sent, "a/a-cred", "{name}");
        }
    }
    let rotated = creds.ca.issue(
        &["a.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    cluster
        .api
        .apply(creds.secret("a", "a-cred", &rotated, true))
        .expect("update a/a-cred");
    stream
        .until_both("a-cred", "kubernetes://a/a-cred", &rotated.cert_der)
        .await;

    // The answer is cached for the service account: another connection of it asks nothing.
    let mut again = cluster.gateway(GATEWAY_A).await;
    let fetched = again
        .fetch(&["kubernetes://a/a-cred"])
        .await
        .expect("served");
    assert!(
        certificate(&fetched, "kubernetes://a/a-cred") == rotated.cert_der,
        "not the rotated certificate"
    );
    assert_eq!(
        cluster.reviews(),
        [review(USER_A, "a")],
        "one review, cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_and_trust_domains_are_refused_without_a_review() {
    let mut cluster = Cluster::start().await;
    let creds = &cluster.credentials;
    // RBAC would let the gateway of `a` list the Secrets of `b`: the rule refuses anyway.
    cluster.api.allow(USER_A, "list", "secrets", "a");
    cluster.api.allow(USER_A, "list", "secrets", "b");

    let mut gateway = cluster.gateway(GATEWAY_A).await;
    let refused = gateway
        .fetch(&["kubernetes://b/b-cred"])
        .await
        .expect_err("another namespace");
    assert_eq!(refused.code, PERMISSION_DENIED, "{refused:?}");
    assert_eq!(
        refused.message,
        "not allowed: kubernetes://b/b-cred (secret kubernetes://b/b-cred is in namespace b; a \
         gateway of namespace a gets only its own namespace's secrets)"
    );
    let refused = gateway
        .fetch(&["kubernetes://b/b-cred-cacert"])
        .await
        .expect_err("another namespace's CA");
    assert_eq!(refused.code, PERMISSION_DENIED, "{refused:?}");
    assert!(cluster.reviews().is_empty(), "{:?}", cluster.reviews());

    // On a stream, the other names are sent and the refused one is not, even when it changes.
    let mut stream = gateway
        .stream(&["kubernetes://a/a-cred", "kubernetes://b/b-cred"])
        .await;
    let mut seen = stream
        .until(|r| has_certificate(r, "kubernetes://a/a-cred", &creds.a.cert_der))
        .await;
    assert_eq!(cluster.reviews(), [review(USER_A, "a")]);
    let denial = cluster
        .server
        .line("denied by the policy; not sending it")
        .await;
    assert!(
        denial.contains("WARN")
            && denial.contains("peer=spiffe://cluster.local/ns/a/sa/gw (127.0.0.1:")
            && denial.contains(
                "secret=kubernetes://b/b-cred reason=secret kubernetes://b/b-cred is in \
                 namespace b; a gateway of namespace a gets only its own namespace's secrets"
            ),
        "{denial}"
    );
    let (a2, b2) = (
        creds.ca.issue(
            &["a.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        ),
        creds.ca.issue(
            &["b.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        ),
    );
    cluster
        .api
        .apply(creds.secret("b", "b-cred", &b2, true))
        .expect("update b/b-cred");
    // Published before a/a-cred changes: a push of it would come before a/a-cred's.
    cluster
        .server
        .line("secret updated secret=kubernetes://b/b-cred ")
        .await;
    cluster
        .api
        .apply(creds.secret("a", "a-cred", &a2, true))
        .expect("update a/a-cred");
    seen.extend(
        stream
            .until(|r| has_certificate(r, "kubernetes://a/a-cred", &a2.cert_der))
            .await,
    );
    for response in &seen {
        assert_eq!(names(response), ["kubernetes://a/a-cred"], "{response:?}");
    }
    assert_eq!(cluster.reviews(), [review(USER_A, "a")]);

    // A gateway of namespace `a` in another trust domain (its certificate from the same
    // client CA) gets nothing, not even a CA certificate, and causes no review.
    let mut evil = cluster.gateway(EVIL_A).await;
    for name in ["kubernetes://a/a-cred", "a-cred", "a-cred-cacert"] {
        let refused = evil.fetch(&[name]).await.expect_err("another trust domain");
        assert_eq!(refused.code, PERMISSION_DENIED, "{name}: {refused:?}");
        assert!(
            refused.message.ends_with(
                "(the peer's SPIFFE ID spiffe://evil.local/ns/a/sa/gw is of the trust domain \
                 evil.local, not cluster.local)"
            ),
            "{name}: {refused:?}"
        );
    }
    assert_eq!(cluster.reviews(), [review(USER_A, "a")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_service_account_gets_the_reason_and_its_ca_certificates() {
    let mut cluster = Cluster::start().await;
    let creds = &cluster.credentials;
    cluster.api.deny(
        USER_B,
        "list",
        "secrets",
        "b",
        "gateways of b may not read secrets (webhook)",
    );

    // CA certificates are public: served without a review.
    let mut gateway = cluster.gateway(GATEWAY_B).await;
    for name in ["b-cred-cacert", "kubernetes://b/b-cred-cacert"] {
        let fetched = gateway.fetch(&[name]).await.expect("a CA is served");
        assert_eq!(names(&fetched), [name]);
        assert_eq!(trusted_ca(&fetched, name), creds.ca_der(), "{name}");
    }
    assert!(cluster.reviews().is_empty(), "{:?}", cluster.reviews());

    // The credential: refused with the API server's reason.
    let refused = gateway
        .fetch(&["kubernetes://b/b-cred"])
        .await
        .expect_err("denied by the review");
    assert_eq!(refused.code, PERMISSION_DENIED, "{refused:?}");
    assert_eq!(
        refused.message,
        "not allowed: kubernetes://b/b-cred (the service account b/gw may not list secrets in \
         namespace b (SubjectAccessReview: gateways of b may not read secrets (webhook)))"
    );
    assert_eq!(cluster.reviews(), [review(USER_B, "b")]);

    // The denial is cached: the bare name is refused without asking again. On a stream the
    // CA is sent, the credential not.
    let refused = gateway.fetch(&["b-cred"]).await.expect_err("still denied");
    assert_eq!(refused.code, PERMISSION_DENIED, "{refused:?}");
    let mut stream = gateway.stream(&["b-cred", "b-cred-cacert"]).await;
    let seen = stream
        .until(|r| trusted_ca_of(r, "b-cred-cacert").is_some())
        .await;
    for response in &seen {
        assert_eq!(names(response), ["b-cred-cacert"], "{response:?}");
    }
    let denial = cluster
        .server
        .line("denied by the policy; not sending it")
        .await;
    assert!(
        denial.contains("WARN")
            && denial.contains("peer=spiffe://cluster.local/ns/b/sa/gw (127.0.0.1:")
            && denial.contains("secret=b-cred reason=the service account b/gw may not list"),
        "{denial}"
    );
    assert_eq!(cluster.reviews(), [review(USER_B, "b")]);
}

// === TLS ===

/// A client trusting `server_ca`, presenting `leaf`.
fn client_config(server_ca: &Ca, leaf: &Leaf) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_ca.cert_der().to_vec()))
        .expect("a trust anchor");
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("a chain");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("a key");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("a client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS client connection over TCP.
type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` and completes the handshake, as the client sees it.
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsClient> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME).expect("a server name");
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(WAIT, handshake)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

// === Responses ===

/// The secrets of `response`.
fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(&any.value[..]).expect("a Secret")
        })
        .collect()
}

/// The names of the secrets of `response`, in its order.
fn names(response: &DiscoveryResponse) -> Vec<String> {
    secrets(response).into_iter().map(|s| s.name).collect()
}

/// The leaf certificate (DER) of the `tls_certificate` named `name` in `response`, if any.
fn certificate_of(response: &DiscoveryResponse, name: &str) -> Option<Vec<u8>> {
    let secret = secrets(response).into_iter().find(|s| s.name == name)?;
    let Some(secret::Type::TlsCertificate(certificate)) = secret.r#type else {
        panic!("{name} is not a tls_certificate");
    };
    Some(first_der(certificate.certificate_chain))
}

fn certificate(response: &DiscoveryResponse, name: &str) -> Vec<u8> {
    certificate_of(response, name).unwrap_or_else(|| panic!("no {name} in {response:?}"))
}

fn has_certificate(response: &DiscoveryResponse, name: &str, der: &[u8]) -> bool {
    certificate_of(response, name).is_some_and(|cert| cert == der)
}

/// The first trusted CA (DER) of the `validation_context` named `name` in `response`, if any.
fn trusted_ca_of(response: &DiscoveryResponse, name: &str) -> Option<Vec<u8>> {
    let secret = secrets(response).into_iter().find(|s| s.name == name)?;
    let Some(secret::Type::ValidationContext(context)) = secret.r#type else {
        panic!("{name} is not a validation_context");
    };
    Some(first_der(context.trusted_ca))
}

fn trusted_ca(response: &DiscoveryResponse, name: &str) -> Vec<u8> {
    trusted_ca_of(response, name).unwrap_or_else(|| panic!("no {name} in {response:?}"))
}

/// The first certificate (DER) of an inline PEM data source.
fn first_der(source: Option<DataSource>) -> Vec<u8> {
    let pem = match source.and_then(|s| s.specifier) {
        Some(Specifier::InlineBytes(bytes)) => bytes.to_vec(),
        Some(Specifier::InlineString(string)) => string.into_bytes(),
        other => panic!("no inline PEM: {other:?}"),
    };
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

// === gRPC on h2 ===

/// The status that ended a call.
#[derive(Debug)]
struct Status {
    code: u32,
    /// `grpc-message`, percent-decoded.
    message: String,
}

impl Status {
    /// The status in `headers` (a trailers-only response, or the trailers), if any.
    fn of(headers: &HeaderMap) -> Option<Status> {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(|m| {
                percent_encoding::percent_decode_str(m)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        Some(Status { code, message })
    }
}

/// One HTTP/2 connection speaking the SDS service.
struct Grpc {
    send: SendRequest<Bytes>,
    connection: tokio::task::JoinHandle<()>,
}

/// An open `StreamSecrets` stream.
struct Stream {
    _requests: SendStream<Bytes>,
    responses: RecvStream,
    buf: BytesMut,
}

impl Grpc {
    async fn handshake(tls: TlsClient) -> Result<Grpc, h2::Error> {
        let (send, connection) = h2::client::handshake(tls).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Grpc { send, connection })
    }

    /// `FetchSecrets` for `names`: the response, or the status that refused it.
    async fn fetch(&mut self, names: &[&str]) -> Result<DiscoveryResponse, Status> {
        let call = async {
            let mut stream = match self.request(FETCH_SECRETS, names, true).await {
                Ok(stream) => stream,
                Err(status) => return Err(status),
            };
            stream.read().await
        };
        tokio::time::timeout(WAIT, call)
            .await
            .expect("FetchSecrets answers in time")
    }

    /// A `StreamSecrets` stream subscribed to `names`, left open.
    async fn stream(&mut self, names: &[&str]) -> Stream {
        tokio::time::timeout(WAIT, self.request(STREAM_SECRETS, names, false))
            .await
            .expect("StreamSecrets answers in time")
            .expect("a stream")
    }

    /// Sends one `DiscoveryRequest` for `names` on `path` (ending the request stream if
    /// `end`); the response stream, or the status of a trailers-only response.
    async fn request(&mut self, path: &str, names: &[&str], end: bool) -> Result<Stream, Status> {
        let send = self
            .send
            .clone()
            .ready()
            .await
            .expect("the connection is open");
        self.send = send;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("https://{SERVER_NAME}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a request");
        let (response, mut requests) = self
            .send
            .send_request(request, false)
            .expect("send the request");
        let message = DiscoveryRequest {
            node: Some(Node {
                id: "examples-istio".to_owned(),
                cluster: "test".to_owned(),
                ..Node::default()
            }),
            resource_names: names.iter().map(|&n| n.to_owned()).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            ..DiscoveryRequest::default()
        };
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(u32::try_from(message.encoded_len()).expect("a small message"));
        message.encode(&mut frame).expect("encodes");
        requests
            .send_data(frame.freeze(), end)
            .expect("send the message");
        let response = response.await.expect("response headers");
        if let Some(status) = Status::of(response.headers()) {
            return Err(status);
        }
        Ok(Stream {
            _requests: requests,
            responses: response.into_body(),
            buf: BytesMut::new(),
        })
    }
}

impl Drop for Grpc {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Stream {
    /// Reads responses until one satisfies `done`, for at most [`WAIT`]; returns all it read.
    async fn until(
        &mut self,
        mut done: impl FnMut(&DiscoveryResponse) -> bool,
    ) -> Vec<DiscoveryResponse> {
        let mut read = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let response = tokio::time::timeout_at(deadline, self.read())
                .await
                .unwrap_or_else(|_| panic!("not within {WAIT:?}; read so far: {read:?}"))
                .unwrap_or_else(|status| panic!("the stream ended: {status:?}"));
            let finished = done(&response);
            read.push(response);
            if finished {
                return read;
            }
        }
    }

    /// Reads responses until `one` and `other` have both come with the certificate `der`;
    /// returns all it read.
    async fn until_both(&mut self, one: &str, other: &str, der: &[u8]) -> Vec<DiscoveryResponse> {
        let (mut got_one, mut got_other) = (false, false);
        self.until(|response| {
            got_one |= has_certificate(response, one, der);
            got_other |= has_certificate(response, other, der);
            got_one && got_other
        })
        .await
    }

    /// The next message, or the status that ended the stream.
    async fn read(&mut self) -> Result<DiscoveryResponse, Status> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let len = usize::try_from(len).expect("a length");
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len);
                    return Ok(DiscoveryResponse::decode(message).expect("a DiscoveryResponse"));
                }
            }
            match self.responses.data().await {
                Some(Ok(data)) => {
                    let _ = self.responses.flow_control().release_capacity(data.len());
                    self.buf.extend_from_slice(&data);
                }
                Some(Err(error)) => panic!("the stream failed: {error}"),
                None => {
                    let trailers = self.responses.trailers().await.expect("trailers");
                    let status = trailers.as_ref().and_then(Status::of);
                    return Err(status.unwrap_or_else(|| panic!("no status in {trailers:?}")));
                }
            }
        }
    }
}
