//! The server half of the load tool. It runs in a child process (`load --serve ours|bare`), so
//! its CPU time and resident memory are its own, and takes commands on stdin:
//!
//! - `prepare NAME`: issue and parse a new credential for `NAME` (not yet published); answers
//!   `version V`, the `version_info` subscribers will receive;
//! - `go EXPECTED`: publish it, then wait until the server has sent `EXPECTED` more messages;
//!   answers `sent MICROS MESSAGES`;
//! - `stats`: answers `stats MESSAGES ENCODES`;
//! - `quit`, or the end of stdin: exit.
//!
//! Only the runtime's worker threads (named [`WORKER_THREAD`]) do server work; this control
//! thread issues credentials and polls counters, and is left out of the CPU figures.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io::{BufRead, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes};
use prost::Message;
use sds::{
    core::{CertifiedKey, SecretName, Update},
    proto::{
        envoy::{
            config::core::v3::{DataSource, data_source::Specifier},
            extensions::transport_sockets::tls::v3 as tls,
            service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
        },
        google::protobuf::Any,
    },
    server::SdsService,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{
    Status, Streaming,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{BoxFuture, BoxStream, Context, Poll, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService},
};

use sds_test_util::envoy_node::SECRET_TYPE_URL;

use crate::credentials::{Issuer, Pem, parse};

/// The name the server's runtime threads carry (`/proc/PID/task/*/comm`).
pub(crate) const WORKER_THREAD: &str = "srv-worker";
/// The secret every stream of the first phase subscribes to.
pub(crate) const SHARED: &str = "shared";
const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/// One of K credentials.
pub(crate) fn credential(i: usize) -> String {
    format!("cred-{i:03}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// This workspace's `SdsService`.
    Ours,
    /// A bare tonic service: one encode per rotation, streamed from a watch channel.
    Bare,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Bare => "bare",
        }
    }
}

/// What both servers offer the control loop.
trait Backend {
    /// Makes `name`'s new credential ready to publish; returns the version clients will see.
    fn prepare(&mut self, name: &str, pems: &BTreeMap<String, Pem>) -> String;
    fn go(&mut self);
    fn sent(&self) -> u64;
    fn encodes(&self) -> u64;
}

/// The server's HTTP/2 settings, the same for both servers.
#[derive(Clone, Debug)]
pub(crate) struct Http2 {
    pub(crate) max_streams: u32,
    pub(crate) stream_window: Option<u32>,
    pub(crate) connection_window: Option<u32>,
}

impl Http2 {
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec!["--max-streams".to_owned(), self.max_streams.to_string()];
        if let Some(w) = self.stream_window {
            args.extend(["--stream-window".to_owned(), w.to_string()]);
        }
        if let Some(w) = self.connection_window {
            args.extend(["--connection-window".to_owned(), w.to_string()]);
        }
        args
    }
}

