//! Scenario 1: streams that subscribe to as many distinct names as the limits allow and hold
//! them; the same beyond the limits (the security review's 10,000 names per stream, a client
//! that ignores `SETTINGS_MAX_CONCURRENT_STREAMS`, more subscriptions than the server holds).

use std::time::Duration;

use sds::server::Limits;

use crate::{
    Scenario, bystander,
    grpc::{Connection, Stream, frame, subscribe},
    raw,
    report::{Row, bytes, growth},
    server::{CREDENTIAL, Server},
    streams::{Tally, open},
};

/// How long the streams may take to get their first answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// Names for stream `s` of connection `c`: the real credential (so that an accepted
/// subscription is answered), then `count - 1` distinct names of `len` bytes.
pub(crate) fn names(c: usize, s: usize, count: usize, len: usize) -> Vec<String> {
    std::iter::once(CREDENTIAL.to_owned())
        .chain((1..count).map(|i| {
            let mut name = format!("c{c:03}-s{s:04}-n{i:05}-");
            let pad = len.saturating_sub(name.len());
            name.extend(std::iter::repeat_n('x', pad));
            name
        }))
        .collect()
}

/// How many names of `len` bytes (the credential's included) one stream may hold.
pub(crate) fn fitting(limits: &Limits, len: usize) -> usize {
    let more = limits
        .name_bytes_per_stream
        .saturating_sub(CREDENTIAL.len())
        / len;
    (1 + more).min(limits.names_per_stream)
}

/// What holding `streams` streams of `count` names of `len` bytes on one connection cost.
struct Held {
    conn: f64,
    streams: f64,
    tally: Tally,
    max_streams: usize,
    after_close: f64,
    /// The growth of the same again, with new names, after the first streams closed.
    again: f64,
    bystander: String,
}

async fn hold(server: &Server, streams: usize, count: usize, len: usize) -> Result<Held, String> {
    let base = server.settled_rss().await;
    let mut connection = Connection::open(server.addr).await?;
    let with_conn = server.settled_rss().await;
    let (tally, held, open_streams) =
        round(server, &mut connection, 0, streams, count, len).await?;
    let bystander = bystander::check(server.addr).await.label();
    let max_streams = connection.max_streams();
    drop(open_streams);
    drop(connection);
    let after_close = server.settled_rss().await;
    // The same again with new names: growth again means memory was kept, not reused.
    let mut connection = Connection::open(server.addr).await?;
    let (_, again, open_streams) = round(server, &mut connection, 1, streams, count, len).await?;
    drop(open_streams);
    drop(connection);
    Ok(Held {
        conn: growth(base, with_conn),
        streams: growth(with_conn, held),
        tally,
        max_streams,
        after_close: growth(base, after_close),
        again: growth(after_close, again),
        bystander,
    })
}

/// Opens `streams` streams of `count` names (connection number `c` in the names) and waits
/// for their first answers: what they saw, the server's RSS then, and the open streams.
async fn round(
    server: &Server,
    connection: &mut Connection,
    c: usize,
    streams: usize,
    count: usize,
    len: usize,
) -> Result<(Tally, u64, Vec<Stream>), String> {
    let mut open_streams = Vec::new();
    for s in 0..streams {
        let first = frame(&subscribe(names(c, s, count, len)));
        open_streams.push(connection.stream(first).await?);
    }
    let tally = Tally::first_events(&mut open_streams, ANSWER_LIMIT).await;
    let rss = server.settled_rss().await;
    Ok((tally, rss, open_streams))
}

