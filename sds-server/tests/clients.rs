//! What an operator sees, over real gRPC on loopback: what every open stream holds
//! (`SdsService::clients`), what is served (`SdsService::secrets`), their JSON form, and the
//! log lines that follow clients at INFO without a line per stream and push.

mod support;

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use sds_core::{CertifiedKey, Input, SecretName, TrustBundle, UnixTime, Update, Version};
use sds_proto::{
    envoy::{
        config::core::v3::Node,
        service::{
            discovery::v3::{
                DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
            },
            secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
        },
    },
    google::rpc,
};
use sds_server::{
    SdsService,
    inventory::{Api, Client, Details, Subscription},
    policy::{AllowAnyPeer, Decision, Peer, Policy},
};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    logs::Captured,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Streaming, transport::Channel};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const WAIT: Duration = Duration::from_secs(10);

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("a valid name")
}

/// `leaf` as the credential `n`.
fn certified(n: &str, leaf: &Leaf) -> CertifiedKey {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid credential")
}

/// An update serving `leaf` as `a`.
fn serving_a(leaf: &Leaf) -> Update {
    serving("a", leaf)
}

/// An update serving `leaf` as `n`.
fn serving(n: &str, leaf: &Leaf) -> Update {
    let mut update = Update::new();
    update.insert(name(n), certified(n, leaf));
    update
}

fn leaf(ca: &Ca) -> Leaf {
    ca.issue(
        &["a.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    )
}

/// Denies `forbidden` with a reason; allows everything else.
#[derive(Clone, Copy)]
struct DenyForbidden;

impl Policy for DenyForbidden {
    fn decide<'a>(&'a self, _: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        let decision = if name.as_str() == "forbidden" {
            Decision::deny("forbidden is for the admin gateway only")
        } else {
            Decision::Allow
        };
        std::future::ready(decision).boxed()
    }
}

/// A server on loopback whose source the test feeds.
struct Harness {
    updates: mpsc::Sender<Result<Update, std::io::Error>>,
    client: SecretDiscoveryServiceClient<Channel>,
    sds: SdsService,
}

async fn start(initial: Update, policy: impl Policy) -> Harness {
    let (updates, rx) = mpsc::channel(16);
    updates.send(Ok(initial)).await.expect("send");
    let (mut reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
    tokio::spawn(driver);
    reader.ready().await.expect("first snapshot");
    let sds = SdsService::builder(reader).policy(policy).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder().add_service(sds.clone().into_server());
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    Harness {
        updates,
        client: SecretDiscoveryServiceClient::new(channel),
        sds,
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_owned(),
        cluster: "ingress".to_owned(),
        user_agent_name: "envoy".to_owned(),
    })
}

fn sotw_request(node_id: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(node_id),
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        type_url: TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn nack_detail(message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: 13,
        message: message.to_owned(),
        details: Vec::new(),
    })
}

async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("no stream error")
        .expect("stream still open")
}

/// A state-of-the-world stream opened with `first`.
async fn open_sotw(
    h: &mut Harness,
    first: DiscoveryRequest,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.expect("send");
    let responses = h
        .client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, responses)
}

/// Waits until `check` finds what it looks for in the service's dump.
async fn eventually<T>(sds: &SdsService, check: impl Fn(&[Client]) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(found) = check(&sds.clients()) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dump shows it in time")
}

/// The client claiming `node_id`, if its stream is open.
fn find(clients: &[Client], node_id: &str) -> Option<Client> {
    clients
        .iter()
        .find(|c| c.node_id.as_deref() == Some(node_id))
        .cloned()
}

fn subscription<'a>(client: &'a Client, n: &str) -> &'a Subscription {
    client
        .subscriptions
        .iter()
        .find(|s| s.name.as_str() == n)
        .unwrap_or_else(|| panic!("{n} is subscribed"))
}

fn version_of(response_version: &str, expected: &Leaf) -> Version {
    let version = certified("a", expected).version();
    assert_eq!(response_version, version.to_string());
    version
}

