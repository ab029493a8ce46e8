//! Abuse tool: what one misbehaving client can make the real server hold, and write to its
//! log, within the per-client limits; and whether a well-behaved client is still served.
//!
//! ```text
//! cargo build --release --example serve-dir --example abuse
//! cargo run --release --example abuse
//! cargo run --release --example abuse -- --only 1,4 --silent 200
//! ```
//!
//! Each scenario runs against a fresh `serve-dir` child process (`target/release/examples/
//! serve-dir --dir D --listen 127.0.0.1:0`, serving one credential made with rcgen; its log,
//! at the default INFO level, goes to `target/abuse/<scenario>.log`). The tool reads the
//! server's resident memory (`VmRSS` in `/proc/PID/status`) once its CPU is quiet, and the
//! log's WARN lines and bytes, before and after:
//!
//! 1. one connection opens 100 streams (the announced `SETTINGS_MAX_CONCURRENT_STREAMS`) that
//!    subscribe to as many distinct names as `Limits` allow (64-byte and 390-byte names) and
//!    hold them: bytes per stream and per subscribed name; 120 streams sent at once by a raw
//!    HTTP/2 client that ignores the limit; the security review's 20 streams × 10,000 names;
//!    more subscriptions than the server holds in all, from many connections;
//! 2. 100 streams each send a gRPC prefix announcing 4 MiB, part of the message, and stall;
//! 3. 500 TCP connections that never send a byte (and 100 that stop one byte short of the
//!    HTTP/2 start, 100 that stop right after it), counted 15 s later (those still open are
//!    watched for a minute);
//! 4. a NACK storm on one stream, one NACK with a 1 MiB message, and many short streams that
//!    each NACK once or are refused once;
//! 5. meanwhile (scenarios 1-3) a well-behaved client connects anew and gets the credential
//!    with `FetchSecrets` and on a stream: how long it took.
//!
//! It prints a Markdown table and writes it to `target/abuse/report.md`. Every wait is
//! bounded; the run takes about 1.5 minutes and stops by itself.

#[path = "abuse/bystander.rs"]
mod bystander;
#[path = "abuse/grpc.rs"]
mod grpc;
#[path = "abuse/half_sent.rs"]
mod half_sent;
#[path = "abuse/nacks.rs"]
mod nacks;
#[path = "abuse/raw.rs"]
mod raw;
#[path = "abuse/report.rs"]
mod report;
#[path = "abuse/server.rs"]
mod server;
#[path = "abuse/silent.rs"]
mod silent;
#[path = "abuse/streams.rs"]
mod streams;
#[path = "abuse/subscriptions.rs"]
mod subscriptions;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Parser;

use crate::{report::Row, server::Server};

/// Measure what abusive SDS clients cost the real server (memory, log) and whether a
/// well-behaved client is still served. Runs `serve-dir` as a child process on 127.0.0.1.
#[derive(Parser, Debug)]
#[command(long_about = None)]
struct Args {
    /// Scenarios to run (1 subscriptions, 2 half-sent messages, 3 silent connections, 4 log
    /// floods; 5, the well-behaved client, runs within 1-3).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4])]
    only: Vec<u8>,

    /// The server binary (default: `serve-dir` beside this tool, i.e.
    /// `target/release/examples/serve-dir`; build it with
    /// `cargo build --release --example serve-dir`).
    #[arg(long)]
    server: Option<PathBuf>,

    /// Connections that never send a byte, in scenario 3.
    #[arg(long, default_value_t = 500)]
    silent: usize,

    /// In scenario 3, how long connections still open after 15 s are watched, in seconds
    /// (HTTP/2 keepalive may close them later).
    #[arg(long, default_value_t = 60)]
    follow: u64,

    /// NACKs in scenario 4's storm (sent over 5 s).
    #[arg(long, default_value_t = 5_000)]
    nacks: usize,

    /// Short-lived streams in scenarios 4c and 4d.
    #[arg(long, default_value_t = 1_000)]
    short_streams: usize,

