//! Internals exposed for the workspace's criterion benches (`benches/` at the root) and fuzz
//! targets (`fuzz/`). Not a stable API: nothing outside this repository may use it.

use std::sync::Arc;

use bytes::Bytes;
use sds_core::{Secret, SecretName};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

use crate::{
    encode::Encoder,
    requests::{Decode, Filter},
    session::Nonce,
};

/// One secret version, encoded the way every stream gets it.
#[derive(Debug)]
pub struct Encoded {
    encoder: Encoder,
    name: SecretName,
    secret: Arc<Secret>,
}

impl Encoded {
    /// Encodes `secret` under `name`: what the first stream to send a version pays, once.
    pub fn new(name: SecretName, secret: Arc<Secret>) -> Self {
        let encoder = Encoder::default();
        let _ = encoder.any(&name, &secret);
        Self {
            encoder,
            name,
            secret,
        }
    }

    /// The state-of-the-world response one stream sends for this secret, framed: the
    /// stream's own part (gRPC prefix, nonce) and the bytes shared by every stream.
    pub fn frame(&self, nonce: u64) -> (Bytes, Option<Bytes>) {
        let resources = [(self.name.clone(), Arc::clone(&self.secret))];
        self.encoder
            .sotw(&resources, self.secret.version(), Nonce::from(nonce))
            .into_parts()
    }
}

/// Reads one gRPC-framed `DiscoveryRequest` from `frames` (the DATA frames it came in) the way
/// a stream does, skipping the `node` undecoded if `skip_node` (every request after a
/// stream's first).
pub fn decode_request(frames: &[Bytes], skip_node: bool) -> Option<DiscoveryRequest> {
    let mut filter = Filter::new(
        &DiscoveryRequest::SCHEMA,
        crate::Limits::default().max_kept_per_request(),
    );
    for frame in frames {
        let mut data = frame.clone();
        if let Some(kept) = filter.feed(&mut data, skip_node).ok()? {
            return prost::Message::decode(kept.as_slice()).ok();
        }
    }
    None
}

/// The gRPC status codes [`Read::error`] holds.
pub use tonic::Code;

/// What a stream read from its request body (for the fuzz targets): every request, then how
/// reading ended.
#[derive(Debug)]
pub struct Read<T> {
    /// The requests decoded, in order.
    pub requests: Vec<T>,
    /// `None` when the body ended between two requests; else the status the stream would end
    /// with (its code and message).
    pub error: Option<(tonic::Code, String)>,
    /// Bytes the connection's budget for partly received requests held when reading ended.
    pub pending_at_end: usize,
    /// The same, once the reader was dropped: always 0 unless the budget leaks.
    pub pending_after_drop: usize,
}

/// Reads `frames` (the DATA frames of a `StreamSecrets` request body) as a stream does, with
/// the server's reader, until the body ends or a request is refused. `skip_node`: every
/// request's `node` is skipped undecoded (as once the stream's node is known); at most
/// `max_kept` bytes are kept of one request, and at most `pending_max` held by the
/// connection for partly received requests.
pub fn read_requests(
    frames: &[Bytes],
    skip_node: bool,
    max_kept: usize,
    pending_max: usize,
) -> Read<DiscoveryRequest> {
    read(frames, skip_node, max_kept, pending_max)
}

/// [`read_requests`] for `DeltaSecrets`.
pub fn read_delta_requests(
    frames: &[Bytes],
    skip_node: bool,
    max_kept: usize,
    pending_max: usize,
) -> Read<DeltaDiscoveryRequest> {
    read(frames, skip_node, max_kept, pending_max)
}

fn read<T: Decode>(
    frames: &[Bytes],
    skip_node: bool,
    max_kept: usize,
    pending_max: usize,
) -> Read<T> {
    use futures_util::FutureExt as _;

    use crate::requests::{Inbound as _, Pending, Requests};

    let budget = Arc::new(crate::limits::ConnectionBudget::default());
    let body = tonic::body::Body::new(DataFrames(frames.iter().cloned().collect()));
    let pending = Pending::new(Arc::clone(&budget), pending_max);
    let mut reader = Requests::<T>::new(body, max_kept, Some(pending));
    let mut requests = Vec::new();
    let error = loop {
        let message = reader
            .message(skip_node)
            .now_or_never()
            .expect("every frame is ready at once");
        match message {
            Ok(Some(request)) => requests.push(request),
            Ok(None) => break None,
            Err(status) => break Some((status.code(), status.message().to_owned())),
        }
    };
    let pending_at_end = budget.pending();
    drop(reader);
    Read {
        requests,
        error,
        pending_at_end,
        pending_after_drop: budget.pending(),
    }
}

/// A request body whose DATA frames are all there.
struct DataFrames(std::collections::VecDeque<Bytes>);

impl http_body::Body for DataFrames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|data| Ok(http_body::Frame::data(data))),
        )
    }
}

/// A policy rules file's content, parsed as `RulesFile::load` does.
pub use crate::policy::ParsedRules;
