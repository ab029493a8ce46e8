//! Load tool: how fast a rotated credential reaches N subscribed SDS streams, what it costs the
//! server, and the same figures for a bare tonic service (the transport's bound), side by side.
//!
//! ```text
//! cargo run --release --example load
//! cargo run --release --example load -- --n 100,1000 --rotations 50 --node minimal
//! ```
//!
//! Each server runs in a child process of this tool (`load --serve ours|bare`) on 127.0.0.1,
//! so its CPU time (`/proc/PID/task/*/schedstat` of its runtime threads) and resident memory
//! (`VmRSS`) are its own. The tool opens N streams, 100 per HTTP/2 connection, each
//! subscribing to one secret and ACKing every response the way Envoy does; rotates one
//! credential subscribed by all N streams, then one of K credentials (each subscribed by N/K
//! streams). Every figure is taken with a minimal `Node` and with an Envoy-sized one (about
//! 61 KB) on every request, ACKs included. It prints a markdown table (ours, bare, ours/bare)
//! and writes `target/load/latency.png` and `target/load/report.md`.

#[path = "load/child.rs"]
mod child;
#[path = "load/client.rs"]
mod client;
#[path = "load/credentials.rs"]
mod credentials;
#[path = "load/report.rs"]
mod report;
#[path = "load/serve.rs"]
mod serve;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;

use tonic::transport::Channel;

use sds_test_util::envoy_node;

use crate::{
    child::Server,
    client::{Streams, Tracker},
    serve::{Kind, SHARED, credential},
};

/// Measure rotation latency, server CPU and memory at N streams, against a bare tonic bound.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Run as the server child process (used by the tool itself).
    #[arg(long, hide = true)]
    serve: Option<Kind>,

    /// Stream counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 10_000])]
    n: Vec<usize>,

    /// Credentials in the one-of-K phase (each subscribed by N/K streams).
    #[arg(long, default_value_t = 100)]
    k: usize,

    /// Rotations of the credential all N streams subscribe to (memory growth is read at
    /// rotation 20 and at the last one).
    #[arg(long, default_value_t = 200)]
    rotations: usize,

    /// Rotations with the Envoy-sized node (each moves N x 61 KB of ACKs).
    #[arg(long, default_value_t = 50)]
    envoy_rotations: usize,

    /// Rotations of one of the K credentials.
    #[arg(long, default_value_t = 30)]
    k_rotations: usize,

    /// Which `Node` every request carries.
    #[arg(long, value_delimiter = ',', default_values_t = [report::NodeKind::Minimal, report::NodeKind::Envoy])]
    node: Vec<report::NodeKind>,

    /// Extension entries in the Envoy-sized node: Envoy 1.40 lists about 500; with
    /// sds-test-util's entries, 530 make the 61 KB Envoy sends.
    #[arg(long, default_value_t = 530)]
    extensions: usize,

    /// Servers to run.
    #[arg(long, value_delimiter = ',', default_values_t = [Kind::Ours, Kind::Bare])]
    servers: Vec<Kind>,

    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,

    /// The server's HTTP/2 `max_concurrent_streams`.
    #[arg(long, default_value_t = 1024)]
    max_streams: u32,

    /// The server's HTTP/2 receive windows, per stream and per connection, in bytes (hyper's
    /// defaults when absent: 1 MiB each).
    #[arg(long)]
    stream_window: Option<u32>,
    #[arg(long)]
    connection_window: Option<u32>,

    /// Runtime worker threads of the server, and of the client.
    #[arg(long, default_value_t = 2)]
    server_workers: usize,
    #[arg(long, default_value_t = 2)]
    client_workers: usize,

    /// Give up (and report what was measured) after this many seconds.
    #[arg(long, default_value_t = 900)]
    time_limit: u64,

    /// Where the table and the plot go.
    #[arg(long, default_value = "target/load")]
    out: std::path::PathBuf,
}

/// One wait (a rotation to arrive, streams to open) gives up after this long.
const STEP_LIMIT: Duration = Duration::from_secs(60);

