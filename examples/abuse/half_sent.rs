//! Scenario 2: half-sent messages. Each stream sends a gRPC prefix announcing 4 MiB, then part
//! of the message, then stalls.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use sds::server::Limits;

use crate::{
    Scenario, bystander,
    grpc::{End, Event, PREFIX, put_prefix},
    report::{Row, bytes, growth},
    server::Server,
    streams::{Tally, open},
};

/// What the prefix announces: the largest request the server reads.
const ANNOUNCED: usize = 4 << 20;

/// How long the stalled streams are watched for the server ending them.
const WATCH: Duration = Duration::from_secs(4);

/// What a stalled stream sends after the prefix.
#[derive(Clone, Copy)]
enum Body {
    /// `resource_names` entries of 64 bytes, about this many bytes of them.
    Names(usize),
    /// One field the server does not keep (an unknown field number), this many bytes of it.
    Skipped(usize),
}

/// The bytes after the prefix: fields of a 4 MiB message, cut after about `body`'s size.
fn partial_message(body: Body) -> Bytes {
    let mut buf = BytesMut::new();
    put_prefix(&mut buf, ANNOUNCED);
    match body {
        Body::Names(size) => {
            let mut i = 0;
            while buf.len() < PREFIX + size {
                let name = format!("half-sent-{i:08}-{}", "x".repeat(64 - 19));
                encode_key(3, WireType::LengthDelimited, &mut buf);
                encode_varint(name.len() as u64, &mut buf);
                buf.put_slice(name.as_bytes());
                i += 1;
            }
        }
        Body::Skipped(size) => {
            const UNKNOWN_FIELD: u32 = 99;
            let header = 2 + encoded_len_varint(ANNOUNCED as u64);
            encode_key(UNKNOWN_FIELD, WireType::LengthDelimited, &mut buf);
            encode_varint((ANNOUNCED - header) as u64, &mut buf);
            buf.put_bytes(b'x', size);
        }
    }
    buf.freeze()
}

/// Runs scenario 2's variants, each on a fresh server.
pub(crate) async fn run(scenario: &Scenario<'_>) -> Vec<Row> {
    let limits = Limits::default();
    let streams = Limits::MAX_CONCURRENT_STREAMS as usize;
    let kept = limits.max_kept_per_request();
    let under = kept - 2 * 1024;
    let variants = [
        (
            "2a",
            Body::Names(1 << 20),
            format!(
                "then 1 MiB of resource_names (64 B each); the server keeps at most {kept} B of a request"
            ),
        ),
        (
            "2b",
            Body::Skipped(1 << 20),
            "then 1 MiB of a field the server skips (unknown field 99)".to_owned(),
        ),
        (
            "2c",
            Body::Names(under),
            format!(
                "then {} of resource_names, just under the {kept} B kept",
                bytes(under as f64)
            ),
        ),
    ];
    let mut rows = Vec::new();
    for (id, body, what) in variants {
        let mut row = Row::new(format!(
            "{id}. 1 connection, {streams} streams: a prefix announcing 4 MiB, {what}, then stall"
        ));
        let measured = scenario
            .on_fresh_server(id, &mut row, async |server: &Server| {
                stall(server, streams, partial_message(body)).await
            })
            .await;
        if let Some((tally, grown, served)) = measured {
            let open = tally.silent;
            row.outcome = format!(
                "{}; after {WATCH:?}: {} of {streams} streams ended by the server, {open} still open",
                tally.label(),
                tally.ended_count()
            );
            row.memory = format!(
                "{} ({} per stream)",
                bytes(grown),
                bytes(grown / streams as f64)
            );
            row.bystander = served.label();
        }
        rows.push(row);
    }
    rows
}

/// Opens `streams` streams on one connection that each send `partial` and stall; returns what
/// the streams saw within [`WATCH`], the server's growth, and the bystander's view.
async fn stall(
    server: &Server,
    streams: usize,
    partial: Bytes,
) -> Result<(Tally, f64, bystander::Served), String> {
    let base = server.settled_rss().await;
    let start = Instant::now();
    let mut opened = open(server.addr, 1, streams, |_, _| partial.clone()).await;
    if let Some(e) = opened.failure.take() {
        return Err(format!("{} streams not opened: {e}", opened.failed));
    }
    // Let the bytes arrive and be handled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.quiet(Duration::from_secs(10)).await;
    let grown = growth(base, server.rss());
    let served = bystander::check(server.addr).await;
    let mut tally = Tally::default();
    for stream in &mut opened.streams {
        let left = (start + WATCH).saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Some(Event::Ended(end)) => tally.end(&end),
            Some(Event::Response { .. }) => tally.end(&End::Error("a response".to_owned())),
            None => tally.silent += 1,
        }
    }
    Ok((tally, grown, served))
}