#[tokio::test]
async fn sotw_dump_follows_sends_acks_nacks_and_close() {
    let ca = Ca::new("clients test CA");
    let (leaf1, leaf2) = (leaf(&ca), leaf(&ca));
    let mut h = start(serving_a(&leaf1), AllowAnyPeer).await;
    let before = SystemTime::now() - Duration::from_secs(1);
    let (tx, mut responses) = open_sotw(&mut h, sotw_request("gw-1", &["a", "nope"], "")).await;

    let first = next(&mut responses).await;
    let v1 = version_of(&first.version_info, &leaf1);
    let client = eventually(&h.sds, |c| find(c, "gw-1")).await;
    assert_eq!(client.api, Api::Sotw);
    assert_eq!(client.cluster.as_deref(), Some("ingress"));
    assert!(client.peer.address().is_some_and(|a| a.ip().is_loopback()));
    assert!(before <= client.connected && client.connected <= SystemTime::now());
    let a = subscription(&client, "a");
    assert_eq!(
        (a.sent, a.acked, &a.nack, &a.denied),
        (Some(v1), None, &None, &None)
    );
    assert_eq!(a.waiting_since, None, "a was sent");
    let nope = subscription(&client, "nope");
    assert_eq!((nope.sent, nope.acked), (None, None));
    let waiting = nope.waiting_since.expect("nope waits");
    assert!(before <= waiting && waiting <= SystemTime::now());

    // The ACK shows.
    tx.send(sotw_request("gw-1", &["a", "nope"], &first.nonce))
        .await
        .expect("ack");
    eventually(&h.sds, |c| {
        find(c, "gw-1").filter(|c| subscription(c, "a").acked == Some(v1))
    })
    .await;

    // A rotation the client NACKs: the new version sent, the old one still ACKed, the NACK
    // with its version and Envoy's message (escaped).
    h.updates.send(Ok(serving_a(&leaf2))).await.expect("rotate");
    let rotated = next(&mut responses).await;
    let v2 = version_of(&rotated.version_info, &leaf2);
    let mut nack = sotw_request("gw-1", &["a", "nope"], &rotated.nonce);
    nack.version_info = first.version_info.clone();
    nack.error_detail = nack_detail("Failed to load private key\n");
    tx.send(nack).await.expect("nack");
    let client = eventually(&h.sds, |c| {
        find(c, "gw-1").filter(|c| subscription(c, "a").nack.is_some())
    })
    .await;
    let a = subscription(&client, "a");
    assert_eq!((a.sent, a.acked), (Some(v2), Some(v1)));
    let nack = a.nack.as_ref().expect("a NACK");
    assert_eq!(nack.version, v2);
    assert_eq!(nack.code, 13);
    assert_eq!(nack.message, "Failed to load private key\\n");
    assert!(before <= nack.at && nack.at <= SystemTime::now());
    assert_eq!(h.sds.stats().streams_active, h.sds.clients().len() as u64);

    // The client closes its stream: it leaves the dump.
    drop(tx);
    assert!(
        tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("the stream ends")
            .expect("cleanly")
            .is_none()
    );
    eventually(&h.sds, |c| find(c, "gw-1").is_none().then_some(())).await;
}

