//! What one message costs on the wire: encode a response for a 4 KiB certificate (once per
//! version), prepare a stream's frame from the shared encoded bytes (once per stream and
//! message), and decode an ACK carrying Envoy 1.40's whole `Node` (once per ACK).
//!
//! ```text
//! cargo bench --bench wire
//! cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! The frame and decode benches run sds-server's own code through its `__bench` module (not
//! a public API); the `prost` ones show what plain prost (as tonic's codec uses it) costs.

#[allow(dead_code)]
#[path = "../examples/load/credentials.rs"]
mod credentials;

use std::{hint::black_box, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message;
use sds::{
    core::{Secret, SecretName},
    proto::envoy::service::discovery::v3::DiscoveryRequest,
    server::__bench::{Encoded, decode_request},
};
use sds_test_util::envoy_node;

/// HTTP/2's default largest frame: what Envoy's requests arrive split into.
const MAX_FRAME: usize = 16_384;

/// `request` with its gRPC prefix, cut into DATA frames.
fn frames(request: &[u8]) -> Vec<Bytes> {
    let mut wire = BytesMut::with_capacity(5 + request.len());
    wire.put_u8(0);
    wire.put_u32(request.len() as u32);
    wire.put_slice(request);
    let wire = wire.freeze();
    (0..wire.len())
        .step_by(MAX_FRAME)
        .map(|at| wire.slice(at..(at + MAX_FRAME).min(wire.len())))
        .collect()
}

fn request(node: &[u8], version: &str, nonce: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    envoy_node::put_discovery_request(&mut buf, node, version, "httpbin-credential", nonce);
    buf
}

fn wire(c: &mut Criterion) {
    let name = SecretName::new("httpbin-credential").expect("valid name");
    let issuer = credentials::Issuer::new();
    let pem = issuer.issue(name.as_str());
    let cert = credentials::parse(&name, &pem);
    let leaf_der = cert.chain()[0].len();
    assert!(
        leaf_der >= 4_000,
        "a 4 KiB certificate, got {leaf_der} bytes"
    );
    let secret = Arc::new(Secret::from(cert));

    c.bench_function("encode/secret_4KiB", |b| {
        b.iter_batched(
            || Arc::clone(&secret),
            |secret| black_box(Encoded::new(name.clone(), secret)),
            BatchSize::SmallInput,
        )
    });

    let encoded = Encoded::new(name.clone(), Arc::clone(&secret));
    let mut nonce = 0u64;
    c.bench_function("frame/per_stream_from_shared", |b| {
        b.iter(|| {
            nonce += 1;
            black_box(encoded.frame(nonce))
        })
    });

    // 530 of sds-test-util's entries make the 61 KB Envoy 1.40 sends.
    let envoy = envoy_node::envoy_node(530);
    let minimal = envoy_node::minimal_node();
    let version = secret.version().to_string();
    let ack = request(&envoy, &version, "42");
    let first = request(&envoy, "", "");
    let ack_frames = frames(&ack);
    let first_frames = frames(&first);
    let minimal_frames = frames(&request(&minimal, &version, "42"));
    assert!(
        ack.len() > 60_000,
        "an Envoy-sized ACK, got {} bytes",
        ack.len()
    );
    let decoded = decode_request(&ack_frames, true).expect("decodes");
    assert_eq!(decoded.response_nonce, "42");
    assert!(decoded.node.is_none());

    let mut group = c.benchmark_group("decode");
    group.bench_function("ack_envoy_node", |b| {
        b.iter(|| black_box(decode_request(&ack_frames, true)))
    });
    group.bench_function("first_request_envoy_node", |b| {
        b.iter(|| black_box(decode_request(&first_frames, false)))
    });
    group.bench_function("ack_minimal_node", |b| {
        b.iter(|| black_box(decode_request(&minimal_frames, true)))
    });
    // For comparison: prost on the whole message, as tonic's codec does after copying the
    // frames into its buffer (the copy is not counted here).
    group.bench_function("prost_ack_envoy_node", |b| {
        b.iter(|| black_box(DiscoveryRequest::decode(ack.as_slice())))
    });
    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
