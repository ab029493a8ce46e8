//! Many streams at once: opening them over one or more connections, and tallying the first
//! thing each one saw.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::grpc::{Connection, End, Event, Stream};

/// Connections and the streams opened on them; everything is reset when dropped.
#[derive(Default)]
pub(crate) struct Opened {
    pub(crate) connections: Vec<Connection>,
    pub(crate) streams: Vec<Stream>,
    /// Streams that could not be opened, and why (the first reason).
    pub(crate) failed: usize,
    pub(crate) failure: Option<String>,
}

/// Opens `per_connection` streams on each of `connections` new connections; stream `s` of
/// connection `c` starts with the bytes `first(c, s)`.
pub(crate) async fn open(
    addr: SocketAddr,
    connections: usize,
    per_connection: usize,
    first: impl Fn(usize, usize) -> Bytes,
) -> Opened {
    let mut opened = Opened::default();
    for c in 0..connections {
        let mut connection = match Connection::open(addr).await {
            Ok(connection) => connection,
            Err(e) => {
                opened.failed += per_connection;
                opened.failure.get_or_insert(e);
                continue;
            }
        };
        for s in 0..per_connection {
            match connection.stream(first(c, s)).await {
                Ok(stream) => opened.streams.push(stream),
                Err(e) => {
                    opened.failed += 1;
                    opened.failure.get_or_insert(e);
                }
            }
        }
        opened.connections.push(connection);
    }
    opened
}

/// What the streams saw first.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Streams that got a response carrying a secret.
    pub(crate) served: usize,
    /// Streams that ended, by how (with the first message seen for each).
    pub(crate) ended: BTreeMap<String, (usize, String)>,
    /// Streams that saw nothing within the wait.
    pub(crate) silent: usize,
    /// The first nonce and version seen, for NACKs.
    pub(crate) first_response: Option<(String, String)>,
}

impl Tally {
    /// Waits until every stream saw its first event, or `limit` passed.
    pub(crate) async fn first_events(streams: &mut [Stream], limit: Duration) -> Tally {
        let deadline = Instant::now() + limit;
        let mut tally = Tally::default();
        for stream in streams {
            let left = deadline.saturating_duration_since(Instant::now());
            match stream.next(left).await {
                Some(Event::Response {
                    version,
                    nonce,
                    resources,
                }) => {
                    if resources > 0 {
                        tally.served += 1;
                    }
                    tally.first_response.get_or_insert((version, nonce));
                }
                Some(Event::Ended(end)) => tally.end(&end),
                None => tally.silent += 1,
            }
        }
        tally
    }

    /// Counts a stream that ended.
    pub(crate) fn end(&mut self, end: &End) {
        let message = match end {
            End::Status { message, .. } => message.clone(),
            _ => String::new(),
        };
        self.ended.entry(end.label()).or_insert((0, message)).0 += 1;
    }

    /// Streams that ended.
    pub(crate) fn ended_count(&self) -> usize {
        self.ended.values().map(|(n, _)| n).sum()
    }

    /// `100 served; 20 RESOURCE_EXHAUSTED ("...")`.
    pub(crate) fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.served > 0 {
            parts.push(format!("{} served the secret", self.served));
        }
        for (how, (n, message)) in &self.ended {
            if message.is_empty() {
                parts.push(format!("{n} ended: {how}"));
            } else {
                parts.push(format!("{n} ended: {how} (\"{message}\")"));
            }
        }
        if self.silent > 0 {
            parts.push(format!("{} open, nothing received", self.silent));
        }
        parts.join("; ")
    }
}
