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
    sync::Arc,
};

use bytes::{Buf, Bytes};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::{Status, body::Body};

use crate::{framing::PREFIX, limits::ConnectionBudget};

/// The largest request accepted, as tonic's default (4 MiB). Only the fields a stream keeps
/// are held in memory (see [`Filter`]); the rest is skipped as it arrives.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Longest NACK message kept from a request; a longer one is replaced by a note of its length.
pub(crate) const MAX_NACK_MESSAGE: usize = 1024;

/// Which fields of a request type are kept: every other field is skipped undecoded, so that
/// fields unknown to our schema (or to this version of the protocol) cost nothing.
#[derive(Debug)]
pub(crate) struct Schema {
    /// Top-level fields copied whole.
    kept: &'static [u32],
    /// `node`: only [`NODE_FIELDS`] of it are kept, and it may be skipped whole.
    node: u32,
    /// `error_detail` (`google.rpc.Status`): only `code` and `message` are kept, and a message
    /// longer than [`MAX_NACK_MESSAGE`] is replaced by a note of its length.
    error_detail: u32,
}

/// The fields of `envoy.config.core.v3.Node` that our trimmed schema has: `id`, `cluster`,
/// `user_agent_name`. Only these are kept from a client's `Node`.
const NODE_FIELDS: &[u32] = &[1, 2, 6];

/// The fields of `google.rpc.Status` kept from a NACK: `code`, `message` (not `details`).
const STATUS_FIELDS: &[u32] = &[1, 2];
/// `google.rpc.Status.message`.
const STATUS_MESSAGE: u32 = 2;

/// A request type that carries a `Node`.
pub(crate) trait Decode: Message + Default + Send + 'static {
    /// What [`Filter`] keeps of it.
    const SCHEMA: Schema;
}

impl Decode for DiscoveryRequest {
    // version_info, resource_names, type_url, response_nonce.
    const SCHEMA: Schema = Schema {
        kept: &[1, 3, 4, 5],
        node: 2,
        error_detail: 6,
    };
}

