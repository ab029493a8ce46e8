//! Fan-out over real gRPC at a modest scale: 240 streams on three HTTP/2 connections, one
//! secret per stream, every request (ACKs included) carrying an Envoy-sized `Node`, as Envoy
//! sends it. Asserts behaviour only: message counts, encodes, and that every stream ends at the
//! latest version. The load tool (`cargo run --release --example load`) measures the timings.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes};
use parking_lot::Mutex;
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use sds_core::{CertifiedKey, Input, SecretName, UnixTime, Update};
use sds_server::{SdsService, policy::AllowAnyPeer};
use sds_test_util::certs::{Ca, KeyKind, Validity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnboundedReceiverStream};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const WAIT: Duration = Duration::from_secs(30);
const SHARED: &str = "shared";
const SHARED_STREAMS: usize = 200;
const K: usize = 4;
const PER_CREDENTIAL: usize = 10;

// === Envoy's side ===

fn put_len(buf: &mut impl BufMut, tag: u32, payload: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(payload.len() as u64, buf);
    buf.put_slice(payload);
}

/// A `Node` as Envoy 1.40 sends it (id = 1, cluster = 2, metadata = 3, user_agent_name = 6,
/// extensions = 9, client_features = 10), about 60 KB.
fn envoy_node() -> Bytes {
    let mut b = Vec::new();
    put_len(
        &mut b,
        1,
        b"router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
    );
    put_len(&mut b, 2, b"istio-ingressgateway");
    put_len(&mut b, 3, b"\x0a\x14\x0a\x09NAMESPACE\x12\x07\x1a\x05istio");
    put_len(&mut b, 6, b"envoy");
    for i in 0..500 {
        let mut e = Vec::new();
        put_len(
            &mut e,
            1,
            format!("envoy.filters.http.extension_{i:03}").as_bytes(),
        );
        put_len(&mut e, 2, b"envoy.filters.http");
        put_len(
            &mut e,
            6,
            format!("envoy.extensions.filters.http.ext_{i:03}.v3.Config").as_bytes(),
        );
        put_len(&mut b, 9, &e);
    }
    put_len(&mut b, 10, b"xds.config.resource-in-sotw");
    Bytes::from(b)
}

/// A state-of-the-world request with a pre-encoded `Node`, the way Envoy encodes it.
struct Request {
    version: String,
    nonce: String,
}

#[derive(Clone, PartialEq, Message)]
struct ResponseHead {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<sds_proto::google::protobuf::Any>,
    #[prost(string, tag = "5")]
    nonce: String,
}

struct EnvoyCodec {
    node: Bytes,
    name: String,
}

impl Codec for EnvoyCodec {
    type Encode = Request;
    type Decode = ResponseHead;
    type Encoder = EnvoyEncoder;
    type Decoder = HeadDecoder;

    fn encoder(&mut self) -> EnvoyEncoder {
        EnvoyEncoder {
            node: self.node.clone(),
            name: self.name.clone(),
        }
    }

    fn decoder(&mut self) -> HeadDecoder {
        HeadDecoder
    }
}

struct EnvoyEncoder {
    node: Bytes,
    name: String,
}

impl Encoder for EnvoyEncoder {
    type Item = Request;
    type Error = Status;

    fn encode(&mut self, req: Request, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if !req.version.is_empty() {
            put_len(dst, 1, req.version.as_bytes());
        }
        put_len(dst, 2, &self.node);
        put_len(dst, 3, self.name.as_bytes());
        put_len(dst, 4, TYPE_URL.as_bytes());
        if !req.nonce.is_empty() {
            put_len(dst, 5, req.nonce.as_bytes());
        }
        Ok(())
    }
}

struct HeadDecoder;

impl Decoder for HeadDecoder {
    type Item = ResponseHead;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ResponseHead>, Status> {
        ResponseHead::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Every version each stream received, in order.
type Seen = Arc<Mutex<Vec<Vec<String>>>>;

/// Opens a stream for `name` that ACKs every response; records versions in `seen[index]`.
fn open(channel: Channel, name: &str, node: Bytes, seen: Seen, index: usize) {
    let codec = EnvoyCodec {
        node,
        name: name.to_owned(),
    };
    tokio::spawn(async move {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Request {
            version: String::new(),
            nonce: String::new(),
        })
        .expect("send");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let mut inbound = grpc
            .streaming(
                tonic::Request::new(UnboundedReceiverStream::new(rx)),
                tonic::codegen::http::uri::PathAndQuery::from_static(STREAM_SECRETS),
                codec,
            )
            .await
            .expect("stream")
            .into_inner();
        while let Ok(Some(head)) = inbound.message().await {
            assert_eq!(head.resources.len(), 1, "one secret per stream");
            seen.lock()[index].push(head.version_info.clone());
            let ack = Request {
                version: head.version_info,
                nonce: head.nonce,
            };
            if tx.send(ack).is_err() {
                return;
            }
        }
    });
}

// === The server's side ===

struct Credentials {
    ca: Ca,
    pems: BTreeMap<String, (String, String)>,
}

impl Credentials {
    fn new() -> Self {
        let mut c = Credentials {
            ca: Ca::new("fan-out CA"),
            pems: BTreeMap::new(),
        };
        c.rotate(SHARED);
        for i in 0..K {
            c.rotate(&format!("cred-{i}"));
        }
        c
    }

