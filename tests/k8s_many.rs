//! Many credentials on one gateway, with the Kubernetes source: the real `serve-k8s` example
//! over the project's real-protocol API server (`sds-test-apiserver`) and one real Envoy whose
//! listener names every credential (one filter chain per host, chosen by SNI).
//!
//! Istio's users hit walls here: a gateway with ~160 certificates that does not come up within
//! its initial fetch timeout (istio/istio#37272), istiod running out of memory when ~2,000
//! Secrets are applied at once (istio/istio#20958). The test creates the Secrets at once (with
//! the real `kubectl create -f` of one manifest, or concurrently through the API), waits until
//! the server serves every one, then starts Envoy with the default `initial_fetch_timeout`
//! (15 s) and checks that every secret arrived before it (`init_fetch_timeout` 0 everywhere,
//! the listener LIVE), handshakes with a few hosts, and prints what it cost: the time to
//! serve every Secret and for Envoy to warm, the server's RSS and CPU, Envoy's RSS.
//!
//! `kubectl_creates_2000_secrets_at_once` runs with the suite; the 10,000 through the API is
//! `#[ignore]`d (minutes of certificate generation in a debug build, and an Envoy of some
//! GiB): `cargo test --release --features k8s --test k8s_many -- --ignored --nocapture`.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use sds_test_apiserver::{Access, ApiServer};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{Envoy, FilterChain, SdsBootstrap, SdsEndpoint, curl_https, http_request},
};
use support::example::Example;

const NAMESPACE: &str = "istio-system";
const TOKEN: &str = "sds-gateway";
/// Envoy's default `initial_fetch_timeout`: every secret must arrive well before it.
const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

fn host(i: usize) -> String {
    format!("host-{i}.example.com")
}

fn secret(i: usize) -> String {
    format!("credential-{i}")
}

/// One CA and a leaf for each host.
fn leaves(n: usize) -> (Ca, Vec<Leaf>) {
    let ca = Ca::new("many.example.com");
    let leaves = (0..n)
        .map(|i| ca.issue(&[&host(i)], KeyKind::EcP256Pkcs8, Validity::current()))
        .collect();
    (ca, leaves)
}

