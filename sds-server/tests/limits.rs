//! What one client may cost: per-stream and server-wide limits, requests we cannot read, the
//! bounds of what is logged and echoed, and connections that never start HTTP/2.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use sds_proto::envoy::{
    config::core::v3::Node,
    service::{
        discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse},
        secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
    },
};
use sds_server::{Limits, SdsService, connections, policy::AllowAnyPeer};
use sds_test_util::logs::Captured;
use tokio::{io::AsyncReadExt as _, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, transport::Channel};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

mod support;

use support::{DELTA_SECRETS, STREAM_SECRETS, framed};
const WAIT: Duration = Duration::from_secs(10);

/// A server with the credential `a`, held to `limits`, its connections guarded by `guard`.
struct Harness {
    addr: SocketAddr,
    client: SecretDiscoveryServiceClient<Channel>,
    sds: SdsService,
}

async fn start(limits: Limits, guard: connections::ConnectionLimits) -> Harness {
    let sds = SdsService::builder(support::reader(support::credentials(&["a"])).await)
        .limits(limits)
        .policy(AllowAnyPeer)
        .build();
    let addr = support::serve(&sds, guard).await;
    Harness {
        addr,
        client: client(addr).await,
        sds,
    }
}

async fn client(addr: SocketAddr) -> SecretDiscoveryServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    SecretDiscoveryServiceClient::new(channel)
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits);
    limits
}

