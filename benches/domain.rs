//! Criterion benches of the domain operations behind a push: building snapshots, encoding a
//! secret once, preparing each stream's frame from the shared bytes, decoding Envoy's ACKs,
//! and fanning one rotation out to M streams.
//!
//! ```text
//! cargo bench --bench domain
//! cargo bench --bench domain -- fanout      # one group
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use sds::{
    core::{CertifiedKey, Input, Secret, SecretName, Snapshot, UnixTime, Update},
    proto::{
        SECRET_TYPE_URL,
        envoy::{
            config::core::v3::{DataSource, Node, data_source::Specifier},
            extensions::transport_sockets::tls::v3 as tls,
            service::{
                discovery::v3::{DiscoveryRequest, DiscoveryResponse},
                secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
            },
        },
        google::protobuf::Any,
    },
    server::SdsService,
};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy_node,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

fn name(i: usize) -> SecretName {
    SecretName::new(format!("credential-{i}")).expect("valid name")
}

fn parse(leaf: &Leaf) -> Arc<Secret> {
    let cert = CertifiedKey::from_pem(
        &name(0),
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("valid credential");
    Arc::new(Secret::from(cert))
}

/// `count` distinct parsed credentials (leaf + intermediate, P-256).
fn credentials(count: usize) -> Vec<Arc<Secret>> {
    let root = Ca::new("bench root");
    let ca = root.intermediate("bench intermediate");
    (0..count)
        .map(|i| {
            parse(&ca.issue(
                &[&format!("host-{i}.example.com")],
                KeyKind::EcP256Pkcs8,
                Validity::current(),
            ))
        })
        .collect()
}

/// An update of `n` names over a pool of parsed credentials.
fn update(n: usize, pool: &[Arc<Secret>]) -> Update {
    let mut u = Update::new();
    for i in 0..n {
        u.insert_shared(name(i), Arc::clone(&pool[i % pool.len()]));
    }
    u
}

fn snapshot(c: &mut Criterion) {
    let pool = credentials(100);
    let mut group = c.benchmark_group("snapshot_build");
    for n in [10, 1_000, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || update(n, &pool),
                |u| Snapshot::build(None, u),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();

    // One credential rotated in a snapshot of 10,000: every other secret keeps its `Arc`.
    let previous = Snapshot::build(None, update(10_000, &pool));
    let rotated = credentials(1).remove(0);
    c.bench_function("snapshot_rotate_one_of_10000", |b| {
        b.iter_batched(
            || {
                let mut u = update(10_000, &pool);
                u.insert_shared(name(0), Arc::clone(&rotated));
                u
            },
            |u| Snapshot::build(Some(&previous), u),
            BatchSize::LargeInput,
        );
    });
}

/// A credential whose chain is about 4 KiB of PEM (leaf and three intermediates, RSA 2048).
fn four_kib_credential() -> (SecretName, Arc<Secret>, usize) {
    let root = Ca::root("bench root", KeyKind::RsaPkcs8(2048), Validity::wide());
    let a = root.intermediate_with("intermediate a", KeyKind::RsaPkcs8(2048), Validity::wide());
    let b = a.intermediate_with("intermediate b", KeyKind::RsaPkcs8(2048), Validity::wide());
    let leaf = b.issue(
        &["httpbin.example.com"],
        KeyKind::RsaPkcs8(2048),
        Validity::current(),
    );
    let chain_len = leaf.chain_pem.len();
    (
        SecretName::new("httpbin-credential").expect("name"),
        parse(&leaf),
        chain_len,
    )
}

/// What `sds-server` sends for a TLS certificate (see its `encode.rs`).
fn encode_secret(name: &SecretName, secret: &Secret) -> Bytes {
    let Secret::TlsCertificate(cert) = secret else {
        unreachable!("benches encode TLS certificates")
    };
    let inline = |b: Bytes| {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(b)),
        })
    };
    let message = tls::Secret {
        name: name.as_str().to_owned(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(Bytes::from(cert.chain_pem())),
            private_key: inline(Bytes::from(cert.key().secret_pem().as_bytes().to_vec())),
            ocsp_staple: None,
        })),
    };
    Bytes::from(message.encode_to_vec())
}