pub(crate) fn main(kind: Kind, k: usize, http2: &Http2, workers: usize) -> ! {
    let issuer = Issuer::new();
    let mut pems: BTreeMap<String, Pem> = std::iter::once(SHARED.to_owned())
        .chain((0..k).map(credential))
        .map(|name| {
            let pem = issuer.issue(&name);
            (name, pem)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(WORKER_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(http2.max_streams)
        .initial_stream_window_size(http2.stream_window)
        .initial_connection_window_size(http2.connection_window);
    let mut backend: Box<dyn Backend> = match kind {
        Kind::Ours => {
            let (tx, rx) = mpsc::channel(4);
            let update = update(&pems);
            let sds = rt.block_on(async {
                tx.send(Ok::<_, std::io::Error>(update))
                    .await
                    .expect("send");
                let (mut reader, driver) =
                    sds::core::publish(sds::core::from_stream(ReceiverStream::new(rx)));
                tokio::spawn(driver);
                reader.ready().await.expect("first snapshot");
                SdsService::builder(reader)
                    .policy(sds::server::policy::AllowAnyPeer)
                    .build()
            });
            let mut router = router;
            let router = router.add_service(sds.clone().into_server());
            rt.spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
            Box::new(Ours {
                sds,
                tx,
                pending: None,
            })
        }
        Kind::Bare => {
            let sent = Arc::new(AtomicU64::new(0));
            let mut senders = HashMap::new();
            let mut receivers = HashMap::new();
            let mut encodes = 0;
            for (name, pem) in &pems {
                let cert = parse(&SecretName::new(name).expect("valid name"), pem);
                let (tx, rx) = watch::channel(bare_response(name, &cert, 0));
                encodes += 1;
                senders.insert(name.clone(), tx);
                receivers.insert(name.clone(), rx);
            }
            let svc = BareSds {
                channels: Arc::new(receivers),
                sent: Arc::clone(&sent),
            };
            let mut router = router;
            let router = router.add_service(svc);
            rt.spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
            Box::new(Bare {
                senders: Arc::new(senders),
                runtime: rt.handle().clone(),
                sent,
                encodes,
                rotations: 0,
                pending: None,
            })
        }
    };
    println!("listening {addr}");
    flush();

    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("prepare"), Some(name)) => {
                pems.insert(name.to_owned(), issuer.issue(name));
                let version = backend.prepare(name, &pems);
                println!("version {version}");
            }
            (Some("go"), Some(expected)) => {
                let expected: u64 = expected.parse().unwrap_or(0);
                let t0 = Instant::now();
                let base = backend.sent();
                backend.go();
                // Poll, not wait: the server has no hook, and this thread is not counted.
                while backend.sent() - base < expected && t0.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_micros(100));
                }
                println!(
                    "sent {} {}",
                    t0.elapsed().as_micros(),
                    backend.sent() - base
                );
            }
            (Some("stats"), _) => println!("stats {} {}", backend.sent(), backend.encodes()),
            (Some("quit"), _) => break,
            _ => println!("error unknown command"),
        }
        flush();
    }
    std::process::exit(0)
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// A complete update of every credential, parsed and validated as a source would.
fn update(pems: &BTreeMap<String, Pem>) -> Update {
    let mut update = Update::new();
    for (name, pem) in pems {
        let name = SecretName::new(name).expect("valid name");
        let cert = parse(&name, pem);
        update.insert(name, cert);
    }
    update
}

// === Ours ===

struct Ours {
    sds: SdsService,
    tx: mpsc::Sender<Result<Update, std::io::Error>>,
    pending: Option<Update>,
}

impl Backend for Ours {
    fn prepare(&mut self, name: &str, pems: &BTreeMap<String, Pem>) -> String {
        let name = SecretName::new(name).expect("valid name");
        let version = parse(&name, &pems[name.as_str()]).version().to_string();
        self.pending = Some(update(pems));
        version
    }

    fn go(&mut self) {
        if let Some(update) = self.pending.take() {
            self.tx.blocking_send(Ok(update)).expect("the driver runs");
        }
    }

    fn sent(&self) -> u64 {
        self.sds.stats().responses
    }

    fn encodes(&self) -> u64 {
        self.sds.stats().encodes
    }
}

// === Bare ===

struct Bare {
    senders: Arc<HashMap<String, watch::Sender<Bytes>>>,
    runtime: tokio::runtime::Handle,
    sent: Arc<AtomicU64>,
    encodes: u64,
    rotations: u64,
    pending: Option<(String, CertifiedKey)>,
}

impl Backend for Bare {
    fn prepare(&mut self, name: &str, pems: &BTreeMap<String, Pem>) -> String {
        self.rotations += 1;
        let secret_name = SecretName::new(name).expect("valid name");
        self.pending = Some((name.to_owned(), parse(&secret_name, &pems[name])));
        bare_version(self.rotations)
    }