#[tokio::test]
async fn delta_dump_follows_sends_acks_nacks_and_reset() {
    let ca = Ca::new("clients test CA");
    let (leaf1, leaf2) = (leaf(&ca), leaf(&ca));
    let mut h = start(serving_a(&leaf1), AllowAnyPeer).await;
    let (tx, rx) = mpsc::channel(16);
    let request = |subscribe: &[&str], nonce: &str, error_detail| DeltaDiscoveryRequest {
        node: node("gw-delta"),
        type_url: TYPE_URL.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
        response_nonce: nonce.to_owned(),
        error_detail,
        ..Default::default()
    };
    tx.send(request(&["a", "nope"], "", None))
        .await
        .expect("send");
    let mut responses: Streaming<DeltaDiscoveryResponse> = h
        .client
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();

    let first = next(&mut responses).await;
    let v1 = version_of(&first.resources[0].version, &leaf1);
    let client = eventually(&h.sds, |c| find(c, "gw-delta")).await;
    assert_eq!(client.api, Api::Delta);
    assert_eq!(subscription(&client, "a").sent, Some(v1));
    assert!(subscription(&client, "nope").waiting_since.is_some());

    tx.send(request(&[], &first.nonce, None))
        .await
        .expect("ack");
    eventually(&h.sds, |c| {
        find(c, "gw-delta").filter(|c| subscription(c, "a").acked == Some(v1))
    })
    .await;

    h.updates.send(Ok(serving_a(&leaf2))).await.expect("rotate");
    let rotated = next(&mut responses).await;
    let v2 = version_of(&rotated.resources[0].version, &leaf2);
    tx.send(request(&[], &rotated.nonce, nack_detail("bad key")))
        .await
        .expect("nack");
    let client = eventually(&h.sds, |c| {
        find(c, "gw-delta").filter(|c| subscription(c, "a").nack.is_some())
    })
    .await;
    let a = subscription(&client, "a");
    assert_eq!((a.sent, a.acked), (Some(v2), Some(v1)));
    let nack = a.nack.as_ref().expect("a NACK");
    assert_eq!((nack.version, nack.message.as_str()), (v2, "bad key"));

    // The client goes away without closing: its stream leaves the dump too.
    drop((tx, responses));
    eventually(&h.sds, |c| find(c, "gw-delta").is_none().then_some(())).await;
}

#[tokio::test]
async fn a_denied_name_shows_with_its_reason() {
    let ca = Ca::new("clients test CA");
    let mut h = start(serving_a(&leaf(&ca)), DenyForbidden).await;
    let (_tx, mut responses) =
        open_sotw(&mut h, sotw_request("gw-denied", &["a", "forbidden"], "")).await;
    let first = next(&mut responses).await;
    assert_eq!(first.resources.len(), 1, "only a is sent");
    let client = eventually(&h.sds, |c| find(c, "gw-denied")).await;
    let forbidden = subscription(&client, "forbidden");
    assert_eq!(
        forbidden.denied.as_deref(),
        Some("forbidden is for the admin gateway only")
    );
    assert_eq!(forbidden.sent, None);
    assert!(forbidden.waiting_since.is_some());
    assert_eq!(subscription(&client, "a").denied, None);
}

