//! HTTP/2 written by hand, for what a well-behaved library will not send: more streams at
//! once than the server's `SETTINGS_MAX_CONCURRENT_STREAMS`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::grpc::STREAM_SECRETS;

/// The client connection preface.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the server's answers are read.
const READ_FOR: Duration = Duration::from_secs(3);

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const REFUSED_STREAM: u32 = 0x7;

/// What the server did with streams sent beyond its limit.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Its `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub(crate) announced: Option<u32>,
    pub(crate) sent: usize,
    /// Streams that received response data (a secret).
    pub(crate) served: BTreeSet<u32>,
    /// Streams reset with `REFUSED_STREAM`.
    pub(crate) refused: usize,
    /// Other resets, by error code.
    pub(crate) other_resets: Vec<u32>,
    /// A `GOAWAY`'s error code.
    pub(crate) goaway: Option<u32>,
}

impl Seen {
    pub(crate) fn label(&self) -> String {
        let mut out = format!(
            "server announced max_concurrent_streams {}; of {} streams {} served the secret, \
             {} reset REFUSED_STREAM",
            self.announced
                .map_or_else(|| "(none)".to_owned(), |n| n.to_string()),
            self.sent,
            self.served.len(),
            self.refused
        );
        if !self.other_resets.is_empty() {
            out.push_str(&format!(", other resets {:?}", self.other_resets));
        }
        if let Some(code) = self.goaway {
            out.push_str(&format!(", GOAWAY code {code}"));
        }
        out
    }
}

/// Opens `count` `StreamSecrets` streams at once on one connection, each sending `request`
/// (a whole gRPC message) without ending, and reads what the server does for a while. Only
/// the stream limit is ignored: the server's flow-control windows are respected.
pub(crate) async fn open_ignoring_limit(
    addr: SocketAddr,
    count: usize,
    request: Bytes,
) -> Result<Seen, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect: timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut conn = Raw {
        tcp,
        buf: Vec::new(),
        window: 65_535,
        settings: false,
        refused_ids: BTreeSet::new(),
        seen: Seen {
            sent: count,
            ..Seen::default()
        },
    };
    let mut out = Vec::from(PREFACE);
    // Our SETTINGS: 1 MiB per stream to receive; 16 MiB more for the connection.
    let mut settings = Vec::new();
    settings.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
    settings.extend_from_slice(&(1u32 << 20).to_be_bytes());
    put_frame(&mut out, SETTINGS, 0, 0, &settings);
    put_frame(&mut out, WINDOW_UPDATE, 0, 0, &(16u32 << 20).to_be_bytes());
    conn.write(&out).await?;
    let deadline = Instant::now() + READ_FOR;
    while !conn.settings && conn.read(deadline).await {}

    // Every stream's HEADERS at once (they are not flow-controlled), then the requests as the
    // connection window allows.
    let headers = request_headers(&addr.to_string());
    let mut out = Vec::new();
    for i in 0..count {
        put_frame(&mut out, HEADERS, END_HEADERS, stream_id(i), &headers);
    }
    conn.write(&out).await?;
    // The refusals come at once: no DATA is sent on refused streams.
    let pause = Instant::now() + Duration::from_millis(300);
    while conn.read(pause).await {}
    let mut next = 0;
    while next < count {
        let mut out = Vec::new();
        while next < count && conn.window >= request.len() as i64 {
            let id = stream_id(next);
            if !conn.refused_ids.contains(&id) {
                put_frame(&mut out, DATA, 0, id, &request);
                conn.window -= request.len() as i64;
            }
            next += 1;
        }
        conn.write(&out).await?;
        if next < count && !conn.read(deadline).await {
            break;
        }
    }
    let deadline = Instant::now() + READ_FOR;
    while conn.read(deadline).await {}
    Ok(conn.seen)
}

fn stream_id(i: usize) -> u32 {
    1 + 2 * i as u32
}

/// A hand-driven HTTP/2 client connection.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The server's connection receive window: what we may still send.
    window: i64,
    /// Whether the server's SETTINGS arrived.
    settings: bool,
    refused_ids: BTreeSet<u32>,
    seen: Seen,
}

impl Raw {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.tcp
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads and handles what arrives next; false once the deadline passed or the server
    /// closed the connection.
    async fn read(&mut self, deadline: Instant) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, self.tcp.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => n,
        };
        self.buf.extend_from_slice(&chunk[..n]);
        let mut replies = Vec::new();
        while self.buf.len() >= 9 {
            let buf = &self.buf;
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = self.buf.drain(..9 + len).skip(9).collect();
            let word = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match kind {
                DATA if !payload.is_empty() => {
                    self.seen.served.insert(id);
                }
                RST_STREAM => match word(0) {
                    Some(REFUSED_STREAM) => {
                        self.seen.refused += 1;
                        self.refused_ids.insert(id);
                    }
                    Some(code) => self.seen.other_resets.push(code),
                    None => {}
                },
                SETTINGS if flags & ACK == 0 => {
                    for param in payload.chunks_exact(6) {
                        if u16::from_be_bytes([param[0], param[1]])
                            == SETTINGS_MAX_CONCURRENT_STREAMS
                        {
                            self.seen.announced =
                                Some(u32::from_be_bytes([param[2], param[3], param[4], param[5]]));
                        }
                    }
                    self.settings = true;
                    put_frame(&mut replies, SETTINGS, ACK, 0, &[]);
                }
                PING if flags & ACK == 0 => put_frame(&mut replies, PING, ACK, 0, &payload),
                GOAWAY => self.seen.goaway = word(4),
                WINDOW_UPDATE if id == 0 => {
                    self.window += i64::from(word(0).unwrap_or(0) & 0x7fff_ffff);
                }
                _ => {}
            }
        }
        replies.is_empty() || self.tcp.write_all(&replies).await.is_ok()
    }
}

/// Appends one frame.
fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("small frames");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A gRPC request's header block, in HPACK literals (no indexing, no Huffman coding).
fn request_headers(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", STREAM_SECRETS),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // Literal Header Field without Indexing, New Name (RFC 7541 §6.2.2).
        block.push(0);
        put_string(&mut block, name);
        put_string(&mut block, value);
    }
    block
}

/// An HPACK string literal without Huffman coding: a 7-bit-prefix length, then the bytes.
fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s.as_bytes());
}
