//! `K8sSource` against the project's real-protocol API server (`sds-test-apiserver`): the
//! unmodified kube-rs client and watcher over loopback HTTP.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use sds_core::{Reader, Secret, SecretName, SecretSource as _, Snapshot, Update};
use sds_source_k8s::{Error, K8sSource, Scope};
use sds_test_apiserver::{Access, ApiServer, Secret as KubeSecret};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use tokio::{task::JoinHandle, time::timeout};

const NS: &str = "istio-system";
const ADMIN: &str = "admin";
/// How long any expected change may take (backoff after an outage included).
const WAIT: Duration = Duration::from_secs(30);
/// A short debounce keeps the tests quick.
const DEBOUNCE: Duration = Duration::from_millis(20);

// === harness ===

async fn server() -> ApiServer {
    ApiServer::builder()
        .token(ADMIN, Access::all())
        .bookmark_interval(Duration::from_millis(500))
        .start()
        .await
        .expect("the test API server starts")
}

async fn client(server: &ApiServer, token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(token, NS))
        .expect("a valid kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config");
    kube::Client::try_from(config).expect("a client")
}

async fn source(server: &ApiServer, scope: Scope) -> K8sSource {
    K8sSource::new(client(server, ADMIN).await, scope).debounce(DEBOUNCE)
}

/// A published source whose driver is stopped when this is dropped.
struct Published {
    reader: Reader,
    driver: JoinHandle<()>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn publish(source: K8sSource) -> Published {
    let (mut reader, driver) = sds_core::publish(source);
    let driver = tokio::spawn(driver);
    within("the first snapshot", reader.ready())
        .await
        .expect("the publisher runs");
    Published { reader, driver }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the published snapshot satisfies `done`.
async fn until(reader: &mut Reader, what: &str, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    within(what, async {
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
}

/// The next item of a source's stream.
async fn next<S: Stream<Item = Result<Update, Error>> + Unpin>(
    stream: &mut S,
) -> Result<Update, Error> {
    within("the next item", stream.next())
        .await
        .expect("the source's stream does not end")
}

/// The valid secrets of one update.
fn served(update: Update) -> Snapshot {
    Snapshot::build(None, update)
}

fn names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.iter().map(|(n, _)| n.as_str()).collect()
}

fn name(name: &str) -> SecretName {
    SecretName::new(name).expect("a valid name")
}

fn leaf(ca: &Ca, host: &str) -> Leaf {
    ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current())
}

fn tls(namespace: &str, name: &str, leaf: &Leaf) -> KubeSecret {
    KubeSecret::new(namespace, name)
        .with_type("kubernetes.io/tls")
        .with_data("tls.crt", leaf.chain_pem.clone())
        .with_data("tls.key", leaf.key_pem.clone())
}

fn chain_of(secret: &Secret) -> Vec<u8> {
    match secret {
        Secret::TlsCertificate(c) => c.chain()[0].to_vec(),
        other => panic!("not a certificate: {}", other.kind()),
    }
}

fn anchors_of(secret: &Secret) -> Vec<Vec<u8>> {
    match secret {
        Secret::ValidationContext(b) => b.anchors().iter().map(|a| a.to_vec()).collect(),
        other => panic!("not a CA: {}", other.kind()),
    }
}

fn serves_cert(snapshot: &Snapshot, name: &str, leaf: &Leaf) -> bool {
    snapshot.get(name).is_some_and(
        |s| matches!(&**s, Secret::TlsCertificate(c) if c.chain()[0].as_ref() == leaf.cert_der),
    )
}

// === tests ===

#[tokio::test]
async fn add_update_delete() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let (v1, v2) = (
        leaf(&ca, "httpbin.example.com"),
        leaf(&ca, "httpbin.example.com"),
    );
    let mut p = publish(source(&server, Scope::Namespace(NS.into())).await).await;
    assert!(p.reader.current().expect("ready").is_empty());

    server.create(tls(NS, "httpbin", &v1)).expect("created");
    let snap = until(&mut p.reader, "httpbin", |s| serves_cert(s, "httpbin", &v1)).await;
    assert_eq!(
        names(&snap),
        [
            "httpbin",
            "kubernetes://httpbin",
            "kubernetes://istio-system/httpbin"
        ]
    );
    let served = snap.get("httpbin").expect("served");
    assert!(Arc::ptr_eq(
        served,
        snap.get("kubernetes://istio-system/httpbin")
            .expect("served")
    ));

    server.apply(tls(NS, "httpbin", &v2)).expect("updated");
    until(&mut p.reader, "the new certificate", |s| {
        serves_cert(s, "kubernetes://httpbin", &v2)
    })
    .await;

    server.delete(NS, "httpbin").expect("deleted");
    until(&mut p.reader, "the deletion", Snapshot::is_empty).await;
}

#[tokio::test]
async fn key_precedence_and_cacert_secrets() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let other = Ca::new("other.example.com");
    let (generic, tls_leaf) = (leaf(&ca, "a.example.com"), leaf(&ca, "b.example.com"));
    server
        .create(
            tls(NS, "gw", &tls_leaf)
                .with_data("cert", generic.chain_pem.clone())
                .with_data("key", generic.key_pem.clone())
                .with_data("ca.crt", other.cert_pem())
                .with_data("cacert", ca.cert_pem()),
        )
        .expect("created");
    let mut p = publish(source(&server, Scope::Namespace(NS.into())).await).await;
    let snap = p.reader.current().expect("ready");
    assert!(
        serves_cert(&snap, "gw", &generic),
        "cert+key win over tls.crt+tls.key"
    );
    assert_eq!(
        anchors_of(snap.get("gw-cacert").expect("served")),
        [ca.cert_der()]
    );

