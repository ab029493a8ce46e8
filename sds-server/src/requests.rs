//! Requests read straight from the HTTP/2 DATA frames of a stream, without tonic's codec.
//!
//! Envoy sends its whole `Node` (about 61 KB with Envoy 1.40's extension list) on every
//! request, ACKs included. tonic's decoder would copy each request into a per-stream buffer
//! that grows to the largest request and keeps that size (about 130 KB per idle stream), and
//! would hold every partly received request whole: with thousands of streams subscribing at
//! once, that peak is gigabytes. Here each DATA frame is consumed as it arrives: the fields the
//! schema keeps are copied (a few hundred bytes), everything else is skipped, and the frame is
//! released at once. Between requests a stream holds no buffer at all.
//!
//! The `Node` is decoded from the first request of a stream that carries one; later requests
//! skip it undecoded (xDS lets clients send it only once, `set_node_on_first_message_only`,
//! and Envoy never changes it within a stream). From that first `Node`, only the fields of our
//! trimmed schema are kept; Envoy's extension list, metadata and the rest are skipped.

use std::{
    future::{Future, poll_fn},
    marker::PhantomData,
    pin::Pin,
};

use bytes::{Buf, Bytes};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::{Status, body::Body};

/// The largest request accepted, as tonic's default (4 MiB).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The fields of `envoy.config.core.v3.Node` that our trimmed schema has: `id`, `cluster`,
/// `user_agent_name`. Only these are kept from a client's `Node`.
const NODE_FIELDS: [u32; 3] = [1, 2, 6];

/// A request type that carries a `Node`.
pub(crate) trait Decode: Message + Default + Send + 'static {
    /// The field number of `node`.
    const NODE: u32;
}

impl Decode for DiscoveryRequest {
    const NODE: u32 = 2;
}

impl Decode for DeltaDiscoveryRequest {
    const NODE: u32 = 1;
}

/// Where a [`Pump`](crate::service::Pump) reads requests from.
pub(crate) trait Inbound<T>: Send + 'static {
    /// The next request, `None` when the client half-closed the stream. `skip_node`: the
    /// stream's node is known, the request's `node` need not be decoded. Cancel-safe.
    fn message(
        &mut self,
        skip_node: bool,
    ) -> impl Future<Output = Result<Option<T>, Status>> + Send;
}

impl<T: Send + 'static> Inbound<T> for tonic::Streaming<T> {
    fn message(
        &mut self,
        _skip_node: bool,
    ) -> impl Future<Output = Result<Option<T>, Status>> + Send {
        tonic::Streaming::message(self)
    }
}

/// Requests decoded from a request body, frame by frame.
pub(crate) struct Requests<T> {
    body: Body,
    /// What is left of the last DATA frame.
    pending: Bytes,
    filter: Filter,
    ended: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T: Decode> Requests<T> {
    pub(crate) fn new(body: Body) -> Self {
        Self {
            body,
            pending: Bytes::new(),
            filter: Filter::new(T::NODE),
            ended: false,
            _message: PhantomData,
        }
    }
}

impl<T: Decode> Inbound<T> for Requests<T> {
    async fn message(&mut self, skip_node: bool) -> Result<Option<T>, Status> {
        loop {
            if self.pending.has_remaining() {
                let kept = self.filter.feed(&mut self.pending, skip_node)?;
                if !self.pending.has_remaining() {
                    // An empty slice still holds the frame's buffer: let it go.
                    self.pending = Bytes::new();
                }
                if let Some(kept) = kept {
                    let request = T::decode(kept.as_slice())
                        .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))?;
                    return Ok(Some(request));
                }
                continue;
            }
            if self.ended {
                return if self.filter.between_messages() {
                    Ok(None)
                } else {
                    Err(Status::internal(
                        "the request stream ended inside a message",
                    ))
                };
            }
            let frame =
                poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut self.body), cx)).await;
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }
}

// === Filter ===

/// Reads gRPC messages from a byte stream in any slicing, keeping the bytes of every field but
/// `node` (skipped, or reduced to [`NODE_FIELDS`]), so that a message can be decoded from a
/// small copy once complete.
#[derive(Debug)]
pub(crate) struct Filter {
    node_tag: u32,
    step: Step,
    /// The current message's fields, as kept.
    kept: Vec<u8>,
    /// The current `node`'s kept fields, while inside it.
    node: Vec<u8>,
    /// Bytes left in the current message.
    message_left: usize,
    /// Bytes left in the current `node` field, while inside it.
    node_left: Option<usize>,
    /// Whether this message's `node` is skipped (latched at its start).
    skip_node: bool,
}

