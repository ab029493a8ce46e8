//! Scenario 4: what clients can make the server write to its log: a NACK storm on one stream,
//! one huge NACK message, and many short streams that each NACK once or are refused once.

use std::time::{Duration, Instant};

use sds::server::Limits;

use crate::{
    Scenario,
    grpc::{Connection, Event, Stream, frame, nack, subscribe},
    report::Row,
    server::{CREDENTIAL, Server},
    streams::{Tally, open},
};

/// How long a stream may take to get its first response.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

fn credential() -> Vec<String> {
    vec![CREDENTIAL.to_owned()]
}

/// Opens a stream for the credential and waits for its first response: (stream, nonce).
async fn subscribed(connection: &mut Connection) -> Result<(Stream, String), String> {
    let mut stream = connection.stream(frame(&subscribe(credential()))).await?;
    match stream.next(ANSWER_LIMIT).await {
        Some(Event::Response { nonce, .. }) => Ok((stream, nonce)),
        other => Err(format!("no first response: {other:?}")),
    }
}

/// Whether the stream is still open: nothing ended it within a moment.
async fn still_open(stream: &mut Stream) -> String {
    match stream.next(Duration::from_millis(200)).await {
        Some(Event::Ended(end)) => format!("the stream was ended: {}", end.label()),
        Some(Event::Response { .. }) => "the stream got another response".to_owned(),
        None => "the stream is still open".to_owned(),
    }
}

/// Runs scenario 4's variants, each on a fresh server.
pub(crate) async fn run(scenario: &Scenario<'_>, storm: usize, short_streams: usize) -> Vec<Row> {
    let limits = Limits::default();
    let mut rows = Vec::new();

    // 4a: a NACK storm on one stream, spread over 5 s.
    let spread = Duration::from_secs(5);
    let mut row = Row::new(format!(
        "4a. 1 stream: {storm} NACKs in {spread:?}, each echoing the last nonce with \
         error_detail {{code 13, ~40 B message}}"
    ));
    let measured = scenario
        .on_fresh_server("4a", &mut row, async |server: &Server| {
            let mut connection = Connection::open(server.addr).await?;
            let (mut stream, nonce) = subscribed(&mut connection).await?;
            let start = Instant::now();
            for i in 0..storm {
                let message = format!("abuse tool: rejected on purpose, #{i:05}");
                stream.send(frame(&nack(credential(), &nonce, message)))?;
                if i % 10 == 9 {
                    let due = start + spread.mul_f64((i + 1) as f64 / storm as f64);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                }
            }
            let took = start.elapsed();
            server.quiet(Duration::from_secs(10)).await;
            Ok(format!(
                "{storm} NACKs sent in {:.1} s; {}",
                took.as_secs_f64(),
                still_open(&mut stream).await
            ))
        })
        .await;
    if let Some(outcome) = measured {
        row.outcome = outcome;
    }
    rows.push(row);

    // 4b: one NACK with a 1 MiB message.
    let mut row = Row::new("4b. 1 stream: one NACK with a 1 MiB error_detail message");
    let measured = scenario
        .on_fresh_server("4b", &mut row, async |server: &Server| {
            let mut connection = Connection::open(server.addr).await?;
            let (mut stream, nonce) = subscribed(&mut connection).await?;
            let mark = server.log_mark();
            stream.send(frame(&nack(credential(), &nonce, "E".repeat(1 << 20))))?;
            server.quiet(Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let logged = server.log_since(mark);
            let note = logged
                .split_whitespace()
                .position(|w| w.starts_with("error="))
                .map(|i| {
                    let words: Vec<&str> = logged.split_whitespace().skip(i).take(4).collect();
                    words.join(" ")
                })
                .unwrap_or_else(|| "no error= field in the log".to_owned());
            Ok(format!(
                "{}; the log line says `{note}`",
                still_open(&mut stream).await
            ))
        })
        .await;
    if let Some(outcome) = measured {
        row.outcome = outcome;
    }
    rows.push(row);

    // 4c: many short streams, each NACKing once: the WARN limit is per stream.
    let per_connection = Limits::MAX_CONCURRENT_STREAMS as usize;
    let connections = short_streams.div_ceil(per_connection);
    let mut row = Row::new(format!(
        "4c. {short_streams} streams ({connections} connections × {per_connection}), each \
         subscribes, NACKs once, and closes"
    ));
    let measured = scenario
        .on_fresh_server("4c", &mut row, async |server: &Server| {
            let start = Instant::now();
            let mut nacked = 0;
            let mut failed = 0;
            for _ in 0..connections {
                let mut opened = open(server.addr, 1, per_connection, |_, _| {
                    frame(&subscribe(credential()))
                })
                .await;
                for stream in &mut opened.streams {
                    match stream.next(ANSWER_LIMIT).await {
                        Some(Event::Response { nonce, .. }) => {
                            let message = "abuse tool: rejected on purpose".to_owned();
                            match stream.send(frame(&nack(credential(), &nonce, message))) {
                                Ok(()) => nacked += 1,
                                Err(_) => failed += 1,
                            }
                        }
                        _ => failed += 1,
                    }
                }
                server.quiet(Duration::from_secs(10)).await;
            }
            Ok(format!(
                "{nacked} NACKs sent on {nacked} streams in {:.1} s ({failed} streams failed)",
                start.elapsed().as_secs_f64()
            ))
        })
        .await;
    if let Some(outcome) = measured {
        row.outcome = outcome;
    }
    rows.push(row);

    // 4d: many short streams, each refused once (one name over the per-stream limit).
    let over = limits.names_per_stream + 1;
    let mut row = Row::new(format!(
        "4d. {short_streams} streams ({connections} connections × {per_connection}), each \
         subscribing to {over} short names (one over the limit)"
    ));
    let measured = scenario
        .on_fresh_server("4d", &mut row, async |server: &Server| {
            let start = Instant::now();
            let mut tally = Tally::default();
            for c in 0..connections {
                let mut opened = open(server.addr, 1, per_connection, |_, s| {
                    let names = (0..over).map(|i| format!("c{c}s{s}n{i}")).collect();
                    frame(&subscribe(names))
                })
                .await;
                let one = Tally::first_events(&mut opened.streams, ANSWER_LIMIT).await;
                tally.served += one.served;
                tally.silent += one.silent;
                for (how, (n, message)) in one.ended {
                    tally.ended.entry(how).or_insert((0, message)).0 += n;
                }
            }
            server.quiet(Duration::from_secs(10)).await;
            Ok(format!(
                "{} (in {:.1} s)",
                tally.label(),
                start.elapsed().as_secs_f64()
            ))
        })
        .await;
    if let Some(outcome) = measured {
        row.outcome = outcome;
    }
    rows.push(row);

    rows
}