fn request(names: &[&str], node_id: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node_id.to_owned(),
            ..Node::default()
        }),
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        type_url: TYPE_URL.to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// Opens a SOTW stream sending `first`; returns the sender for more requests and the stream.
async fn sotw(
    h: &mut Harness,
    first: DiscoveryRequest,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.expect("send");
    let stream = h
        .client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, stream)
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_their_name_limits_are_refused_and_others_go_on() {
    let mut h = start(
        limits(|l| {
            l.names_per_stream = 3;
            l.name_bytes_per_stream = 64;
        }),
        Default::default(),
    )
    .await;
    let (_keep, mut good) = sotw(&mut h, request(&["a"], "good")).await;
    assert!(next(&mut good).await.expect("served").is_some());

    let (_tx, mut many) = sotw(&mut h, request(&["a", "b", "c", "d"], "many")).await;
    let refused = next(&mut many).await.expect_err("too many names");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("at most 3"), "{refused:?}");

    let long = "x".repeat(40);
    let (_tx, mut bytes) = sotw(&mut h, request(&[&long, &format!("{long}y")], "bytes")).await;
    let refused = next(&mut bytes).await.expect_err("too many bytes");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("at most 64 bytes"),
        "{refused:?}"
    );

    // Delta: the limit counts what the stream holds after each request.
    let (tx, rx) = mpsc::channel(8);
    let subscribe = |names: &[&str]| DeltaDiscoveryRequest {
        type_url: TYPE_URL.to_owned(),
        resource_names_subscribe: names.iter().map(|s| (*s).to_owned()).collect(),
        ..DeltaDiscoveryRequest::default()
    };
    tx.send(subscribe(&["a", "b"])).await.expect("send");
    let mut delta = h
        .client
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    assert!(next(&mut delta).await.expect("served").is_some());
    tx.send(subscribe(&["c", "d"])).await.expect("send");
    let refused = next(&mut delta).await.expect_err("a fourth name");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // The well-behaved stream is still served.
    let fetched = h
        .client
        .fetch_secrets(request(&["a"], "fetch"))
        .await
        .expect("fetch");
    assert_eq!(fetched.into_inner().resources.len(), 1);
    assert!(h.sds.stats().refused >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_budget_is_given_back_when_streams_end() {
    let mut h = start(limits(|l| l.names_total = 2), Default::default()).await;
    let (tx1, mut s1) = sotw(&mut h, request(&["a", "b"], "one")).await;
    assert!(next(&mut s1).await.expect("served").is_some());
    assert_eq!(h.sds.stats().subscriptions, 2);

    let (_tx2, mut s2) = sotw(&mut h, request(&["a"], "two")).await;
    let refused = next(&mut s2).await.expect_err("the server is full");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("2 subscriptions"), "{refused:?}");

    drop((tx1, s1));
    tokio::time::timeout(WAIT, async {
        while h.sds.stats().subscriptions != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the budget is given back");
    let (_tx3, mut s3) = sotw(&mut h, request(&["a"], "three")).await;
    assert!(next(&mut s3).await.expect("served again").is_some());
}

/// Sends `body` as the whole request body of a raw gRPC call on a new connection; returns
/// grpc-status and grpc-message.
async fn raw_call(addr: SocketAddr, path: &str, body: Vec<u8>) -> (String, String) {
    let mut client = support::raw_client(addr).await;
    let (response, _send) = support::raw_call(&mut client, addr, path, body, true);
    support::grpc_status(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_read_end_with_their_real_status() {
    let h = start(Limits::default(), Default::default()).await;
    // gRPC codes: INTERNAL 13, UNIMPLEMENTED 12, RESOURCE_EXHAUSTED 8.
    let garbage = b"\xff\xff\xff\xff\xff";
    let not_utf8 = b"\x0a\x02\xc3\x28"; // version_info = invalid UTF-8
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("garbage", framed(0, 5, garbage), "13"),
        ("invalid UTF-8", framed(0, 4, not_utf8), "13"),
        ("compressed flag", framed(1, 2, b"\x0a\x00"), "12"),
        ("4 GB length prefix", framed(0, u32::MAX, b"\x0a"), "8"),
        ("ends inside a message", framed(0, 100, b"\x0a\x01v"), "13"),
    ];
    for path in [STREAM_SECRETS, DELTA_SECRETS] {
        for (what, body, code) in &cases {
            let (status, message) = raw_call(h.addr, path, body.clone()).await;
            assert_eq!(&status, code, "{path}: {what}: {message}");
            assert!(!message.is_empty(), "{path}: {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_validates_names_as_streams_do_and_bounds_its_answers() {
    let mut h = start(Limits::default(), Default::default()).await;
    for bad in ["", "a\nINFO forged", "nul\0", "sp ace"] {
        let err = h
            .client
            .fetch_secrets(request(&["a", bad], "fetch"))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(!err.message().contains('\n'), "{err:?}");
    }
    let missing: Vec<String> = (0..50).map(|i| format!("missing-{i}")).collect();
    let names: Vec<&str> = missing.iter().map(String::as_str).collect();
    let err = h
        .client
        .fetch_secrets(request(&names, "fetch"))
        .await
        .expect_err("not found");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().ends_with("and 40 more"), "{err:?}");

    let many: Vec<String> = (0..100_000).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = h
        .client
        .fetch_secrets(request(&names, "fetch"))
        .await
        .expect_err("too many");
    // Refused by tonic's codec (larger than a stream may keep) or by the names limit.
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());

    let many: Vec<String> = (0..2_000).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = h
        .client
        .fetch_secrets(request(&names, "fetch"))
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let long = "l".repeat(10_000);
    let err = h
        .client
        .fetch_secrets(request(&[&long], "fetch"))
        .await
        .expect_err("too long");
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
}

/// Captures what this thread logs at INFO and above until the guard is dropped. Tests using
/// it run single-threaded, so the server runs on the test's thread and every line is seen.
fn capture_info() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn nack_storms_and_forged_text_stay_out_of_the_log() {
    let (captured, _guard) = capture_info();

    let mut h = start(Limits::default(), Default::default()).await;
    let forged = "node\nINFO sds_core::publish: secret added secret=FORGED\u{1b}[2J";
    let (tx, mut stream) = sotw(&mut h, request(&["a"], forged)).await;
    let first = next(&mut stream).await.expect("ok").expect("a response");
    const STORM: u64 = 2_000;
    for i in 0..STORM {
        let mut nack = request(&["a"], forged);
        nack.version_info = String::new();
        nack.response_nonce = first.nonce.clone();
        nack.error_detail = Some(sds_proto::google::rpc::Status {
            code: 13,
            message: if i == 0 {
                format!("bad\nINFO forged line {}", "x".repeat(1 << 20))
            } else {
                "Failed to load private key\n".to_owned()
            },
            details: Vec::new(),
        });
        tx.send(nack).await.expect("send");
    }
    tokio::time::timeout(WAIT, async {
        while h.sds.stats().nacks < STORM {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every NACK read");

    let log = captured.text();
    let warnings = log.lines().filter(|l| l.contains("NACK")).count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.len() < 8 * 1024, "{} bytes of log", log.len());
    assert!(
        log.contains("1048"),
        "the long message's length is noted: {log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with("INFO"), "a forged line: {line}");
        assert!(!line.contains('\u{1b}'), "a terminal escape: {line}");
    }
    assert!(log.contains("node\\nINFO"), "{log}");
    // The stream is still served.
    drop(tx);
    let _ = std::io::stderr().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_start_http2_are_closed() {
    let mut guard = connections::ConnectionLimits::default();
    guard.handshake_timeout = Duration::from_millis(300);
    let mut h = start(Limits::default(), guard).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(
            tokio::net::TcpStream::connect(h.addr)
                .await
                .expect("connect"),
        );
    }
    // A partial preface does not count as a start either.
    let mut partial = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    silent.push(partial);
    // Nor does the preface with the header of a SETTINGS frame whose payload never comes.
    let mut header_only = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut header_only,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x06\x04\x00\x00\x00\x00\x00",
    )
    .await
    .expect("write");
    silent.push(header_only);
    for mut conn in silent {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a silent connection is still open after 5 s"
        );
    }
    // A real client, connected all along, is still served.
    let fetched = h
        .client
        .fetch_secrets(request(&["a"], "fetch"))
        .await
        .expect("fetch");
    assert_eq!(fetched.into_inner().resources.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_connections_are_served_at_once() {
    let mut guard = connections::ConnectionLimits::default();
    guard.max_connections = 2;
    guard.handshake_timeout = Duration::from_millis(300);
    let mut h = start(Limits::default(), guard).await;
    // The harness's client holds one slot; one more connection fits, a third waits.
    let second = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let channel = Channel::from_shared(format!("http://{}", h.addr))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5));
    let third = tokio::spawn(async move {
        let mut client = SecretDiscoveryServiceClient::new(channel.connect().await?);
        client
            .fetch_secrets(request(&["a"], "third"))
            .await
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    // Once the silent connection is closed (handshake timeout), the third is served.
    tokio::time::timeout(WAIT, third)
        .await
        .expect("served once a slot is free")
        .expect("task")
        .expect("fetch");
    drop(second);
    let fetched = h
        .client
        .fetch_secrets(request(&["a"], "fetch"))
        .await
        .expect("fetch");
    assert_eq!(fetched.into_inner().resources.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_shares_its_budget_and_cannot_lock_out_others() {
    let mut h = start(limits(|l| l.names_per_connection = 3), Default::default()).await;
    let (_a, mut a) = sotw(&mut h, request(&["a", "b"], "one")).await;
    assert!(next(&mut a).await.expect("served").is_some());
    let (_b, mut b) = sotw(&mut h, request(&["a", "c"], "two")).await;
    let refused = next(&mut b)
        .await
        .expect_err("over the connection's budget");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("this connection"), "{refused:?}");

    // Another connection has a budget of its own.
    let mut other = Harness {
        client: client(h.addr).await,
        addr: h.addr,
        sds: h.sds.clone(),
    };
    let (_c, mut c) = sotw(&mut other, request(&["a", "b", "c"], "three")).await;
    assert!(next(&mut c).await.expect("served").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_of_a_connection_share_its_pending_budget() {
    let h = start(
        limits(|l| l.pending_bytes_per_connection = 2_000),
        Default::default(),
    )
    .await;
    let mut client = support::raw_client(h.addr).await;
    // A request announcing 100 KB, of which 1,500 bytes of names arrive, then nothing.
    let names = |n: usize, tag: &str| {
        let mut fields = Vec::new();
        for i in 0..n {
            let name = format!("{tag}-{i:04}-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            fields.push(0x1a); // resource_names = 3
            fields.push(name.len() as u8);
            fields.extend_from_slice(name.as_bytes());
        }
        fields
    };
    let first = names(25, "first");
    let (_first, _keep_first) = support::raw_call(
        &mut client,
        h.addr,
        STREAM_SECRETS,
        framed(0, 100_000, &first),
        false,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A second half-sent request on the same connection goes over the 2,000 bytes.
    let second = names(25, "second");
    let (response, _keep_second) = support::raw_call(
        &mut client,
        h.addr,
        STREAM_SECRETS,
        framed(0, 100_000, &second),
        false,
    );
    let (status, message) = support::grpc_status(response).await;
    assert_eq!(status, "8", "{message}");
    // Other connections are served.
    let mut client = h.client.clone();
    let fetched = client
        .fetch_secrets(request(&["a"], "fetch"))
        .await
        .expect("fetch");
    assert_eq!(fetched.into_inner().resources.len(), 1);
}

#[tokio::test]
async fn refusals_on_many_streams_are_logged_a_few_times_a_second() {
    let (captured, _guard) = capture_info();
    let mut h = start(Limits::default(), Default::default()).await;
    let started = std::time::Instant::now();
    for i in 0..300 {
        let mut wrong = request(&["a"], &format!("client-{i}"));
        wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned();
        let (_tx, mut s) = sotw(&mut h, wrong).await;
        assert!(next(&mut s).await.is_err());
    }
    let seconds = started.elapsed().as_secs() + 1;
    let warnings = captured
        .text()
        .lines()
        .filter(|l| l.contains("refusing a request"))
        .count() as u64;
    assert!(
        (1..=10 * (seconds + 1)).contains(&warnings),
        "{warnings} WARN lines for 300 refusals in {seconds} s"
    );
    assert_eq!(h.sds.stats().refused, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_answers_are_bounded_and_its_requests_count_against_the_connection() {
    let mut h = start(
        limits(|l| l.pending_bytes_per_connection = 20_000),
        Default::default(),
    )
    .await;
    // A long `grpc-encoding` is not echoed whole (tonic's own answer would).
    let mut client = support::raw_client(h.addr).await;
    let request = http::Request::post(format!(
        "http://{}/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
        h.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-encoding", "x".repeat(15_000))
    .body(())
    .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(bytes::Bytes::from(framed(0, 0, b"")), true)
        .expect("data");
    let (status, message) = support::grpc_status(response).await;
    assert_eq!(status, "12", "{message}");
    assert!(message.len() < 1024, "{} bytes", message.len());

    // Long missing names are shown cut short.
    let long: Vec<String> = (0..10)
        .map(|i| format!("{i}{}", "\"".repeat(1000)))
        .collect();
    let names: Vec<&str> = long.iter().map(String::as_str).collect();
    let err = h
        .client
        .fetch_secrets(request_for(&names))
        .await
        .expect_err("not found");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().len() <= 1024, "{} bytes", err.message().len());

    // A half-sent fetch holds the connection's budget for partly received requests.
    let first = support::raw_call(
        &mut client,
        h.addr,
        "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
        framed(0, 100_000, &[0u8; 30_000]),
        false,
    );
    let (status, message) = support::grpc_status(first.0).await;
    assert_eq!(status, "8", "{message}");
}

fn request_for(names: &[&str]) -> DiscoveryRequest {
    request(names, "fetch")
}