#[derive(Debug)]
enum Step {
    /// Reading the 5-byte message prefix.
    Prefix { buf: [u8; PREFIX], filled: usize },
    /// Reading a field's key, and its length or varint value.
    Header { buf: [u8; 20], filled: usize },
    /// Copying this many bytes of the current field.
    Copy(usize),
    /// Dropping this many bytes of the current field.
    Skip(usize),
}

/// What a complete field header says.
struct Header {
    tag: u32,
    wire_type: u8,
    /// The value's length after the header (0 for a varint, whose value is in the header).
    len: usize,
    /// The header's own length.
    size: usize,
}

impl Filter {
    pub(crate) fn new(node_tag: u32) -> Self {
        Self {
            node_tag,
            step: Step::Prefix {
                buf: [0; PREFIX],
                filled: 0,
            },
            kept: Vec::new(),
            node: Vec::new(),
            message_left: 0,
            node_left: None,
            skip_node: false,
        }
    }

    /// Whether no message is partly read.
    pub(crate) fn between_messages(&self) -> bool {
        matches!(self.step, Step::Prefix { filled: 0, .. })
    }

    /// Consumes bytes of `data` until a message is complete (returning its kept fields) or
    /// `data` is exhausted (returning `None`).
    pub(crate) fn feed(
        &mut self,
        data: &mut Bytes,
        skip_node: bool,
    ) -> Result<Option<Vec<u8>>, Status> {
        loop {
            if let Step::Prefix { .. } = self.step {
                if !self.read_prefix(data, skip_node)? {
                    return Ok(None);
                }
            } else {
                let level_left = self.node_left.unwrap_or(self.message_left);
                let copy = matches!(self.step, Step::Copy(_));
                match &mut self.step {
                    Step::Prefix { .. } => unreachable!("handled above"),
                    Step::Header { buf, filled } => {
                        if !data.has_remaining() {
                            return Ok(None);
                        }
                        if *filled == 0 {
                            // Usually the whole header is in this frame: parse it in place.
                            let window = &data[..data.len().min(20).min(level_left)];
                            if let Some(header) = parse_header(window)? {
                                let whole = header.size + header.len;
                                let skipped_in_node =
                                    self.node_left.is_some() && !NODE_FIELDS.contains(&header.tag);
                                if skipped_in_node && whole <= data.len() && whole <= level_left {
                                    // Envoy's extension list: hundreds of these in a row.
                                    data.advance(whole);
                                    self.consumed(whole);
                                    if let Some(kept) = self.end_of_field() {
                                        return Ok(Some(kept));
                                    }
                                    continue;
                                }
                                let mut raw = [0u8; 20];
                                let raw = &mut raw[..header.size];
                                data.copy_to_slice(raw);
                                self.on_header(raw, header)?;
                                if let Some(kept) = self.end_of_field() {
                                    return Ok(Some(kept));
                                }
                                continue;
                            }
                        }
                        if *filled >= level_left {
                            return Err(malformed("a field runs past the end of its message"));
                        }
                        buf[*filled] = data.get_u8();
                        *filled += 1;
                        let (buf, filled) = (*buf, *filled);
                        match parse_header(&buf[..filled])? {
                            None if filled == buf.len() => {
                                return Err(malformed("a field header is too long"));
                            }
                            None => {}
                            Some(header) => self.on_header(&buf[..header.size], header)?,
                        }
                    }
                    Step::Copy(n) | Step::Skip(n) => {
                        let take = (*n).min(data.remaining());
                        if take == 0 {
                            return Ok(None);
                        }
                        *n -= take;
                        let done = *n == 0;
                        if copy {
                            let target = if self.node_left.is_some() {
                                &mut self.node
                            } else {
                                &mut self.kept
                            };
                            target.extend_from_slice(&data[..take]);
                        }
                        data.advance(take);
                        self.consumed(take);
                        if done {
                            self.step = Step::Header {
                                buf: [0; 20],
                                filled: 0,
                            };
                        }
                    }
                }
            }
            if let Some(kept) = self.end_of_field() {
                return Ok(Some(kept));
            }
        }
    }

