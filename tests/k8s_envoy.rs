//! Istio's task "Securing Gateways with HTTPS Using Secret Discovery Service", word for word
//! with the real `kubectl`, against the project's real-protocol API server
//! (`sds-test-apiserver`), with `sds-source-k8s` + `sds-server` in-process and a real Envoy.
//!
//! kubectl talks plain HTTP to the test API server and sends no token there (client-go only
//! sends bearer tokens over TLS), so the server lets anonymous requests in; the SDS source
//! authenticates with a token.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sds::{
    core::Reader,
    k8s::{K8sSource, Scope},
    server::SdsService,
};
use sds_test_apiserver::{Access, ApiServer};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{
        CurlResult, Envoy, FilterChain, SdsApi, SdsBootstrap, SdsEndpoint, WaitFor, curl_https,
    },
};
use tokio_stream::wrappers::UnixListenerStream;

const NS: &str = "istio-system";
const TOKEN: &str = "sds-gateway";
const HTTPBIN: &str = "httpbin.example.com";
const HELLO: &str = "helloworld-v1.example.com";
const WAIT: Duration = Duration::from_secs(30);

/// The API server, our SDS server over it, and a scratch directory for kubectl's files.
struct Cluster {
    rt: Option<tokio::runtime::Runtime>,
    api: Option<ApiServer>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    endpoint: SdsEndpoint,
    reader: Reader,
}

