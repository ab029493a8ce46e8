//! The real `relay` example in front of the real `serve-dir` (on a Unix socket), and a real
//! Envoy in front of the relay: Envoy presents the certificate the upstream serves; a rotation
//! in the upstream's directory reaches Envoy through the relay; while the upstream is down,
//! Envoy keeps serving; once the upstream is back on the same socket, a further rotation
//! arrives.
//!
//! Each rotation issues the new leaf from a new CA: a handshake trusting only the new CA
//! succeeds once Envoy presents the new certificate, and one trusting only the old CA fails.
//!
//! Also: a rotation through a relay speaking delta upstream; a relay of an upstream served over
//! mutual TLS (the real `serve-dir` with `--tls-cert`/`--tls-key`/`--client-ca`), checked by an
//! SDS fetch from the relay, which with a CA that does not verify the upstream gets nothing and
//! logs the TLS error until its `--upstream-ca` file is fixed; and flags that do not go
//! together.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use prost::Message as _;
use sds::proto::{
    SECRET_TYPE_URL,
    envoy::{
        config::core::v3::data_source::Specifier,
        extensions::transport_sockets::tls::v3::{Secret, secret::Type},
        service::{
            discovery::v3::DiscoveryRequest,
            secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
        },
    },
};
use sds_rustls::rustls::pki_types::{CertificateDer, pem::PemObject as _};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{Envoy, FilterChain, SdsBootstrap, SdsEndpoint, curl_https, http_request},
    leak::KeyBytes,
};
use support::example::Example;

const WAIT: Duration = Duration::from_secs(30);
const HTTPBIN: &str = "httpbin.example.com";

/// Polls `f` until it holds, for at most [`WAIT`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rename_over(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).expect("write a temporary file");
    fs::rename(&tmp, path).expect("rename it into place");
}

/// Issues a leaf for [`HTTPBIN`] from a new CA named `name`, writes it into `dir` (key first,
/// each by rename) and the CA beside `dir`; returns the CA file.
fn rotate(dir: &Path, name: &str) -> PathBuf {
    issue_into(dir, name).0
}

/// [`rotate`], also returning the leaf.
fn issue_into(dir: &Path, name: &str) -> (PathBuf, Leaf) {
    let ca = Ca::new(name);
    let leaf = ca.issue(&[HTTPBIN], KeyKind::EcP256Pkcs8, Validity::current());
    let ca_file = dir
        .parent()
        .and_then(Path::parent)
        .expect("the temporary directory")
        .join(format!("{name}.crt"));
    fs::write(&ca_file, ca.cert_pem()).expect("write the CA");
    rename_over(&dir.join("tls.key"), &leaf.key_pem);
    rename_over(&dir.join("tls.crt"), &leaf.chain_pem);
    (ca_file, leaf)
}

/// Starts `serve-dir` over `credentials` on the Unix socket `socket`, logging into `log`,
/// with `extra` arguments.
fn upstream_with(credentials: &Path, socket: &Path, log: PathBuf, extra: &[&str]) -> Example {
    let dir = credentials.display().to_string();
    let listen = format!("unix:{}", socket.display());
    let mut args = vec!["--dir", &dir, "--listen", &listen, "--debounce", "50ms"];
    args.extend(extra);
    let mut server = Example::start("serve-dir", log, &args, &[]);
    server.wait_for_line("listening (Unix socket)");
    server
}

/// Starts `serve-dir` over `credentials` on the Unix socket `socket`, logging into `log`.
fn upstream(credentials: &Path, socket: &Path, log: PathBuf) -> Example {
    upstream_with(credentials, socket, log, &[])
}