/// Runs scenario 1's variants, each on a fresh server.
pub(crate) async fn run(scenario: &Scenario<'_>) -> Vec<Row> {
    let limits = Limits::default();
    let streams = Limits::MAX_CONCURRENT_STREAMS as usize;
    let mut rows = Vec::new();

    // 1a: the per-stream cost alone, one name each (the credential).
    let mut row = Row::new(format!(
        "1a. 1 connection, {streams} streams × 1 name (the credential)"
    ));
    let one = scenario
        .on_fresh_server("1a", &mut row, async |server: &Server| {
            let held = hold(server, streams, 1, CREDENTIAL.len()).await?;
            Ok(held)
        })
        .await;
    if let Some(held) = &one {
        row.outcome = format!(
            "{}; the server announced max_concurrent_streams {}",
            held.tally.label(),
            held.max_streams
        );
        row.memory = format!(
            "connection {}; {} per stream; {} after closing",
            bytes(held.conn),
            bytes(held.streams / streams as f64),
            bytes(held.after_close)
        );
        row.bystander.clone_from(&held.bystander);
    }
    rows.push(row);
    let per_stream_alone = one.as_ref().map(|h| h.streams / streams as f64);

    // 1b, 1c: as many names as the limits allow.
    for (id, len) in [("1b", 64), ("1c", 390)] {
        let count = fitting(&limits, len);
        let mut row = Row::new(format!(
            "{id}. 1 connection, {streams} streams × {count} distinct names of {len} B \
             (limits: {} names, {} B per stream)",
            limits.names_per_stream, limits.name_bytes_per_stream
        ));
        let held = scenario
            .on_fresh_server(id, &mut row, async |server: &Server| {
                hold(server, streams, count, len).await
            })
            .await;
        if let Some(held) = held {
            let subscriptions = (streams * count) as f64;
            let marginal = per_stream_alone
                .map(|alone| {
                    format!(
                        ", {} per name beyond a 1-name stream",
                        bytes((held.streams / streams as f64 - alone) / (count - 1) as f64)
                    )
                })
                .unwrap_or_default();
            row.outcome = held.tally.label();
            row.memory = format!(
                "{} for {} subscriptions: {} per stream, {} per name{marginal} \
                 ({} of names held); {} after closing, and the same again with new \
                 names grew it {} more",
                bytes(held.streams),
                subscriptions,
                bytes(held.streams / streams as f64),
                bytes(held.streams / subscriptions),
                bytes(subscriptions * len as f64),
                bytes(held.after_close),
                bytes(held.again)
            );
            row.bystander = held.bystander;
        }
        rows.push(row);
    }

    // 1d: a client that ignores the announced stream limit.
    let extra = streams + 20;
    let mut row = Row::new(format!(
        "1d. 1 connection, {extra} streams sent at once, ignoring SETTINGS_MAX_CONCURRENT_STREAMS \
         (raw HTTP/2)"
    ));
    let raw = scenario
        .on_fresh_server("1d", &mut row, async |server: &Server| {
            let request = frame(&subscribe(vec![CREDENTIAL.to_owned()]));
            let base = server.settled_rss().await;
            let seen = raw::open_ignoring_limit(server.addr, extra, request).await?;
            let held = server.settled_rss().await;
            Ok((
                seen,
                growth(base, held),
                bystander::check(server.addr).await,
            ))
        })
        .await;
    if let Some((seen, grown, served)) = raw {
        row.outcome = seen.label();
        row.memory = bytes(grown);
        row.bystander = served.label();
    }
    rows.push(row);

    // 1e: the review's attack: 20 streams × 10,000 distinct 390-byte names.
    let (review_streams, review_names, review_len) = (20, 10_000, 390);
    let mut row = Row::new(format!(
        "1e. 1 connection, {review_streams} streams × {review_names} distinct names of \
         {review_len} B (the review's attack; {} per request)",
        bytes((review_names * (review_len + 2)) as f64)
    ));
    let review = scenario
        .on_fresh_server("1e", &mut row, async |server: &Server| {
            hold(server, review_streams, review_names, review_len).await
        })
        .await;
    if let Some(held) = review {
        row.outcome = held.tally.label();
        row.memory = format!(
            "{} while refused; {} after closing",
            bytes(held.streams),
            bytes(held.after_close)
        );
        row.bystander = held.bystander;
    }
    rows.push(row);

    // 1f: more subscriptions than the server holds in all, from many connections.
    let count = fitting(&limits, 64);
    let wanted = limits.names_total + limits.names_total / 4;
    let conns = wanted.div_ceil(streams * count);
    let mut row = Row::new(format!(
        "1f. {conns} connections × {streams} streams × {count} names of 64 B \
         ({} subscriptions asked; the server holds {} in all)",
        conns * streams * count,
        limits.names_total
    ));
    let full = scenario
        .on_fresh_server("1f", &mut row, async |server: &Server| {
            let base = server.settled_rss().await;
            let mut opened = open(server.addr, conns, streams, |c, s| {
                frame(&subscribe(names(c, s, count, 64)))
            })
            .await;
            let tally = Tally::first_events(&mut opened.streams, ANSWER_LIMIT).await;
            let held = server.settled_rss().await;
            let served = bystander::check(server.addr).await;
            drop(opened);
            let after_close = server.settled_rss().await;
            Ok((tally, growth(base, held), growth(base, after_close), served))
        })
        .await;
    if let Some((tally, grown, after_close, served)) = full {
        let subscriptions = (tally.served * count) as f64;
        row.outcome = tally.label();
        row.memory = format!(
            "{} for {subscriptions} subscriptions held ({} per subscription); {} after closing",
            bytes(grown),
            bytes(grown / subscriptions.max(1.0)),
            bytes(after_close)
        );
        row.bystander = served.label();
    }
    rows.push(row);
    rows
}
