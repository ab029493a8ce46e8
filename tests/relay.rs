//! The real `relay` example in front of the real `serve-dir` (on a Unix socket), and a real
//! Envoy in front of the relay: Envoy presents the certificate the upstream serves; a rotation
//! in the upstream's directory reaches Envoy through the relay; while the upstream is down,
//! Envoy keeps serving; once the upstream is back on the same socket, a further rotation
//! arrives.
//!
//! Each rotation issues the new leaf from a new CA: a handshake trusting only the new CA
//! succeeds once Envoy presents the new certificate, and one trusting only the old CA fails.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sds_test_util::{
    certs::{Ca, KeyKind, Validity},
    envoy::{Envoy, FilterChain, SdsBootstrap, SdsEndpoint, curl_https},
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
    ca_file
}

/// Starts `serve-dir` over `credentials` on the Unix socket `socket`, logging into `log`.
fn upstream(credentials: &Path, socket: &Path, log: PathBuf) -> Example {
    let dir = credentials.display().to_string();
    let listen = format!("unix:{}", socket.display());
    let mut server = Example::start(
        "serve-dir",
        log,
        &["--dir", &dir, "--listen", &listen, "--debounce", "50ms"],
        &[],
    );
    server.wait_for_line("listening (Unix socket)");
    server
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