/// Starts the relay of `httpbin` from `upstream` on loopback TCP with `extra` arguments,
/// logging into `log`.
fn relay(upstream: &str, log: PathBuf, extra: &[&str]) -> Example {
    let mut args = vec![
        "--upstream",
        upstream,
        "--name",
        "httpbin",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    Example::start("relay", log, &args, &[])
}

/// Writes `contents` to `dir/name`; returns the path as an argument.
fn write(dir: &Path, name: &str, contents: &str) -> String {
    fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join(name);
    fs::write(&path, contents).expect("write");
    path.display().to_string()
}

#[test]
fn envoy_gets_rotations_through_the_relay_and_keeps_serving_while_the_upstream_is_down() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let credentials = temp.path().join("credentials");
    let httpbin = credentials.join("httpbin");
    fs::create_dir_all(&httpbin).expect("mkdir");
    let first_ca = rotate(&httpbin, "relay-ca-1");
    let socket = temp.path().join("upstream.sock");

    let server = upstream(&credentials, &socket, temp.path().join("serve-dir-1.log"));
    let upstream_arg = format!("unix:{}", socket.display());
    let mut relay = Example::start(
        "relay",
        temp.path().join("relay.log"),
        &[
            "--upstream",
            &upstream_arg,
            "--name",
            "httpbin",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    // Logged once the upstream's first response is there.
    let sds = relay.address("listening (TCP)");

    let bootstrap = SdsBootstrap::new(SdsEndpoint::Tcp(sds))
        .node("relay-e2e", "ingress")
        .chain(FilterChain::new("httpbin", &[HTTPBIN]));
    let envoy = Envoy::start(&bootstrap.to_yaml());
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    let trusts = |ca: &Path| curl_https(HTTPBIN, port, ca, None).success();
    eventually("a handshake with the upstream's certificate", || {
        trusts(&first_ca)
    });

    // A rotation upstream reaches Envoy through the relay.
    let second_ca = rotate(&httpbin, "relay-ca-2");
    eventually("the rotated certificate", || trusts(&second_ca));
    assert!(
        !trusts(&first_ca),
        "the old certificate is no longer presented"
    );

    // The upstream goes away (SIGKILL: its socket file stays behind).
    drop(server);
    relay.wait_for_line("secret source failed; serving the last good snapshot");
    for _ in 0..5 {
        let served = curl_https(HTTPBIN, port, &second_ca, None);
        assert!(
            served.success(),
            "Envoy serves while the upstream is down: {served:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        relay.child.try_wait().expect("wait").is_none(),
        "the relay keeps running:\n{}",
        relay.log()
    );

    // Back on the same socket: a further rotation arrives.
    let server = upstream(&credentials, &socket, temp.path().join("serve-dir-2.log"));
    assert!(
        server.log().contains("replacing a stale socket"),
        "{}",
        server.log()
    );
    let third_ca = rotate(&httpbin, "relay-ca-3");
    eventually("the certificate rotated after the restart", || {
        trusts(&third_ca)
    });
    assert!(
        !trusts(&second_ca),
        "the old certificate is no longer presented"
    );
}

#[test]
fn envoy_gets_a_rotation_through_a_relay_speaking_delta_upstream() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let credentials = temp.path().join("credentials");
    let httpbin = credentials.join("httpbin");
    fs::create_dir_all(&httpbin).expect("mkdir");
    let first_ca = rotate(&httpbin, "delta-ca-1");
    let socket = temp.path().join("upstream.sock");

    let mut server = upstream_with(
        &credentials,
        &socket,
        temp.path().join("serve-dir.log"),
        &["--admin", "127.0.0.1:0"],
    );
    let admin = server.address("admin listening");
    let upstream_arg = format!("unix:{}", socket.display());
    let mut relay = relay(
        &upstream_arg,
        temp.path().join("relay.log"),
        &["--upstream-api", "delta"],
    );
    let sds = relay.address("listening (TCP)");
    // The upstream serves the relay one delta stream, and no state-of-the-world one.
    let (status, metrics) = http_request(admin, "GET", "/metrics").expect("the upstream's metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("sds_streams{api=\"delta\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sds_streams{api=\"sotw\"} 0"), "{metrics}");

    let bootstrap = SdsBootstrap::new(SdsEndpoint::Tcp(sds))
        .node("relay-delta-e2e", "ingress")
        .chain(FilterChain::new("httpbin", &[HTTPBIN]));
    let envoy = Envoy::start(&bootstrap.to_yaml());
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    let trusts = |ca: &Path| curl_https(HTTPBIN, port, ca, None).success();
    eventually("a handshake with the upstream's certificate", || {
        trusts(&first_ca)
    });

    let second_ca = rotate(&httpbin, "delta-ca-2");
    eventually("the certificate rotated through the delta stream", || {
        trusts(&second_ca)
    });
    assert!(
        !trusts(&first_ca),
        "the old certificate is no longer presented"
    );
}

/// The leaf certificate (DER) the SDS server at `addr` (plain TCP) answers `FetchSecrets`
/// for `name` with.
fn fetch_leaf(addr: SocketAddr, name: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("connects to the relay");
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let response = client
            .fetch_secrets(DiscoveryRequest {
                resource_names: vec![name.to_owned()],
                type_url: SECRET_TYPE_URL.to_owned(),
                ..DiscoveryRequest::default()
            })
            .await
            .expect("the relay answers")
            .into_inner();
        let [any] = response.resources.as_slice() else {
            panic!("one resource: {:?}", response.resources.len());
        };
        let secret = Secret::decode(any.value.clone()).expect("a Secret");
        assert_eq!(secret.name, name);
        let Some(Type::TlsCertificate(cert)) = secret.r#type else {
            panic!("a tls_certificate");
        };
        let chain = match cert.certificate_chain.and_then(|c| c.specifier) {
            Some(Specifier::InlineBytes(bytes)) => bytes.to_vec(),
            Some(Specifier::InlineString(text)) => text.into_bytes(),
            other => panic!("an inline chain, not {other:?}"),
        };
        let leaf = CertificateDer::pem_slice_iter(&chain)
            .next()
            .expect("a certificate")
            .expect("PEM");
        leaf.to_vec()
    })
}