impl Decode for DeltaDiscoveryRequest {
    // type_url, resource_names_subscribe, resource_names_unsubscribe,
    // initial_resource_versions, response_nonce.
    const SCHEMA: Schema = Schema {
        kept: &[2, 3, 4, 5, 6],
        node: 1,
        error_detail: 7,
    };
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
    /// Reads requests from `body`, keeping at most `max_kept` bytes of any one request, and
    /// counting the bytes of a partly received request against its connection's `pending`
    /// budget, if any.
    pub(crate) fn new(body: Body, max_kept: usize, pending: Option<Pending>) -> Self {
        let mut filter = Filter::new(&T::SCHEMA, max_kept);
        filter.pending = pending;
        Self {
            body,
            pending: Bytes::new(),
            filter,
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
                    let request =
                        T::decode(kept.as_slice()).map_err(|e| malformed(&e.to_string()))?;
                    return Ok(Some(request));
                }
                continue;
            }
            if self.ended {
                return if self.filter.between_messages() {
                    Ok(None)
                } else {
                    Err(malformed("the request stream ended inside a message"))
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

/// Reads gRPC messages from a byte stream in any slicing, keeping only the fields of its
/// [`Schema`] (`node` and `error_detail` reduced to the fields we use, or `node` skipped), so
/// that a message can be decoded from a small copy once complete. At most `max_kept` bytes of
/// one message are kept: a request that would keep more is refused, whatever its size.
#[derive(Debug)]
pub(crate) struct Filter {
    schema: &'static Schema,
    max_kept: usize,
    step: Step,
    /// The current message's fields, as kept.
    kept: Vec<u8>,
    /// Bytes left in the current message.
    message_left: usize,
    /// The filtered sub-message being read (`node` or `error_detail`), if inside one.
    inner: Option<Inner>,
    /// Whether this message's `node` is skipped (latched at its start).
    skip_node: bool,
    /// The connection's budget for partly received requests, and what this one holds of it.
    pending: Option<Pending>,
}

/// A connection's budget of bytes held for partly received requests.
#[derive(Debug)]
pub(crate) struct Pending {
    budget: Arc<ConnectionBudget>,
    max: usize,
    /// Bytes of the current message taken from the budget.
    held: usize,
}

impl Pending {
    /// Counts against `budget`, up to `max` bytes in all.
    pub(crate) fn new(budget: Arc<ConnectionBudget>, max: usize) -> Self {
        Self {
            budget,
            max,
            held: 0,
        }
    }

    /// Takes `n` more bytes, or refuses the request with `RESOURCE_EXHAUSTED`.
    pub(crate) fn take(&mut self, n: usize) -> Result<(), Status> {
        if !self.budget.take_pending(n, self.max) {
            return Err(Status::resource_exhausted(format!(
                "this connection's partly received requests hold {} bytes, its limit",
                self.max
            )));
        }
        self.held += n;
        Ok(())
    }

    fn release(&mut self) {
        self.budget
            .give_back_pending(std::mem::take(&mut self.held));
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.release();
    }
}

/// A sub-message whose fields are filtered too.
#[derive(Debug)]
struct Inner {
    tag: u32,
    fields: &'static [u32],
    /// Bytes left in it.
    left: usize,
    /// Its kept fields.
    kept: Vec<u8>,
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

const HEADER: Step = Step::Header {
    buf: [0; 20],
    filled: 0,
};

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
    pub(crate) fn new(schema: &'static Schema, max_kept: usize) -> Self {
        Self {
            schema,
            max_kept,
            step: Step::Prefix {
                buf: [0; PREFIX],
                filled: 0,
            },
            kept: Vec::new(),
            message_left: 0,
            inner: None,
            skip_node: false,
            pending: None,
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
                let level_left = self.level_left();
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
                                if !self.keeps(&header)
                                    && whole <= data.len()
                                    && whole <= level_left
                                {
                                    // Envoy's extension list: hundreds of these in a row.
                                    data.advance(whole);
                                    self.consumed(whole);
                                } else {
                                    let mut raw = [0u8; 20];
                                    let raw = &mut raw[..header.size];
                                    data.copy_to_slice(raw);
                                    self.on_header(raw, header)?;
                                }
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
                            self.keep(&data[..take])?;
                        }
                        data.advance(take);
                        self.consumed(take);
                        if done {
                            self.step = HEADER;
                        }
                    }
                }
            }
            if let Some(kept) = self.end_of_field() {
                return Ok(Some(kept));
            }
        }
    }

    /// Bytes left at the current level: in the sub-message if inside one, else the message.
    fn level_left(&self) -> usize {
        self.inner.as_ref().map_or(self.message_left, |i| i.left)
    }

    /// Whether a field with this header is kept (copied, or entered to filter its fields).
    fn keeps(&self, header: &Header) -> bool {
        match &self.inner {
            Some(inner) => inner.fields.contains(&header.tag),
            None => {
                header.tag == self.schema.error_detail
                    || (header.tag == self.schema.node && !self.skip_node)
                    || self.schema.kept.contains(&header.tag)
            }
        }
    }

    /// Appends kept bytes to the current level, within the limit.
    fn keep(&mut self, bytes: &[u8]) -> Result<(), Status> {
        let inner_len = self.inner.as_ref().map_or(0, |i| i.kept.len());
        if self.kept.len() + inner_len + bytes.len() > self.max_kept {
            return Err(Status::resource_exhausted(format!(
                "a request carries more than {} bytes of resource names and other fields; \
                 subscribe to fewer or shorter names per stream",
                self.max_kept
            )));
        }
        if let Some(pending) = self.pending.as_mut() {
            pending.take(bytes.len())?;
        }
        match self.inner.as_mut() {
            Some(inner) => inner.kept.extend_from_slice(bytes),
            None => self.kept.extend_from_slice(bytes),
        }
        Ok(())
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
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes; the limit is {MAX_REQUEST} bytes"
            )));
        }
        self.message_left = len;
        self.skip_node = skip_node;
        self.kept = Vec::with_capacity(256.min(self.max_kept));
        self.step = HEADER;
        Ok(true)
    }

    /// Decides what to do with the field whose header (`raw`) was just read.
    fn on_header(&mut self, raw: &[u8], header: Header) -> Result<(), Status> {
        if header.size + header.len > self.level_left() {
            return Err(malformed("a field runs past the end of its message"));
        }
        self.consumed(header.size);
        let len_delimited = header.wire_type == WireType::LengthDelimited as u8;
        self.step = match &self.inner {
            None if len_delimited && self.keeps(&header) && header.tag == self.schema.node => {
                self.enter(header.tag, NODE_FIELDS, header.len)
            }
            None if len_delimited && header.tag == self.schema.error_detail => {
                self.enter(header.tag, STATUS_FIELDS, header.len)
            }
            Some(inner)
                if inner.tag == self.schema.error_detail
                    && header.tag == STATUS_MESSAGE
                    && header.len > MAX_NACK_MESSAGE =>
            {
                // Keep a note instead of a client's long text.
                let note = format!("({} bytes, not kept)", header.len);
                let mut field = Vec::with_capacity(note.len() + 3);
                encode_key(STATUS_MESSAGE, WireType::LengthDelimited, &mut field);
                encode_varint(note.len() as u64, &mut field);
                field.extend_from_slice(note.as_bytes());
                self.keep(&field)?;
                Step::Skip(header.len)
            }
            _ if self.keeps(&header) => {
                self.keep(raw)?;
                Step::Copy(header.len)
            }
            _ => Step::Skip(header.len),
        };
        if header.len == 0 {
            self.step = HEADER;
        }
        Ok(())
    }

    /// Enters a sub-message whose fields are filtered.
    fn enter(&mut self, tag: u32, fields: &'static [u32], len: usize) -> Step {
        self.inner = Some(Inner {
            tag,
            fields,
            left: len,
            kept: Vec::new(),
        });
        HEADER
    }

    fn consumed(&mut self, n: usize) {
        self.message_left -= n;
        if let Some(inner) = self.inner.as_mut() {
            inner.left -= n;
        }
    }

    /// After a step: closes the sub-message and the message when their bytes are all read.
    fn end_of_field(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.step, Step::Header { filled: 0, .. }) {
            return None;
        }
        if let Some(inner) = self.inner.take_if(|i| i.left == 0) {
            // Within the limit: its bytes were counted as they were kept.
            encode_key(inner.tag, WireType::LengthDelimited, &mut self.kept);
            encode_varint(inner.kept.len() as u64, &mut self.kept);
            self.kept.extend_from_slice(&inner.kept);
        }
        if self.message_left == 0 && self.inner.is_none() {
            self.step = Step::Prefix {
                buf: [0; PREFIX],
                filled: 0,
            };
            // Complete: decoded at once and dropped, no longer pending.
            if let Some(pending) = self.pending.as_mut() {
                pending.release();
            }
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
                // Nothing in a request is longer than the request: this also keeps every sum
                // of lengths below from overflowing.
                usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= MAX_REQUEST)
                    .ok_or_else(|| malformed("a field runs past the end of its message"))?,
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
