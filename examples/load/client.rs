//! The client half: N SDS streams multiplexed over HTTP/2 connections, one secret per stream,
//! each ACKing every response with the chosen `Node`, as Envoy does.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

use sds_test_util::envoy_node::{discovery_request_len, put_discovery_request};

const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/// What the client reads of a response: prost skips the resources.
#[derive(Clone, PartialEq, Message)]
struct ResponseHead {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// An ACK (or the first request, with empty version and nonce).
struct Ack {
    version: String,
    nonce: String,
}

/// Counts what every stream has received, and times a rotation.
#[derive(Default)]
pub(crate) struct Tracker {
    target: Mutex<Option<Target>>,
    /// Responses received, all streams together.
    pub(crate) responses: AtomicU64,
    /// ACKs handed to the transport.
    pub(crate) acks: AtomicU64,
    /// Streams that ended with an error.
    pub(crate) failed: AtomicUsize,
    done: Notify,
}

struct Target {
    version: String,
    expected: usize,
    held: usize,
    t0: Instant,
    all: Option<Duration>,
}

impl Tracker {
    /// Starts timing: `expected` streams are to receive `version`, from now.
    pub(crate) fn arm(&self, version: String, expected: usize) {
        *self.target.lock() = Some(Target {
            version,
            expected,
            held: 0,
            t0: Instant::now(),
            all: None,
        });
    }

    fn on_response(&self, version: &str) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        let mut target = self.target.lock();
        if let Some(t) = target.as_mut().filter(|t| t.version == version) {
            t.held += 1;
            if t.held == t.expected {
                t.all = Some(t.t0.elapsed());
                self.done.notify_one();
            }
        }
    }

    /// Waits until every expected stream holds the armed version: the time since `arm`.
    pub(crate) async fn all_hold(&self, limit: Duration) -> Option<Duration> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let all = self.target.lock().as_ref().and_then(|t| t.all);
            if all.is_some() {
                return all;
            }
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// How many streams hold the armed version so far.
    pub(crate) fn held(&self) -> usize {
        self.target.lock().as_ref().map_or(0, |t| t.held)
    }
}

/// Opens `count` HTTP/2 connections to `addr`.
pub(crate) async fn connect(
    addr: &str,
    count: usize,
) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Open streams, one task each.
#[derive(Default)]
pub(crate) struct Streams {
    tasks: Vec<JoinHandle<()>>,
}

impl Streams {
    /// Opens one stream per name, `per_connection` streams on each channel in turn.
    pub(crate) fn open(
        channels: &[Channel],
        per_connection: usize,
        names: Vec<String>,
        node: Bytes,
        tracker: &Arc<Tracker>,
    ) -> Streams {
        let tasks = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let channel = channels[(i / per_connection) % channels.len()].clone();
                let codec = AckCodec {
                    node: node.clone(),
                    name: name.into(),
                };
                tokio::spawn(run(channel, codec, Arc::clone(tracker)))
            })
            .collect();
        Streams { tasks }
    }

    /// Resets every stream.
    pub(crate) async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn run(channel: Channel, codec: AckCodec, tracker: Arc<Tracker>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let first = Ack {
        version: String::new(),
        nonce: String::new(),
    };
    if tx.send(first).is_err() {
        return;
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    let response = match grpc.ready().await {
        Ok(()) => {
            grpc.streaming(
                tonic::Request::new(UnboundedReceiverStream::new(rx)),
                tonic::codegen::http::uri::PathAndQuery::from_static(STREAM_SECRETS),
                codec,
            )
            .await
        }
        Err(e) => Err(Status::unavailable(e.to_string())),
    };
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(_) => {
            tracker.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    loop {
        match inbound.message().await {
            Ok(Some(head)) => {
                tracker.on_response(&head.version_info);
                let ack = Ack {
                    version: head.version_info,
                    nonce: head.nonce,
                };
                if tx.send(ack).is_err() {
                    return;
                }
                tracker.acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => return,
            Err(_) => {
                tracker.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Requests out with a pre-encoded `Node`, response heads in.
struct AckCodec {
    node: Bytes,
    name: Arc<str>,
}

impl Codec for AckCodec {
    type Encode = Ack;
    type Decode = ResponseHead;
    type Encoder = AckEncoder;
    type Decoder = HeadDecoder;

    fn encoder(&mut self) -> AckEncoder {
        AckEncoder {
            node: self.node.clone(),
            name: Arc::clone(&self.name),
        }
    }

    fn decoder(&mut self) -> HeadDecoder {
        HeadDecoder
    }
}

struct AckEncoder {
    node: Bytes,
    name: Arc<str>,
}

impl Encoder for AckEncoder {
    type Item = Ack;
    type Error = Status;

    fn encode(&mut self, ack: Ack, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(discovery_request_len(
            &self.node,
            &ack.version,
            &self.name,
            &ack.nonce,
        ));
        put_discovery_request(dst, &self.node, &ack.version, &self.name, &ack.nonce);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
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