#[test]
fn relays_from_an_upstream_over_mutual_tls_and_not_with_a_wrong_ca() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let credentials = temp.path().join("credentials");
    let httpbin = credentials.join("httpbin");
    fs::create_dir_all(&httpbin).expect("mkdir");
    let (_, served) = issue_into(&httpbin, "tls-relay-credential-ca");

    // The upstream's channel: a server certificate for the address the relay dials, and the
    // CA of the relay's client certificate.
    let server_ca = Ca::new("upstream server CA");
    let server = server_ca.issue(&["127.0.0.1"], KeyKind::EcP256Pkcs8, Validity::current());
    let client_ca = Ca::new("relay client CA");
    let client = client_ca.issue(
        &["relay.example"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let tls = temp.path().join("upstream-tls");
    let (server_cert, server_key, clients) = (
        write(&tls, "tls.crt", &server.chain_pem),
        write(&tls, "tls.key", &server.key_pem),
        write(&tls, "client-ca.crt", client_ca.cert_pem()),
    );
    let mine = temp.path().join("relay-tls");
    let (ca, cert, key) = (
        write(&mine, "upstream-ca.crt", server_ca.cert_pem()),
        write(&mine, "tls.crt", &client.chain_pem),
        write(&mine, "tls.key", &client.key_pem),
    );
    let keys = KeyBytes::of([
        served.key_pem.as_str(),
        server.key_pem.as_str(),
        client.key_pem.as_str(),
    ]);

    let dir = credentials.display().to_string();
    let mut upstream = Example::start(
        "serve-dir",
        temp.path().join("serve-dir.log"),
        &[
            "--dir",
            &dir,
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--client-ca",
            &clients,
        ],
        &[],
    );
    let upstream_uri = format!("https://{}", upstream.address("listening (TLS over TCP)"));

    let tls_args = |ca: &str| -> Vec<String> {
        [
            "--upstream-ca",
            ca,
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
            "--upstream-backoff",
            "50ms..200ms",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = tls_args(&ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut good = relay(&upstream_uri, temp.path().join("relay.log"), &args);
    let sds = good.address("listening (TCP)");
    assert!(
        good.log().contains("tls=\"mutual\"") || good.log().contains("tls=mutual"),
        "{}",
        good.log()
    );
    assert_eq!(
        fetch_leaf(sds, "httpbin"),
        served.cert_der,
        "the relay serves the upstream's credential"
    );
    keys.assert_absent("the relay's log", &good.log());
    drop(good);

    // A CA that does not verify the upstream: no secret, the TLS error logged at WARN.
    let wrong = temp.path().join("relay-wrong-tls");
    let wrong_ca = write(
        &wrong,
        "upstream-ca.crt",
        Ca::new("some other CA").cert_pem(),
    );
    let args = tls_args(&wrong_ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut refused = relay(&upstream_uri, temp.path().join("relay-wrong.log"), &args);
    let line = refused.wait_for_line("secret source failed");
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("cannot open the SDS stream of secret `httpbin`"),
        "names the secret: {line}"
    );
    assert!(
        line.contains("invalid peer certificate") && line.contains("UnknownIssuer"),
        "the TLS error: {line}"
    );
    // Reconnected with backoff, and failed again.
    eventually("a second failure", || {
        refused
            .log()
            .lines()
            .filter(|l| l.contains("secret source failed"))
            .count()
            >= 2
    });
    let log = refused.log();
    assert!(
        !log.contains("listening (TCP)") && !log.contains("serving secrets="),
        "nothing to serve:\n{log}"
    );
    keys.assert_absent("the relay's log", &log);
    keys.assert_absent("the upstream's log", &upstream.log());

    // The CA file fixed in place: followed, the next connection succeeds.
    rename_over(&wrong.join("upstream-ca.crt"), server_ca.cert_pem());
    let sds = refused.address("listening (TCP)");
    assert_eq!(fetch_leaf(sds, "httpbin"), served.cert_der);
    keys.assert_absent("the relay's log", &refused.log());
}

#[test]
fn upstream_flags_that_do_not_go_together_are_one_error_line_and_status_2() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let log = temp.path().join("relay.log");
    let missing = temp.path().join("missing-ca.crt").display().to_string();
    let name = ["--name", "httpbin"];
    let run = |args: &[&str]| {
        let args: Vec<&str> = args.iter().chain(&name).copied().collect();
        let (code, stderr) = Example::run("relay", log.clone(), &args);
        assert_eq!(code, Some(2), "{args:?}:\n{stderr}");
        stderr
    };
    let one_line = |args: &[&str], expected: &str| {
        let stderr = run(args);
        assert_eq!(stderr.lines().count(), 1, "{args:?}:\n{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(expected), "{args:?}:\n{stderr}");
    };
    one_line(
        &["--upstream", "https://127.0.0.1:1"],
        "an https:// upstream needs --upstream-ca FILE",
    );
    one_line(
        &[
            "--upstream",
            "unix:/run/sds.sock",
            "--upstream-ca",
            "ca.crt",
        ],
        "are for an https://HOST:PORT upstream, not a Unix socket",
    );
    one_line(
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream-cert",
            "c.crt",
            "--upstream-key",
            "c.key",
        ],
        "are for an https://HOST:PORT upstream, not clear text",
    );

    // clap's own errors: status 2, `error:` first.
    for (args, expected) in [
        (
            &[
                "--upstream",
                "https://127.0.0.1:1",
                "--upstream-ca",
                "ca.crt",
                "--upstream-cert",
                "c.crt",
            ][..],
            "--upstream-key <FILE>",
        ),
        (
            &["--upstream", "unix:/s", "--upstream-backoff", "2s..1s"][..],
            "shorter than INITIAL",
        ),
        (
            &["--upstream", "unix:/s", "--upstream-backoff", "0..1s"][..],
            "at least 1ms",
        ),
    ] {
        let stderr = run(args);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(expected), "{args:?}:\n{stderr}");
    }

    // A CA file that cannot be read: the last line names it.
    let stderr = run(&[
        "--upstream",
        "https://127.0.0.1:1",
        "--upstream-ca",
        &missing,
    ]);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot connect to the upstream over TLS: ")
            && last.contains(&missing),
        "{stderr}"
    );
}
