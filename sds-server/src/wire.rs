//! The SDS service as a tonic server, with its own gRPC framing for the two streaming
//! methods: requests are read by [`requests`](crate::requests) straight from the HTTP/2 DATA
//! frames, and each response is written as this stream's prefix and nonce followed by bytes
//! every stream shares. No stream has a codec buffer (tonic gives each 8 KiB to read and 8 KiB
//! to write, and grows the read one to the largest request for good).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use futures_core::Stream;
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};
use sds_core::Untrusted;
use sds_proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SERVICE_NAME, SecretDiscoveryServiceServer,
};
use tonic::{
    Status,
    body::Body,
    codegen::{BoxFuture, Service, StdError, http},
    server::NamedService,
};
use zeroize::Zeroizing;

use crate::{
    SdsService,
    encode::{Encoder, secret_bytes},
    requests::{Decode, Requests},
    service::{Inner, IntoWire, Pump},
    session::{Delta, DeltaResponse, SHOWN_CHARS, Sotw, SotwResponse},
};

const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const DELTA_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The SDS service as a tonic server: add it with `Server::builder().add_service(..)`.
///
/// Made by [`SdsService::into_server`]. `StreamSecrets` and `DeltaSecrets` are framed by
/// this crate (no per-stream codec buffers; see the crate docs); `FetchSecrets` and anything
/// else go through the tonic-generated `SecretDiscoveryServiceServer`.
#[derive(Clone)]
pub struct SecretDiscoveryServer {
    sds: SdsService,
    generated: SecretDiscoveryServiceServer<SdsService>,
}

impl SecretDiscoveryServer {
    pub(crate) fn new(sds: SdsService) -> Self {
        // FetchSecrets goes through tonic's codec, which holds a whole request: as much as a
        // stream may keep, plus room for a client's `Node`.
        let max_fetch = sds.limits().max_kept_per_request() + 256 * 1024;
        Self {
            generated: SecretDiscoveryServiceServer::new(sds.clone())
                .max_decoding_message_size(max_fetch),
            sds,
        }
    }
}

impl std::fmt::Debug for SecretDiscoveryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDiscoveryServer")
            .field("sds", &self.sds)
            .finish()
    }
}

impl NamedService for SecretDiscoveryServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for SecretDiscoveryServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = match request.uri().path() {
            STREAM_SECRETS => streaming::<Sotw, _>(&self.sds, request),
            DELTA_SECRETS => streaming::<Delta, _>(&self.sds, request),
            _ => return self.generated.call(request),
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// Starts a stream of protocol `P` on `request`.
fn streaming<P, B>(sds: &SdsService, request: http::Request<B>) -> http::Response<Body>
where
    P: crate::service::Protocol,
    P::Request: Decode,
    P::Response: IntoFrame,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if let Err(status) = sds.refuse_when_shutting_down() {
        return status.into_http();
    }
    if let Some(encoding) = request
        .headers()
        .get("grpc-encoding")
        .filter(|e| e.as_bytes() != b"identity")
    {
        let encoding = Untrusted::lossy(encoding.as_bytes(), SHOWN_CHARS);
        return Status::unimplemented(format!(
            "requests compressed with \"{encoding}\" are not supported"
        ))
        .into_http();
    }
    let inner: Arc<Inner> = sds.inner();
    let max_kept = inner.limits.max_kept_per_request();
    let inbound = Requests::<P::Request>::new(Body::new(request.into_body()), max_kept);
    let frames = Pump::<P, _>::new(inner, inbound).run(IntoFrame::into_frame);
    let mut response = http::Response::new(Body::new(Frames {
        stream: Box::pin(frames),
        next: None,
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

// === Responses ===

/// One response message on the wire: a whole gRPC frame, or this stream's part of it (the
/// prefix and the nonce) followed by bytes every stream shares.
pub(crate) struct Wire {
    head: Bytes,
    shared: Option<Bytes>,
}

impl Wire {
    /// This stream's part, and the shared part if any.
    pub(crate) fn into_parts(self) -> (Bytes, Option<Bytes>) {
        (self.head, self.shared)
    }
}

/// Turns a session response into its [`Wire`] form.
pub(crate) trait IntoFrame: IntoWire {
    fn into_frame(self, encoder: &Encoder) -> Wire;
}

impl IntoFrame for SotwResponse {
    /// A response with one secret (Envoy's one stream per secret) is the nonce field followed
    /// by the fields cached with that secret's encoding: no copy of the secret per stream.
    fn into_frame(self, encoder: &Encoder) -> Wire {
        if let [(name, secret)] = self.resources.as_slice()
            && let Some(shared) = encoder.sotw_fields(name, secret)
        {
            debug_assert_eq!(self.version_info, secret.version().to_string());
            let nonce = self.nonce.as_bytes();
            // DiscoveryResponse.nonce = 5
            let field = 1 + encoded_len_varint(nonce.len() as u64) + nonce.len();
            let mut head = Vec::with_capacity(PREFIX + field);
            head.put_u8(0);
            head.put_u32(u32::try_from(field + shared.len()).unwrap_or(u32::MAX));
            encode_key(5, WireType::LengthDelimited, &mut head);
            encode_varint(nonce.len() as u64, &mut head);
            head.extend_from_slice(nonce);
            return Wire {
                head: Bytes::from(head),
                shared: Some(shared),
            };
        }
        Wire {
            head: frame(&self.into_wire(encoder)),
            shared: None,
        }
    }
}

impl IntoFrame for DeltaResponse {
    fn into_frame(self, encoder: &Encoder) -> Wire {
        Wire {
            head: frame(&self.into_wire(encoder)),
            shared: None,
        }
    }
}

/// One length-prefixed gRPC message holding `message`. The bytes may carry a private key:
/// they are zeroized when the transport drops them.
pub(crate) fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Zeroizing::new(Vec::with_capacity(PREFIX + len));
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut *buf);
    secret_bytes(buf)
}

/// Longest `grpc-message` sent, in bytes.
const MAX_STATUS_MESSAGE: usize = 1024;

/// `status` with its message cut to [`MAX_STATUS_MESSAGE`] bytes (at a character boundary).
fn bounded(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE {
        return status;
    }
    let mut end = MAX_STATUS_MESSAGE - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Status::new(status.code(), format!("{}…", &message[..end]))
}

/// The response body: each message's chunks, then the trailers with the status.
struct Frames<S> {
    stream: Pin<Box<S>>,
    /// The shared part of the message whose head was just sent.
    next: Option<Bytes>,
    done: bool,
}

impl<S> http_body::Body for Frames<S>
where
    S: Stream<Item = Result<Wire, Status>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(shared) = self.next.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(shared))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(wire))) => {
                self.next = wire.shared;
                return Poll::Ready(Some(Ok(http_body::Frame::data(wire.head))));
            }
            Poll::Ready(Some(Err(status))) => bounded(status),
            Poll::Ready(None) => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::with_capacity(2);
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none()
    }
}