    // A separate `gw-cacert` Secret takes precedence over the `cacert` key ...
    server
        .create(KubeSecret::new(NS, "gw-cacert").with_data("ca.crt", other.cert_pem()))
        .expect("created");
    let snap = until(&mut p.reader, "gw-cacert from its own Secret", |s| {
        s.get("kubernetes://istio-system/gw-cacert")
            .is_some_and(|c| anchors_of(c) == [other.cert_der()])
    })
    .await;
    assert_eq!(
        anchors_of(snap.get("gw-cacert").expect("served")),
        [other.cert_der()]
    );
    assert!(serves_cert(&snap, "gw", &generic));

    // ... and when it goes, the key of `gw` is served again.
    server.delete(NS, "gw-cacert").expect("deleted");
    until(&mut p.reader, "gw-cacert from the key again", |s| {
        s.get("gw-cacert")
            .is_some_and(|c| anchors_of(c) == [ca.cert_der()])
    })
    .await;
}

#[tokio::test]
async fn ca_only_secret() {
    let server = server().await;
    let ca = Ca::new("example.com");
    server
        .create(KubeSecret::new(NS, "client-roots").with_data("cacert", ca.cert_pem()))
        .expect("created");
    let p = publish(source(&server, Scope::Namespace(NS.into())).await).await;
    let snap = p.reader.current().expect("ready");
    for n in [
        "client-roots",
        "client-roots-cacert",
        "kubernetes://istio-system/client-roots",
    ] {
        assert_eq!(anchors_of(snap.get(n).expect(n)), [ca.cert_der()], "{n}");
    }
}

#[tokio::test]
async fn namespaced_names() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let l = leaf(&ca, "a.example.com");
    for (ns, n) in [(NS, "a"), ("apps", "b"), ("elsewhere", "c")] {
        server.create(tls(ns, n, &l)).expect("created");
    }
    let p = publish(source(&server, Scope::Namespaces(vec![NS.into(), "apps".into()])).await).await;
    let snap = p.reader.current().expect("ready");
    assert_eq!(
        names(&snap),
        [
            "a",
            "kubernetes://a",
            "kubernetes://apps/b",
            "kubernetes://istio-system/a"
        ]
    );
    drop(p);

    let source = source(&server, Scope::All).await.default_namespace("apps");
    let p = publish(source).await;
    let snap = p.reader.current().expect("ready");
    assert_eq!(
        names(&snap),
        [
            "b",
            "kubernetes://apps/b",
            "kubernetes://b",
            "kubernetes://elsewhere/c",
            "kubernetes://istio-system/a",
        ]
    );
}

