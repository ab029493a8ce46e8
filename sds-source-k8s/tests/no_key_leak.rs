//! A private key that lost its line breaks (pasted into YAML: `tls.key: "-----BEGIN EC
//! PRIVATE KEY----- MHcCAQEE… -----END EC PRIVATE KEY-----"`) in a Kubernetes Secret is refused,
//! and no log line (of sds, kube-rs, or the test API server), rejection or error ever holds a
//! 12-character window of it, at any level from TRACE to ERROR.
//!
//! The source runs against the project's real-protocol API server over loopback HTTP, under a
//! process-wide subscriber (the source parses on the blocking pool, and the server answers on
//! its own tasks) whose level each round sets.

use std::{
    error::Error as _,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sds_core::{Reader, Snapshot};
use sds_source_k8s::{K8sSource, Scope};
use sds_test_apiserver::{Access, ApiServer, Secret as KubeSecret};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    leak::KeyBytes,
    logs::Captured,
};
use tokio::time::timeout;
use tracing::Level;
use tracing_subscriber::{Layer as _, layer::SubscriberExt as _};

const NS: &str = "istio-system";
const ADMIN: &str = "admin";
const WAIT: Duration = Duration::from_secs(30);

const LEVELS: [Level; 5] = [
    Level::TRACE,
    Level::DEBUG,
    Level::INFO,
    Level::WARN,
    Level::ERROR,
];

/// Keys of each encoding, each in its own Secret.
const KINDS: [KeyKind; 4] = [
    KeyKind::EcP256Sec1,
    KeyKind::EcP384Pkcs8,
    KeyKind::Ed25519,
    KeyKind::RsaPkcs1(2048),
];

// === capture ===

/// The index in [`LEVELS`] of the current round's level.
static LEVEL: AtomicUsize = AtomicUsize::new(0);

/// The process-wide capture, installed once.
fn capture() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                *meta.level() <= LEVELS[LEVEL.load(Ordering::SeqCst)]
            }));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this test binary");
        captured
    })
}

// === the secret ===

/// The key on one line, its line breaks folded to spaces.
fn one_line(pem: &str) -> String {
    pem.trim_end().replace('\n', " ")
}

// === harness ===

async fn client(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(ADMIN, NS))
        .expect("a valid kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config");
    kube::Client::try_from(config).expect("a client")
}

async fn until(reader: &mut Reader, what: &str, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    timeout(WAIT, async {
        loop {
            if let Some(snapshot) = reader.current()
                && done(&snapshot)
            {
                return snapshot;
            }
            reader.changed().await.expect("the publisher runs");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn tls(name: &str, chain: &str, key: &str) -> KubeSecret {
    KubeSecret::new(NS, name)
        .with_type("kubernetes.io/tls")
        .with_data("tls.crt", chain.to_owned())
        .with_data("tls.key", key.to_owned())
}

/// One round at the current level: Secrets with one-line keys (in `tls.key`, and pasted into
/// `tls.crt`), and a good Secret whose key is then replaced by a one-line key.
async fn round(leaves: &[Leaf]) -> Vec<String> {
    let server = ApiServer::builder()
        .token(ADMIN, Access::all())
        .start()
        .await
        .expect("the test API server starts");
    for (i, leaf) in leaves.iter().enumerate() {
        let folded = one_line(&leaf.key_pem);
        server
            .create(tls(&format!("one-line-{i}"), &leaf.chain_pem, &folded))
            .expect("created");
        let stripped = leaf.key_pem.replace('\n', "");
        server
            .create(tls(&format!("stripped-{i}"), &leaf.chain_pem, &stripped))
            .expect("created");
        let pasted = format!("{}{folded}", leaf.chain_pem);
        server
            .create(tls(&format!("pasted-{i}"), &pasted, &leaf.key_pem))
            .expect("created");
        server
            .create(tls(&format!("rotated-{i}"), &leaf.chain_pem, &leaf.key_pem))
            .expect("created");
    }

    let source = K8sSource::new(client(&server).await, Scope::Namespace(NS.into()))
        .debounce(Duration::from_millis(10));
    let (mut reader, driver) = sds_core::publish(source);
    let driver = tokio::spawn(driver);
    let rejected = |s: &Snapshot, prefix: &str| {
        s.rejected()
            .filter(|(n, _)| n.as_str().starts_with(prefix))
            .count()
    };
    let n = leaves.len();
    until(&mut reader, "the first rejections", |s| {
        rejected(s, "one-line-") == n
            && rejected(s, "stripped-") == n
            && rejected(s, "pasted-") == n
    })
    .await;

    for (i, leaf) in leaves.iter().enumerate() {
        server
            .apply(tls(
                &format!("rotated-{i}"),
                &leaf.chain_pem,
                &one_line(&leaf.key_pem),
            ))
            .expect("updated");
    }
    let snapshot = until(&mut reader, "the rotations' rejections", |s| {
        rejected(s, "rotated-") == n
    })
    .await;
    for i in 0..n {
        assert!(
            snapshot.get(&format!("rotated-{i}")).is_some(),
            "the last good version stays served"
        );
    }

    driver.abort();
    drop(server);
    let mut texts = Vec::new();
    for (_, error) in snapshot.rejected() {
        texts.push(error.to_string());
        texts.push(format!("{error:?}"));
        let mut next = error.source();
        while let Some(source) = next {
            texts.push(source.to_string());
            next = source.source();
        }
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_keys_in_secrets_never_reach_the_log() {
    let captured = capture();
    let ca = Ca::new("example.com");
    let leaves: Vec<Leaf> = KINDS
        .iter()
        .map(|kind| ca.issue(&["leak.example.com"], *kind, Validity::current()))
        .collect();
    let keys = KeyBytes::of(leaves.iter().map(|l| l.key_pem.as_str()));

    for (index, level) in LEVELS.iter().enumerate() {
        captured.clear();
        LEVEL.store(index, Ordering::SeqCst);
        let texts = round(&leaves).await;
        for text in &texts {
            keys.assert_absent(&format!("at {level}: a rejection"), text);
        }
        let explained = texts
            .iter()
            .filter(|t| t.contains("its line breaks were lost"))
            .count();
        // Every Secret is rejected under three names, its one-line key named as the reason.
        assert!(explained >= 4 * 3 * leaves.len(), "{texts:#?}");

        // Let the aborted tasks finish logging before the log is read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let log = captured.text();
        keys.assert_absent(&format!("the log at {level}"), &log);
        if *level >= Level::WARN {
            assert!(log.contains("rejected"), "at {level}:\n{log}");
        }
    }
}