    /// Reads prefix bytes; true once the message's fields start.
    fn read_prefix(&mut self, data: &mut Bytes, skip_node: bool) -> Result<bool, Status> {
        let Step::Prefix { buf, filled } = &mut self.step else {
            return Ok(true);
        };
        let take = (PREFIX - *filled).min(data.remaining());
        data.copy_to_slice(&mut buf[*filled..*filled + take]);
        *filled += take;
        if *filled < PREFIX {
            return Ok(false);
        }
        match buf[0] {
            0 => {}
            1 => {
                return Err(Status::unimplemented(
                    "compressed requests are not supported",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: invalid compression flag {flag}"
                )));
            }
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(Status::out_of_range(format!(
                "request of {len} bytes; the limit is {MAX_REQUEST} bytes"
            )));
        }
        self.message_left = len;
        self.skip_node = skip_node;
        self.kept = Vec::with_capacity(256);
        self.step = Step::Header {
            buf: [0; 20],
            filled: 0,
        };
        Ok(true)
    }

    /// Decides what to do with the field whose header (`raw`) was just read.
    fn on_header(&mut self, raw: &[u8], header: Header) -> Result<(), Status> {
        let level_left = self.node_left.unwrap_or(self.message_left);
        if header.size + header.len > level_left {
            return Err(malformed("a field runs past the end of its message"));
        }
        self.consumed(header.size);
        let len_delimited = header.wire_type == WireType::LengthDelimited as u8;
        self.step = match self.node_left {
            None if header.tag == self.node_tag && len_delimited => {
                if self.skip_node {
                    Step::Skip(header.len)
                } else {
                    // Into the node: keep only the fields our schema has.
                    self.node_left = Some(header.len);
                    self.node.clear();
                    Step::Header {
                        buf: [0; 20],
                        filled: 0,
                    }
                }
            }
            None => {
                self.kept.extend_from_slice(raw);
                Step::Copy(header.len)
            }
            Some(_) if NODE_FIELDS.contains(&header.tag) => {
                self.node.extend_from_slice(raw);
                Step::Copy(header.len)
            }
            Some(_) => Step::Skip(header.len),
        };
        if header.len == 0 {
            self.step = Step::Header {
                buf: [0; 20],
                filled: 0,
            };
        }
        Ok(())
    }

    fn consumed(&mut self, n: usize) {
        self.message_left -= n;
        if let Some(left) = self.node_left.as_mut() {
            *left -= n;
        }
    }

    /// After a step: closes the node and the message when their bytes are all read.
    fn end_of_field(&mut self) -> Option<Vec<u8>> {
        let at_boundary = matches!(self.step, Step::Header { filled: 0, .. });
        if !at_boundary {
            return None;
        }
        if self.node_left == Some(0) {
            self.node_left = None;
            encode_key(self.node_tag, WireType::LengthDelimited, &mut self.kept);
            encode_varint(self.node.len() as u64, &mut self.kept);
            self.kept.extend_from_slice(&self.node);
            self.node = Vec::new();
        }
        if self.message_left == 0 && self.node_left.is_none() {
            self.step = Step::Prefix {
                buf: [0; PREFIX],
                filled: 0,
            };
            return Some(std::mem::take(&mut self.kept));
        }
        None
    }
}

fn malformed(what: &str) -> Status {
    Status::internal(format!("cannot decode the request: {what}"))
}

/// Parses a field header: the key and, for a length-delimited field, the length; for a varint
/// field, the value too. `None` if `buf` does not hold all of it yet.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, Status> {
    let Some((key, key_size)) = varint(buf) else {
        return Ok(None);
    };
    let key = u32::try_from(key).map_err(|_| malformed("invalid key"))?;
    let (tag, wire_type) = (key >> 3, (key & 7) as u8);
    if tag == 0 {
        return Err(malformed("invalid tag 0"));
    }
    let rest = &buf[key_size..];
    let header = |len, extra| Header {
        tag,
        wire_type,
        len,
        size: key_size + extra,
    };
    Ok(match wire_type {
        // Varint: the value is part of the header.
        0 => varint(rest).map(|(_, n)| header(0, n)),
        // 64-bit, 32-bit.
        1 => Some(header(8, 0)),
        5 => Some(header(4, 0)),
        2 => match varint(rest) {
            None => None,
            Some((len, n)) => Some(header(
                usize::try_from(len).map_err(|_| malformed("invalid length"))?,
                n,
            )),
        },
        _ => return Err(malformed("unsupported wire type (groups)")),
    })
}

/// A complete varint at the start of `buf` and its size, or `None` if it is incomplete.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests;
