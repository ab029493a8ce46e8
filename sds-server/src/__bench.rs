//! Internals exposed for the workspace's criterion benches (`benches/` at the root). Not a
//! stable API: nothing outside this repository may use it.

use std::sync::Arc;

use bytes::Bytes;
use sds_core::{Secret, SecretName};
use sds_proto::envoy::service::discovery::v3::DiscoveryRequest;

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