    /// Encodes and publishes on the server's runtime, as ours does (its publisher and the
    /// first stream to send run there), so that both count in the server's CPU.
    fn go(&mut self) {
        if let Some((name, cert)) = self.pending.take() {
            self.encodes += 1;
            let senders = Arc::clone(&self.senders);
            let rotation = self.rotations;
            self.runtime.spawn(async move {
                let bytes = bare_response(&name, &cert, rotation);
                senders[&name].send_replace(bytes);
            });
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn encodes(&self) -> u64 {
        self.encodes
    }
}

fn bare_version(rotation: u64) -> String {
    format!("bare-{rotation}")
}

/// The whole `DiscoveryResponse` for `name`, encoded once, the way sds-server encodes a secret
/// (PEM re-encoded from the validated DER, inline bytes).
fn bare_response(name: &str, cert: &CertifiedKey, rotation: u64) -> Bytes {
    let inline = |bytes: Vec<u8>| {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(Bytes::from(bytes))),
        })
    };
    let secret = tls::Secret {
        name: name.to_owned(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(cert.chain_pem().into_bytes()),
            private_key: inline(cert.key().secret_pem().as_bytes().to_vec()),
            ocsp_staple: None,
        })),
    };
    let version = bare_version(rotation);
    DiscoveryResponse {
        version_info: version.clone(),
        resources: vec![Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value: Bytes::from(secret.encode_to_vec()),
        }],
        canary: false,
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce: version,
    }
    .encode_to_vec()
    .into()
}

/// The transport's bound: tonic with its default codec buffers, decoding every request with
/// prost, and no per-stream logic beyond picking the channel of the first requested name.
#[derive(Clone)]
struct BareSds {
    channels: Arc<HashMap<String, watch::Receiver<Bytes>>>,
    sent: Arc<AtomicU64>,
}

impl NamedService for BareSds {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

impl<B> Service<http::Request<B>> for BareSds
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            if req.uri().path() != STREAM_SECRETS {
                return Ok(Status::unimplemented("bare bound: StreamSecrets only").into_http());
            }
            Ok(Grpc::new(BareCodec).streaming(BareStream(svc), req).await)
        })
    }
}

struct BareStream(BareSds);

impl StreamingService<DiscoveryRequest> for BareStream {
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = BoxFuture<tonic::Response<BoxStream<Bytes>>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let state = BareState {
            svc: self.0.clone(),
            inbound: request.into_inner(),
            rx: None,
        };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            loop {
                let BareState { svc, inbound, rx } = &mut s;
                let Some(rx) = rx else {
                    // The first request names the secret; every later one is drained.
                    let request = inbound.message().await.ok()??;
                    let mut rx = svc.channels.get(request.resource_names.first()?)?.clone();
                    let first = rx.borrow_and_update().clone();
                    svc.sent.fetch_add(1, Ordering::Relaxed);
                    s.rx = Some(rx);
                    return Some((Ok(first), s));
                };
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(_)) => continue,
                        _ => return None,
                    },
                    changed = rx.changed() => {
                        changed.ok()?;
                        let bytes = rx.borrow_and_update().clone();
                        svc.sent.fetch_add(1, Ordering::Relaxed);
                        return Some((Ok(bytes), s));
                    }
                }
            }
        });
        Box::pin(async move { Ok(tonic::Response::new(Box::pin(stream) as BoxStream<Bytes>)) })
    }
}

struct BareState {
    svc: BareSds,
    inbound: Streaming<DiscoveryRequest>,
    rx: Option<watch::Receiver<Bytes>>,
}

/// Pre-encoded responses out, prost-decoded requests in, tonic's default buffer settings.
struct BareCodec;

impl Codec for BareCodec {
    type Encode = Bytes;
    type Decode = DiscoveryRequest;
    type Encoder = RawEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = DiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DiscoveryRequest>, Status> {
        DiscoveryRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}
