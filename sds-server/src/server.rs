//! The SDS service as a tonic server: routes `StreamSecrets` and `DeltaSecrets` to a
//! [`Pump`](crate::pump::Pump) over this crate's own framing, and `FetchSecrets` to tonic's
//! generated server.

use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
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

use crate::{
    SdsService, connections,
    fetch::Fetch,
    framing::Frames,
    pump::{Protocol, Pump},
    requests::{Decode, Pending, Requests},
    service::Inner,
    session::{Delta, SHOWN_CHARS, Sotw},
};

const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const DELTA_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";

/// The SDS service as a tonic server: add it with `Server::builder().add_service(..)`.
///
/// Made by [`SdsService::into_server`]. `StreamSecrets` and `DeltaSecrets` are framed by
/// this crate: requests are read from the HTTP/2 frames as they arrive, keeping only what the
/// protocol uses, and no stream has a codec buffer (see the crate docs). `FetchSecrets` goes
/// through tonic's codec.
#[derive(Clone)]
pub struct SecretDiscoveryServer {
    inner: Arc<Inner>,
    fetch: SecretDiscoveryServiceServer<Fetch>,
}

// === impl SdsService ===

impl SdsService {
    /// The tonic service to add to a `tonic::transport::Server`: the only way to serve it.
    pub fn into_server(self) -> SecretDiscoveryServer {
        let inner = self.inner;
        // FetchSecrets goes through tonic's codec, which holds a whole request: as much as a
        // stream may keep, plus room for a client's `Node` (Envoy's is about 61 KB).
        let max_fetch = inner.limits.max_kept_per_request() + 64 * 1024;
        let fetch = SecretDiscoveryServiceServer::new(Fetch {
            inner: Arc::clone(&inner),
        })
        .max_decoding_message_size(max_fetch);
        SecretDiscoveryServer { inner, fetch }
    }
}

// === impl SecretDiscoveryServer ===

impl fmt::Debug for SecretDiscoveryServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDiscoveryServer")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
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
        if let Err(status) = identity_encoding(&request) {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let response = match request.uri().path() {
            STREAM_SECRETS => streaming::<Sotw, _>(&self.inner, request),
            DELTA_SECRETS => streaming::<Delta, _>(&self.inner, request),
            // tonic's codec holds a fetch request whole until it is complete: its bytes count
            // against the connection's budget for partly received requests, as a stream's do.
            _ => {
                let pending = connections::budget(request.extensions()).map(|budget| {
                    Pending::new(budget, self.inner.limits.pending_bytes_per_connection)
                });
                let request = request.map(|body| Budgeted {
                    body: Box::pin(body),
                    pending,
                });
                return self.fetch.call(request);
            }
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// `UNIMPLEMENTED` for a compressed request (whose `grpc-encoding` is shown escaped and cut
/// short; tonic's own answer would echo it whole).
fn identity_encoding<B>(request: &http::Request<B>) -> Result<(), Status> {
    match request
        .headers()
        .get("grpc-encoding")
        .filter(|e| e.as_bytes() != b"identity")
    {
        None => Ok(()),
        Some(encoding) => {
            let encoding = Untrusted::lossy(encoding.as_bytes(), SHOWN_CHARS);
            Err(Status::unimplemented(format!(
                "requests compressed with \"{encoding}\" are not supported"
            )))
        }
    }
}

/// A request body whose bytes are counted against a connection's budget until it is dropped.
struct Budgeted<B> {
    body: Pin<Box<B>>,
    pending: Option<Pending>,
}

impl<B> http_body::Body for Budgeted<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, StdError>>> {
        let frame = match self.body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let len = frame.data_ref().map_or(0, Bytes::len);
        if let Some(pending) = self.pending.as_mut()
            && let Err(status) = pending.take(len)
        {
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Starts a stream of protocol `P` on `request`.
fn streaming<P, B>(inner: &Arc<Inner>, request: http::Request<B>) -> http::Response<Body>
where
    P: Protocol,
    P::Request: Decode,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if let Err(status) = inner.refuse_when_shutting_down() {
        return status.into_http();
    }
    let connection = connections::budget(request.extensions());
    let peer = connections::peer(request.extensions());
    let pending = connection
        .clone()
        .map(|budget| Pending::new(budget, inner.limits.pending_bytes_per_connection));
    let max_kept = inner.limits.max_kept_per_request();
    let inbound = Requests::<P::Request>::new(Body::new(request.into_body()), max_kept, pending);
    let frames = Pump::<P, _>::new(Arc::clone(inner), inbound, connection, peer).run();
    let mut response = http::Response::new(Body::new(Frames::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}
