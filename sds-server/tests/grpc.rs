//! The service over real gRPC on loopback, driven by the generated client.

use std::{sync::Arc, time::Duration};

use sds_core::{CertifiedKey, Input, SecretName, UnixTime, Update};
use sds_proto::envoy::{
    config::core::v3::Node,
    service::{
        discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse},
        secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
    },
};
use sds_server::{SdsService, policy::AllowAnyPeer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const WAIT: Duration = Duration::from_secs(10);

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("valid name")
}

/// A fresh self-signed credential for `cn`.
fn credential(cn: &str) -> CertifiedKey {
    let key = rcgen::KeyPair::generate().expect("keygen");
    let cert = rcgen::CertificateParams::new(vec![cn.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    CertifiedKey::from_pem(
        &name(cn),
        Input {
            location: "tls.crt",
            bytes: cert.pem().as_bytes(),
        },
        Input {
            location: "tls.key",
            bytes: key.serialize_pem().as_bytes(),
        },
        UnixTime::now(),
    )
    .expect("valid")
}

/// A server whose source is fed by the test.
struct Harness {
    updates: mpsc::Sender<Result<Update, std::io::Error>>,
    client: SecretDiscoveryServiceClient<Channel>,
    sds: SdsService,
}

async fn start(initial: Update) -> Harness {
    let (tx, rx) = mpsc::channel(16);
    tx.send(Ok(initial)).await.expect("send");
    let (mut reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
    tokio::spawn(driver);
    reader.ready().await.expect("first snapshot");
    let sds = SdsService::builder(reader).policy(AllowAnyPeer).build();
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
    let client = SecretDiscoveryServiceClient::new(channel);
    Harness {
        updates: tx,
        client,
        sds,
    }
}

fn update(secrets: &[(&str, &Arc<CertifiedKey>)]) -> Update {
    // CertifiedKey is not Clone (it owns a private key): rebuild from the same DER via PEM.
    let mut u = Update::new();
    for (n, c) in secrets {
        let key = c.key().secret_pem();
        let again = CertifiedKey::from_pem(
            &name(n),
            Input {
                location: "tls.crt",
                bytes: c.chain_pem().as_bytes(),
            },
            Input {
                location: "tls.key",
                bytes: key.as_bytes(),
            },
            UnixTime::now(),
        )
        .expect("valid");
        u.insert(name(n), again);
    }
    u
}

fn sotw_request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(Node {
            id: "router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local".to_owned(),
            cluster: "istio-ingressgateway".to_owned(),
            user_agent_name: "envoy".to_owned(),
        }),
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        type_url: TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: None,
    }
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("no stream error")
        .expect("stream still open")
}

fn secret_names(resp: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    resp.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, TYPE_URL);
            sds_proto::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                any.value.clone(),
            )
            .expect("a Secret")
            .name
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_rotation_ack_nack_and_missing() {
    let a1 = Arc::new(credential("a"));
    let mut h = start(update(&[("a", &a1)])).await;
    let (req_tx, req_rx) = mpsc::channel(16);
    req_tx
        .send(sotw_request(&["a", "later"], "", ""))
        .await
        .expect("send");
    let mut responses = h
        .client
        .stream_secrets(ReceiverStream::new(req_rx))
        .await
        .expect("stream")
        .into_inner();

    let first = next(&mut responses).await;
    assert_eq!(
        secret_names(&first),
        ["a"],
        "the missing name is held, the stream stays open"
    );
    req_tx
        .send(sotw_request(
            &["a", "later"],
            &first.version_info,
            &first.nonce,
        ))
        .await
        .expect("ack");

    // Rotation of `a`: pushed.
    let a2 = Arc::new(credential("a"));
    h.updates
        .send(Ok(update(&[("a", &a2)])))
        .await
        .expect("update");
    let rotated = next(&mut responses).await;
    assert_eq!(rotated.version_info, a2.version().to_string());
    assert_ne!(rotated.nonce, first.nonce);

    // NACK it: the next message must be the next change, never a resend.
    let mut nack = sotw_request(&["a", "later"], &first.version_info, &rotated.nonce);
    nack.error_detail = Some(sds_proto::google::rpc::Status {
        code: 13,
        message: "Failed to load private key".to_owned(),
        details: Vec::new(),
    });
    req_tx.send(nack).await.expect("nack");
    // Let the server read the NACK first: a change processed before it would make the
    // NACK's nonce stale (and correctly ignored).
    tokio::time::timeout(WAIT, async {
        while h.sds.stats().nacks == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the NACK is processed");
    let later = Arc::new(credential("later"));
    h.updates
        .send(Ok(update(&[("a", &a2), ("later", &later)])))
        .await
        .expect("update");
    let appeared = next(&mut responses).await;
    assert_eq!(secret_names(&appeared), ["a", "later"]);
    assert_ne!(appeared.version_info, rotated.version_info);

    let stats = h.sds.stats();
    assert_eq!(stats.nacks, 1);
    assert_eq!(stats.streams_active, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_one_encode_per_version() {
    const STREAMS: usize = 50;
    let c1 = Arc::new(credential("shared"));
    let mut h = start(update(&[("shared", &c1)])).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (tx, rx) = mpsc::channel(4);
        tx.send(sotw_request(&["shared"], "", ""))
            .await
            .expect("send");
        let mut s = h
            .client
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let first = next(&mut s).await;
        tx.send(sotw_request(&["shared"], &first.version_info, &first.nonce))
            .await
            .expect("ack");
        streams.push((tx, s));
    }
    let c2 = Arc::new(credential("shared"));
    h.updates
        .send(Ok(update(&[("shared", &c2)])))
        .await
        .expect("rotate");
    for (_, s) in &mut streams {
        assert_eq!(next(s).await.version_info, c2.version().to_string());
    }
    let stats = h.sds.stats();
    assert_eq!(
        stats.encodes, 2,
        "one encode per version, whatever the number of streams"
    );
    assert_eq!(stats.responses, 2 * STREAMS as u64);
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_subscribe_rotate_remove() {
    let a1 = Arc::new(credential("a"));
    let mut h = start(update(&[("a", &a1)])).await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: None,
        type_url: TYPE_URL.to_owned(),
        resource_names_subscribe: vec!["a".to_owned()],
        resource_names_unsubscribe: Vec::new(),
        initial_resource_versions: [("a".to_owned(), a1.version().to_string())].into(),
        response_nonce: String::new(),
        error_detail: None,
    })
    .await
    .expect("send");
    let mut responses = h
        .client
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut responses).await;
    assert_eq!(first.resources.len(), 1, "subscribe is must-send");
    assert_eq!(first.resources[0].name, "a");
    assert_eq!(first.resources[0].version, a1.version().to_string());

    let a2 = Arc::new(credential("a"));
    h.updates
        .send(Ok(update(&[("a", &a2)])))
        .await
        .expect("rotate");
    let rotated = next(&mut responses).await;
    assert_eq!(rotated.resources[0].version, a2.version().to_string());

    h.updates.send(Ok(Update::new())).await.expect("remove");
    let removed = next(&mut responses).await;
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_refusals() {
    let a1 = Arc::new(credential("a"));
    let mut h = start(update(&[("a", &a1)])).await;
    let resp = h
        .client
        .fetch_secrets(sotw_request(&["a"], "", ""))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(secret_names(&resp), ["a"]);
    assert_eq!(resp.version_info, a1.version().to_string());

    let missing = h
        .client
        .fetch_secrets(sotw_request(&["nope"], "", ""))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // A stream asking for another type is refused with InvalidArgument.
    let (tx, rx) = mpsc::channel(1);
    let mut wrong = sotw_request(&["a"], "", "");
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned();
    tx.send(wrong).await.expect("send");
    let mut s = h
        .client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let err = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_so_the_server_can_drain() {
    let a1 = Arc::new(credential("a"));
    let mut h = start(update(&[("a", &a1)])).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(sotw_request(&["a"], "", "")).await.expect("send");
    let mut s = h
        .client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    next(&mut s).await;
    h.sds.shutdown();
    let ended = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("in time")
        .expect_err("the stream ends");
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    // New streams are refused too.
    let (tx, rx) = mpsc::channel(1);
    tx.send(sotw_request(&["a"], "", "")).await.expect("send");
    let refused = match h.client.stream_secrets(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(resp) => {
            let mut s = resp.into_inner();
            tokio::time::timeout(WAIT, s.message())
                .await
                .expect("in time")
                .expect_err("refused")
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable);
}

/// Istio 1.26+ asks for `sds://NAME` when a gateway's `credentialName` is `sds://NAME`: served
/// from the credential `NAME`, under the name asked for, on every method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_scheme_names_are_served_from_the_named_credential() {
    let a1 = Arc::new(credential("a"));
    let mut h = start(update(&[("a", &a1)])).await;

    let (tx, rx) = mpsc::channel(4);
    tx.send(sotw_request(&["sds://a"], "", ""))
        .await
        .expect("send");
    let mut sotw = h
        .client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut sotw).await;
    assert_eq!(secret_names(&first), ["sds://a"]);
    assert_eq!(first.version_info, a1.version().to_string());

    let (dtx, drx) = mpsc::channel(4);
    dtx.send(DeltaDiscoveryRequest {
        type_url: TYPE_URL.to_owned(),
        resource_names_subscribe: vec!["sds://a".to_owned()],
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .expect("send");
    let mut delta = h
        .client
        .delta_secrets(ReceiverStream::new(drx))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut delta).await;
    assert_eq!(first.resources[0].name, "sds://a");
    assert_eq!(first.resources[0].version, a1.version().to_string());

    // A rotation of `a` reaches both.
    let a2 = Arc::new(credential("a"));
    h.updates
        .send(Ok(update(&[("a", &a2)])))
        .await
        .expect("rotate");
    assert_eq!(next(&mut sotw).await.version_info, a2.version().to_string());
    assert_eq!(
        next(&mut delta).await.resources[0].version,
        a2.version().to_string()
    );

    let fetched = h
        .client
        .fetch_secrets(sotw_request(&["sds://a"], "", ""))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(secret_names(&fetched), ["sds://a"]);
    let refused = h
        .client
        .fetch_secrets(sotw_request(&["sds://"], "", ""))
        .await
        .expect_err("no credential named");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}