/// A credential with an intermediate, SPIFFE and DNS names and an OCSP staple; a CA bundle
/// with two CAs and a CRL; and a credential whose newer input was rejected.
async fn served_secrets() -> (Harness, Ca) {
    let root = Ca::new("Inventory Root");
    let issuing = root.intermediate("Inventory Issuing CA");
    let gateway = issuing.issue_with_uris(
        &["spiffe://cluster.local/ns/istio-system/sa/gateway"],
        &["gw.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let staple = issuing.ocsp(&gateway).der();
    let credential = certified("gateway", &gateway)
        .with_ocsp_staple(&name("gateway"), Input::new("tls.ocsp-staple", &staple))
        .expect("a valid staple");
    let other = Ca::new("Inventory Other Root");
    let cas = format!("{}{}", root.cert_pem(), other.cert_pem());
    let crl = root.crl().pem();
    let bundle = TrustBundle::from_pem(
        &name("gateway-cacert"),
        Input::new("ca.crt", cas.as_bytes()),
        Some(Input::new("ca.crl", crl.as_bytes())),
        UnixTime::now(),
    )
    .expect("a valid bundle");
    let mut update = Update::new();
    update.insert(name("gateway"), credential);
    update.insert(name("gateway-cacert"), bundle);
    update.insert(name("a"), certified("a", &leaf(&root)));
    let h = start(update, AllowAnyPeer).await;

    // `a` comes back broken: the last good version stays served, with the reason.
    let broken = CertifiedKey::from_pem(
        &name("a"),
        Input::new("tls.crt", b"not PEM"),
        Input::new("tls.key", b"not PEM"),
        UnixTime::now(),
    )
    .expect_err("broken input");
    let mut update = Update::new();
    update.insert(
        name("gateway"),
        certified("gateway", &gateway)
            .with_ocsp_staple(&name("gateway"), Input::new("tls.ocsp-staple", &staple))
            .expect("a valid staple"),
    );
    update.insert(
        name("gateway-cacert"),
        TrustBundle::from_pem(
            &name("gateway-cacert"),
            Input::new("ca.crt", cas.as_bytes()),
            Some(Input::new("ca.crl", crl.as_bytes())),
            UnixTime::now(),
        )
        .expect("a valid bundle"),
    );
    update.reject(name("a"), broken);
    h.updates.send(Ok(update)).await.expect("update");
    tokio::time::timeout(WAIT, async {
        while h.sds.secrets().iter().all(|s| s.rejected.is_none()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the rejection is published");
    (h, root)
}

#[tokio::test]
async fn secrets_tell_what_is_served_without_key_material() {
    let (h, _root) = served_secrets().await;
    let secrets = h.sds.secrets();
    let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "gateway", "gateway-cacert"]);

    assert!(
        secrets[0]
            .rejected
            .as_deref()
            .is_some_and(|r| r.contains("tls.crt")),
        "{:?}",
        secrets[0].rejected
    );
    let Details::TlsCertificate(gateway) = &secrets[1].details else {
        panic!("gateway is a certificate: {:?}", secrets[1].details);
    };
    assert_eq!(gateway.chain_length, 2);
    assert_eq!(gateway.key_algorithm.to_string(), "ECDSA P-256");
    assert_eq!(gateway.leaf.dns_names, ["gw.example.com"]);
    assert_eq!(
        gateway.leaf.uris,
        ["spiffe://cluster.local/ns/istio-system/sa/gateway"]
    );
    assert_eq!(gateway.leaf.issuer, "CN=Inventory Issuing CA");
    assert!(!gateway.leaf.serial.is_empty());
    assert!(gateway.leaf.not_before < SystemTime::now());
    assert!(SystemTime::now() < gateway.leaf.not_after);
    let staple = gateway.ocsp_staple.as_ref().expect("a staple");
    assert_eq!(staple.status.to_string(), "good");
    assert!(staple.next_update.is_some_and(|t| t > staple.this_update));
    assert_eq!(secrets[1].rejected, None);

    let Details::ValidationContext(cas) = &secrets[2].details else {
        panic!("gateway-cacert is a CA bundle: {:?}", secrets[2].details);
    };
    let subjects: Vec<&str> = cas.cas.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["CN=Inventory Root", "CN=Inventory Other Root"]);
    assert_eq!(cas.crls, 1);
}

#[cfg(feature = "serde")]
#[tokio::test]
async fn both_dumps_serialize_to_json_without_key_material() {
    let (mut h, _root) = served_secrets().await;
    let secrets = serde_json::to_value(h.sds.secrets()).expect("JSON");
    let gateway = &secrets[1];
    assert_eq!(gateway["kind"], "tls_certificate");
    assert_eq!(gateway["key_algorithm"], "ECDSA P-256");
    assert_eq!(gateway["ocsp_staple"]["status"], "good");
    assert!(gateway["leaf"]["not_after"].is_u64());
    assert_eq!(gateway["version"].as_str().map(str::len), Some(32));
    assert_eq!(secrets[2]["kind"], "validation_context");
    assert_eq!(secrets[2]["cas"][0]["subject"], "CN=Inventory Root");
    let text = secrets.to_string();
    assert!(
        !text.contains("PRIVATE") && !text.contains("-----"),
        "{text}"
    );

    let (_tx, mut responses) = open_sotw(&mut h, sotw_request("gw-json", &["gateway"], "")).await;
    next(&mut responses).await;
    eventually(&h.sds, |c| find(c, "gw-json")).await;
    let clients = serde_json::to_value(h.sds.clients()).expect("JSON");
    let client = &clients[0];
    assert_eq!(client["node_id"], "gw-json");
    assert_eq!(client["api"], "sotw");
    assert!(client["connected"].is_u64());
    assert!(
        client["peer"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let sub = &client["subscriptions"][0];
    assert_eq!(sub["name"], "gateway");
    assert_eq!(sub["sent"], gateway["version"]);
    assert!(sub["acked"].is_null() && sub["waiting_since"].is_null());
}

// === logs ===

/// What this test binary logs at INFO and above, installed once for every thread: the tests
/// tell their lines apart by node ids and secret names of their own.
fn logs() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("the only subscriber of this test binary");
        captured
    })
}

/// Lines logged so far that contain every one of `texts`.
fn count(texts: &[&str]) -> usize {
    logs()
        .text()
        .lines()
        .filter(|l| texts.iter().all(|t| l.contains(t)))
        .count()
}

/// Waits until lines with every one of `texts` were logged `n` times.
async fn logged(texts: &[&str], n: usize) {
    tokio::time::timeout(WAIT, async {
        while count(texts) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} lines with {texts:?}; got {}", count(texts)));
}

#[tokio::test]
async fn fifty_streams_log_a_line_each_to_start_and_one_per_rotation() {
    const STREAMS: usize = 50;
    logs();
    let ca = Ca::new("clients test CA");
    let mut h = start(serving("fifty", &leaf(&ca)), AllowAnyPeer).await;
    let mut ends = Vec::new();
    for i in 0..STREAMS {
        let id = format!("fifty-{i}");
        let (tx, mut responses) = open_sotw(&mut h, sotw_request(&id, &["fifty"], "")).await;
        // ACK every response, as Envoy does.
        ends.push(tokio::spawn(async move {
            while let Ok(Some(response)) = responses.message().await {
                let mut ack = sotw_request(&id, &["fifty"], &response.nonce);
                ack.version_info = response.version_info;
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        }));
    }
    logged(&["client ACKed its first response", "node=fifty-"], STREAMS).await;
    assert_eq!(count(&["client subscribed", "node=fifty-"]), STREAMS);
    let ours = || count(&["node=fifty-"]) + count(&["secret=fifty "]);
    let before = ours();

    for rotation in 1..=2 {
        h.updates
            .send(Ok(serving("fifty", &leaf(&ca))))
            .await
            .expect("rotate");
        logged(
            &["pushed to 50 streams, all ACKed in", "secret=fifty "],
            rotation,
        )
        .await;
    }
    // Per rotation: the publisher's line and the summary; nothing per stream or push.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ours() - before, 4);
    assert_eq!(count(&["secret updated", "secret=fifty "]), 2);

    // Closing: one line per stream, with how long it lived.
    for end in &ends {
        end.abort();
    }
    logged(&["stream closed", "node=fifty-", "lived="], STREAMS).await;
}

#[tokio::test]
async fn later_subscriptions_log_at_info_once_per_interval() {
    logs();
    let ca = Ca::new("clients test CA");
    let mut h = start(serving_a(&leaf(&ca)), AllowAnyPeer).await;
    let (tx, mut responses) = open_sotw(&mut h, sotw_request("more-1", &["a"], "")).await;
    let first = next(&mut responses).await;
    tx.send(sotw_request("more-1", &["a", "b"], &first.nonce))
        .await
        .expect("add b");
    logged(
        &["client subscribed to more names", "node=more-1", "added=b"],
        1,
    )
    .await;
    tx.send(sotw_request("more-1", &["a", "b", "c"], &first.nonce))
        .await
        .expect("add c");
    tx.send(sotw_request("more-1", &["a"], &first.nonce))
        .await
        .expect("remove b and c");
    eventually(&h.sds, |c| {
        find(c, "more-1").filter(|c| c.subscriptions.len() == 1)
    })
    .await;
    assert_eq!(
        count(&["client subscribed to more names", "node=more-1"]),
        1
    );
    assert_eq!(count(&["client subscribed", "node=more-1"]), 2);
}
