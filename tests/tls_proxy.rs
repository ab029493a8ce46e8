//! The real `tls-proxy` example, driven with `curl` and `openssl s_client` over loopback:
//! which certificate each SNI gets (exact, wildcard, default, refused), rotations seen by new
//! connections, bad rotations never seen, mutual TLS with a `-cacert` secret, and the
//! `--upstream` mode fed by the real `serve-dir` on a Unix socket.
//!
//! Every credential is issued by a CA of its own: a handshake that verifies with only that CA
//! proves which certificate the proxy presented. Waits poll with a deadline; no sleep is an
//! assertion.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    fs,
    io::Read as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sds_test_util::certs::{Ca, Key, KeyKind, Leaf, Validity};
use support::example::Example;

/// The longest any wait may take.
const WAIT: Duration = Duration::from_secs(30);

/// The WARN line of the publisher for a credential that does not validate.
const REJECTED: &str = "rejected new input; still serving the last good version";

/// A garbage private key: its base64 must never reach the log.
const GARBAGE_KEY_BODY: &str = "Z2FyYmFnZS1rZXktbWF0ZXJpYWwtZG8tbm90LWxvZy0wMTIzNDU2Nzg5";

/// Polls `f` until it holds, for at most [`WAIT`]; returns how long it took.
fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Writes `contents` to `path` atomically (a temporary file renamed over it).
fn rename_over(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).expect("write a temporary file");
    fs::rename(&tmp, path).expect("rename it into place");
}

/// A directory of credentials in the layout of `serve-dir`, with the CA files beside it.
struct Credentials {
    root: PathBuf,
    /// Every private key written, to check that none reaches a log.
    keys: Vec<String>,
}