#[tokio::test]
async fn malformed_secret_keeps_the_last_good_version() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let (good, other) = (leaf(&ca, "a.example.com"), leaf(&ca, "b.example.com"));
    server.create(tls(NS, "httpbin", &good)).expect("created");
    let mut p = publish(source(&server, Scope::Namespace(NS.into())).await).await;
    let mut watch = p.reader.watch(&name("httpbin"));
    assert!(watch.current().is_some());

    // The key of another certificate.
    let bad = tls(NS, "httpbin", &good).with_data("tls.key", other.key_pem.clone());
    server.apply(bad).expect("updated");
    let snap = until(&mut p.reader, "the rejection", |s| s.rejected().len() == 3).await;
    let (_, error) = snap
        .rejected()
        .find(|(n, _)| n.as_str() == "httpbin")
        .expect("httpbin is rejected");
    let message = error.to_string();
    assert!(
        message.contains("Secret istio-system/httpbin key `tls.key`: private key does not match"),
        "{message}"
    );
    assert!(
        serves_cert(&snap, "httpbin", &good),
        "the last good version stays served"
    );
    assert!(chain_of(&watch.current().expect("still served")) == good.cert_der);

    // Fixed: served again, no longer rejected.
    server.apply(tls(NS, "httpbin", &other)).expect("updated");
    until(&mut p.reader, "the fix", |s| {
        s.rejected().len() == 0 && serves_cert(s, "httpbin", &other)
    })
    .await;
}

#[tokio::test]
async fn relist_after_compaction_never_withdraws_a_credential() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let l = leaf(&ca, "a.example.com");
    for i in 0..20 {
        server
            .create(tls(NS, &format!("cred-{i}"), &l))
            .expect("created");
    }
    // Many pages per list, so a list in progress is visible for a while.
    let source = source(&server, Scope::Namespace(NS.into()))
        .await
        .page_size(3);

    // Every item of the stream, as the publisher would see it.
    let mut stream = Box::pin(source.clone().into_stream());
    let first = served(next(&mut stream).await.expect("the initial list"));
    assert_eq!(first.len(), 60);

    // And a published reader watching one name.
    let mut p = publish(source).await;
    let mut watch = p.reader.watch(&name("cred-0"));
    let withdrawn = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let withdrawn = Arc::clone(&withdrawn);
        async move {
            while watch.changed().await.is_ok() {
                if watch.current().is_none() {
                    withdrawn.store(true, Ordering::SeqCst);
                }
            }
        }
    });

    server.wait_for_watches(2).await;
    server.clear_requests();
    for round in 0..3 {
        server.compact();
        server.drop_watches();
        // A change after the compaction, seen only through the re-list or the new watch.
        let n = format!("late-{round}");
        server.create(tls(NS, &n, &l)).expect("created");
        loop {
            let snap = served(next(&mut stream).await.expect("no error on 410"));
            assert!(
                snap.len() >= 60,
                "a credential was withdrawn: {:?}",
                names(&snap)
            );
            if snap.get(n.as_str()).is_some() {
                break;
            }
        }
        until(&mut p.reader, "the late Secret", |s| {
            s.get(n.as_str()).is_some()
        })
        .await;
    }
    assert!(
        !withdrawn.load(Ordering::SeqCst),
        "cred-0 was withdrawn while re-listing"
    );
    watcher.abort();

    let requests = server.requests();
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && !r.query.contains("watch=true"))
        .collect();
    assert!(
        !lists.is_empty(),
        "a 410 makes the watcher list again: {requests:#?}"
    );
    for list in &lists {
        assert!(list.query.contains("limit=3"), "{}", list.query);
        assert!(
            list.query.contains("fieldSelector=type%21%3Dhelm.sh%2Frelease.v1%2Ctype%21%3Dkubernetes.io%2Fservice-account-token"),
            "{}",
            list.query
        );
    }
}

