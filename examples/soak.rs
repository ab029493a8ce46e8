//! Soak: the real `serve-dir` under rotations every second and faults, for minutes, with N
//! streams that behave as Envoy's; it reports whether any update was lost or any bad secret
//! pushed, and the server's memory over time, its CPU per message and how long the
//! reconnect storm after a restart takes.
//!
//! ```text
//! cargo build --release --example serve-dir --example soak
//! ./target/release/examples/soak --n 10000 --duration 10m
//! ```
//!
//! (`scripts/soak` does both; `scripts/soak --source k8s` soaks `serve-k8s`.) The tool writes
//! K credentials into a temporary directory and starts `serve-dir` on it (next to this binary
//! unless `--server`; as `nobody` when run as root, so that an unreadable directory is
//! unreadable to it), or with `--source k8s` writes them as `kubernetes.io/tls` Secrets of an
//! in-process `sds-test-apiserver` and starts `serve-k8s` on it. N streams, 100 per HTTP/2
//! connection, each subscribe to one credential (stream `i` to credential `i mod K`), ACK
//! every response, and reconnect with backoff and jitter, resubscribing with the version they
//! hold. Every second a new pair is written for one of the credentials 1..K; every
//! `--fault-every`, the next fault of the cycle, on credential 0 or the whole server:
//!
//! - `restart`: SIGTERM, a new server on the same port; the time until every stream is
//!   answered by the new one is the reconnect storm;
//! - `unreadable` (directory): the directory's mode is 000 for 5 s (rotations meanwhile land
//!   after);
//! - `api-down` (Kubernetes): the API server stops for 5 s (connections refused) and comes
//!   back with what was written meanwhile;
//! - `compact` (Kubernetes): the API server stops, a new pair is written, the history is
//!   compacted and the server comes back: the watch resumes from an expired resourceVersion
//!   (410 Gone) and must list again;
//! - `half-pair`: a new chain without its key for 1 s, then the key;
//! - `garbage-key`, `other-key`, `expired`: a key that is not one, the key of another pair,
//!   an expired certificate with its key; 1 s later a good pair.
//!
//! With `--abuse`, one more client exceeds each per-client limit in turn, over and over
//! (1,100 streams on a connection, 10,000 names and a stream of 101, half-sent 4 MiB
//! requests, a NACK storm, 500 silent connections: `soak/abuser.rs`), and the report says what
//! the server did to it. Compare the time to all (below) with a run without it, with
//! `--fault-every 0s` for both.
//!
//! Every secret a stream is sent is judged: it must be a pair the soak wrote as good for that
//! name (the leaf and key compared by DER), never older than one the stream held. At the end
//! the rotations and faults stop, and every stream must come to hold the latest good pair of
//! its name. The report (stdout and `--out`/report.md, with the RSS samples in rss.csv) gives
//! updates lost, bad secrets pushed, regressions, the time from each rotation until every
//! stream of its credential holds it (p50, p90, p99, max), the server's RSS per minute, its CPU
//! per message received, and the reconnect storms. The exit status is 1 if anything was lost,
//! bad or older.

#[path = "soak/abuser.rs"]
mod abuser;
#[path = "soak/credentials.rs"]
mod credentials;
// The abuse tool's clients (`--abuse`).
#[allow(dead_code)]
#[path = "abuse/grpc.rs"]
mod grpc;
#[allow(dead_code)]
#[path = "abuse/raw.rs"]
mod raw;
#[path = "soak/server.rs"]
mod server;
#[path = "soak/streams.rs"]
mod streams;

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use tokio::sync::Mutex;
use tonic::transport::Endpoint;

use sds_test_apiserver::{Access, ApiServer};

use crate::{
    credentials::{Credentials, Spoil, Store},
    server::{Launch, Server},
    streams::{Shared, Streams},
};

/// The namespace of the Secrets, and the server's token, with `--source k8s`.
const NAMESPACE: &str = "istio-system";
const TOKEN: &str = "sds-soak";