fn encode(c: &mut Criterion) {
    let (name, secret, chain_len) = four_kib_credential();
    eprintln!("encode: chain of {chain_len} bytes of PEM");
    c.bench_function("encode_secret_4kib", |b| {
        b.iter(|| encode_secret(&name, &secret))
    });

    // Per stream: a response around the shared bytes, framed as tonic frames it.
    let shared = encode_secret(&name, &secret);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    c.bench_function("frame_from_shared_bytes", |b| {
        b.iter(|| {
            let response = DiscoveryResponse {
                version_info: "0123456789abcdef0123456789abcdef".to_owned(),
                resources: vec![Any {
                    type_url: SECRET_TYPE_URL.to_owned(),
                    value: shared.clone(),
                }],
                canary: false,
                type_url: SECRET_TYPE_URL.to_owned(),
                nonce: "42".to_owned(),
            };
            buf.clear();
            buf.extend_from_slice(&[0; 5]); // gRPC frame header
            response.encode(&mut buf).expect("capacity grows");
            buf.len()
        })
    });
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_ack");
    for (label, node) in [
        ("minimal_node", envoy_node::minimal_node()),
        (
            "envoy_1_40_node",
            envoy_node::envoy_node(envoy_node::ENVOY_EXTENSIONS),
        ),
    ] {
        let mut request = Vec::new();
        envoy_node::put_discovery_request(
            &mut request,
            &node,
            "0123456789abcdef0123456789abcdef",
            "httpbin-credential",
            "42",
        );
        let request = Bytes::from(request);
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function(label, |b| {
            b.iter(|| DiscoveryRequest::decode(request.clone()).expect("decodes"))
        });
    }
    group.finish();
}

/// M state-of-the-world streams (100 per HTTP/2 connection) on a real tonic server over
/// loopback, all subscribed to one credential; each iteration rotates it and waits until every
/// stream has the new version.
fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = credentials(2);
    let mut group = c.benchmark_group("fanout_one_rotation");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for m in [1usize, 100, 1_000] {
        let bench = rt.block_on(Fanout::start(m, &pool));
        group.throughput(Throughput::Elements(m as u64));
        group.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter_custom(|iters| rt.block_on(bench.rotate(iters)))
        });
        // Rotations alternate between two credentials: two versions, each encoded once.
        let stats = bench.sds.stats();
        let versions = (bench.rotations.load(Ordering::Relaxed) + 1).min(2);
        assert_eq!(
            stats.encodes, versions,
            "one encode per credential version, whatever M is"
        );
    }
    group.finish();
}

struct Fanout {
    updates: mpsc::UnboundedSender<Result<Update, std::io::Error>>,
    pool: Vec<Arc<Secret>>,
    sds: SdsService,
    received: Arc<AtomicU64>,
    progress: Arc<Notify>,
    streams: u64,
    rotations: AtomicU64,
}

impl Fanout {
    async fn start(m: usize, pool: &[Arc<Secret>]) -> Fanout {
        let (updates, rx) = mpsc::unbounded_channel();
        let shared = SecretName::new("shared").expect("name");
        let mut first = Update::new();
        first.insert_shared(shared.clone(), Arc::clone(&pool[0]));
        updates.send(Ok(first)).expect("send");
        let (mut reader, driver) = sds::core::publish(sds::core::from_stream(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ));
        tokio::spawn(driver);
        reader.ready().await.expect("ready");
        let sds = SdsService::builder(reader)
            .policy(sds_server::policy::AllowAnyPeer)
            .build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(sds.clone().into_server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let received = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let mut channel = None;
        for i in 0..m {
            if i % 100 == 0 {
                channel = Some(
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .expect("uri")
                        .connect()
                        .await
                        .expect("connect"),
                );
            }
            let mut client = SecretDiscoveryServiceClient::new(channel.clone().expect("a channel"));
            let (tx, rx) = mpsc::channel(4);
            tx.send(request("", "")).await.expect("send");
            let mut responses = client
                .stream_secrets(ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            let (received, progress) = (Arc::clone(&received), Arc::clone(&progress));
            tokio::spawn(async move {
                while let Ok(Some(response)) = responses.message().await {
                    // ACK as Envoy does.
                    let ack = request(&response.version_info, &response.nonce);
                    if tx.send(ack).await.is_err() {
                        break;
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                    progress.notify_one();
                }
            });
        }
        let streams = m as u64;
        while received.load(Ordering::Relaxed) < streams {
            progress.notified().await;
        }
        received.store(0, Ordering::Relaxed);
        Fanout {
            updates,
            pool: pool.to_vec(),
            sds,
            received,
            progress,
            streams,
            rotations: AtomicU64::new(0),
        }
    }

    /// Rotates `iters` times; returns the total time from each rotation to the last stream
    /// receiving it.
    async fn rotate(&self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let r = self.rotations.fetch_add(1, Ordering::Relaxed) + 1;
            let mut u = Update::new();
            u.insert_shared(
                SecretName::new("shared").expect("name"),
                Arc::clone(&self.pool[(r % 2) as usize]),
            );
            self.received.store(0, Ordering::Relaxed);
            let start = Instant::now();
            self.updates.send(Ok(u)).expect("send");
            while self.received.load(Ordering::Relaxed) < self.streams {
                self.progress.notified().await;
            }
            total += start.elapsed();
        }
        total
    }
}

fn request(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(Node {
            id: envoy_node::NODE_ID.to_owned(),
            cluster: envoy_node::NODE_CLUSTER.to_owned(),
            user_agent_name: "envoy".to_owned(),
        }),
        resource_names: vec!["shared".to_owned()],
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: None,
    }
}

criterion_group!(benches, snapshot, encode, decode, fanout);
criterion_main!(benches);
