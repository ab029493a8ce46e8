//! End to end with a real Envoy and many credentials: within the server's HTTP/2 stream limit,
//! and beyond it.
//!
//! Envoy opens one SDS stream per secret, and the server announces
//! `SETTINGS_MAX_CONCURRENT_STREAMS` ([`Limits::MAX_CONCURRENT_STREAMS`], 1,000, as the
//! examples do). A gateway with 150 credentials (istio/istio#37272: a gateway with ~160
//! certificates that never became ready) fits on one connection with nothing refused. Beyond
//! the limit (a server announcing 100), the gateway only comes up if Envoy opens a second
//! connection to the SDS cluster instead of queueing the streams beyond it. Each test serves
//! 150 credentials from a directory,
//! starts Envoy with one filter chain per host (SNI), waits forever for every secret
//! (`initial_fetch_timeout: 0s`, so a stuck stream cannot hide behind a timeout), and checks
//! both sides: every secret delivered, at least two connections, nothing pending; then
//! handshakes, and the rotation of the last credential.
//!
//! What Envoy 1.40 does beyond the limit (measured here): it attaches all 150 streams to its
//! first connection before the server's SETTINGS arrive; the server refuses the 50 beyond it
//! (`REFUSED_STREAM`: Envoy counts `http2.rx_reset`, `upstream_rq_503` and one
//! `update_failure` per secret, and logs nothing at `info`); their retry, a few hundred
//! milliseconds later, knows the limit and goes to a second connection. The test allows
//! exactly that and nothing more, and also passes if Envoy learns the limit first.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use sds::{
    core::Reader,
    fs::DirSource,
    server::{Limits, SdsService, connections, policy},
};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{
        CurlResult, Envoy, FilterChain, SdsApi, SdsBootstrap, SdsEndpoint, WaitFor, curl_https,
    },
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// Credentials (hosts, filter chains, SDS streams): half as many again as the stream limit.
const HOSTS: usize = 150;
/// How long Envoy may take to receive all secrets and activate its listener.
const WARM_WAIT: Duration = Duration::from_secs(20);
/// How long anything else may take.
const WAIT: Duration = Duration::from_secs(10);

fn host(i: usize) -> String {
    format!("h{i:03}.example.com")
}

fn secret(i: usize) -> String {
    format!("h{i:03}-credential")
}

/// How the SDS server is reached.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Unix,
}

/// Our SDS server over a temporary credentials directory, on its own runtime.
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    dir: tempfile::TempDir,
    endpoint: SdsEndpoint,
    sds: SdsService,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl Server {
    /// Serves a directory holding one credential per host, all issued by `ca`.
    fn start(transport: Transport, ca: &Ca, stream_limit: u32) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = dir.path().join("credentials");
        fs::create_dir(&credentials).expect("mkdir");
        for i in 0..HOSTS {
            write_credential(&credentials, &secret(i), &leaf(ca, &host(i)));
        }
        let endpoint = match transport {
            Transport::Tcp => {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                SdsEndpoint::Tcp(probe.local_addr().expect("addr"))
            }
            Transport::Unix => SdsEndpoint::Unix(dir.path().join("sds.sock")),
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let (rt, reader, sds) = serve(&credentials, &endpoint, &accepted, stream_limit);
        let snapshot = reader.current().expect("ready");
        assert_eq!(
            snapshot.len(),
            HOSTS,
            "the first scan holds every credential"
        );
        Server {
            rt: Some(rt),
            dir,
            endpoint,
            sds,
            accepted,
        }
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// A file next to the credentials (a CA bundle for curl).
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, content).expect("write");
        path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Serves `dir` on `endpoint` as tests/envoy.rs and the examples do (guarded connections),
/// announcing `stream_limit` streams per connection, counting the connections accepted into
/// `accepted`.
fn serve(
    dir: &Path,
    endpoint: &SdsEndpoint,
    accepted: &Arc<AtomicU64>,
    stream_limit: u32,
) -> (tokio::runtime::Runtime, Reader, SdsService) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (reader, sds) = rt.block_on(async {
        let source = DirSource::new(dir).debounce(Duration::from_millis(50));
        let (mut reader, driver) = sds::core::publish(source);
        tokio::spawn(driver);
        reader.ready().await.expect("first scan");
        let sds = SdsService::builder(reader.clone())
            .policy(policy::AllowAnyPeer)
            .build();
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(stream_limit)
            .add_service(sds.clone().into_server());
        let guard = connections::ConnectionLimits::default();
        match endpoint {
            SdsEndpoint::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                let incoming = TcpListenerStream::new(listener).inspect(count(accepted));
                let incoming = connections::guard(incoming, guard);
                tokio::spawn(router.serve_with_incoming(incoming));
            }
            SdsEndpoint::Unix(path) => {
                let _ = fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path).expect("bind");
                let incoming = UnixListenerStream::new(listener).inspect(count(accepted));
                let incoming = connections::guard(incoming, guard);
                tokio::spawn(router.serve_with_incoming(incoming));
            }
            other => panic!("unsupported endpoint {other:?}"),
        }
        (reader, sds)
    });
    (rt, reader, sds)
}