/// Soak the real serve-dir: rotations every second and faults, with N streams like Envoy's.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Streams.
    #[arg(long, default_value_t = 10_000)]
    n: usize,

    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,

    /// Credentials (at least 2: credential 0 takes the faults, the others the rotations).
    #[arg(long, default_value_t = 10)]
    credentials: usize,

    /// How long rotations and faults go on (`10m`, `90s`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,

    /// A new pair for one credential this often.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    rotate_every: Duration,

    /// The next fault this often (0s: no faults).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    fault_every: Duration,

    /// Meanwhile, one client exceeds each per-client limit in turn, over and over (streams,
    /// names, bytes, NACK rate, silent connections; see `soak/abuser.rs`). Compare the time
    /// to all with a run without it.
    #[arg(long)]
    abuse: bool,

    /// The faults, in the order they come round (default: every fault the source has).
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<Fault>>,

    /// Where the credentials are: a directory served by `serve-dir`, or Kubernetes Secrets
    /// of an in-process test API server served by `serve-k8s`.
    #[arg(long, value_enum, default_value_t = Source::Dir)]
    source: Source,

    /// The server binary (default: `serve-dir` or `serve-k8s` beside this one).
    #[arg(long)]
    server: Option<PathBuf>,

    /// How long the streams may take to hold the latest pairs once the soak stops.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    settle: Duration,

    /// Where report.md, rss.csv and the server's log go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    Dir,
    K8s,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// The server: SIGTERM, a new process on the same port.
    Restart,
    /// The directory's mode 000 for 5 s (`dir`).
    Unreadable,
    /// The API server down for 5 s (`k8s`).
    ApiDown,
    /// The API server down, its history compacted meanwhile, so that the server's watch
    /// resumes from an expired resourceVersion (`410 Gone`) and lists again (`k8s`).
    Compact,
    HalfPair,
    GarbageKey,
    OtherKey,
    Expired,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::Restart,
        Fault::Unreadable,
        Fault::HalfPair,
        Fault::GarbageKey,
        Fault::OtherKey,
        Fault::Expired,
        Fault::ApiDown,
        Fault::Compact,
    ];

    /// The faults a source has, in the order they come round.
    fn of(source: Source) -> Vec<Fault> {
        Fault::ALL
            .into_iter()
            .filter(|f| {
                !matches!(
                    (f, source),
                    (Fault::Unreadable, Source::K8s)
                        | (Fault::ApiDown | Fault::Compact, Source::Dir)
                )
            })
            .collect()
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        f.write_str(&name)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown unit in {s:?} (ms, s, m, h)")),
    }
}

/// One RSS and CPU sample of the server.
struct Sample {
    at: Duration,
    rss_kib: Option<u64>,
    cpu: Duration,
    responses: u64,
}