#[tokio::test]
async fn forbidden_names_the_rbac_rule() {
    let server = server().await;
    server.set_user(
        "sds",
        "system:serviceaccount:istio-system:sds",
        Access::namespaces([NS]).read_only(),
    );
    let client = client(&server, "sds").await;

    // Allowed in one namespace, not in the other: an ambient error, no update.
    let scope = Scope::Namespaces(vec![NS.into(), "apps".into()]);
    let mut stream = Box::pin(K8sSource::new(client.clone(), scope).into_stream());
    let error = next(&mut stream).await.expect_err("forbidden");
    assert!(
        matches!(&error, Error::Forbidden { namespace: Some(ns), verb: "list", .. } if ns == "apps"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the ServiceAccount may not list secrets in namespace `apps`: grant a Role (bound with a \
         RoleBinding in that namespace) with apiGroups [\"\"], resources [\"secrets\"], verbs \
         [\"get\", \"list\", \"watch\"]"
    );
    let source = std::error::Error::source(&error).expect("the API server's answer");
    assert!(source.to_string().contains("403"), "{source}");
    assert!(
        source
            .to_string()
            .contains("system:serviceaccount:istio-system:sds"),
        "{source}"
    );

    // Cluster-wide needs a ClusterRole.
    let mut stream = Box::pin(K8sSource::new(client, Scope::All).into_stream());
    let error = next(&mut stream).await.expect_err("forbidden");
    assert!(
        matches!(
            &error,
            Error::Forbidden {
                namespace: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("ClusterRole"), "{error}");
}

#[tokio::test]
async fn served_while_the_api_server_is_down() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let (a, b) = (leaf(&ca, "a.example.com"), leaf(&ca, "b.example.com"));
    server.create(tls(NS, "a", &a)).expect("created");
    let source = source(&server, Scope::Namespace(NS.into())).await;
    let mut stream = Box::pin(source.clone().into_stream());
    assert_eq!(served(next(&mut stream).await.expect("listed")).len(), 3);
    let mut p = publish(source).await;
    let before = p.reader.current().expect("ready");

    server.stop().await;
    // Only ambient errors while it is down.
    for _ in 0..2 {
        let error = next(&mut stream).await.expect_err("unreachable");
        assert!(matches!(error, Error::Watch { .. }), "{error:?}");
        let source = std::error::Error::source(&error).expect("why").to_string();
        assert!(source.to_lowercase().contains("connect"), "{source}");
    }
    let during = p.reader.current().expect("ready");
    assert_eq!(during.version(), before.version(), "nothing withdrawn");

    server.restart().await.expect("restarted");
    server.create(tls(NS, "b", &b)).expect("created");
    let snap = until(&mut p.reader, "the Secret created after the restart", |s| {
        serves_cert(s, "b", &b)
    })
    .await;
    assert!(serves_cert(&snap, "a", &a));
    loop {
        match next(&mut stream).await.map(served) {
            Ok(snap) if snap.get("b").is_some() => break,
            Ok(snap) => assert_eq!(names(&snap), names(&before), "nothing withdrawn"),
            Err(Error::Watch { .. }) => {}
            Err(error) => panic!("{error:?}"),
        }
    }
}

#[tokio::test]
async fn a_burst_gives_one_update() {
    let server = server().await;
    let ca = Ca::new("example.com");
    let l = leaf(&ca, "a.example.com");
    let source = source(&server, Scope::Namespace(NS.into()))
        .await
        .debounce(Duration::from_millis(300));
    let mut stream = Box::pin(source.into_stream());
    assert!(served(next(&mut stream).await.expect("listed")).is_empty());
    server.wait_for_watches(1).await;
    for i in 0..30 {
        server
            .create(tls(NS, &format!("c{i}"), &l))
            .expect("created");
        // Non-credential Secrets in between change nothing.
        server
            .create(KubeSecret::new(NS, format!("app-{i}")).with_data("password", b"p".to_vec()))
            .expect("created");
    }
    let snap = served(next(&mut stream).await.expect("an update"));
    assert_eq!(snap.len(), 90, "{:?}", names(&snap));
}

/// A certificate issued a moment "in the future" (clock skew between the issuer and this
/// host) is rejected, then served once its notBefore passes, though the Secret never changes.
#[tokio::test]
async fn a_not_yet_valid_certificate_is_served_once_valid() {
    use std::time::SystemTime;

    let server = server().await;
    let ca = Ca::new("example.com");
    let now = SystemTime::now();
    let soon = ca.issue(
        &["soon.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::between(
            now + Duration::from_secs(2),
            now + Duration::from_secs(86_400),
        ),
    );
    let mut p = publish(source(&server, Scope::Namespace(NS.into())).await).await;
    server.create(tls(NS, "soon", &soon)).expect("created");
    let snap = until(&mut p.reader, "the rejection", |s| s.rejected().len() > 0).await;
    assert!(snap.get("soon").is_none(), "not valid yet: not served");
    until(&mut p.reader, "served once valid", |s| {
        serves_cert(s, "soon", &soon)
    })
    .await;
}