/// Counts the connections accepted into `accepted`.
fn count<IO>(accepted: &Arc<AtomicU64>) -> impl FnMut(&std::io::Result<IO>) + use<IO> {
    let accepted = Arc::clone(accepted);
    move |conn| {
        if conn.is_ok() {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes `dir/<name>/{tls.crt,tls.key}` as an operator replaces files: each to a temporary
/// name, renamed into place, the chain before the key.
fn write_credential(dir: &Path, name: &str, leaf: &Leaf) {
    let dir = dir.join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    write_atomically(&dir.join("tls.crt"), &leaf.chain_pem);
    write_atomically(&dir.join("tls.key"), &leaf.key_pem);
}

fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

fn leaf(ca: &Ca, host: &str) -> Leaf {
    ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current())
}

/// Polls `f` until it holds, for at most [`WAIT`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// `curl https://<host i>/` trusting only `ca`: success means the chain verified for that
/// host name, so it is that host's certificate; the body names the filter chain.
fn assert_served(i: usize, port: u16, ca: &Path) {
    let r: CurlResult = curl_https(&host(i), port, ca, None);
    assert!(
        r.success(),
        "curl {} failed ({}): {}",
        host(i),
        r.exit_code,
        r.stderr
    );
    assert_eq!(r.body.trim(), host(i), "served by the wrong filter chain");
}

/// The distinct warnings Envoy logged about its SDS streams so far, with their counts.
fn stream_warnings(envoy: &Envoy) -> String {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in envoy
        .log()
        .lines()
        .filter(|l| l.contains("config stream to sds"))
    {
        // Drop the `[time][pid]` prefix so equal messages count together.
        let message = line.splitn(3, "][").nth(2).unwrap_or(line);
        *seen.entry(message.to_owned()).or_default() += 1;
    }
    if seen.is_empty() {
        return "no SDS stream warnings".to_owned();
    }
    seen.iter()
        .map(|(m, n)| format!("{n} x [{m}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What Envoy and the server say about the SDS connections and streams, for measurements and
/// failure messages.
struct Observed {
    cluster: BTreeMap<String, u64>,
    /// `update_success` of every secret.
    delivered: BTreeMap<String, u64>,
    /// Non-zero `update_rejected` / `init_fetch_timeout` of any secret.
    rejected: BTreeMap<String, u64>,
    /// Non-zero `update_failure` (the stream failed: reset, connection lost) of any secret.
    failures: BTreeMap<String, u64>,
    server: sds::server::Stats,
    accepted: u64,
}

impl Observed {
    fn take(envoy: &Envoy, server: &Server) -> Observed {
        let nonzero = |regex: &str| {
            envoy
                .stats_matching(regex)
                .into_iter()
                .filter(|(_, v)| *v != 0)
                .collect()
        };
        Observed {
            cluster: envoy.stats_matching(r"^cluster\.sds\.(upstream_(cx|rq)_|http2\.)"),
            delivered: envoy.stats_matching(r"^sds\..*\.update_success$"),
            rejected: nonzero(r"^sds\..*\.(update_rejected|init_fetch_timeout)$"),
            failures: nonzero(r"^sds\..*\.update_failure$"),
            server: server.sds.stats(),
            accepted: server.accepted.load(Ordering::Relaxed),
        }
    }

    fn cluster(&self, stat: &str) -> u64 {
        let name = format!("cluster.sds.{stat}");
        *self
            .cluster
            .get(&name)
            .unwrap_or_else(|| panic!("Envoy has no stat {name}\n{self}"))
    }

    /// A stat Envoy creates on first use: 0 while it does not exist.
    fn cluster_or_zero(&self, stat: &str) -> u64 {
        let name = format!("cluster.sds.{stat}");
        self.cluster.get(&name).copied().unwrap_or(0)
    }

    /// Secrets Envoy has received at least once.
    fn secrets_delivered(&self) -> usize {
        self.delivered.values().filter(|v| **v > 0).count()
    }
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let missing: Vec<&str> = self
            .delivered
            .iter()
            .filter(|(_, v)| **v == 0)
            .map(|(n, _)| n.as_str())
            .collect();
        writeln!(
            f,
            "secrets delivered to Envoy: {}/{HOSTS}; not delivered: {} {:?}",
            self.secrets_delivered(),
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        )?;
        writeln!(f, "secrets rejected or timed out: {:?}", self.rejected)?;
        let failed: Vec<&str> = self.failures.keys().map(String::as_str).collect();
        writeln!(
            f,
            "secrets whose stream failed: {} (failures: {}) {:?}",
            failed.len(),
            self.failures.values().sum::<u64>(),
            failed.iter().take(3).collect::<Vec<_>>(),
        )?;
        writeln!(
            f,
            "server: {} connections accepted, {:?}",
            self.accepted, self.server
        )?;
        let nonzero: Vec<String> = self
            .cluster
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        write!(
            f,
            "Envoy cluster stats (non-zero):\n  {}",
            nonzero.join("\n  ")
        )
    }
}

/// 150 credentials over one listener, the server announcing `stream_limit` streams per
/// connection: Envoy must receive every secret (over one connection within the limit, over at
/// least two beyond it), serve each host its own certificate, and pick up the rotation of the
/// last one.
fn many_credentials(transport: Transport, api: SdsApi, stream_limit: u32) {
    let ca = Ca::new("example.com");
    let server = Server::start(transport, &ca, stream_limit);
    let ca_path = server.file("example.com.crt", ca.cert_pem());
    let mut bootstrap = SdsBootstrap::new(server.endpoint.clone())
        .api(api)
        // Wait forever: a secret that never arrives keeps the listener warming instead of
        // letting it come up without that secret after Envoy's default 15 s.
        .initial_fetch_timeout(Duration::ZERO);
    for i in 0..HOSTS {
        bootstrap = bootstrap.chain(FilterChain::new(&secret(i), &[&host(i)]));
    }
    let started = Instant::now();
    let envoy = Envoy::builder(&bootstrap.to_yaml())
        .wait_for(WaitFor::AdminUp)
        .start();
    // A static listener is listed by `/listeners` at once; it accepts connections only when
    // initialization is over, that is when every secret arrived: `/ready` answers LIVE.
    let limit = u64::from(stream_limit).min(HOSTS as u64);
    let mut first_streams_answered = None;
    loop {
        if first_streams_answered.is_none() && server.sds.stats().responses >= limit {
            first_streams_answered = Some(started.elapsed());
        }
        let (status, body) = envoy.admin_request("GET", "/ready");
        if status == 200 && body.trim() == "LIVE" {
            break;
        }
        if started.elapsed() > WARM_WAIT {
            panic!(
                "Envoy with {HOSTS} SDS secrets not ready within {WARM_WAIT:?} ({transport:?}, \
                 {api:?}; server announces max_concurrent_streams {}); /ready: {status} {}\n{}",
                stream_limit,
                body.trim(),
                Observed::take(&envoy, &server)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let warmed = started.elapsed();
    let port = envoy.listener_port(SdsBootstrap::DEFAULT_LISTENER);
    let seen = Observed::take(&envoy, &server);
    eprintln!(
        "{transport:?} {api:?}: Envoy started; {limit} secrets sent by {first_streams_answered:?}, \
         all {HOSTS} received and Envoy LIVE after {warmed:?}\n{seen}\nEnvoy log: {}",
        stream_warnings(&envoy)
    );

    // Every secret arrived, none was refused or timed out.
    assert_eq!(
        seen.delivered.len(),
        HOSTS,
        "one SDS subscription per secret\n{seen}"
    );
    assert_eq!(seen.secrets_delivered(), HOSTS, "{seen}");
    assert!(seen.rejected.is_empty(), "{seen}");
    // Envoy attaches every stream to its first connection before the server's SETTINGS
    // arrive; the server refuses those beyond its limit (REFUSED_STREAM, seen by Envoy as 503
    // and one `update_failure` for that secret) and Envoy's retry, which then knows the
    // limit, goes to a second connection. Nothing else may fail, and nothing twice.
    let refused = seen.cluster("http2.rx_reset");
    let beyond_limit = HOSTS as u64 - limit;
    assert!(refused <= beyond_limit, "{seen}");
    // Response-code stats exist only once such a response was seen.
    assert_eq!(seen.cluster_or_zero("upstream_rq_503"), refused, "{seen}");
    assert_eq!(seen.failures.values().sum::<u64>(), refused, "{seen}");
    // Envoy: as many connections as the limit asks for, every stream open, nothing queued or
    // overflowing.
    let connections = (HOSTS as u64).div_ceil(u64::from(stream_limit));
    assert!(seen.cluster("upstream_cx_total") >= connections, "{seen}");
    assert!(seen.cluster("upstream_cx_active") >= connections, "{seen}");
    assert_eq!(seen.cluster("upstream_cx_connect_fail"), 0, "{seen}");
    assert_eq!(seen.cluster("upstream_rq_active"), HOSTS as u64, "{seen}");
    assert_eq!(seen.cluster("http2.streams_active"), HOSTS as u64, "{seen}");
    assert_eq!(seen.cluster("upstream_rq_pending_active"), 0, "{seen}");
    assert_eq!(seen.cluster("upstream_rq_pending_overflow"), 0, "{seen}");
    assert_eq!(
        seen.cluster("upstream_rq_pending_failure_eject"),
        0,
        "{seen}"
    );
    // The server: as many connections, every stream and subscription, nothing refused.
    assert!(seen.accepted >= connections, "{seen}");
    assert_eq!(seen.server.streams_active, HOSTS as u64, "{seen}");
    assert_eq!(seen.server.subscriptions, HOSTS as u64, "{seen}");
    assert_eq!(seen.server.refused, 0, "{seen}");

    // The first, a middle and the last host present their own certificate.
    for i in [0, HOSTS / 2, HOSTS - 1] {
        assert_served(i, port, &ca_path);
    }

    // Rotate the last credential (beyond the limit, its stream is on the second connection).
    let last = HOSTS - 1;
    let ca2 = Ca::new("new-example.com");
    let new_ca = server.file("new-example.com.crt", ca2.cert_pem());
    let rotated = Instant::now();
    write_credential(
        &server.credentials(),
        &secret(last),
        &leaf(&ca2, &host(last)),
    );
    eventually("Envoy serves the rotated certificate", || {
        curl_https(&host(last), port, &new_ca, None).success()
    });
    eprintln!(
        "{transport:?} {api:?}: rotation of {} served after {:?}",
        secret(last),
        rotated.elapsed()
    );
    assert_served(last, port, &new_ca);
    let old = curl_https(&host(last), port, &ca_path, None);
    assert_eq!(
        old.exit_code, 60,
        "the old CA must no longer verify: {}",
        old.stderr
    );
    assert_served(0, port, &ca_path);
    let after = Observed::take(&envoy, &server);
    assert_eq!(
        after
            .delivered
            .get(&format!("sds.{}.update_success", secret(last))),
        Some(&2),
        "{after}"
    );
    assert!(after.rejected.is_empty(), "{after}");
    assert_eq!(after.failures, seen.failures, "{after}");
    assert_eq!(
        after.cluster("upstream_cx_total"),
        seen.cluster("upstream_cx_total"),
        "no reconnects\n{after}"
    );
    assert_eq!(after.server.streams_active, HOSTS as u64, "{after}");
}

/// Within the recommended limit: one connection, nothing refused, no failure.
#[test]
fn many_credentials_tcp_sotw() {
    many_credentials(Transport::Tcp, SdsApi::Grpc, Limits::MAX_CONCURRENT_STREAMS);
}

/// Beyond a server's limit of 100 streams per connection.
#[test]
fn beyond_the_stream_limit_unix_delta() {
    many_credentials(Transport::Unix, SdsApi::DeltaGrpc, 100);
}
