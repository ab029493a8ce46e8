use bytes::{BufMut, Bytes};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use sds_proto::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest},
};

use super::{Decode, Filter, MAX_REQUEST};

fn put_len(buf: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(payload.len() as u64, buf);
    buf.extend_from_slice(payload);
}

/// A `Node` with the fields Envoy sends beyond our schema: metadata (3), locality (4), build
/// version (8, with a varint inside), `extensions` (9) and client features (10).
fn envoy_node(extensions: usize) -> Vec<u8> {
    let mut b = Vec::new();
    put_len(
        &mut b,
        1,
        b"router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
    );
    put_len(&mut b, 2, b"istio-ingressgateway");
    put_len(&mut b, 3, &[0x0a, 0x03, b'k', b'e', b'y']);
    put_len(&mut b, 4, b"\x0a\x09eu-west-1");
    put_len(&mut b, 6, b"envoy");
    put_len(&mut b, 8, &[0x0a, 0x06, 0x08, 0x01, 0x10, 0x28, 0x18, 0x00]);
    for i in 0..extensions {
        let mut e = Vec::new();
        put_len(
            &mut e,
            1,
            format!("envoy.filters.http.extension_{i:03}").as_bytes(),
        );
        put_len(&mut e, 2, b"envoy.filters.http");
        encode_key(5, WireType::Varint, &mut e);
        encode_varint(1, &mut e);
        put_len(&mut b, 9, &e);
    }
    put_len(&mut b, 10, b"xds.config.resource-in-sotw");
    // A fixed64 and a fixed32 field unknown to us.
    encode_key(13, WireType::SixtyFourBit, &mut b);
    b.put_u64_le(7);
    encode_key(14, WireType::ThirtyTwoBit, &mut b);
    b.put_u32_le(7);
    b
}

fn sotw_request(node: &[u8], version: &str, nonce: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_len(&mut b, 1, version.as_bytes());
    put_len(&mut b, 2, node);
    put_len(&mut b, 3, b"httpbin-credential");
    put_len(&mut b, 4, sds_proto::SECRET_TYPE_URL.as_bytes());
    put_len(&mut b, 5, nonce.as_bytes());
    // resource_locators = 7, unknown to our schema.
    put_len(&mut b, 7, b"\x0a\x03loc");
    b
}

fn framed(messages: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.push(0);
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// Feeds `wire` in pieces of `size` bytes; returns the decoded messages.
fn run<T: Decode>(wire: &[u8], size: usize, skip_node: bool) -> Vec<T> {
    let mut filter = Filter::new(T::NODE);
    let mut out = Vec::new();
    for piece in wire.chunks(size) {
        let mut data = Bytes::copy_from_slice(piece);
        while !data.is_empty() {
            match filter.feed(&mut data, skip_node).expect("well-formed") {
                Some(kept) => out.push(T::decode(kept.as_slice()).expect("decodes")),
                None => assert!(data.is_empty(), "stops only when the data is used up"),
            }
        }
    }
    assert!(filter.between_messages());
    out
}

#[test]
fn envoy_sized_requests_in_any_slicing() {
    let node = envoy_node(500);
    assert!(node.len() > 20_000);
    let first = sotw_request(&node, "", "");
    let ack = sotw_request(&node, "v1", "1");
    let wire = framed(&[&first, &ack]);
    let full = |m: &[u8]| DiscoveryRequest::decode(m).expect("decode");
    for size in [1, 2, 3, 7, 100, 16_384, wire.len()] {
        let got: Vec<DiscoveryRequest> = run(&wire, size, false);
        assert_eq!(got, [full(&first), full(&ack)], "pieces of {size}");
        let node = got[0].node.as_ref().expect("node");
        assert_eq!(node.cluster, "istio-ingressgateway");
        assert_eq!(node.user_agent_name, "envoy");

        let skipped: Vec<DiscoveryRequest> = run(&wire, size, true);
        let mut expected = full(&ack);
        expected.node = None;
        assert_eq!(skipped[1], expected, "pieces of {size}");
    }
}

#[test]
fn the_kept_node_fields_are_the_schema_fields() {
    // Every field our `Node` has survives the filter.
    let node = Node {
        id: "i".to_owned(),
        cluster: "c".to_owned(),
        user_agent_name: "u".to_owned(),
    };
    let mut b = Vec::new();
    put_len(&mut b, 1, &node.encode_to_vec());
    let got: Vec<DeltaDiscoveryRequest> = run(&framed(&[&b]), 1, false);
    assert_eq!(got[0].node.as_ref(), Some(&node));
}

#[test]
fn empty_messages_and_empty_nodes() {
    let mut empty_node = Vec::new();
    put_len(&mut empty_node, 2, &[]);
    let got: Vec<DiscoveryRequest> = run(&framed(&[&[], &empty_node, &[]]), 1, false);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].node, Some(Node::default()));
}

#[test]
fn malformed_requests_are_refused() {
    let feed = |wire: Vec<u8>| {
        let mut filter = Filter::new(2);
        let mut data = Bytes::from(wire);
        filter.feed(&mut data, false).map(|_| ())
    };
    let mut compressed = framed(&[b"\x0a\x01v"]);
    compressed[0] = 1;
    assert_eq!(
        feed(compressed).expect_err("refused").code(),
        tonic::Code::Unimplemented
    );
    let mut huge = vec![0];
    huge.extend_from_slice(&(MAX_REQUEST as u32 + 1).to_be_bytes());
    assert_eq!(
        feed(huge).expect_err("refused").code(),
        tonic::Code::OutOfRange
    );
    // A field longer than its message.
    assert!(feed(framed(&[b"\x0a\x05v"])).is_err());
    // A node field longer than the message, and a sub-field longer than the node.
    assert!(feed(framed(&[b"\x12\x09\x0a\x01i"])).is_err());
    assert!(feed(framed(&[b"\x12\x03\x0a\x05i"])).is_err());
    // Groups.
    assert!(feed(framed(&[b"\x0b"])).is_err());
}
