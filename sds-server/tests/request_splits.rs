//! A request body cut into DATA frames at any byte reads as the same requests: Envoy's first
//! request with its whole `Node` (`sds-test-util`'s Envoy-sized one, 58 KB) and an ACK after
//! it, cut at every offset, through the server's request reader (feature `__bench`; the fuzz
//! target `request_reader` checks the same for any body and several cuts).

use bytes::Bytes;
use prost::Message as _;
use sds_proto::envoy::service::discovery::v3::DiscoveryRequest;
use sds_server::__bench::{Read, read_requests};
use sds_test_util::envoy_node::{
    ENVOY_EXTENSIONS, envoy_node, minimal_node, put_discovery_request,
};

/// The server's defaults: `Limits::max_kept_per_request` and the connection's budget for
/// partly received requests (4 MiB).
const MAX_KEPT: usize = 45_760;
const PENDING: usize = 4 << 20;

fn framed(messages: &[&[u8]]) -> Bytes {
    let mut out = Vec::new();
    for m in messages {
        out.push(0);
        out.extend_from_slice(&u32::try_from(m.len()).expect("small").to_be_bytes());
        out.extend_from_slice(m);
    }
    out.into()
}

fn request(node: &[u8], version: &str, nonce: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_discovery_request(
        &mut b,
        node,
        version,
        "kubernetes://istio-system/httpbin-credential",
        nonce,
    );
    b
}

fn read(frames: &[Bytes], skip_node: bool) -> Read<DiscoveryRequest> {
    read_requests(frames, skip_node, MAX_KEPT, PENDING)
}

fn check_every_cut(wire: &Bytes, skip_node: bool, expected: &[DiscoveryRequest]) {
    let whole = read(std::slice::from_ref(wire), skip_node);
    assert_eq!(whole.requests, expected);
    assert_eq!(whole.error, None);
    for cut in 0..=wire.len() {
        let frames = [wire.slice(..cut), wire.slice(cut..)];
        let read = read(&frames, skip_node);
        assert_eq!(read.requests, expected, "cut at byte {cut}");
        assert_eq!(read.error, None, "cut at byte {cut}");
        assert_eq!(read.pending_at_end, 0, "cut at byte {cut}");
    }
}

#[test]
fn envoy_requests_cut_at_every_byte_read_the_same() {
    let node = envoy_node(ENVOY_EXTENSIONS);
    assert!(node.len() > 50_000, "an Envoy-sized Node");
    let first = request(&node, "", "");
    let ack = request(&minimal_node(), "7d9e6f0a1b2c3d4e", "1");
    let wire = framed(&[&first, &ack]);

    let decoded = |m: &[u8]| DiscoveryRequest::decode(m).expect("prost decodes it");
    let expected = [decoded(&first), decoded(&ack)];
    let envoy = expected[0]
        .node
        .as_ref()
        .expect("the first request has a node");
    assert_eq!(envoy.user_agent_name, "envoy");
    check_every_cut(&wire, false, &expected);

    // Once a stream's node is known, later requests skip theirs undecoded.
    let skipped = expected.map(|mut r| {
        r.node = None;
        r
    });
    check_every_cut(&wire, true, &skipped);
}
