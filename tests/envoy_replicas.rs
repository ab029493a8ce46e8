//! Two replicas of our SDS server on the same directory behind one real Envoy (two endpoints
//! in its cluster `sds`): when the replica holding Envoy's streams goes away, Envoy's streams
//! reconnect to the other one, its listener serves every handshake meanwhile, and because
//! versions are digests of the content, the other replica answers with the version Envoy
//! already holds: Envoy applies nothing (its `ssl_context_update_by_sds` counter does not
//! move, while `sds.<name>.update_success` shows the answers arrived). A rotation afterwards
//! reaches Envoy through the surviving replica and does move the counter.

#[allow(dead_code)]
mod support {
    pub(crate) mod sds;
}

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sds::{fs::DirSource, server::SdsService};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    envoy::{Envoy, FilterChain, SdsBootstrap, SdsEndpoint, curl_https},
};

const HTTPBIN: &str = "httpbin.example.com";
const HELLO: &str = "helloworld-v1.example.com";
const SECRETS: [&str; 2] = ["httpbin-credential", "helloworld-credential"];
const WAIT: Duration = Duration::from_secs(30);

/// One replica: the directory's source and an SDS server on a runtime of its own.
struct Replica {
    label: &'static str,
    rt: Option<tokio::runtime::Runtime>,
    sds: SdsService,
}

impl Replica {
    fn start(label: &'static str, dir: &Path, endpoint: &SdsEndpoint) -> Replica {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sds = rt.block_on(async {
            let source = DirSource::new(dir).debounce(Duration::from_millis(50));
            let (mut reader, driver) = sds::core::publish(source);
            tokio::spawn(driver);
            reader.ready().await.expect("first scan");
            support::sds::serve(reader, endpoint).await
        });
        Replica {
            label,
            rt: Some(rt),
            sds,
        }
    }

    /// Stops serving: every stream and connection is cut.
    fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }

    /// What Envoy has ACKed on this replica, by secret name.
    fn acked(&self) -> BTreeMap<String, String> {
        self.sds
            .clients()
            .into_iter()
            .flat_map(|c| c.subscriptions)
            .filter_map(|s| Some((s.name.to_string(), s.acked?.to_string())))
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reserve_port() -> SdsEndpoint {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    SdsEndpoint::Tcp(probe.local_addr().expect("addr"))
}

fn write_credential(dir: &Path, name: &str, leaf: &Leaf) {
    let dir = dir.join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    for (file, content) in [("key", &leaf.key_pem), ("cert", &leaf.chain_pem)] {
        let tmp = dir.join(format!("{file}.tmp"));
        fs::write(&tmp, content).expect("write");
        fs::rename(&tmp, dir.join(file)).expect("rename");
    }
}

/// Polls `f` until it holds, for at most [`WAIT`]; returns how long it took.
fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The sum of the listener's `ssl_context_update_by_sds` counters: how many times Envoy
/// rebuilt a TLS context because a secret it uses changed.
fn context_updates(envoy: &Envoy) -> u64 {
    envoy
        .stats_matching(r"ssl_context_update_by_sds$")
        .values()
        .sum()
}

/// The `version_info` of each secret Envoy holds (its config dump).
fn versions_held(envoy: &Envoy) -> BTreeMap<String, String> {
    let dump: serde_json::Value =
        serde_json::from_str(&envoy.config_dump_resource("dynamic_active_secrets"))
            .expect("the config dump is JSON");
    dump["configs"]
        .as_array()
        .expect("configs")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("a name").to_owned();
            (
                name,
                c["version_info"].as_str().expect("a version").to_owned(),
            )
        })
        .collect()
}

fn update_successes(envoy: &Envoy) -> BTreeMap<String, u64> {
    envoy.stats_matching(r"^sds\..*\.update_success$")
}

