//! The server's request reader (`sds-server/src/requests.rs`): the bytes of a request body's
//! HTTP/2 DATA frames to discovery requests, without tonic's codec.
//!
//! Input: 17 bytes of settings, then the body (gRPC-framed requests).
//! - byte 0: bit 0 skip `node`, bit 1 `DeltaSecrets` (else `StreamSecrets`), bits 2-4 the
//!   most bytes kept of one request ([`MAX_KEPT`]), bits 5-7 the connection's budget for
//!   partly received requests ([`PENDING`]);
//! - bytes 1-16: eight offsets (u16, big-endian) where the body is cut into frames.
//!
//! Properties: no panic; the body read whole, cut at the offsets and (if short) one byte per
//! frame gives the same requests and ends the same way (a refusal for a limit with the same
//! code: which limit a frame crosses first may depend on the cut); the connection's budget
//! is given back; every request read equals prost's decoding of its message, but for what
//! the reader drops by design (a skipped `node`, a NACK message over 1024 bytes).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sds_fuzz::{bytewise, frames_at};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sds_server::__bench::{Code, Read, read_delta_requests, read_requests};

/// The server's default (`Limits::max_kept_per_request`), then limits small enough to hit.
const MAX_KEPT: [usize; 8] = [45_760, 0, 16, 64, 256, 1024, 4096, 200 * 1024];
/// The server's default (4 MiB), then budgets small enough to hit.
const PENDING: [usize; 8] = [4 << 20, 0, 8, 64, 512, 4096, 65_536, 4 << 20];

/// Longest NACK message the reader keeps (`requests::MAX_NACK_MESSAGE`).
const MAX_NACK_MESSAGE: usize = 1024;

const SETTINGS: usize = 17;

/// Bodies up to this long are also read one byte per frame.
const BYTEWISE_MAX: usize = 2048;

fuzz_target!(|data: &[u8]| {
    if data.len() < SETTINGS {
        return;
    }
    let flags = data[0];
    let skip_node = flags & 1 != 0;
    let delta = flags & 2 != 0;
    let max_kept = MAX_KEPT[usize::from((flags >> 2) & 7)];
    let pending = PENDING[usize::from(flags >> 5)];
    let offsets: Vec<usize> = data[1..SETTINGS]
        .chunks(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])))
        .collect();
    let wire = Bytes::copy_from_slice(&data[SETTINGS..]);
    if delta {
        check::<DeltaDiscoveryRequest>(&wire, &offsets, skip_node, max_kept, pending);
    } else {
        check::<DiscoveryRequest>(&wire, &offsets, skip_node, max_kept, pending);
    }
});

/// A request type, read by the server and decoded by prost.
trait Request: Message + Default + PartialEq + std::fmt::Debug {
    fn read(frames: &[Bytes], skip_node: bool, max_kept: usize, pending: usize) -> Read<Self>;
    /// Makes prost's decoding what the reader keeps: `node` dropped when skipped, a long NACK
    /// message replaced by a note of its length.
    fn as_kept(&mut self, skip_node: bool);
}

impl Request for DiscoveryRequest {
    fn read(frames: &[Bytes], skip_node: bool, max_kept: usize, pending: usize) -> Read<Self> {
        read_requests(frames, skip_node, max_kept, pending)
    }

    fn as_kept(&mut self, skip_node: bool) {
        if skip_node {
            self.node = None;
        }
        if let Some(status) = self.error_detail.as_mut() {
            note_long(&mut status.message);
        }
    }
}

impl Request for DeltaDiscoveryRequest {
    fn read(frames: &[Bytes], skip_node: bool, max_kept: usize, pending: usize) -> Read<Self> {
        read_delta_requests(frames, skip_node, max_kept, pending)
    }

    fn as_kept(&mut self, skip_node: bool) {
        if skip_node {
            self.node = None;
        }
        if let Some(status) = self.error_detail.as_mut() {
            note_long(&mut status.message);
        }
    }
}

fn note_long(message: &mut String) {
    if message.len() > MAX_NACK_MESSAGE {
        *message = format!("({} bytes, not kept)", message.len());
    }
}

fn check<T: Request>(
    wire: &Bytes,
    offsets: &[usize],
    skip_node: bool,
    max_kept: usize,
    pending: usize,
) {
    let whole = T::read(std::slice::from_ref(wire), skip_node, max_kept, pending);
    check_budget(&whole);
    let cut = T::read(&frames_at(wire, offsets), skip_node, max_kept, pending);
    check_budget(&cut);
    assert_same(&whole, &cut, "cut at the offsets");
    if wire.len() <= BYTEWISE_MAX {
        let bytes = T::read(&bytewise(wire), skip_node, max_kept, pending);
        check_budget(&bytes);
        assert_same(&whole, &bytes, "one byte per frame");
    }
    for (request, payload) in whole.requests.iter().zip(messages(wire)) {
        // The reader keeps less than prost decodes, so it may accept what prost refuses (a
        // malformed `node` it skips); not the other way round, checked where both decode.
        if let Ok(mut decoded) = T::decode(payload) {
            decoded.as_kept(skip_node);
            assert_eq!(request, &decoded, "the reader and prost disagree");
        }
    }
}

fn check_budget<T>(read: &Read<T>) {
    assert_eq!(read.pending_after_drop, 0, "the connection's budget leaked");
    if read.error.is_none() {
        assert_eq!(read.pending_at_end, 0, "budget held between requests");
    }
}

fn assert_same<T: Request>(whole: &Read<T>, other: &Read<T>, how: &str) {
    assert_eq!(whole.requests, other.requests, "requests differ when {how}");
    match (&whole.error, &other.error) {
        (Some((Code::ResourceExhausted, _)), Some((Code::ResourceExhausted, _))) => {}
        (a, b) => assert_eq!(a, b, "the stream ends differently when {how}"),
    }
}

/// The payloads of the complete gRPC messages at the start of `wire`.
fn messages(wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = wire;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(payload) = rest.get(5..5 + len) else {
            break;
        };
        out.push(payload);
        rest = &rest[5 + len..];
    }
    out
}
