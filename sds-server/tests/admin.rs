//! The metrics and the admin handler, over real gRPC streams on loopback: what `/metrics`
//! (parsed by a Prometheus text parser), `/debug/clients`, `/debug/secrets`, `/healthz` and
//! `/readyz` say while clients subscribe, ACK, NACK and wait, and as certificates near their
//! end on an injected clock.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use sds_core::{CertifiedKey, Clock, Error, Input, SecretName, UnixTime, Update};
use sds_proto::{
    envoy::{
        config::core::v3::Node,
        service::{
            discovery::v3::{DiscoveryRequest, DiscoveryResponse},
            secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
        },
    },
    google::rpc,
};
use sds_server::{SdsService, admin::Admin, policy::AllowAnyPeer};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Streaming, transport::Channel};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const WAIT: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("a valid name")
}

fn certified(n: &str, leaf: &Leaf) -> CertifiedKey {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid credential")
}

fn rejection(n: &str) -> Error {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", b"not a certificate"),
        Input::new("tls.key", b"not a key"),
        UnixTime::now(),
    )
    .expect_err("garbage is rejected")
}

/// `a` ending in 3 days, `bad` rejected.
fn initial(ca: &Ca) -> (Update, Leaf) {
    let now = SystemTime::now();
    let leaf = ca.issue(
        &["a.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::between(now - Duration::from_secs(3600), now + 3 * DAY),
    );
    let mut update = Update::new();
    update.insert(name("a"), certified("a", &leaf));
    update.reject(name("bad"), rejection("bad"));
    (update, leaf)
}

/// The wall clock shifted by a fixed offset.
#[derive(Debug)]
struct Shifted(Duration);

impl Clock for Shifted {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.0
    }
}

struct Harness {
    updates: mpsc::Sender<Result<Update, std::io::Error>>,
    client: SecretDiscoveryServiceClient<Channel>,
    sds: SdsService,
    admin: Admin,
}

/// A service on loopback fed by the test, on `clock`; `first` is published if given.
async fn start(first: Option<Update>, clock: impl Clock) -> Harness {
    let (updates, rx) = mpsc::channel(16);
    let (reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
    tokio::spawn(driver);
    if let Some(first) = first {
        updates.send(Ok(first)).await.expect("send");
        reader.clone().ready().await.expect("first snapshot");
    }
    let sds = SdsService::builder(reader)
        .policy(AllowAnyPeer)
        .clock(clock)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder().add_service(sds.clone().into_server());
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    Harness {
        updates,
        client: SecretDiscoveryServiceClient::new(channel),
        admin: Admin::new(sds.clone()),
        sds,
    }
}

fn request(node_id: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node_id.to_owned(),
            cluster: "ingress".to_owned(),
            user_agent_name: "envoy".to_owned(),
        }),
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        type_url: TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

async fn open(
    h: &mut Harness,
    first: DiscoveryRequest,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.expect("send");
    let responses = h
        .client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, responses)
}

async fn next(stream: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("no stream error")
        .expect("stream still open")
}

/// The answer to `GET path`: status, content type, body.
async fn get(admin: &Admin, path: &str, accept: Option<&str>) -> (StatusCode, String, String) {
    let response = admin.respond(&Method::GET, path, accept);
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a full body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).expect("UTF-8"),
    )
}