    /// Where the report, the credential and the servers' logs go.
    #[arg(long, default_value = "target/abuse")]
    out: PathBuf,
}

/// Longest a scenario may run before it is abandoned (its server is killed).
const SCENARIO_LIMIT: Duration = Duration::from_secs(100);

/// What every scenario needs: where the server binary, the credential and the logs are.
pub(crate) struct Scenario<'a> {
    exe: &'a Path,
    credentials: &'a Path,
    out: &'a Path,
}

impl Scenario<'_> {
    /// Starts a fresh server (its log in `OUT/<id>.log`), runs `measure` against it within
    /// [`SCENARIO_LIMIT`], records the log's growth (startup excluded) in `row`, and kills
    /// the server. On failure the reason goes to `row` and `None` is returned.
    pub(crate) async fn on_fresh_server<T>(
        &self,
        id: &str,
        row: &mut Row,
        measure: impl AsyncFnOnce(&Server) -> Result<T, String>,
    ) -> Option<T> {
        eprintln!("== {}", row.scenario);
        let log = self.out.join(format!("{id}.log"));
        let mut server = match Server::start(self.exe, self.credentials, log) {
            Ok(server) => server,
            Err(e) => {
                row.outcome = format!("FAILED: {e}");
                return None;
            }
        };
        server.quiet(Duration::from_secs(5)).await;
        let mark = server.log_mark();
        let start = Instant::now();
        let result = tokio::time::timeout(SCENARIO_LIMIT, measure(&server)).await;
        // Let the last log lines be written.
        server.quiet(Duration::from_secs(5)).await;
        row.log(mark, server.log_mark());
        let alive = server.alive();
        drop(server);
        eprintln!("   took {:.1} s", start.elapsed().as_secs_f64());
        let result = match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                row.outcome = format!("FAILED: {e}");
                None
            }
            Err(_) => {
                row.outcome = format!("FAILED: not done within {SCENARIO_LIMIT:?}");
                None
            }
        };
        if !alive {
            row.outcome.push_str(" — THE SERVER EXITED");
        }
        result
    }
}

fn main() {
    let args = Args::parse();
    let exe = match &args.server {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|me| Some(me.parent()?.join("serve-dir")))
            .unwrap_or_else(|| PathBuf::from("target/release/examples/serve-dir")),
    };
    if !exe.is_file() {
        eprintln!(
            "no server binary at {}: build it with `cargo build --release --example serve-dir` \
             (or pass --server)",
            exe.display()
        );
        std::process::exit(2);
    }
    let credentials = args.out.join("credentials");
    if let Err(e) =
        std::fs::create_dir_all(&args.out).and_then(|()| server::write_credentials(&credentials))
    {
        eprintln!("cannot write {}: {e}", credentials.display());
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let scenario = Scenario {
        exe: &exe,
        credentials: &credentials,
        out: &args.out,
    };
    let start = Instant::now();
    let mut rows = Vec::new();
    rt.block_on(async {
        for &n in &args.only {
            match n {
                1 => rows.extend(subscriptions::run(&scenario).await),
                2 => rows.extend(half_sent::run(&scenario).await),
                3 => {
                    let follow = Duration::from_secs(args.follow);
                    rows.extend(silent::run(&scenario, args.silent, follow).await);
                }
                4 => rows.extend(nacks::run(&scenario, args.nacks, args.short_streams).await),
                other => eprintln!("no scenario {other}; they are 1-4"),
            }
        }
    });
    // Streams and connections still held by aborted tasks go with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    let table = report::table(&rows);
    println!("{table}");
    eprintln!("run took {:.0} s", start.elapsed().as_secs_f64());
    let md = args.out.join("report.md");
    match std::fs::write(&md, &table) {
        Ok(()) => eprintln!("wrote {}", md.display()),
        Err(e) => eprintln!("cannot write {}: {e}", md.display()),
    }
}