impl Cluster {
    fn start(kubernetes_version: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let socket = dir.path().join("sds.sock");
        let (api, kubeconfig, reader) = rt.block_on(async {
            let api = ApiServer::builder()
                .version(kubernetes_version)
                .token(TOKEN, Access::namespaces([NS]))
                .anonymous(Access::all())
                .bookmark_interval(Duration::from_secs(1))
                .start()
                .await
                .expect("the API server starts");
            let kubeconfig = api.kubeconfig(TOKEN, NS).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&api.kubeconfig_yaml(TOKEN, NS))
                    .expect("kubeconfig"),
                &Default::default(),
            )
            .await
            .expect("client config");
            let client = kube::Client::try_from(config).expect("client");
            let source = K8sSource::new(client, Scope::Namespace(NS.to_owned()))
                .default_namespace(NS)
                .debounce(Duration::from_millis(50));
            let (mut reader, driver) = sds::core::publish(source);
            tokio::spawn(driver);
            reader.ready().await.expect("first list");
            let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(SdsService::new(reader.clone()).into_server())
                    .serve_with_incoming(UnixListenerStream::new(listener)),
            );
            (api, kubeconfig, reader)
        });
        Cluster {
            rt: Some(rt),
            api: Some(api),
            dir,
            kubeconfig,
            endpoint: SdsEndpoint::Unix(socket),
            reader,
        }
    }

    /// Runs `kubectl --kubeconfig ... ARGS`, as the Istio task does; panics on failure.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run kubectl (it is on every machine of ours)");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `name` in the scratch directory (certificates and keys for kubectl and curl).
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    /// Writes `<prefix>.crt` / `<prefix>.key` for a leaf, as the task's openssl steps do.
    fn leaf_files(&self, prefix: &str, leaf: &Leaf) {
        self.file(&format!("{prefix}.crt"), &leaf.chain_pem);
        self.file(&format!("{prefix}.key"), &leaf.key_pem);
    }

    fn served(&self, name: &str) -> bool {
        self.reader.current().is_some_and(|s| s.get(name).is_some())
    }

    fn envoy(&self, api: SdsApi, chains: Vec<FilterChain>) -> Envoy {
        let mut bootstrap = SdsBootstrap::new(self.endpoint.clone()).api(api);
        for chain in chains {
            bootstrap = bootstrap.chain(chain);
        }
        Envoy::builder(&bootstrap.to_yaml())
            .wait_for(WaitFor::AdminUp)
            .start()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            let guard = rt.enter();
            drop(self.api.take());
            drop(guard);
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn get(host: &str, port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> CurlResult {
    curl_https(host, port, ca, client)
}

fn answers(host: &str, port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> bool {
    let r = get(host, port, ca, client);
    r.success() && r.body.trim() == host
}

/// Envoy never refused a secret we sent: every SDS `update_rejected` counter is 0.
fn assert_no_rejection(envoy: &Envoy) {
    let stats = envoy.admin_get("/stats");
    let counters: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("sds.") && l.contains(".update_rejected: "))
        .collect();
    assert!(!counters.is_empty(), "no SDS stats in:\n{stats}");
    for line in counters {
        assert!(line.ends_with(": 0"), "Envoy rejected a secret: {line}");
    }
}

fn leaf(ca: &Ca, host: &str) -> Leaf {
    ca.issue(&[host], KeyKind::RsaPkcs8(2048), Validity::current())
}

/// The whole task: single host, rotation by delete and recreate, a second host, mutual TLS by
/// recreating the Secret with `cacert`.
fn istio_task(api: SdsApi, kubernetes_version: &str, secret: &str) {
    let cluster = Cluster::start(kubernetes_version);
    let version = cluster.kubectl(&["version", "--client"]);
    let minor = kubernetes_version.trim_start_matches('v');
    let minor = &minor[..minor.rfind('.').expect("vX.Y.Z")];
    assert!(
        version.contains(&format!("v{minor}.")),
        "the dispatcher runs kubectl {minor}: {version}"
    );

    // Generate client and server certificates and keys.
    let example = Ca::new("example.com");
    let example_crt = cluster.file("example.com.crt", example.cert_pem());
    cluster.leaf_files("httpbin.example.com", &leaf(&example, HTTPBIN));

    // Configure a TLS ingress gateway for a single host: the gateway (Envoy) asks for the
    // credential before it exists; `kubectl create secret` makes it serve.
    let mut envoy = cluster.envoy(api, vec![FilterChain::new(secret, &[HTTPBIN])]);
    let created = Instant::now();
    cluster.kubectl(&[
        "create",
        "-n",
        NS,
        "secret",
        "generic",
        "httpbin-credential",
        "--from-file=key=httpbin.example.com.key",
        "--from-file=cert=httpbin.example.com.crt",
    ]);
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    eventually("Envoy serves httpbin.example.com", || {
        answers(HTTPBIN, port, &example_crt, None)
    });
    eprintln!(
        "kubectl create secret to Envoy serving ({api:?}, kubectl {minor}): {:?}",
        created.elapsed()
    );

    // Rotate: delete the secret and create a new one with a new CA, no restart.
    let pid = envoy.pid();
    let new_example = Ca::new("example.com");
    let new_example_crt = cluster.file("new-example.com.crt", new_example.cert_pem());
    cluster.leaf_files("new-httpbin.example.com", &leaf(&new_example, HTTPBIN));
    cluster.kubectl(&["-n", NS, "delete", "secret", "httpbin-credential"]);
    cluster.kubectl(&[
        "create",
        "-n",
        NS,
        "secret",
        "generic",
        "httpbin-credential",
        "--from-file=key=new-httpbin.example.com.key",
        "--from-file=cert=new-httpbin.example.com.crt",
    ]);
    let rotated = eventually("Envoy serves the rotated certificate", || {
        answers(HTTPBIN, port, &new_example_crt, None)
    });
    eprintln!("rotation by delete and recreate ({api:?}): {rotated:?}");
    assert!(
        !get(HTTPBIN, port, &example_crt, None).success(),
        "the old CA still verifies"
    );
    assert!(
        envoy.is_running() && envoy.pid() == pid,
        "Envoy was not restarted"
    );
    assert_no_rejection(&envoy);
    drop(envoy);

    // Configure a TLS ingress gateway for multiple hosts.
    cluster.leaf_files("helloworld-v1.example.com", &leaf(&example, HELLO));
    cluster.kubectl(&[
        "create",
        "-n",
        NS,
        "secret",
        "generic",
        "helloworld-credential",
        "--from-file=key=helloworld-v1.example.com.key",
        "--from-file=cert=helloworld-v1.example.com.crt",
    ]);
    eventually("helloworld-credential is listed", || {
        cluster.served("helloworld-credential")
    });
    let hello = secret.replace("httpbin", "helloworld");
    let envoy = cluster.envoy(
        api,
        vec![
            FilterChain::new(secret, &[HTTPBIN]),
            FilterChain::new(&hello, &[HELLO]),
        ],
    );
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    eventually("both hosts", || {
        answers(HELLO, port, &example_crt, None) && answers(HTTPBIN, port, &new_example_crt, None)
    });
    drop(envoy);

    // Configure a mutual TLS ingress gateway: recreate the Secret with `cacert`.
    cluster.kubectl(&["-n", NS, "delete", "secret", "httpbin-credential"]);
    cluster.kubectl(&[
        "create",
        "-n",
        NS,
        "secret",
        "generic",
        "httpbin-credential",
        "--from-file=key=httpbin.example.com.key",
        "--from-file=cert=httpbin.example.com.crt",
        "--from-file=cacert=example.com.crt",
    ]);
    eventually("httpbin-credential-cacert is served", || {
        cluster.served("httpbin-credential-cacert")
    });
    let envoy = cluster.envoy(api, vec![FilterChain::new(secret, &[HTTPBIN]).mutual()]);
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    let client = leaf(&example, "client.example.com");
    let (cert, key) = (
        cluster.file("client.example.com.crt", &client.chain_pem),
        cluster.file("client.example.com.key", &client.key_pem),
    );
    eventually("MUTUAL with the client certificate", || {
        answers(HTTPBIN, port, &example_crt, Some((&cert, &key)))
    });
    assert!(
        !get(HTTPBIN, port, &example_crt, None).success(),
        "a client without a certificate got in"
    );
}

#[test]
fn istio_task_sotw_kubectl_1_33() {
    istio_task(SdsApi::Grpc, "v1.33.1", "httpbin-credential");
}

#[test]
fn istio_task_delta_kubectl_1_28_istiod_names() {
    // istiod names credentials `kubernetes://<credentialName>`.
    istio_task(
        SdsApi::DeltaGrpc,
        "v1.28.15",
        "kubernetes://httpbin-credential",
    );
}

/// `kubectl apply -f` of a `kubernetes.io/tls` Secret manifest, then an edit applied again:
/// Envoy follows, and a malformed edit keeps the last good certificate.
#[test]
fn kubectl_apply_tls_secret() {
    let cluster = Cluster::start("v1.30.4");
    let ca = Ca::new("example.com");
    let ca_crt = cluster.file("example.com.crt", ca.cert_pem());
    let manifest = |leaf: &Leaf| {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: httpbin-credential\n  namespace: {NS}\n\
             type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&leaf.chain_pem),
            b64(&leaf.key_pem)
        )
    };
    let first = leaf(&ca, HTTPBIN);
    cluster.file("secret.yaml", &manifest(&first));
    cluster.kubectl(&["apply", "-f", "secret.yaml"]);
    let envoy = cluster.envoy(
        SdsApi::Grpc,
        vec![FilterChain::new(
            "kubernetes://istio-system/httpbin-credential",
            &[HTTPBIN],
        )],
    );
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    eventually("served", || answers(HTTPBIN, port, &ca_crt, None));

    // A key that does not match: rejected, the last good certificate stays.
    let mut broken = leaf(&ca, HTTPBIN);
    broken.key_pem = leaf(&ca, HTTPBIN).key_pem;
    cluster.file("secret.yaml", &manifest(&broken));
    cluster.kubectl(&["apply", "-f", "secret.yaml"]);
    eventually("the mismatched key is rejected", || {
        cluster.reader.current().is_some_and(|s| {
            s.rejected()
                .any(|(n, _)| n.as_str() == "httpbin-credential")
        })
    });
    assert!(answers(HTTPBIN, port, &ca_crt, None));

    let other = Ca::new("other.example.com");
    let other_crt = cluster.file("other.crt", other.cert_pem());
    cluster.file("secret.yaml", &manifest(&leaf(&other, HTTPBIN)));
    cluster.kubectl(&["apply", "-f", "secret.yaml"]);
    eventually("the applied edit is served", || {
        answers(HTTPBIN, port, &other_crt, None)
    });
    assert_no_rejection(&envoy);
}