/// `/metrics` in the Prometheus text format, parsed: each sample by name and labels
/// (`name{k="v",...}` with labels sorted).
async fn scrape(admin: &Admin) -> HashMap<String, f64> {
    let (status, content_type, body) = get(admin, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    sds_test_util::metrics::samples(&body)
}

fn sample(metrics: &HashMap<String, f64>, key: &str) -> f64 {
    *metrics
        .get(key)
        .unwrap_or_else(|| panic!("{key} is scraped: {metrics:#?}"))
}

/// Waits until a scrape satisfies `check`.
async fn eventually(
    admin: &Admin,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    tokio::time::timeout(WAIT, async {
        loop {
            let metrics = scrape(admin).await;
            if check(&metrics) {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the metrics show it in time")
}

#[tokio::test]
async fn metrics_follow_streams_pushes_nacks_waits_expiry_and_rejections() {
    let ca = Ca::new("admin test CA");
    let (update, _) = initial(&ca);
    let mut h = start(Some(update), sds_core::SystemClock).await;
    let (tx, mut responses) = open(&mut h, request("gw-1", &["a"], "")).await;
    let first = next(&mut responses).await;
    let mut nack = request("gw-1", &["a"], &first.nonce);
    nack.error_detail = Some(rpc::Status {
        code: 13,
        message: "Failed to load certificate chain".to_owned(),
        details: Vec::new(),
    });
    tx.send(nack).await.expect("nack");
    let (_waiting_tx, _waiting) = open(&mut h, request("gw-2", &["missing"], "")).await;

    let m = eventually(&h.admin, |m| {
        m.get("sds_nacks_total") == Some(&1.0) && m.get("sds_subscriptions_waiting") == Some(&1.0)
    })
    .await;
    assert_eq!(sample(&m, "sds_streams{api=\"sotw\"}"), 2.0);
    assert_eq!(sample(&m, "sds_streams{api=\"delta\"}"), 0.0);
    assert_eq!(sample(&m, "sds_secret_pushes_total{secret=\"a\"}"), 1.0);
    assert_eq!(sample(&m, "sds_secret_nacks_total{secret=\"a\"}"), 1.0);
    assert_eq!(sample(&m, "sds_responses_total"), 1.0);
    assert_eq!(sample(&m, "sds_subscriptions"), 2.0);
    assert!(sample(&m, "sds_subscription_waiting_seconds{secret=\"missing\"}") >= 0.0);
    assert_eq!(sample(&m, "sds_secrets"), 1.0);
    assert_eq!(sample(&m, "sds_secrets_expired"), 0.0);
    let left = sample(&m, "sds_secret_expiry_seconds{secret=\"a\"}");
    let three_days = (3 * DAY).as_secs_f64();
    assert!(three_days - 120.0 < left && left <= three_days, "{left}");
    let not_after = sample(&m, "sds_secret_not_after_timestamp_seconds{secret=\"a\"}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!((not_after - now - left).abs() < 120.0);
    assert_eq!(
        sample(
            &m,
            "sds_secret_rejected{reason=\"missing_pem_block\",secret=\"bad\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "sds_secret_rejections_total{reason=\"missing_pem_block\",secret=\"bad\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "sds_source_updates_total"), 1.0);
    assert_eq!(sample(&m, "sds_source_failures_total"), 0.0);
    assert_eq!(sample(&m, "sds_source_failing"), 0.0);
    assert!(sample(&m, "sds_source_last_update_age_seconds") < 60.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("sds_secret_info{") && k.contains("secret=\"a\"")),
        "{m:#?}"
    );
    // Labels are secret names, never node ids.
    assert!(!m.keys().any(|k| k.contains("gw-1")), "{m:#?}");

    // The waiting stream goes: nothing waits any more.
    drop(_waiting_tx);
    eventually(&h.admin, |m| {
        m.get("sds_subscriptions_waiting") == Some(&0.0)
    })
    .await;

    // A source error is counted and marks the source failing.
    h.updates
        .send(Err(std::io::Error::other("API server unreachable")))
        .await
        .expect("send");
    eventually(&h.admin, |m| {
        m.get("sds_source_failing") == Some(&1.0)
            && m.get("sds_source_failures_total") == Some(&1.0)
    })
    .await;

    // OpenMetrics for scrapers that ask for it.
    let (status, content_type, body) = get(
        &h.admin,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE sds_secret_nacks counter"), "{body}");
}

#[tokio::test]
async fn an_expired_secret_still_served_shows_a_negative_expiry() {
    let ca = Ca::new("admin test CA");
    let (update, _) = initial(&ca);
    // Four days from now, the certificate that ends in three has been over for a day.
    let h = start(Some(update), Shifted(4 * DAY)).await;
    let m = scrape(&h.admin).await;
    let left = sample(&m, "sds_secret_expiry_seconds{secret=\"a\"}");
    assert!(left < -(DAY.as_secs_f64() - 120.0), "{left}");
    assert_eq!(sample(&m, "sds_secrets_expired"), 1.0);
    assert_eq!(sample(&m, "sds_secrets"), 1.0);
}

#[tokio::test]
async fn readyz_waits_for_the_first_snapshot() {
    let ca = Ca::new("admin test CA");
    let h = start(None, sds_core::SystemClock).await;
    let (status, _, body) = get(&h.admin, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!h.sds.is_ready());
    let (status, _, _) = get(&h.admin, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&h.admin, "/debug/secrets", None).await;
    assert_eq!(status, StatusCode::OK);
    let secrets: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(secrets["version"], serde_json::Value::Null);

    let (update, _) = initial(&ca);
    h.updates.send(Ok(update)).await.expect("send");
    tokio::time::timeout(WAIT, async {
        while !h.sds.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("ready in time");
    let (status, _, body) = get(&h.admin, "/readyz", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
}

#[tokio::test]
async fn the_debug_endpoints_show_clients_and_secrets_as_json() {
    let ca = Ca::new("admin test CA");
    let (update, leaf) = initial(&ca);
    let version = certified("a", &leaf).version().to_string();
    let mut h = start(Some(update), sds_core::SystemClock).await;
    let (tx, mut responses) = open(&mut h, request("gw-json", &["a", "missing"], "")).await;
    let first = next(&mut responses).await;
    tx.send(request("gw-json", &["a", "missing"], &first.nonce))
        .await
        .expect("ack");

    let clients = tokio::time::timeout(WAIT, async {
        loop {
            let (status, content_type, body) = get(&h.admin, "/debug/clients", None).await;
            assert_eq!(
                (status, content_type.as_str()),
                (StatusCode::OK, "application/json")
            );
            let clients: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let acked = &clients["clients"][0]["subscriptions"];
            if acked
                .as_array()
                .is_some_and(|subs| subs.iter().any(|s| s["acked"] == version.as_str()))
            {
                return clients;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the ACK shows in time");
    assert_eq!(clients["streams"], 1);
    let client = &clients["clients"][0];
    assert_eq!(client["node_id"], "gw-json");
    assert_eq!(client["api"], "sotw");
    let missing = client["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .find(|s| s["name"] == "missing")
        .expect("missing is subscribed");
    assert!(missing["waiting_since"].is_u64(), "{missing}");

    let (status, _, body) = get(&h.admin, "/debug/secrets", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("PRIVATE KEY"));
    let secrets: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(secrets["version"].is_string());
    assert_eq!(secrets["secrets"][0]["name"], "a");
    assert_eq!(secrets["secrets"][0]["version"], version.as_str());
    assert_eq!(secrets["rejected"][0]["name"], "bad");
    assert_eq!(secrets["rejected"][0]["reason"], "missing_pem_block");
    assert!(
        secrets["rejected"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("credential `bad`")),
        "{secrets}"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let h = start(None, sds_core::SystemClock).await;
    let (status, _, _) = get(&h.admin, "/debug/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = h.admin.respond(&Method::POST, "/metrics", None);
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[http::header::ALLOW], "GET, HEAD");
    // A query is ignored.
    let (status, _, _) = get(&h.admin, "/healthz?verbose=1", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_handler_serves_over_hyper_as_a_tower_service() {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto,
        service::TowerToHyperService,
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let h = start(None, sds_core::SystemClock).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = h.admin.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let service = TowerToHyperService::new(admin.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
}
