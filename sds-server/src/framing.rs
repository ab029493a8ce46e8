//! gRPC's length-prefixed framing of the two streaming methods, and the HTTP/2 response body
//! that carries a stream's frames and ends with its status.
//!
//! A response is written as this stream's part (the 5-byte prefix and the nonce) followed by
//! bytes every stream shares (see [`Encoder`](crate::encode::Encoder)): no stream has a codec
//! buffer, and no stream copies a secret.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use futures_core::Stream;
use prost::Message;
use tonic::{Status, codegen::http};
use zeroize::Zeroizing;

/// gRPC's message prefix: a compression flag and a big-endian length.
pub(crate) const PREFIX: usize = 5;

/// Longest `grpc-message` sent, in bytes.
const MAX_STATUS_MESSAGE: usize = 1024;

/// One response message on the wire: a whole gRPC frame, or this stream's part of it (the
/// prefix and the nonce) followed by bytes every stream shares.
#[derive(Debug)]
pub(crate) struct Frame {
    head: Bytes,
    shared: Option<Bytes>,
}

impl Frame {
    /// A frame whose message is `head`'s fields after the prefix, then `shared`.
    pub(crate) fn split(head: Bytes, shared: Bytes) -> Self {
        Self {
            head,
            shared: Some(shared),
        }
    }

    /// This stream's part, and the shared part if any.
    #[cfg(feature = "__bench")]
    pub(crate) fn into_parts(self) -> (Bytes, Option<Bytes>) {
        (self.head, self.shared)
    }
}

/// Writes the prefix of a message of `len` bytes.
pub(crate) fn put_prefix(buf: &mut impl BufMut, len: usize) {
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// One length-prefixed gRPC message holding `message`. The bytes may carry a private key:
/// they are zeroized when the transport drops them.
pub(crate) fn frame(message: &impl Message) -> Frame {
    let len = message.encoded_len();
    let mut buf = Zeroizing::new(Vec::with_capacity(PREFIX + len));
    put_prefix(&mut *buf, len);
    message.encode_raw(&mut *buf);
    Frame {
        head: secret_bytes(buf),
        shared: None,
    }
}

/// Bytes that are zeroized when the last clone is dropped (they may hold a private key).
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `bytes` shared without a copy, zeroized when the last clone is dropped.
pub(crate) fn secret_bytes(bytes: Zeroizing<Vec<u8>>) -> Bytes {
    Bytes::from_owner(ZeroizingBytes(bytes))
}

/// The response body of a stream: each message's parts, then the trailers with the status.
pub(crate) struct Frames<S> {
    stream: Pin<Box<S>>,
    /// The shared part of the message whose head was just sent.
    next: Option<Bytes>,
    done: bool,
}

impl<S> Frames<S> {
    /// A body sending the frames of `stream`; its end is `OK`, its error the status sent.
    pub(crate) fn new(stream: S) -> Self {
        Self {
            stream: Box::pin(stream),
            next: None,
            done: false,
        }
    }
}

impl<S> http_body::Body for Frames<S>
where
    S: Stream<Item = Result<Frame, Status>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(shared) = self.next.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(shared))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                self.next = frame.shared;
                return Poll::Ready(Some(Ok(http_body::Frame::data(frame.head))));
            }
            Poll::Ready(Some(Err(status))) => bounded(status),
            Poll::Ready(None) => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::with_capacity(2);
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none()
    }
}

/// `status` with its message cut to [`MAX_STATUS_MESSAGE`] bytes (at a character boundary).
pub(crate) fn bounded(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE {
        return status;
    }
    let mut end = MAX_STATUS_MESSAGE - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Status::new(status.code(), format!("{}…", &message[..end]))
}