/// What the faults did.
#[derive(Default)]
struct FaultLog {
    done: Vec<Fault>,
    /// Per restart: the time until every stream was answered by the new server.
    storms: Vec<Duration>,
    /// Per API server outage: the time from its return until every stream of the credential
    /// written while it was down holds it.
    resyncs: Vec<Duration>,
    errors: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.credentials < 2 || args.n == 0 || args.per_connection == 0 {
        return Err("--credentials must be at least 2, --n and --per-connection positive".into());
    }
    let faults = match args.fault_every.is_zero() {
        true => Vec::new(),
        false => args
            .faults
            .clone()
            .unwrap_or_else(|| Fault::of(args.source)),
    };
    if let Some(fault) = faults.iter().find(|f| !Fault::of(args.source).contains(f)) {
        return Err(format!(
            "--faults {fault} is not a fault of --source {:?}",
            args.source
        )
        .into());
    }
    let example = match args.source {
        Source::Dir => "serve-dir",
        Source::K8s => "serve-k8s",
    };
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name(example),
    };
    if !binary.exists() {
        return Err(format!(
            "no {example} at {} (scripts/soak builds it; or --server)",
            binary.display()
        )
        .into());
    }
    fs::create_dir_all(&args.out)?;
    let work = tempfile::tempdir()?;
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755))?;
    let (store, launch) = match args.source {
        Source::Dir => {
            let dir = work.path().join("credentials");
            let launch = Launch {
                binary,
                args: vec![
                    "--dir".into(),
                    dir.clone().into(),
                    "--debounce".into(),
                    "100ms".into(),
                ],
                env: Vec::new(),
            };
            (Store::Dir(dir), launch)
        }
        Source::K8s => {
            let api = ApiServer::builder()
                .user(
                    TOKEN,
                    "system:serviceaccount:istio-system:sds",
                    Access::all().read_only(),
                )
                .start()
                .await?;
            // Readable by the server when it runs as `nobody`.
            let kubeconfig = work.path().join("kubeconfig.yaml");
            fs::write(&kubeconfig, api.kubeconfig_yaml(TOKEN, NAMESPACE))?;
            fs::set_permissions(&kubeconfig, fs::Permissions::from_mode(0o644))?;
            let launch = Launch {
                binary,
                args: vec!["--namespace".into(), NAMESPACE.into()],
                env: vec![("KUBECONFIG".to_owned(), kubeconfig.into())],
            };
            let namespace = NAMESPACE.to_owned();
            (Store::K8s { api, namespace }, launch)
        }
    };
    let credentials = Arc::new(Credentials::create(store, args.credentials)?);
    let names = credentials.names().to_vec();

    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = args.out.join("server.log");
    let _ = fs::remove_file(&log);
    let server = Server::start(launch, addr, &log)?;
    server.wait_listening(Duration::from_secs(30)).await?;
    let server = Arc::new(Mutex::new(server));

    let connections = args.n.div_ceil(args.per_connection);
    let channels: Vec<_> = (0..connections)
        .map(|_| Endpoint::from_shared(format!("http://{addr}")).map(|e| e.connect_lazy()))
        .collect::<Result<_, _>>()?;
    let shared = Shared::new(Arc::clone(&credentials), args.n);
    let started = Instant::now();
    let streams = Streams::open(&channels, args.per_connection, &names, &shared);
    let Some(warm) = settle(&shared, &names, Duration::from_secs(120)).await else {
        return Err(format!(
            "{} of {} streams never received their first secret",
            shared.behind(&names),
            args.n
        )
        .into());
    };
    println!(
        "{} streams on {connections} connections hold their secrets after {warm:?}",
        args.n
    );

    let samples = Arc::new(parking_lot::Mutex::new(Vec::<Sample>::new()));
    let sampler = tokio::spawn({
        let (server, shared, samples) = (
            Arc::clone(&server),
            Arc::clone(&shared),
            Arc::clone(&samples),
        );
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let (rss_kib, cpu) = {
                    let server = server.lock().await;
                    (server.rss_kib(), server.cpu())
                };
                samples.lock().push(Sample {
                    at: started.elapsed(),
                    rss_kib,
                    cpu,
                    responses: shared.responses.load(Ordering::Relaxed),
                });
            }
        }
    });

    let soak_start = Instant::now();
    let faults = tokio::spawn(run_faults(
        faults,
        args.fault_every,
        args.duration,
        Arc::clone(&server),
        Arc::clone(&shared),
    ));
    let abuse_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let abuse_tally = Arc::new(parking_lot::Mutex::new(abuser::Tally::default()));
    let abuser = args.abuse.then(|| {
        tokio::spawn(abuser::run(
            addr,
            names[1].clone(),
            Arc::clone(&abuse_stop),
            Arc::clone(&abuse_tally),
        ))
    });
    // Per rotation: the time until every stream of the credential holds the new pair.
    let to_all = Arc::new(parking_lot::Mutex::new(Vec::<Option<Duration>>::new()));
    let (mut rotations, mut refused) = (0u64, 0u64);
    let mut tick = tokio::time::interval(args.rotate_every);
    tick.tick().await;
    while soak_start.elapsed() < args.duration {
        tick.tick().await;
        let name = &names[1 + (rotations as usize % (names.len() - 1))];
        match credentials.rotate(name) {
            Ok(()) => {
                rotations += 1;
                let (shared, names, name, to_all) = (
                    Arc::clone(&shared),
                    names.clone(),
                    name.clone(),
                    Arc::clone(&to_all),
                );
                tokio::spawn(async move {
                    let start = Instant::now();
                    while shared.behind_on(&name, &names) > 0 {
                        if start.elapsed() > Duration::from_secs(30) {
                            return to_all.lock().push(None);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    to_all.lock().push(Some(start.elapsed()));
                });
            }
            Err(_) => refused += 1,
        }
    }
    abuse_stop.store(true, Ordering::Relaxed);
    if let Some(abuser) = abuser {
        // A round ends within about 30 s; what it holds goes with it.
        if tokio::time::timeout(Duration::from_secs(60), abuser)
            .await
            .is_err()
        {
            eprintln!("the abuser did not finish its round within 60 s");
        }
    }
    let fault_log = faults.await?;
    let settled = settle(&shared, &names, args.settle).await;
    sampler.abort();
    let _ = sampler.await;
    let samples = std::mem::take(&mut *samples.lock());
    let to_all = std::mem::take(&mut *to_all.lock());
    let abuse = args.abuse.then(|| std::mem::take(&mut *abuse_tally.lock()));
    finish(Finish {
        args: &args,
        lost: shared.behind(&names),
        settled,
        rotations,
        refused,
        fault_log,
        shared: &shared,
        samples: &samples,
        to_all: &to_all,
        abuse,
        streams,
        server: &server,
        connections,
    })
    .await
}

/// Waits until every stream holds the latest good pair of its name; how long that took.
async fn settle(shared: &Shared, names: &[String], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while shared.behind(names) > 0 {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(start.elapsed())
}

/// The faults, one every `every`, in turn, until `duration` is over.
async fn run_faults(
    faults: Vec<Fault>,
    every: Duration,
    duration: Duration,
    server: Arc<Mutex<Server>>,
    shared: Arc<Shared>,
) -> FaultLog {
    let mut log = FaultLog::default();
    let start = Instant::now();
    let credentials = Arc::clone(&shared.credentials);
    let target = credentials.names()[0].clone();
    let one_second = Duration::from_secs(1);
    for fault in faults.iter().cycle() {
        tokio::time::sleep(every).await;
        if faults.is_empty() || start.elapsed() + every / 2 > duration {
            break;
        }
        let result: Result<(), String> = match fault {
            Fault::Restart => restart(&server, &shared)
                .await
                .map(|storm| log.storms.push(storm)),
            Fault::ApiDown | Fault::Compact => {
                async {
                    let api = credentials.api().map_err(|e| e.to_string())?;
                    api.stop().await;
                    // A change the server's watch has not seen (with `compact`, compacted
                    // away: the watch's resourceVersion expires and it must list again).
                    credentials.rotate(&target).map_err(|e| e.to_string())?;
                    if *fault == Fault::Compact {
                        tokio::time::sleep(one_second).await;
                        api.compact();
                    } else {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    api.restart().await.map_err(|e| e.to_string())?;
                    let back = Instant::now();
                    while shared.behind_on(&target, credentials.names()) > 0 {
                        if back.elapsed() > Duration::from_secs(120) {
                            return Err(
                                "not resynced 120 s after the API server came back".to_owned()
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    log.resyncs.push(back.elapsed());
                    Ok(())
                }
                .await
            }
            Fault::Unreadable => {
                async {
                    credentials.readable(false).map_err(|e| e.to_string())?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    credentials.readable(true).map_err(|e| e.to_string())
                }
                .await
            }
            Fault::HalfPair => {
                async {
                    let leaf = credentials.half(&target).map_err(|e| e.to_string())?;
                    tokio::time::sleep(one_second).await;
                    credentials
                        .complete(&target, &leaf)
                        .map_err(|e| e.to_string())
                }
                .await
            }
            Fault::GarbageKey | Fault::OtherKey | Fault::Expired => {
                async {
                    let how = match fault {
                        Fault::GarbageKey => Spoil::Garbage,
                        Fault::OtherKey => Spoil::OtherKey,
                        _ => Spoil::Expired,
                    };
                    credentials.spoil(&target, how).map_err(|e| e.to_string())?;
                    tokio::time::sleep(one_second).await;
                    credentials.rotate(&target).map_err(|e| e.to_string())
                }
                .await
            }
        };
        match result {
            Ok(()) => log.done.push(*fault),
            Err(e) => log.errors.push(format!("{fault}: {e}")),
        }
    }
    log
}

/// Restarts the server; the time until every stream was answered by the new one.
async fn restart(server: &Mutex<Server>, shared: &Shared) -> Result<Duration, String> {
    let mut server = server.lock().await;
    server.stop().await.map_err(|e| e.to_string())?;
    shared.epoch.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    server.restart().await.map_err(|e| e.to_string())?;
    drop(server);
    while shared.not_back() > 0 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{} streams not back after 120 s",
                shared.not_back()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

struct Finish<'a> {
    args: &'a Args,
    lost: usize,
    settled: Option<Duration>,
    rotations: u64,
    refused: u64,
    fault_log: FaultLog,
    shared: &'a Shared,
    samples: &'a [Sample],
    to_all: &'a [Option<Duration>],
    abuse: Option<abuser::Tally>,
    streams: Streams,
    server: &'a Mutex<Server>,
    connections: usize,
}

/// Stops everything, writes the report, and says whether the soak passed.
async fn finish(f: Finish<'_>) -> Result<(), Box<dyn std::error::Error>> {
    f.streams.close().await;
    let cpu = {
        let mut server = f.server.lock().await;
        let cpu = server.cpu();
        server.stop().await?;
        cpu
    };
    let shared = f.shared;
    let responses = shared.responses.load(Ordering::Relaxed);
    let bad = shared.bad.load(Ordering::Relaxed);
    let regressions = shared.regressions.load(Ordering::Relaxed);

    let mut csv = String::from("seconds,rss_kib,cpu_ms,responses\n");
    for s in f.samples {
        let _ = writeln!(
            csv,
            "{:.0},{},{},{}",
            s.at.as_secs_f64(),
            s.rss_kib.map(|r| r.to_string()).unwrap_or_default(),
            s.cpu.as_millis(),
            s.responses
        );
    }
    fs::write(f.args.out.join("rss.csv"), csv)?;

    let count = |fault: Fault| f.fault_log.done.iter().filter(|d| **d == fault).count();
    let faults: Vec<String> = Fault::of(f.args.source)
        .iter()
        .map(|fault| format!("{fault} ×{}", count(*fault)))
        .collect();
    let mut storms = f.fault_log.storms.clone();
    storms.sort();
    let storms = match (storms.first(), storms.get(storms.len() / 2), storms.last()) {
        (Some(min), Some(median), Some(max)) => format!(
            "{} restarts: min {:.2} s, median {:.2} s, max {:.2} s",
            storms.len(),
            min.as_secs_f64(),
            median.as_secs_f64(),
            max.as_secs_f64()
        ),
        _ => "no restart".to_owned(),
    };
    let log_bytes = fs::metadata(f.args.out.join("server.log")).map_or(0, |m| m.len());
    let mut report = String::new();
    let _ = writeln!(report, "# Soak\n");
    let _ = writeln!(report, "| figure | value |\n|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(report, "| {k} | {v} |");
    };
    row(
        "streams (connections)",
        format!("{} ({})", f.args.n, f.connections),
    );
    row(
        "source; credentials",
        format!("{:?}; {}", f.args.source, f.args.credentials),
    );
    row("soak", format!("{:?}", f.args.duration));
    row(
        "rotations written (refused: directory unreadable)",
        format!("{} ({})", f.rotations, f.refused),
    );
    row(
        "faults",
        match f.args.fault_every.is_zero() {
            true => "none (--fault-every 0s)".to_owned(),
            false => faults.join(", "),
        },
    );
    row("fault errors", format!("{:?}", f.fault_log.errors));
    row("responses received", responses.to_string());
    row(
        "**updates lost** (streams not at their latest good pair after settling)",
        f.lost.to_string(),
    );
    row(
        "settled after",
        f.settled.map_or("never".to_owned(), |s| format!("{s:?}")),
    );
    row("**bad secrets pushed**", bad.to_string());
    row(
        "regressions (an older good pair after a newer)",
        regressions.to_string(),
    );
    row(
        "reconnects (streams opened again)",
        shared.reconnects.load(Ordering::Relaxed).to_string(),
    );
    row(
        "reconnect storm (every stream answered by the new server)",
        storms,
    );
    if !f.fault_log.resyncs.is_empty() {
        let resyncs: Vec<String> = f
            .fault_log
            .resyncs
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect();
        row(
            "API server back to every stream holding what was written while it was down",
            resyncs.join(", "),
        );
    }
    row(
        "server CPU per message received",
        format!(
            "{:.1} µs ({:?} in all)",
            cpu.as_secs_f64() * 1e6 / responses.max(1) as f64,
            cpu
        ),
    );
    let mut times: Vec<Duration> = f.to_all.iter().flatten().copied().collect();
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .map_or("-".to_owned(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1e3)
            })
    };
    row(
        "time until every stream of a rotated credential holds it: p50 / p90 / p99 / max",
        format!(
            "{} / {} / {} / {} ({} rotations, {} not within 30 s)",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
            f.to_all.len(),
            f.to_all.iter().filter(|t| t.is_none()).count()
        ),
    );
    if let Some(abuse) = &f.abuse {
        row("abuser rounds", abuse.rounds.to_string());
        for (step, seen) in &abuse.seen {
            let seen: Vec<String> = seen
                .iter()
                .map(|(what, n)| format!("{what} ×{n}"))
                .collect();
            row(&format!("abuser: {step}"), seen.join(", "));
        }
    }
    row("server log", format!("{log_bytes} bytes"));
    let _ = writeln!(report, "\n## Server RSS per minute (KiB)\n");
    let _ = writeln!(report, "| minute | RSS |\n|---|---|");
    for s in f
        .samples
        .iter()
        .filter(|s| s.at.as_secs() % 60 == 0 || s.at.as_secs() < 2)
    {
        if let Some(rss) = s.rss_kib {
            let _ = writeln!(report, "| {:.1} | {rss} |", s.at.as_secs_f64() / 60.0);
        }
    }
    if let Some(last) = f.samples.last().and_then(|s| s.rss_kib) {
        let _ = writeln!(report, "| end | {last} |");
    }
    let examples = shared.bad_examples.lock();
    if !examples.is_empty() {
        let _ = writeln!(report, "\nBad pushes (first ones): {examples:#?}");
    }
    fs::write(f.args.out.join("report.md"), &report)?;
    println!("{report}");
    if f.lost > 0 || bad > 0 || regressions > 0 || !f.fault_log.errors.is_empty() {
        return Err("the soak failed: see the report".into());
    }
    Ok(())
}
