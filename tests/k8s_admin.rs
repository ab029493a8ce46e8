//! `serve-k8s --admin` against the project's real-protocol API server: `/readyz` answers 503
//! until the source's initial list is done (the API server is down first), then 200;
//! `/healthz` answers all along; the source's failures and its Secret show in `/metrics` and
//! `/debug/secrets`.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sds_test_apiserver::{Access, ApiServer, Secret as KubeSecret};
use sds_test_util::{
    certs::{Ca, KeyKind, Validity},
    envoy::http_request,
};
use support::example::Example;

const TOKEN: &str = "sds-token";
const NAMESPACE: &str = "istio-system";
const WAIT: Duration = Duration::from_secs(30);

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    http_request(admin, "GET", path).unwrap_or_else(|e| panic!("GET {path} on {admin}: {e}"))
}

/// Polls `f` on a blocking thread until it holds, for at most [`WAIT`]; shows the server's
/// log if it does not.
async fn eventually(server: &Example, what: &str, f: impl Fn() -> bool + Send + 'static) {
    let held = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > WAIT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    })
    .await
    .expect("the wait ends");
    assert!(held, "timed out waiting for: {what}\n{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_initial_list() {
    let api = ApiServer::builder()
        .user(
            TOKEN,
            "system:serviceaccount:istio-system:sds",
            Access::all().read_only(),
        )
        .start()
        .await
        .expect("the test API server starts");
    let ca = Ca::new("k8s admin CA");
    let leaf = ca.issue(
        &["httpbin.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    api.create(
        KubeSecret::new(NAMESPACE, "httpbin-credential")
            .with_type("kubernetes.io/tls")
            .with_data("tls.crt", leaf.chain_pem.as_bytes().to_vec())
            .with_data("tls.key", leaf.key_pem.as_bytes().to_vec()),
    )
    .expect("create the Secret");
    let kubeconfig = api.kubeconfig(TOKEN, NAMESPACE).expect("a kubeconfig");
    // The API server is down until the test brings it back (a 503 would be retried by the
    // client for a long while before the source hears of it).
    api.stop().await;

    let work = tempfile::tempdir().expect("a temporary directory");
    let log = work.path().join("serve-k8s.log");
    let mut server = tokio::task::block_in_place(|| {
        Example::start(
            "serve-k8s",
            log,
            &[
                "--namespace",
                NAMESPACE,
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ],
            &[("KUBECONFIG", kubeconfig.as_path())],
        )
    });
    let admin = tokio::task::block_in_place(|| server.address("admin listening"));

    let (status, body) = get(admin, "/readyz");
    assert_eq!(status, 503, "not ready before the initial list: {body}");
    assert_eq!(get(admin, "/healthz").0, 200);
    // The source's attempts fail meanwhile, and say so.
    eventually(&server, "the source's failures in /metrics", move || {
        let (_, body) = get(admin, "/metrics");
        body.lines().any(|l| l == "sds_source_failing 1")
    })
    .await;
    let (status, _) = get(admin, "/readyz");
    assert_eq!(
        status, 503,
        "still not ready while the API server is unavailable"
    );

    api.restart().await.expect("the API server comes back");
    eventually(
        &server,
        "/readyz answers 200 once the namespace is listed",
        move || get(admin, "/readyz").0 == 200,
    )
    .await;
    let (_, secrets) = get(admin, "/debug/secrets");
    let secrets: serde_json::Value = serde_json::from_str(&secrets).expect("JSON");
    assert_eq!(
        secrets["secrets"][0]["name"], "httpbin-credential",
        "{secrets:#}"
    );
    let (_, metrics) = get(admin, "/metrics");
    // Served under its bare name and as `kubernetes://` names.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sds_secret_expiry_seconds{secret=\"httpbin-credential\"}")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "sds_source_failing 0"),
        "{metrics}"
    );
    // And it serves: the SDS listener is up once there is something to serve.
    tokio::task::block_in_place(|| server.address("listening (TCP)"));
}