/// Resident memory of a process, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// CPU time (user + system) a process used so far, from `/proc` (clock ticks of 10 ms).
fn cpu(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("the command name")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_request(admin, "GET", "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `f` until it holds, for at most `within`; returns how long it took.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// How the Secrets are created.
#[derive(Clone, Copy, Debug)]
enum Create {
    /// One manifest of every Secret, `kubectl create -f`.
    Kubectl,
    /// Through the API over HTTP, 16 requests at a time.
    Api,
}

fn many_credentials(n: usize, create: Create) {
    assert!(n > 0);
    let started = Instant::now();
    let (ca, leaves) = leaves(n);
    eprintln!("{n} certificates issued in {:?}", started.elapsed());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt
        .block_on(
            ApiServer::builder()
                .user(
                    TOKEN,
                    "system:serviceaccount:istio-system:sds",
                    Access::all().read_only(),
                )
                .anonymous(Access::all())
                .start(),
        )
        .expect("the API server starts");
    let work = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(TOKEN, NAMESPACE).expect("kubeconfig");
    let socket = work.path().join("sds.sock");
    let listen = format!("unix:{}", socket.display());
    let mut server = Example::start(
        "serve-k8s",
        work.path().join("serve-k8s.log"),
        &[
            "--namespace",
            NAMESPACE,
            "--listen",
            &listen,
            "--admin",
            "127.0.0.1:0",
        ],
        &[("KUBECONFIG", kubeconfig.as_path())],
    );
    let admin = server.address("admin listening");
    eventually(
        "the server lists the empty namespace",
        Duration::from_secs(30),
        || http_request(admin, "GET", "/readyz").is_ok_and(|(status, _)| status == 200),
    );
    let pid = server.child.id();
    let (rss_idle, cpu_idle) = (rss_kib(pid), cpu(pid));

    // Every Secret at once.
    let created = Instant::now();
    match create {
        Create::Kubectl => {
            let mut manifest = String::new();
            for (i, leaf) in leaves.iter().enumerate() {
                let _ = write!(
                    manifest,
                    "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {}, namespace: {NAMESPACE}}}\n\
                     type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
                    secret(i),
                    STANDARD.encode(&leaf.chain_pem),
                    STANDARD.encode(&leaf.key_pem),
                );
            }
            let file = work.path().join("many.yaml");
            fs::write(&file, manifest).expect("write the manifest");
            // kubectl sends no token over plain HTTP: it creates anonymously.
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["create", "-f"])
                .arg(&file)
                .output()
                .expect("run kubectl");
            assert!(
                out.status.success(),
                "kubectl create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Create::Api => rt.block_on(create_through_the_api(&api, Arc::new(leaves))),
    }
    let creating = created.elapsed();
    eprintln!("created in {creating:?}");
    // Each Secret is served under its name and Istio's two `kubernetes://` forms.
    let mut last = None;
    let serving = Instant::now();
    while last.is_none_or(|v| v as usize != 3 * n) {
        assert!(
            serving.elapsed() < Duration::from_secs(120),
            "the server serves {last:?} of {} names\n{}",
            3 * n,
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
        last = metric(admin, "sds_secrets");
    }
    let serving = serving.elapsed();
    let (rss_served, cpu_served) = (rss_kib(pid), cpu(pid));

    // One Envoy naming every credential.
    // One request per SDS stream: Envoy's default circuit breaker (1,024 requests on the
    // cluster) would refuse the streams beyond it, and they would never warm.
    let mut bootstrap = SdsBootstrap::new(SdsEndpoint::Unix(socket))
        .initial_fetch_timeout(INITIAL_FETCH_TIMEOUT)
        .max_requests(u32::try_from(2 * n).expect("a small n"));
    for i in 0..n {
        bootstrap = bootstrap.chain(FilterChain::new(&secret(i), &[&host(i)]));
    }
    let warming = Instant::now();
    let envoy = Envoy::builder(&bootstrap.to_yaml())
        .wait_for(sds_test_util::envoy::WaitFor::AdminUp)
        .startup_timeout(Duration::from_secs(120))
        .start();
    let booted = warming.elapsed();
    let warm = eventually("Envoy is LIVE", Duration::from_secs(300), || {
        let (status, body) = envoy.admin_request("GET", "/ready");
        status == 200 && body.trim() == "LIVE"
    }) + booted;
    let timeouts: u64 = envoy
        .stats_matching(r"^sds\..*\.init_fetch_timeout$")
        .values()
        .sum();
    let received = envoy
        .stats_matching(r"^sds\..*\.update_success$")
        .values()
        .filter(|v| **v > 0)
        .count();
    let rejected: u64 = envoy
        .stats_matching(r"^sds\..*\.update_rejected$")
        .values()
        .sum();
    let cluster = envoy.stats_matching(r"^cluster\.sds\.(upstream_cx_total|upstream_rq_total|upstream_rq_pending_overflow|upstream_rq_503|http2\.rx_reset|circuit_breakers\.default\..*)$");
    eprintln!("Envoy's cluster sds: {cluster:?}");
    let (rss_streams, cpu_streams) = (rss_kib(pid), cpu(pid));
    let envoy_rss = rss_kib(envoy.pid());
    eprintln!(
        "{n} Secrets ({create:?}): created in {creating:?}, all served {serving:?} later; \
         Envoy started in {booted:?} and was LIVE after {warm:?} (initial fetch timeout \
         {INITIAL_FETCH_TIMEOUT:?}); server RSS {rss_idle} KiB idle, {rss_served} KiB serving \
         (+{} B per Secret), {rss_streams} KiB with Envoy's {n} streams (+{} B per stream); \
         server CPU {:?} for the Secrets, {:?} for the streams; Envoy RSS {envoy_rss} KiB",
        (rss_served.saturating_sub(rss_idle)) * 1024 / n as u64,
        (rss_streams.saturating_sub(rss_served)) * 1024 / n as u64,
        cpu_served.saturating_sub(cpu_idle),
        cpu_streams.saturating_sub(cpu_served),
    );
    assert_eq!(
        timeouts, 0,
        "a secret arrived after Envoy's initial fetch timeout"
    );
    assert_eq!(received, n, "Envoy received every secret");
    assert_eq!(rejected, 0, "Envoy rejected nothing");
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, Duration::from_secs(10));
    let ca_file = work.path().join("ca.crt");
    fs::write(&ca_file, ca.cert_pem()).expect("write the CA");
    for i in [0, n / 2, n - 1] {
        let r = curl_https(&host(i), port, &ca_file, None);
        assert!(r.success(), "{}: {}", host(i), r.stderr);
        assert_eq!(r.body.trim(), host(i));
    }
    drop(envoy);
    drop(server);
    let _guard = rt.enter();
    drop(api);
}

/// Creates `credential-I` for every leaf over HTTP (`kube`), 16 at a time.
async fn create_through_the_api(api: &ApiServer, leaves: Arc<Vec<Leaf>>) {
    use futures_util::StreamExt as _;
    use k8s_openapi::{ByteString, api::core::v1::Secret};

    // The gateway's token reads only: create anonymously, as kubectl does here.
    let config = kube::Config::new(api.url().parse().expect("the API server's URL"));
    let client = kube::Client::try_from(config).expect("client");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client, NAMESPACE);
    futures_util::stream::iter(0..leaves.len())
        .map(|i| {
            let (secrets, leaves) = (secrets.clone(), Arc::clone(&leaves));
            async move {
                let mut object = Secret::default();
                object.metadata.name = Some(secret(i));
                object.type_ = Some("kubernetes.io/tls".to_owned());
                object.data = Some(
                    [
                        (
                            "tls.crt".to_owned(),
                            ByteString(leaves[i].chain_pem.clone().into_bytes()),
                        ),
                        (
                            "tls.key".to_owned(),
                            ByteString(leaves[i].key_pem.clone().into_bytes()),
                        ),
                    ]
                    .into(),
                );
                secrets
                    .create(&Default::default(), &object)
                    .await
                    .expect("create the Secret");
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
}

#[test]
fn kubectl_creates_2000_secrets_at_once_and_one_envoy_warms_them_all() {
    many_credentials(2_000, Create::Kubectl);
}

#[test]
#[ignore = "minutes: run with --release --ignored (see the module docs)"]
fn ten_thousand_secrets_through_the_api_and_one_envoy_warms_them_all() {
    many_credentials(10_000, Create::Api);
}