#[test]
fn envoy_fails_over_to_the_other_replica_without_a_failed_handshake_or_a_reapply() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("credentials");
    fs::create_dir(&dir).expect("mkdir");
    let ca = Ca::new("example.com");
    for (name, host) in SECRETS.iter().zip([HTTPBIN, HELLO]) {
        write_credential(
            &dir,
            name,
            &ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current()),
        );
    }
    let ca_file: PathBuf = tmp.path().join("ca.crt");
    fs::write(&ca_file, ca.cert_pem()).expect("write the CA");

    let (a, b) = (reserve_port(), reserve_port());
    let mut replicas = [Replica::start("a", &dir, &a), Replica::start("b", &dir, &b)];
    let bootstrap = SdsBootstrap::new(a)
        .replica(b)
        .chain(FilterChain::new(SECRETS[0], &[HTTPBIN]))
        .chain(FilterChain::new(SECRETS[1], &[HELLO]))
        .to_yaml();
    let envoy = Envoy::start(&bootstrap);
    let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, WAIT);
    eventually("Envoy is LIVE (every secret received)", || {
        let (status, body) = envoy.admin_request("GET", "/ready");
        status == 200 && body.trim() == "LIVE"
    });
    let mut held = BTreeMap::new();
    eventually("both secrets ACKed, on one replica or the other", || {
        held = replicas.iter().flat_map(Replica::acked).collect();
        held.len() == SECRETS.len()
    });
    // One stream per secret, each on an endpoint of Envoy's choosing (round robin): stop a
    // replica that holds at least one.
    let (victim, survivor) = match replicas[0].acked().is_empty() {
        true => (1, 0),
        false => (0, 1),
    };
    let moved = replicas[victim].acked();
    eprintln!(
        "before: replica {} holds {:?}, replica {} holds {:?}",
        replicas[victim].label,
        moved.keys(),
        replicas[survivor].label,
        replicas[survivor].acked().keys()
    );
    let updates_before = context_updates(&envoy);
    let versions_before = versions_held(&envoy);
    assert_eq!(
        versions_before, held,
        "Envoy holds what the replicas saw it ACK"
    );
    let successes_before = update_successes(&envoy);

    // Handshakes on both hosts, without a pause, until the failover is over.
    let stop = Arc::new(AtomicBool::new(false));
    let (total, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prober = {
        let (stop, total, failed, ca_file) = (
            Arc::clone(&stop),
            Arc::clone(&total),
            Arc::clone(&failed),
            ca_file.clone(),
        );
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for host in [HTTPBIN, HELLO] {
                    let r = curl_https(host, port, &ca_file, None);
                    total.fetch_add(1, Ordering::Relaxed);
                    if !(r.success() && r.body.trim() == host) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{host}: exit {} {}", r.exit_code, r.stderr));
                    }
                }
            }
            failures
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    replicas[victim].stop();
    let failover = eventually("the other replica holds every secret, ACKed", || {
        replicas[survivor].acked() == held
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failures = prober.join().expect("the prober");
    eprintln!(
        "failover: {} stream(s) moved to replica {} in {failover:?}; {} handshakes, {} failed",
        moved.len(),
        replicas[survivor].label,
        total.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "handshakes failed during the failover: {failures:#?}"
    );
    assert!(total.load(Ordering::Relaxed) >= 4, "the prober ran");

    // The moved streams were answered (with the version Envoy holds) and nothing was applied.
    let successes = update_successes(&envoy);
    for name in moved.keys() {
        let stat = format!("sds.{name}.update_success");
        assert!(
            successes.get(&stat) > successes_before.get(&stat),
            "{stat}: the new replica's answer arrived ({successes_before:?} -> {successes:?})"
        );
    }
    assert_eq!(
        context_updates(&envoy),
        updates_before,
        "Envoy rebuilt a TLS context for a secret it already held"
    );
    // The other replica's version of the same content is the same digest.
    assert_eq!(versions_held(&envoy), versions_before);
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0)
    );

    // A rotation through the surviving replica is applied: the counter above can move.
    let ca2 = Ca::new("new-example.com");
    let ca2_file = tmp.path().join("new.crt");
    fs::write(&ca2_file, ca2.cert_pem()).expect("write the CA");
    write_credential(
        &dir,
        SECRETS[0],
        &ca2.issue(&[HTTPBIN], KeyKind::EcP256Pkcs8, Validity::current()),
    );
    eventually("the rotation arrives through the other replica", || {
        curl_https(HTTPBIN, port, &ca2_file, None).success()
    });
    assert!(context_updates(&envoy) > updates_before);
    assert_eq!(
        envoy.stat("sds.httpbin-credential.update_rejected"),
        Some(0)
    );
}
