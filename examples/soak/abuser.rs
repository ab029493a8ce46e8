//! `--abuse`: one client that exceeds each per-client limit in turn, over and over, while the
//! well-behaved streams rotate (the abuse tool's clients, `examples/abuse/{grpc,raw}.rs`):
//!
//! 1. streams: 1,100 streams at once on one connection (past the 1,000 announced);
//! 2. names: 100 streams of 100 names of 64 bytes on one connection (the connection's 10,000
//!    subscriptions), then one stream of 101 names;
//! 3. bytes: 100 streams that each announce a 4 MiB message, send 48 KiB of it and stall;
//! 4. NACK rate: 2,000 NACKs on one stream as fast as they go;
//! 5. silent connections: 500 TCP connections that never send a byte, held 12 s.
//!
//! Each step holds what it opened for a few seconds, then lets go. What the server did is
//! counted per step (refused, ended with a status, closed).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::{
    grpc::{self, Connection, End, Event},
    raw,
};

/// What each step saw the server do, summed over the rounds.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) rounds: u64,
    /// Per step: what happened, and how often.
    pub(crate) seen: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

impl Tally {
    fn count(&mut self, step: &'static str, what: impl Into<String>, n: u64) {
        *self
            .seen
            .entry(step)
            .or_default()
            .entry(what.into())
            .or_default() += n;
    }
}

/// Runs rounds of the five steps against `addr` until `stop`; `name` is a secret that exists.
pub(crate) async fn run(
    addr: SocketAddr,
    name: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    while !stop.load(Ordering::Relaxed) {
        streams(addr, &name, &tally).await;
        names(addr, &tally).await;
        bytes(addr, &tally).await;
        nacks(addr, &name, &tally).await;
        silent(addr, &tally).await;
        tally.lock().rounds += 1;
    }
}

async fn streams(addr: SocketAddr, name: &str, tally: &Mutex<Tally>) {
    let request = grpc::frame(&grpc::subscribe(vec![name.to_owned()]));
    match raw::open_ignoring_limit(addr, 1_100, request).await {
        Ok(seen) => {
            let mut tally = tally.lock();
            tally.count("1 streams", "served", seen.served.len() as u64);
            tally.count("1 streams", "refused (REFUSED_STREAM)", seen.refused as u64);
        }
        Err(e) => tally.lock().count("1 streams", format!("error: {e}"), 1),
    }
}

/// What each stream saw within 2 s (all at once), counted under `step`: its end, a
/// response, or nothing (held).
async fn outcomes(step: &'static str, streams: &mut [grpc::Stream], tally: &Mutex<Tally>) {
    let seen = futures_util::future::join_all(streams.iter_mut().map(|stream| async {
        match stream.next(Duration::from_secs(2)).await {
            Some(Event::Ended(End::Status { code, .. })) => grpc::code_name(code).to_owned(),
            Some(Event::Ended(end)) => end.label(),
            Some(Event::Response { .. }) => "answered".to_owned(),
            None => "held".to_owned(),
        }
    }))
    .await;
    let mut tally = tally.lock();
    for what in seen {
        tally.count(step, what, 1);
    }
}

async fn names(addr: SocketAddr, tally: &Mutex<Tally>) {
    let Ok(mut connection) = Connection::open(addr).await else {
        return tally.lock().count("2 names", "connect failed", 1);
    };
    let mut held = Vec::new();
    for s in 0..101 {
        let count = if s == 100 { 101 } else { 100 };
        let names = (0..count)
            .map(|i| format!("abuse-{s:03}-{i:03}-{}", "x".repeat(50)))
            .collect();
        match connection
            .stream(grpc::frame(&grpc::subscribe(names)))
            .await
        {
            Ok(stream) => held.push(stream),
            Err(e) => tally.lock().count("2 names", format!("open: {e}"), 1),
        }
    }
    outcomes("2 names", &mut held, tally).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn bytes(addr: SocketAddr, tally: &Mutex<Tally>) {
    let Ok(mut connection) = Connection::open(addr).await else {
        return tally.lock().count("3 bytes", "connect failed", 1);
    };
    let mut held = Vec::new();
    for s in 0..100 {
        let mut buf = BytesMut::new();
        grpc::put_prefix(&mut buf, 4 << 20);
        let mut i = 0;
        while buf.len() < 48 << 10 {
            let name = format!("half-{s:03}-{i:05}-{}", "y".repeat(50));
            encode_key(3, WireType::LengthDelimited, &mut buf);
            encode_varint(name.len() as u64, &mut buf);
            buf.put_slice(name.as_bytes());
            i += 1;
        }
        match connection.stream(buf.freeze()).await {
            Ok(stream) => held.push(stream),
            Err(e) => tally.lock().count("3 bytes", format!("open: {e}"), 1),
        }
    }
    outcomes("3 bytes", &mut held, tally).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn nacks(addr: SocketAddr, name: &str, tally: &Mutex<Tally>) {
    let Ok(mut connection) = Connection::open(addr).await else {
        return tally.lock().count("4 NACKs", "connect failed", 1);
    };
    let names = vec![name.to_owned()];
    let Ok(mut stream) = connection
        .stream(grpc::frame(&grpc::subscribe(names.clone())))
        .await
    else {
        return tally.lock().count("4 NACKs", "open failed", 1);
    };
    let nonce = match stream.next(Duration::from_secs(5)).await {
        Some(Event::Response { nonce, .. }) => nonce,
        _ => return tally.lock().count("4 NACKs", "no first response", 1),
    };
    let nack = grpc::frame(&grpc::nack(
        names,
        &nonce,
        "abuse: rejected\nforged line".into(),
    ));
    let mut sent = 0;
    for _ in 0..2_000 {
        if stream.send(nack.clone()).is_err() {
            break;
        }
        sent += 1;
        tokio::task::yield_now().await;
    }
    tally.lock().count("4 NACKs", "sent", sent);
    outcomes("4 NACKs", std::slice::from_mut(&mut stream), tally).await;
}

async fn silent(addr: SocketAddr, tally: &Mutex<Tally>) {
    let mut held = Vec::new();
    for _ in 0..500 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => held.push(tcp),
            Err(_) => tally.lock().count("5 silent", "connect failed", 1),
        }
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Closed by the server (it read EOF): the HTTP/2 start never came within 10 s.
    // (Or it said something first: anything to read means it gave up on the connection.)
    let mut closed = 0;
    for tcp in &held {
        let mut byte = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(1), tcp.peek(&mut byte))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    let mut tally = tally.lock();
    tally.count("5 silent", "closed by the server", closed);
    let open = held.len() as u64 - closed;
    if open > 0 {
        tally.count("5 silent", "still open after 12 s", open);
    }
}
