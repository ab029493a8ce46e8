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

const MAX_KEPT: usize = 200 * 1024;

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
    let mut filter = Filter::new(&T::SCHEMA, MAX_KEPT);
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
        let mut filter = Filter::new(&DiscoveryRequest::SCHEMA, MAX_KEPT);
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
        tonic::Code::ResourceExhausted
    );
    // A field longer than its message.
    assert!(feed(framed(&[b"\x0a\x05v"])).is_err());
    // A node field longer than the message, and a sub-field longer than the node.
    assert!(feed(framed(&[b"\x12\x09\x0a\x01i"])).is_err());
    assert!(feed(framed(&[b"\x12\x03\x0a\x05i"])).is_err());
    // Groups.
    assert!(feed(framed(&[b"\x0b"])).is_err());
}

/// Feeds `wire` with a limit of `max_kept` bytes in pieces of `size`: the first message, or
/// the status it was refused with.
fn first_with_limit(
    wire: &[u8],
    size: usize,
    max_kept: usize,
) -> Result<DiscoveryRequest, tonic::Status> {
    let mut filter = Filter::new(&DiscoveryRequest::SCHEMA, max_kept);
    for piece in wire.chunks(size) {
        let mut data = Bytes::copy_from_slice(piece);
        while !data.is_empty() {
            if let Some(kept) = filter.feed(&mut data, false)? {
                assert!(kept.len() <= max_kept, "kept {} bytes", kept.len());
                return Ok(DiscoveryRequest::decode(kept.as_slice()).expect("decodes"));
            }
        }
    }
    panic!("no complete message");
}

#[test]
fn unknown_fields_and_status_details_are_skipped_not_kept() {
    let mut b = Vec::new();
    put_len(&mut b, 3, b"httpbin-credential");
    // Unknown to our schema: a 1 MiB field, and one with a number no version uses.
    put_len(&mut b, 7, &vec![b'u'; 1 << 20]);
    put_len(&mut b, 99, &vec![b'v'; 100_000]);
    let mut status = Vec::new();
    encode_key(1, WireType::Varint, &mut status);
    encode_varint(13, &mut status);
    put_len(&mut status, 2, b"Failed to load private key");
    put_len(&mut status, 3, &vec![b'd'; 500_000]);
    put_len(&mut b, 6, &status);
    let wire = framed(&[&b]);
    for size in [1, 1000, 16_384, wire.len()] {
        let got = first_with_limit(&wire, size, 1024).expect("within the limit");
        assert_eq!(got.resource_names, ["httpbin-credential"]);
        let detail = got.error_detail.expect("error_detail");
        assert_eq!(detail.code, 13);
        assert_eq!(detail.message, "Failed to load private key");
        assert!(detail.details.is_empty());
    }
}

#[test]
fn a_long_nack_message_is_replaced_by_its_length() {
    let mut status = Vec::new();
    put_len(&mut status, 2, &vec![b'm'; 1 << 20]);
    let mut b = Vec::new();
    put_len(&mut b, 6, &status);
    let wire = framed(&[&b]);
    for size in [7, 16_384, wire.len()] {
        let got = first_with_limit(&wire, size, 1024).expect("within the limit");
        let message = got.error_detail.expect("error_detail").message;
        assert_eq!(message, format!("({} bytes, not kept)", 1 << 20));
    }
}

#[test]
fn a_request_keeping_more_than_the_limit_is_refused() {
    let mut b = Vec::new();
    for i in 0..1000 {
        put_len(&mut b, 3, format!("name-{i:04}").as_bytes());
    }
    let wire = framed(&[&b]);
    for size in [1, 100, wire.len()] {
        let refused = first_with_limit(&wire, size, 4096).expect_err("over the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }
    assert_eq!(
        first_with_limit(&wire, 100, 20_000)
            .expect("within")
            .resource_names
            .len(),
        1000
    );
}

#[test]
fn lengths_beyond_the_request_are_refused_without_overflow() {
    // resource_names with a length of 2^64 - 1.
    let mut b = vec![0x1a];
    encode_varint(u64::MAX, &mut b);
    let wire = framed(&[&b]);
    for size in [1, wire.len()] {
        let refused = first_with_limit(&wire, size, 1024).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Internal);
    }
}