impl Credentials {
    fn new(root: &Path) -> Credentials {
        fs::create_dir_all(root.join("credentials")).expect("mkdir");
        Credentials {
            root: root.to_owned(),
            keys: Vec::new(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("credentials")
    }

    /// Issues a leaf for `hosts` from a new CA `ca_name` and writes it as secret `name` (key
    /// first, each by rename); returns the CA's file, for `--cacert`.
    fn rotate(&mut self, name: &str, ca_name: &str, hosts: &[&str]) -> PathBuf {
        let ca = Ca::new(ca_name);
        let leaf = ca.issue(hosts, KeyKind::EcP256Pkcs8, Validity::current());
        self.write(name, &leaf.chain_pem, &leaf.key_pem);
        self.ca_file(&ca, ca_name)
    }

    /// Writes `chain` and `key` as secret `name`, key first, each by rename.
    fn write(&mut self, name: &str, chain: &str, key: &str) {
        let dir = self.dir().join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        rename_over(&dir.join("tls.key"), key);
        rename_over(&dir.join("tls.crt"), chain);
        self.keys.push(key.to_owned());
    }

    /// Writes `ca` as the `ca.crt` of `name`: served as `<name>-cacert`.
    fn client_ca(&self, name: &str, ca: &Ca) {
        let dir = self.dir().join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        rename_over(&dir.join("ca.crt"), ca.cert_pem());
    }

    /// Writes `ca`'s certificate beside the credentials; returns the file.
    fn ca_file(&self, ca: &Ca, name: &str) -> PathBuf {
        let path = self.root.join(format!("{name}.crt"));
        fs::write(&path, ca.cert_pem()).expect("write the CA");
        path
    }

    /// Writes a client's certificate and key beside the credentials; returns both files.
    fn client(&self, leaf: &Leaf, name: &str) -> (PathBuf, PathBuf) {
        let cert = self.root.join(format!("{name}.crt"));
        let key = self.root.join(format!("{name}.key"));
        fs::write(&cert, &leaf.chain_pem).expect("write the client certificate");
        fs::write(&key, &leaf.key_pem).expect("write the client key");
        (cert, key)
    }

    /// Panics if `log` holds a line of any private key written.
    fn assert_no_key_in(&self, log: &str) {
        for key in &self.keys {
            for line in key
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            {
                assert!(!log.contains(line), "key material in the log:\n{log}");
            }
        }
        assert!(!log.contains(GARBAGE_KEY_BODY), "key material in the log");
    }
}

/// What one `curl` call got.
#[derive(Debug)]
struct Curl {
    exit: Option<i32>,
    /// `%{http_code}`: `000` without a response.
    http_code: String,
    /// `%{http_version}`.
    http_version: String,
    body: String,
    stderr: String,
}

impl Curl {
    fn ok(&self) -> bool {
        self.exit == Some(0) && self.http_code == "200"
    }

    /// The handshake (or the connection) failed: no HTTP response at all.
    fn refused(&self) -> bool {
        self.exit != Some(0) && self.http_code == "000"
    }
}

/// `GET https://HOST:PORT/` on a new connection to 127.0.0.1, trusting only `cacert`, with
/// `extra` curl arguments.
fn curl(host: &str, port: u16, cacert: &Path, extra: &[&str]) -> Curl {
    const MARK: &str = "\n--curl--";
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(cacert)
        .args([
            "--write-out",
            &format!("{MARK}%{{http_code}} %{{http_version}}"),
        ])
        .args(extra)
        .arg(format!("https://{host}:{port}/hello"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl (is it installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, written) = stdout.rsplit_once(MARK).expect("curl's --write-out");
    let (http_code, http_version) = written.split_once(' ').expect("two fields");
    Curl {
        exit: output.status.code(),
        http_code: http_code.to_owned(),
        http_version: http_version.to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `openssl s_client` without SNI, trusting only `cafile`: whether the certificate verified,
/// and what it printed.
fn handshake_without_sni(port: u16, cafile: &Path) -> (bool, String) {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-noservername", "-verify_return_error", "-CAfile"])
        .arg(cafile)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (is it installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let verified = output.status.success() && stdout.contains("Verify return code: 0 (ok)");
    (verified, stdout)
}

/// Starts `tls-proxy` with `args` on a free loopback port, with `env`; waits until it listens
/// and its first snapshot is prepared. Returns it and its port.
fn proxy(log: PathBuf, args: &[&str], env: &[(&str, &Path)]) -> (Example, u16) {
    let args: Vec<&str> = ["--listen", "127.0.0.1:0"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let mut proxy = Example::start("tls-proxy", log, &args, env);
    let port = proxy.address("tls-proxy listening").port();
    proxy.wait_for_line("credentials ready");
    (proxy, port)
}

/// How many lines of `log` contain every one of `needles`.
fn lines_with(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .count()
}

#[test]
fn sni_picks_the_exact_host_then_the_wildcard_then_the_default() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let mut creds = Credentials::new(temp.path());
    let a_ca = creds.rotate("a-credential", "ca-a", &["a.example.com"]);
    let wild_ca = creds.rotate("wild-credential", "ca-wild", &["*.example.com"]);
    // The default also covers two labels under example.com, which the wildcard does not.
    let fallback_ca = creds.rotate(
        "fallback-credential",
        "ca-fallback",
        &["fallback.test", "deep.b.example.com"],
    );
    let dir = creds.dir().display().to_string();
    let (mut proxy, port) = proxy(
        temp.path().join("tls-proxy.log"),
        &[
            "--dir",
            &dir,
            "--host",
            "a.example.com=a-credential",
            "--host",
            "*.example.com=wild-credential",
            "--default",
            "fallback-credential",
        ],
        &[],
    );

    for (host, ca, secret, others) in [
        (
            "a.example.com",
            &a_ca,
            "a-credential",
            [&wild_ca, &fallback_ca],
        ),
        (
            "www.example.com",
            &wild_ca,
            "wild-credential",
            [&a_ca, &fallback_ca],
        ),
        (
            "fallback.test",
            &fallback_ca,
            "fallback-credential",
            [&a_ca, &wild_ca],
        ),
        (
            "deep.b.example.com",
            &fallback_ca,
            "fallback-credential",
            [&a_ca, &wild_ca],
        ),
    ] {
        let got = curl(host, port, ca, &[]);
        assert!(got.ok(), "{host}: {got:?}");
        assert!(
            got.body.contains(&format!("host: {host}\n")),
            "{host}: {got:?}"
        );
        assert!(
            got.body.contains(&format!("secret: {secret} (version ")),
            "{host}: {got:?}"
        );
        for other in others {
            let got = curl(host, port, other, &[]);
            assert!(
                got.refused(),
                "{host} verified with {}: {got:?}",
                other.display()
            );
        }
    }

    // ALPN: HTTP/2 by default, HTTP/1.1 when the client offers only that.
    let h2 = curl("a.example.com", port, &a_ca, &[]);
    assert_eq!(h2.http_version, "2", "{h2:?}");
    assert!(h2.body.contains("request: GET /hello HTTP/2.0"), "{h2:?}");
    let h1 = curl("a.example.com", port, &a_ca, &["--http1.1"]);
    assert_eq!(h1.http_version, "1.1", "{h1:?}");
    assert!(h1.body.contains("request: GET /hello HTTP/1.1"), "{h1:?}");

    // No SNI at all: the default.
    let (verified, shown) = handshake_without_sni(port, &fallback_ca);
    assert!(verified, "the default without SNI:\n{shown}");
    assert!(shown.contains("CN = fallback.test"), "{shown}");
    let (verified, shown) = handshake_without_sni(port, &a_ca);
    assert!(!verified, "not a-credential without SNI:\n{shown}");

    // SIGTERM: a clean stop.
    let pid = proxy.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    proxy.wait_for_line("stopped");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = proxy.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tls-proxy did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}:\n{}", proxy.log());
    assert!(proxy.log().contains("SIGTERM: shutting down"));
    creds.assert_no_key_in(&proxy.log());
}

#[test]
fn without_a_default_an_unknown_sni_is_refused_and_logged_at_debug() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let mut creds = Credentials::new(temp.path());
    let a_ca = creds.rotate("a-credential", "ca-a", &["a.example.com", "other.test"]);
    let dir = creds.dir().display().to_string();
    let (proxy, port) = proxy(
        temp.path().join("tls-proxy.log"),
        &["--dir", &dir, "--host", "a.example.com=a-credential"],
        &[("RUST_LOG", Path::new("info,tls_proxy=debug"))],
    );

    assert!(curl("a.example.com", port, &a_ca, &[]).ok());
    // The certificate would verify for other.test: no certificate is presented at all.
    let got = curl("other.test", port, &a_ca, &[]);
    assert!(got.refused(), "{got:?}");
    assert!(got.stderr.contains("access denied"), "{got:?}");
    let (verified, shown) = handshake_without_sni(port, &a_ca);
    assert!(!verified, "no default, no SNI:\n{shown}");

    eventually("the refusals in the log", || {
        lines_with(
            &proxy.log(),
            &["DEBUG", "TLS handshake failed", "peer=127.0.0.1:"],
        ) >= 2
    });
}

#[test]
fn a_rotation_is_seen_by_new_connections_and_a_bad_one_never_is() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let mut creds = Credentials::new(temp.path());
    let first = creds.rotate("a-credential", "rotation-1", &["a.example.com"]);
    // Rotated after each bad rotation: once its new certificate is served, the proxy has
    // read the directory after the bad files were in place.
    let barrier = ["barrier.example.com"];
    creds.rotate("barrier-credential", "barrier-1", &barrier);
    let dir = creds.dir().display().to_string();
    let (mut proxy, port) = proxy(
        temp.path().join("tls-proxy.log"),
        &[
            "--dir",
            &dir,
            "--debounce",
            "50ms",
            "--host",
            "a.example.com=a-credential",
            "--host",
            "barrier.example.com=barrier-credential",
        ],
        &[],
    );
    let served_by = |ca: &Path| curl("a.example.com", port, ca, &[]).ok();
    assert!(served_by(&first));

    // A good rotation: the next new connection gets it, the old CA no longer verifies.
    let second = creds.rotate("a-credential", "rotation-2", &["a.example.com"]);
    let took = eventually("the rotated certificate", || served_by(&second));
    eprintln!("rotation seen by a new connection after {took:?} (debounce 50 ms)");
    assert!(
        !served_by(&first),
        "the old certificate is no longer presented"
    );
    proxy.wait_for_line("secret rotated; new handshakes use the new version secret=a-credential");

    // A bad rotation: a new certificate with a key that is not its own.
    let third_ca = Ca::new("rotation-3");
    let third = third_ca.issue(
        &["a.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let stranger = Key::generate(KeyKind::EcP256Pkcs8);
    creds.write("a-credential", &third.chain_pem, stranger.pem());
    let third_file = creds.ca_file(&third_ca, "rotation-3");
    let barrier_2 = creds.rotate("barrier-credential", "barrier-2", &barrier);
    eventually("the barrier after the mismatched key", || {
        curl(barrier[0], port, &barrier_2, &[]).ok()
    });
    for _ in 0..3 {
        let got = curl("a.example.com", port, &second, &[]);
        assert!(got.ok(), "the last good certificate: {got:?}");
        assert!(curl("a.example.com", port, &third_file, &[]).refused());
    }
    let warned = |log: &str| lines_with(log, &["WARN", REJECTED, "secret=a-credential"]);
    assert!(warned(&proxy.log()) >= 1, "{}", proxy.log());

    // Garbage where the key was.
    let garbage =
        format!("-----BEGIN PRIVATE KEY-----\n{GARBAGE_KEY_BODY}\n-----END PRIVATE KEY-----\n");
    creds.write("a-credential", &third.chain_pem, &garbage);
    let barrier_3 = creds.rotate("barrier-credential", "barrier-3", &barrier);
    eventually("the barrier after the garbage key", || {
        curl(barrier[0], port, &barrier_3, &[]).ok()
    });
    for _ in 0..3 {
        let got = curl("a.example.com", port, &second, &[]);
        assert!(got.ok(), "the last good certificate: {got:?}");
    }
    assert!(warned(&proxy.log()) >= 2, "{}", proxy.log());

    // The proxy still follows good rotations.
    let fourth = creds.rotate("a-credential", "rotation-4", &["a.example.com"]);
    eventually("a good rotation after the bad ones", || served_by(&fourth));
    assert!(!served_by(&second));

    let log = proxy.log();
    creds.assert_no_key_in(&log);
    assert!(!log.contains("garbage-key-material"), "{log}");
    assert!(!log.contains("PRIVATE KEY-----\n"), "{log}");
}

#[test]
fn mutual_tls_follows_the_client_ca_secret() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let mut creds = Credentials::new(temp.path());
    let server_ca = creds.rotate("httpbin", "server-ca", &["httpbin.example.com"]);
    let clients_1 = Ca::new("clients-1");
    let clients_2 = Ca::new("clients-2");
    creds.client_ca("httpbin", &clients_1);
    let spiffe = "spiffe://example.org/ns/default/sa/client";
    let (cert_1, key_1) = creds.client(
        &clients_1.issue_with_uris(
            &[spiffe],
            &["client.example.org"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        ),
        "client-1",
    );
    let (cert_2, key_2) = creds.client(
        &clients_2.issue(
            &["other-client.example.org"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        ),
        "client-2",
    );
    let dir = creds.dir().display().to_string();
    let (_proxy, port) = proxy(
        temp.path().join("tls-proxy.log"),
        &[
            "--dir",
            &dir,
            "--debounce",
            "50ms",
            "--host",
            "httpbin.example.com=httpbin",
            "--client-ca",
            "httpbin-cacert",
        ],
        &[],
    );
    let call = |client: Option<(&Path, &Path)>| {
        let files =
            client.map(|(cert, key)| (cert.display().to_string(), key.display().to_string()));
        let extra: Vec<&str> = match &files {
            Some((cert, key)) => vec!["--cert", cert, "--key", key],
            None => Vec::new(),
        };
        curl("httpbin.example.com", port, &server_ca, &extra)
    };

    let anonymous = call(None);
    assert!(anonymous.refused(), "no client certificate: {anonymous:?}");
    let verified = call(Some((&cert_1, &key_1)));
    assert!(verified.ok(), "{verified:?}");
    assert!(
        verified.body.contains(&format!(
            "client: subject \"CN=client.example.org\", URI:{spiffe}, DNS:client.example.org\n"
        )),
        "{verified:?}"
    );
    let stranger = call(Some((&cert_2, &key_2)));
    assert!(
        stranger.refused(),
        "a certificate from another CA: {stranger:?}"
    );

    // The client CA rotates like a certificate: new handshakes verify with the new one.
    creds.client_ca("httpbin", &clients_2);
    eventually("the rotated client CA", || {
        call(Some((&cert_2, &key_2))).ok()
    });
    assert!(call(Some((&cert_1, &key_1))).refused());
    assert!(call(None).refused());
}

#[test]
fn upstream_mode_follows_serve_dir_over_a_unix_socket() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let mut creds = Credentials::new(temp.path());
    let first = creds.rotate("httpbin", "upstream-1", &["httpbin.example.com"]);
    let socket = temp.path().join("upstream.sock");
    let listen = format!("unix:{}", socket.display());
    let dir = creds.dir().display().to_string();
    let mut upstream = Example::start(
        "serve-dir",
        temp.path().join("serve-dir.log"),
        &["--dir", &dir, "--listen", &listen, "--debounce", "50ms"],
        &[],
    );
    upstream.wait_for_line("listening (Unix socket)");

    let (proxy, port) = proxy(
        temp.path().join("tls-proxy.log"),
        &[
            "--upstream",
            &listen,
            "--host",
            "httpbin.example.com=httpbin",
        ],
        &[],
    );
    let served_by = |ca: &Path| curl("httpbin.example.com", port, ca, &[]).ok();
    assert!(served_by(&first), "{}", proxy.log());

    let second = creds.rotate("httpbin", "upstream-2", &["httpbin.example.com"]);
    eventually("the rotation through the upstream", || served_by(&second));
    assert!(
        !served_by(&first),
        "the old certificate is no longer presented"
    );
    creds.assert_no_key_in(&proxy.log());
}

#[test]
fn a_silent_client_is_closed_after_the_handshake_timeout_and_frees_its_slot() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let mut creds = Credentials::new(temp.path());
    let ca = creds.rotate("a-credential", "ca-a", &["a.example.com"]);
    let dir = creds.dir().display().to_string();
    let (proxy, port) = proxy(
        temp.path().join("tls-proxy.log"),
        &[
            "--dir",
            &dir,
            "--host",
            "a.example.com=a-credential",
            "--max-connections",
            "1",
            "--handshake-timeout",
            "1s",
        ],
        &[("RUST_LOG", Path::new("info,tls_proxy=debug"))],
    );

    // The one slot: a client that connects and never says a word. Accepted first (the
    // backlog is in order), it holds the slot until its handshake times out.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let got = curl("a.example.com", port, &ca, &[]);
    assert!(got.ok(), "served once the silent client is gone: {got:?}");
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "served after {:?}, before the handshake timeout freed the only slot",
        opened.elapsed()
    );
    silent.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let mut byte = [0; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent client is closed, not {other:?}"),
    }
    assert_eq!(
        lines_with(
            &proxy.log(),
            &["TLS handshake timed out", "peer=127.0.0.1:"]
        ),
        1,
        "{}",
        proxy.log()
    );
}

#[test]
fn flags_that_cannot_be_served_are_one_error_line() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path().display().to_string();
    let missing = temp.path().join("missing").display().to_string();
    for (args, expected) in [
        (vec!["--dir", &dir], "error: nothing to serve"),
        (
            vec!["--dir", &dir, "--host", "a*.example.com=a"],
            "error: invalid host pattern `a*.example.com`",
        ),
        (
            vec!["--dir", &missing, "--default", "a"],
            "does not exist or is not a directory",
        ),
        (
            vec!["--dir", &dir, "--host", "a.example.com"],
            "expected HOST=SECRET",
        ),
        (vec!["--host", "a.example.com=a"], "--dir <DIR>"),
    ] {
        let (code, log) = Example::run("tls-proxy", temp.path().join("run.log"), &args);
        assert_eq!(code, Some(2), "{args:?}:\n{log}");
        assert!(log.contains(expected), "{args:?}:\n{log}");
    }
}