    /// A new credential for `name`; returns its version.
    fn rotate(&mut self, name: &str) -> String {
        let leaf = self
            .ca
            .issue(&[name], KeyKind::EcP256Pkcs8, Validity::current());
        let version = parse(name, &leaf.chain_pem, &leaf.key_pem)
            .version()
            .to_string();
        self.pems
            .insert(name.to_owned(), (leaf.chain_pem, leaf.key_pem));
        version
    }

    fn update(&self) -> Update {
        let mut update = Update::new();
        for (name, (chain, key)) in &self.pems {
            let name_ = SecretName::new(name).expect("name");
            update.insert(name_, parse(name, chain, key));
        }
        update
    }
}

fn parse(name: &str, chain: &str, key: &str) -> CertifiedKey {
    CertifiedKey::from_pem(
        &SecretName::new(name).expect("name"),
        Input {
            location: "tls.crt",
            bytes: chain.as_bytes(),
        },
        Input {
            location: "tls.key",
            bytes: key.as_bytes(),
        },
        UnixTime::now(),
    )
    .expect("valid")
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn holding(seen: &Seen, range: std::ops::Range<usize>, version: &str) -> usize {
    seen.lock()[range]
        .iter()
        .filter(|v| v.last().map(String::as_str) == Some(version))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_gets_every_rotation_once_with_one_encode_per_version() {
    let mut creds = Credentials::new();
    let (updates, rx) = mpsc::channel(16);
    updates
        .send(Ok::<_, std::io::Error>(creds.update()))
        .await
        .expect("send");
    let (mut reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
    tokio::spawn(driver);
    reader.ready().await.expect("first snapshot");
    let sds = SdsService::builder(reader).policy(AllowAnyPeer).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(sds.clone().into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // 200 streams on `shared`, then 10 on each of 4 credentials; 100 per connection.
    let node = envoy_node();
    assert!(node.len() > 50_000, "an Envoy-sized node");
    let total = SHARED_STREAMS + K * PER_CREDENTIAL;
    let seen: Seen = Arc::new(Mutex::new(vec![Vec::new(); total]));
    let mut channels = Vec::new();
    for _ in 0..total.div_ceil(100) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    let name_of = |i: usize| {
        if i < SHARED_STREAMS {
            SHARED.to_owned()
        } else {
            format!("cred-{}", (i - SHARED_STREAMS) % K)
        }
    };
    for i in 0..total {
        open(
            channels[i / 100].clone(),
            &name_of(i),
            node.clone(),
            Arc::clone(&seen),
            i,
        );
    }
    eventually("every stream got its secret", || {
        seen.lock().iter().all(|v| v.len() == 1)
    })
    .await;
    assert_eq!(sds.stats().streams_active, total as u64);
    let initial = sds.stats();
    assert_eq!(initial.encodes, 1 + K as u64, "one encode per credential");
    assert_eq!(initial.responses, total as u64);

    // Rotations of the credential 200 streams share: each reaches all of them, once.
    for round in 1..=3 {
        let before = sds.stats();
        let version = creds.rotate(SHARED);
        updates.send(Ok(creds.update())).await.expect("update");
        eventually("every subscriber holds the new version", || {
            holding(&seen, 0..SHARED_STREAMS, &version) == SHARED_STREAMS
        })
        .await;
        // Give stray messages a chance to show up before counting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = sds.stats();
        assert_eq!(
            after.responses - before.responses,
            SHARED_STREAMS as u64,
            "round {round}"
        );
        assert_eq!(after.encodes - before.encodes, 1, "round {round}");
    }

    // One of K: only its 10 subscribers hear of it.
    let before = sds.stats();
    let version = creds.rotate("cred-1");
    updates.send(Ok(creds.update())).await.expect("update");
    let subscribers: Vec<usize> = (SHARED_STREAMS..total)
        .filter(|i| name_of(*i) == "cred-1")
        .collect();
    assert_eq!(subscribers.len(), PER_CREDENTIAL);
    eventually("the one-of-K subscribers hold the new version", || {
        subscribers
            .iter()
            .all(|&i| holding(&seen, i..i + 1, &version) == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = sds.stats();
    assert_eq!(after.responses - before.responses, PER_CREDENTIAL as u64);
    assert_eq!(after.encodes - before.encodes, 1);

    // A burst of rotations without waiting: no update is lost, every stream ends at the last
    // version, and versions only move forward.
    let before = sds.stats();
    let mut burst = Vec::new();
    for _ in 0..5 {
        burst.push(creds.rotate(SHARED));
        updates.send(Ok(creds.update())).await.expect("update");
    }
    let last = burst.last().expect("five").clone();
    eventually("every subscriber holds the last version", || {
        holding(&seen, 0..SHARED_STREAMS, &last) == SHARED_STREAMS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = sds.stats();
    let sent = after.responses - before.responses;
    assert!(
        (SHARED_STREAMS as u64..=5 * SHARED_STREAMS as u64).contains(&sent),
        "{sent} messages for 5 rotations of {SHARED_STREAMS} streams"
    );
    assert!(
        after.encodes - before.encodes <= 5,
        "at most one encode per version"
    );
    for versions in &seen.lock()[..SHARED_STREAMS] {
        let order: Vec<usize> = versions
            .iter()
            .filter_map(|v| burst.iter().position(|b| b == v))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "versions move forward: {order:?}"
        );
    }
    assert_eq!(after.nacks, 0);
    assert_eq!(after.streams_active, total as u64);
}
