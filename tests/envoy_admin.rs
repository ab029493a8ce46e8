//! What an operator sees of a real Envoy, through the real `serve-dir --admin`: after Envoy
//! receives and ACKs, `/debug/clients` shows its node id, the name and the ACKed version; a
//! name that does not exist shows as waiting; a rotation Envoy rejects shows its NACK message;
//! `/metrics` parses as Prometheus text and shows each secret's expiry and the NACK count.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{Envoy, FilterChain, SdsBootstrap, SdsEndpoint, curl_https, http_request},
};
use serde_json::Value;
use support::example::Example;

const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "gw-admin-e2e";
const HTTPBIN: &str = "httpbin.example.com";
const DAY: Duration = Duration::from_secs(24 * 3600);

/// `GET path` on the admin endpoint: status and body.
fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    http_request(admin, "GET", path).unwrap_or_else(|e| panic!("GET {path} on {admin}: {e}"))
}

fn json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = get(admin, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// `/metrics`, parsed by a Prometheus text parser: each sample by `name{k="v",...}` (labels
/// sorted).
fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    sds_test_util::metrics::samples(&body)
}

/// Polls `f` until it gives something, for at most [`WAIT`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The subscription to `name` of the first stream of `clients` claiming [`NODE`] that has one.
fn subscription(clients: &Value, name: &str) -> Option<Value> {
    clients["clients"]
        .as_array()?
        .iter()
        .filter(|c| c["node_id"] == NODE)
        .flat_map(|c| c["subscriptions"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
        .cloned()
}

fn rename_over(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).expect("write a temporary file");
    fs::rename(&tmp, path).expect("rename it into place");
}

#[test]
fn the_admin_endpoint_shows_what_envoy_holds_acks_nacks_and_waits_for() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let credentials = temp.path().join("credentials");
    let httpbin = credentials.join("httpbin");
    fs::create_dir_all(&httpbin).expect("mkdir");
    let ca = Ca::new("admin e2e CA");
    let now = SystemTime::now();
    // Ends in 20 days.
    let leaf: Leaf = ca.issue(
        &[HTTPBIN],
        KeyKind::EcP256Pkcs8,
        Validity::between(now - Duration::from_secs(3600), now + 20 * DAY),
    );
    rename_over(&httpbin.join("tls.key"), &leaf.key_pem);
    rename_over(&httpbin.join("tls.crt"), &leaf.chain_pem);
    let ca_file = temp.path().join("ca.crt");
    fs::write(&ca_file, ca.cert_pem()).expect("write the CA");

    let dir = credentials.display().to_string();
    let mut server = Example::start(
        "serve-dir",
        temp.path().join("serve-dir.log"),
        &[
            "--dir",
            &dir,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--debounce",
            "50ms",
        ],
        &[],
    );
    let admin = server.address("admin listening");
    let sds = server.address("listening (TCP)");
    assert_eq!(get(admin, "/healthz").0, 200);
    assert_eq!(get(admin, "/readyz"), (200, "ready\n".to_owned()));

    let bootstrap = SdsBootstrap::new(SdsEndpoint::Tcp(sds))
        .node(NODE, "ingress")
        // `missing` never comes: let the listener start without it.
        .initial_fetch_timeout(Duration::from_secs(1))
        .chain(FilterChain::new("httpbin", &[HTTPBIN]))
        .chain(FilterChain::new("missing", &["missing.example.com"]));
    let envoy = Envoy::start(&bootstrap.to_yaml());
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    eventually("a TLS handshake with the served certificate", || {
        curl_https(HTTPBIN, port, &ca_file, None)
            .success()
            .then_some(())
    });

    // Envoy's ACK shows, with its node id and the version served.
    let secrets = json(admin, "/debug/secrets");
    let version = secrets["secrets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "httpbin"))
        .map(|s| s["version"].clone())
        .unwrap_or_else(|| panic!("httpbin is served: {secrets:#}"));
    assert!(version.is_string(), "{secrets:#}");
    let acked = eventually("Envoy's ACK in /debug/clients", || {
        subscription(&json(admin, "/debug/clients"), "httpbin").filter(|s| s["acked"] == version)
    });
    assert_eq!(acked["sent"], version);
    assert!(acked["nack"].is_null(), "{acked:#}");
    let clients = json(admin, "/debug/clients");
    let gateway = clients["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["node_id"] == NODE))
        .cloned()
        .expect("Envoy's streams are listed");
    assert_eq!(gateway["cluster"], "ingress");
    assert_eq!(gateway["api"], "sotw");

    // The name that does not exist waits.
    let missing = subscription(&clients, "missing").expect("missing is subscribed");
    assert!(missing["waiting_since"].is_u64(), "{missing:#}");
    assert!(missing["sent"].is_null(), "{missing:#}");

    let m = metrics(admin);
    let left = m["sds_secret_expiry_seconds{secret=\"httpbin\"}"];
    let twenty_days = (20 * DAY).as_secs_f64();
    assert!(twenty_days - 600.0 < left && left <= twenty_days, "{left}");
    assert!(m.contains_key("sds_secret_not_after_timestamp_seconds{secret=\"httpbin\"}"));
    assert!(m["sds_streams{api=\"sotw\"}"] >= 2.0, "{m:#?}");
    assert!(m["sds_subscriptions_waiting"] >= 1.0, "{m:#?}");
    assert!(m.contains_key("sds_subscription_waiting_seconds{secret=\"missing\"}"));
    assert_eq!(m["sds_secret_nacks_total{secret=\"httpbin\"}"], 0.0);
    assert!(
        !m.keys().any(|k| k.contains(NODE)),
        "node ids are never labels"
    );

    // A rotation that sds-core accepts and Envoy refuses: `httpbin` becomes a CA bundle
    // (the directory keeps only ca.crt), which a listener's certificate cannot be.
    rename_over(&httpbin.join("ca.crt"), ca.cert_pem());
    fs::remove_file(httpbin.join("tls.key")).expect("remove the key");
    fs::remove_file(httpbin.join("tls.crt")).expect("remove the chain");
    let nacked = eventually("Envoy's NACK in /debug/clients", || {
        subscription(&json(admin, "/debug/clients"), "httpbin").filter(|s| !s["nack"].is_null())
    });
    let nack = &nacked["nack"];
    let message = nack["message"].as_str().expect("a message");
    assert!(!message.is_empty(), "{nacked:#}");
    assert_eq!(nack["code"], 13, "{nacked:#}");
    // Envoy keeps what it ACKed, and says so.
    assert_eq!(nacked["acked"], version, "{nacked:#}");
    assert_ne!(nacked["sent"], version, "{nacked:#}");
    assert!(
        envoy
            .stat("sds.httpbin.update_rejected")
            .is_some_and(|n| n >= 1),
        "Envoy counted the rejection"
    );
    let m = eventually("the NACK in /metrics", || {
        let m = metrics(admin);
        (m.get("sds_secret_nacks_total{secret=\"httpbin\"}") >= Some(&1.0)).then_some(m)
    });
    assert!(m["sds_nacks_total"] >= 1.0);
    // And the server logged it, with Envoy's message.
    let line = server.wait_for_line("Envoy rejected (NACK)");
    assert!(line.contains(NODE), "{line}");
    eprintln!("Envoy's NACK: {message}");
    // The last good certificate is still what Envoy presents.
    assert!(curl_https(HTTPBIN, port, &ca_file, None).success());
}
