//! A gRPC client on the `h2` crate: streams whose request bytes are ours to choose (a prefix
//! that announces more than is sent, many names), and what the client sees of each stream
//! (responses, the `grpc-status` it ends with, resets).

use std::{net::SocketAddr, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use h2::{
    RecvStream, SendStream,
    client::{ResponseFuture, SendRequest},
};
use http::HeaderMap;
use prost::Message;
use sds::proto::{
    SECRET_TYPE_URL,
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::rpc::Status,
};
use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};

pub(crate) const STREAM_SECRETS: &str =
    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/// gRPC's message prefix: a compression flag and a big-endian length.
pub(crate) const PREFIX: usize = 5;

/// How long opening a connection or a stream may take.
const OPEN_LIMIT: Duration = Duration::from_secs(5);

// === Requests ===

/// A first request subscribing to `names`, with a small `Node`.
pub(crate) fn subscribe(names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "abuse-tool".to_owned(),
            cluster: "abuse".to_owned(),
            ..Node::default()
        }),
        resource_names: names,
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// A NACK of the response with `nonce`, Envoy style: the names again, the last accepted
/// version (none here) and `error_detail` {code 13 (INTERNAL), `message`}.
pub(crate) fn nack(names: Vec<String>, nonce: &str, message: String) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names,
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: Some(Status {
            code: 13,
            message,
            details: Vec::new(),
        }),
        ..DiscoveryRequest::default()
    }
}

/// A whole gRPC message: prefix and encoding.
pub(crate) fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    put_prefix(&mut buf, len);
    message
        .encode(&mut buf)
        .expect("a BytesMut grows as needed");
    buf.freeze()
}

/// A gRPC prefix announcing a message of `len` bytes.
pub(crate) fn put_prefix(buf: &mut impl BufMut, len: usize) {
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

// === Connection ===

/// One HTTP/2 connection to the server.
pub(crate) struct Connection {
    send: SendRequest<Bytes>,
    addr: SocketAddr,
    driver: JoinHandle<()>,
}

impl Connection {
    pub(crate) async fn open(addr: SocketAddr) -> Result<Connection, String> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            h2::client::Builder::new()
                // Room for the server's responses on every stream.
                .initial_connection_window_size(8 << 20)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))
        };
        let (send, connection) = tokio::time::timeout(OPEN_LIMIT, connect)
            .await
            .map_err(|_| "connect: timed out".to_owned())??;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { send, addr, driver })
    }

    /// The `SETTINGS_MAX_CONCURRENT_STREAMS` the server announced (once its SETTINGS arrived).
    pub(crate) fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Opens a `StreamSecrets` stream and sends `first` (raw bytes: one or more gRPC messages,
    /// or part of one) without ending the request.
    pub(crate) async fn stream(&mut self, first: Bytes) -> Result<Stream, String> {
        let ready = tokio::time::timeout(OPEN_LIMIT, self.send.clone().ready())
            .await
            .map_err(|_| "no stream slot within 5 s".to_owned())?
            .map_err(|e| format!("connection: {e}"))?;
        self.send = ready;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{STREAM_SECRETS}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, mut send) = self
            .send
            .send_request(request, false)
            .map_err(|e| format!("send_request: {e}"))?;
        send.send_data(first, false)
            .map_err(|e| format!("send_data: {e}"))?;
        let (events, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(response, events));
        Ok(Stream {
            send,
            events: rx,
            reader,
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

// === Stream ===

/// One open `StreamSecrets` stream; reset when dropped.
pub(crate) struct Stream {
    send: SendStream<Bytes>,
    events: mpsc::UnboundedReceiver<Event>,
    reader: JoinHandle<()>,
}

/// What the client saw on a stream.
#[derive(Debug)]
pub(crate) enum Event {
    /// A response: its version and nonce, and how many secrets it carried.
    Response {
        version: String,
        nonce: String,
        resources: usize,
    },
    /// The stream is over.
    Ended(End),
}

/// How a stream ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// With a `grpc-status` (and its message).
    Status { code: i32, message: String },
    /// Reset (`RST_STREAM` or `GOAWAY`) with this HTTP/2 error code.
    Reset(h2::Reason),
    /// Without a status.
    NoStatus,
    /// A transport error.
    Error(String),
}

impl End {
    /// `RESOURCE_EXHAUSTED` and the like, or the reset's name.
    pub(crate) fn label(&self) -> String {
        match self {
            End::Status { code, .. } => code_name(*code).to_owned(),
            End::Reset(reason) => format!("reset {reason:?}"),
            End::NoStatus => "ended without a status".to_owned(),
            End::Error(e) => format!("error: {e}"),
        }
    }
}

impl Stream {
    /// Sends more request bytes (not ending the request).
    pub(crate) fn send(&mut self, data: Bytes) -> Result<(), String> {
        self.send
            .send_data(data, false)
            .map_err(|e| format!("send_data: {e}"))
    }

    /// The next event, if one comes within `limit`.
    pub(crate) async fn next(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
        self.reader.abort();
    }
}

/// Reads a stream's responses and how it ends.
async fn read(response: ResponseFuture, events: mpsc::UnboundedSender<Event>) {
    let end = read_until_end(response, &events).await;
    let _ = events.send(Event::Ended(end));
}

async fn read_until_end(response: ResponseFuture, events: &mpsc::UnboundedSender<Event>) -> End {
    let response = match response.await {
        Ok(response) => response,
        Err(e) => return h2_end(&e),
    };
    // A trailers-only response carries the status in its headers.
    if let Some(end) = grpc_status(response.headers()) {
        return end;
    }
    let mut body: RecvStream = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(data) = body.data().await {
        let data = match data {
            Ok(data) => data,
            Err(e) => return h2_end(&e),
        };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
        while buf.len() >= PREFIX {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < PREFIX + len {
                break;
            }
            let message = buf.split_to(PREFIX + len).freeze().slice(PREFIX..);
            match DiscoveryResponse::decode(message) {
                Ok(r) => {
                    let _ = events.send(Event::Response {
                        version: r.version_info,
                        nonce: r.nonce,
                        resources: r.resources.len(),
                    });
                }
                Err(e) => return End::Error(format!("undecodable response: {e}")),
            }
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => grpc_status(&trailers).unwrap_or(End::NoStatus),
        Ok(None) => End::NoStatus,
        Err(e) => h2_end(&e),
    }
}

fn h2_end(e: &h2::Error) -> End {
    match e.reason() {
        Some(reason) => End::Reset(reason),
        None => End::Error(e.to_string()),
    }
}

/// The `grpc-status` and `grpc-message` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<End> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .map(|m| {
            percent_encoding::percent_decode(m.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some(End::Status { code, message })
}

/// The name of a gRPC status code.
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        _ => "another code",
    }
}