impl Args {
    /// The server's HTTP/2 settings.
    fn http2(&self) -> serve::Http2 {
        serve::Http2 {
            max_streams: self.max_streams,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some(kind) = args.serve {
        serve::main(kind, args.k, &args.http2(), args.server_workers);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_workers)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(args.time_limit);
    let mut trials = Vec::new();
    'all: for &node in &args.node {
        let node_bytes = Bytes::from(match node {
            report::NodeKind::Minimal => envoy_node::minimal_node(),
            report::NodeKind::Envoy => envoy_node::envoy_node(args.extensions),
        });
        for &n in &args.n {
            if Instant::now() >= deadline {
                eprintln!("time limit reached; reporting what was measured");
                break 'all;
            }
            eprintln!(
                "== N = {n}, {} node ({} bytes): {}",
                node.label(),
                node_bytes.len(),
                args.servers
                    .iter()
                    .map(|k| k.label())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            let pair = rt.block_on(measure(&args, n, node, node_bytes.clone(), deadline));
            for trial in pair {
                eprintln!("   {:<4} {}", trial.kind.label(), trial.summary());
                trials.push(trial);
            }
        }
    }
    let table = report::table(&trials, &args.servers);
    println!("{table}");
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("cannot create {}: {e}", args.out.display());
        return;
    }
    let md = args.out.join("report.md");
    if let Err(e) = std::fs::write(&md, &table) {
        eprintln!("cannot write {}: {e}", md.display());
    }
    let png = args.out.join("latency.png");
    match report::plot(&trials, &png) {
        Ok(()) => eprintln!("wrote {} and {}", md.display(), png.display()),
        Err(e) => eprintln!("cannot plot {}: {e}", png.display()),
    }
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(STEP_LIMIT)
}

/// One server under measurement, with its client streams.
struct Side {
    server: Server,
    channels: Vec<Channel>,
    tracker: Arc<Tracker>,
    streams: Streams,
    trial: report::Trial,
}

/// Measures every server at `n` streams with `node`. The servers run side by side and take
/// turns, rotation by rotation, so that a machine that slows down slows both alike.
async fn measure(
    args: &Args,
    n: usize,
    node: report::NodeKind,
    node_bytes: Bytes,
    deadline: Instant,
) -> Vec<report::Trial> {
    let mut sides = Vec::new();
    let mut failed = Vec::new();
    for &kind in &args.servers {
        let mut trial = report::Trial::new(kind, n, node);
        match Server::spawn(kind, args.k, &args.http2(), args.server_workers) {
            Ok(server) => sides.push(Side {
                server,
                channels: Vec::new(),
                tracker: Arc::new(Tracker::default()),
                streams: Streams::default(),
                trial,
            }),
            Err(e) => {
                trial.errors.push(format!("cannot start the server: {e}"));
                failed.push(trial);
            }
        }
    }
    if let Err(e) = run_phases(args, &mut sides, node_bytes, deadline).await {
        for side in &mut sides {
            side.trial.errors.push(e.clone());
        }
    }
    let mut trials = failed;
    for side in sides {
        side.streams.close().await;
        let mut trial = side.trial;
        trial.failed_streams += side.tracker.failed.load(Ordering::Relaxed);
        trials.push(trial);
    }
    trials
}

async fn run_phases(
    args: &Args,
    sides: &mut [Side],
    node: Bytes,
    deadline: Instant,
) -> Result<(), String> {
    let n = sides.first().map_or(0, |s| s.trial.n);
    let conns = n.div_ceil(args.per_connection);
    // Memory: connections alone, then idle streams.
    for side in sides.iter_mut() {
        side.server.quiet(left(deadline)).await;
        let base = side.server.rss();
        side.channels = client::connect(&side.server.addr, conns)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        side.server.quiet(left(deadline)).await;
        let with_conns = side.server.rss();
        side.trial.conns = conns;
        side.trial.mem_per_conn = with_conns.saturating_sub(base) as f64 / conns as f64;
        let names = vec![SHARED.to_owned(); n];
        side.streams = Streams::open(
            &side.channels,
            args.per_connection,
            names,
            node.clone(),
            &side.tracker,
        );
        settle(&side.server, &side.tracker, n as u64, deadline).await?;
        side.trial.mem_per_stream = side.server.rss().saturating_sub(with_conns) as f64 / n as f64;
    }

    // Phase 1: every stream subscribes to the same secret.
    let rotations = match sides.first().map(|s| s.trial.node) {
        Some(report::NodeKind::Envoy) => args.envoy_rotations,
        _ => args.rotations,
    };
    for r in 1..=rotations {
        if Instant::now() >= deadline {
            return Err(format!("time limit after {} rotations", r - 1));
        }
        for side in sides.iter_mut() {
            let rotation = rotate(&mut side.server, &side.tracker, SHARED, n, deadline).await?;
            side.trial.all.push(rotation);
            if r == 20.min(rotations) {
                side.trial.rss_early = Some((r, side.server.rss()));
            }
            if r == rotations {
                side.trial.rss_late = Some((r, side.server.rss()));
            }
        }
    }

    // Phase 2: stream i subscribes to credential i mod K; one of them rotates at a time.
    let k = args.k.max(1);
    for side in sides.iter_mut() {
        std::mem::take(&mut side.streams).close().await;
        side.server.quiet(left(deadline)).await;
        side.tracker = Arc::new(Tracker::default());
        let names: Vec<String> = (0..n).map(|i| credential(i % k)).collect();
        side.streams = Streams::open(
            &side.channels,
            args.per_connection,
            names,
            node.clone(),
            &side.tracker,
        );
        settle(&side.server, &side.tracker, n as u64, deadline).await?;
    }
    for r in 0..args.k_rotations {
        if Instant::now() >= deadline {
            return Err(format!("time limit after {r} one-of-K rotations"));
        }
        let which = r % k;
        let subscribers = (0..n).filter(|i| i % k == which).count();
        for side in sides.iter_mut() {
            let rotation = rotate(
                &mut side.server,
                &side.tracker,
                &credential(which),
                subscribers,
                deadline,
            )
            .await?;
            side.trial.one_of_k.push(rotation);
        }
    }
    Ok(())
}

/// Waits until `n` streams got their first response and ACKed it, and the server is idle.
async fn settle(
    server: &Server,
    tracker: &Tracker,
    n: u64,
    deadline: Instant,
) -> Result<(), String> {
    let limit = Instant::now() + left(deadline);
    while tracker.acks.load(Ordering::Relaxed) < n {
        if Instant::now() >= limit {
            return Err(format!(
                "only {} of {n} streams answered ({} failed)",
                tracker.acks.load(Ordering::Relaxed),
                tracker.failed.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.quiet(left(deadline)).await;
    Ok(())
}

/// Rotates `name`, subscribed by `expected` streams, and measures it.
async fn rotate(
    server: &mut Server,
    tracker: &Tracker,
    name: &str,
    expected: usize,
    deadline: Instant,
) -> Result<report::Rotation, String> {
    let io = |e: std::io::Error| e.to_string();
    let (sent0, encodes0) = server.stats().map_err(io)?;
    let version = server
        .ask(&format!("prepare {name}"), "version")
        .map_err(io)?
        .into_iter()
        .next()
        .ok_or("no version")?;
    let acks0 = tracker.acks.load(Ordering::Relaxed);
    let cpu0 = server.cpu_ns();
    tracker.arm(version, expected);
    server.send(&format!("go {expected}")).map_err(io)?;
    let all_hold = tracker.all_hold(left(deadline)).await;
    let sent = server.expect("sent").map_err(io)?;
    let sent_us: u64 = sent.first().and_then(|w| w.parse().ok()).unwrap_or(0);
    // Every subscriber ACKs; the server has handled them all once it is idle again.
    let limit = Instant::now() + left(deadline);
    while tracker.acks.load(Ordering::Relaxed) < acks0 + expected as u64 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.quiet(left(deadline)).await;
    let cpu_ns = server.cpu_ns() - cpu0;
    let (sent1, encodes1) = server.stats().map_err(io)?;
    if all_hold.is_none() {
        return Err(format!(
            "rotation of {name}: only {} of {expected} streams got it",
            tracker.held()
        ));
    }
    Ok(report::Rotation {
        expected,
        all_hold,
        sent: Duration::from_micros(sent_us),
        messages: sent1 - sent0,
        encodes: encodes1 - encodes0,
        cpu_ns,
    })
}
