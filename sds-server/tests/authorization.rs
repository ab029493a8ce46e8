//! Who may have which secret, over a real Unix socket with the peer's real credentials: the
//! policy decides per name, a denied name is never sent while the other names of the stream
//! are, `-cacert` companions follow their credential, fetches are refused with
//! `PERMISSION_DENIED`, and a policy change reaches open streams.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::{FutureExt as _, future::BoxFuture};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use sds_core::SecretName;
use sds_proto::envoy::service::{
    discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse},
    secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
};
use sds_server::{
    SdsService, connections,
    policy::{Decision, Peer, Policy, UnixPeers},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint, Uri};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const WAIT: Duration = Duration::from_secs(10);

/// A policy the test changes while streams are open; it records every peer it is asked about.
#[derive(Clone)]
struct Switchable {
    allowed: Arc<Mutex<BTreeSet<String>>>,
    peers: Arc<Mutex<Vec<Peer>>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Switchable {
    fn new(allowed: &[&str]) -> Self {
        Self {
            allowed: Arc::new(Mutex::new(
                allowed.iter().map(|s| (*s).to_owned()).collect(),
            )),
            peers: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }

    fn allow_only(&self, allowed: &[&str]) {
        *self.allowed.lock() = allowed.iter().map(|s| (*s).to_owned()).collect();
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Policy for Switchable {
    fn decide<'a>(&'a self, peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        self.peers.lock().push(peer.clone());
        let decision = if self.allowed.lock().contains(name.as_str()) {
            Decision::Allow
        } else {
            Decision::deny(format!("{name} is not on the test's list"))
        };
        std::future::ready(decision).boxed()
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        let mut changes = self.changes.subscribe();
        async move {
            let _ = changes.changed().await;
        }
        .boxed()
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sds: SdsService,
}

async fn serve(policy: impl Policy) -> Harness {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("sds.sock");
    let reader = support::reader(support::credentials(&["a", "b", "a-cacert-less"])).await;
    let sds = SdsService::builder(reader).policy(policy).build();
    let listener = connections::bind_unix(&path, 0o600).await.expect("binds");
    let incoming = connections::guard(UnixListenerStream::new(listener), Default::default());
    let server = tonic::transport::Server::builder().add_service(sds.clone().into_server());
    tokio::spawn(server.serve_with_incoming(incoming));
    Harness {
        _dir: dir,
        path,
        sds,
    }
}

async fn client(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
    let path = path.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("an endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connects");
    SecretDiscoveryServiceClient::new(channel)
}

fn sotw(names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        type_url: TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// The names a response carries.
fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            let secret: sds_proto::envoy::extensions::transport_sockets::tls::v3::Secret =
                prost::Message::decode(any.value.clone()).expect("a Secret");
            secret.name
        })
        .collect()
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("no error")
        .expect("the stream goes on")
}

async fn silent(stream: &mut tonic::Streaming<DiscoveryResponse>) {
    let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(more.is_err(), "nothing more is sent: {more:?}");
}

#[tokio::test]
async fn denied_names_are_not_sent_and_the_others_are() {
    let policy = Switchable::new(&["a"]);
    let harness = serve(policy.clone()).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(sotw(&["a", "a-cacert", "b"], ""))
        .await
        .expect("sent");
    let mut stream = client(&harness.path)
        .await
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("a stream")
        .into_inner();
    let first = next(&mut stream).await;
    // `a-cacert` does not exist (the source has no CA for `a`): only `a` is sent, not `b`.
    assert_eq!(names(&first), ["a"]);
    tx.send(sotw(&["a", "a-cacert", "b"], &first.nonce))
        .await
        .expect("ACK");
    silent(&mut stream).await;
    assert_eq!(harness.sds.stats().denied, 1, "b, once");

    // The peer the policy saw is this process, by its kernel credentials.
    let me = rustix::process::getuid().as_raw();
    let peers = policy.peers.lock().clone();
    assert!(!peers.is_empty());
    for peer in peers {
        let unix = peer.unix_credentials().expect("a Unix peer");
        assert_eq!(unix.uid, me);
        assert_eq!(unix.pid, Some(std::process::id() as i32));
    }

    // Allowing `b` sends it on the open stream; revoking `a` stops its pushes.
    policy.allow_only(&["b"]);
    let second = next(&mut stream).await;
    assert_eq!(
        names(&second),
        ["a", "b"],
        "SOTW keeps what was sent, adds b"
    );
    assert_eq!(harness.sds.stats().denied, 3, "a and a-cacert, revoked");
}

#[tokio::test]
async fn delta_streams_skip_denied_names() {
    let policy = Switchable::new(&["b"]);
    let harness = serve(policy).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        type_url: TYPE_URL.to_owned(),
        resource_names_subscribe: vec!["a".to_owned(), "b".to_owned()],
        ..Default::default()
    })
    .await
    .expect("sent");
    let mut stream = client(&harness.path)
        .await
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .expect("a stream")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("in time")
        .expect("no error")
        .expect("a response");
    let sent: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["b"]);
    assert_eq!(harness.sds.stats().denied, 1);
}

#[tokio::test]
async fn a_cacert_name_follows_its_credential() {
    let policy = Switchable::new(&["a-cacert-less"]);
    let harness = serve(policy).await;
    let mut client = client(&harness.path).await;
    // Allowed through its credential, `a-cacert-less-cacert` is asked for; it does not exist.
    let status = client
        .fetch_secrets(sotw(&["a-cacert-less-cacert"], ""))
        .await
        .expect_err("not found");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn fetches_of_denied_names_are_refused_naming_them() {
    let harness = serve(Switchable::new(&["a"])).await;
    let mut client = client(&harness.path).await;
    let status = client
        .fetch_secrets(sotw(&["a", "b"], ""))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().starts_with("not allowed: b ("),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("not on the test's list"),
        "{}",
        status.message()
    );
    let ok = client
        .fetch_secrets(sotw(&["a"], ""))
        .await
        .expect("allowed")
        .into_inner();
    assert_eq!(names(&ok), ["a"]);
}

#[tokio::test]
async fn the_default_policy_serves_the_servers_own_user() {
    let reader = support::reader(support::credentials(&["a"])).await;
    let sds = SdsService::new(reader);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("sds.sock");
    let listener = connections::bind_unix(&path, 0o600).await.expect("binds");
    let incoming = connections::guard(UnixListenerStream::new(listener), Default::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(sds.clone().into_server())
            .serve_with_incoming(incoming),
    );
    let ok = client(&path)
        .await
        .fetch_secrets(sotw(&["a"], ""))
        .await
        .expect("this process is the server's user")
        .into_inner();
    assert_eq!(names(&ok), ["a"]);

    // Over TCP (no credentials), the default policy serves nothing.
    let addr = support::serve(&sds, Default::default()).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let status = SecretDiscoveryServiceClient::new(channel)
        .fetch_secrets(sotw(&["a"], ""))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("not on a Unix socket"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn unix_peers_by_uid() {
    let me = rustix::process::getuid().as_raw();
    let other = if me == 4242 { 4243 } else { 4242 };
    let harness = serve(UnixPeers::new().uid(other)).await;
    let status = client(&harness.path)
        .await
        .fetch_secrets(sotw(&["a"], ""))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&format!("uid {me}")),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_socket_is_private_and_never_taken_over() {
    use std::os::unix::fs::PermissionsExt as _;
    let harness = serve(UnixPeers::same_user()).await;
    let mode = std::fs::metadata(&harness.path)
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A live server's socket is not taken over.
    let taken = connections::bind_unix(&harness.path, 0o600).await;
    assert_eq!(
        taken.expect_err("in use").kind(),
        std::io::ErrorKind::AddrInUse
    );
    // A file that is not a socket is never removed.
    let file = harness.path.with_file_name("not-a-socket");
    std::fs::write(&file, "data").expect("a file");
    let refused = connections::bind_unix(&file, 0o600).await;
    assert_eq!(
        refused.expect_err("not a socket").kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert_eq!(std::fs::read(&file).expect("still there"), b"data");
    // A stale socket (its server gone) is replaced, with the mode asked for.
    let stale = harness.path.with_file_name("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("binds"));
    let listener = connections::bind_unix(&stale, 0o660)
        .await
        .expect("replaces a stale socket");
    let mode = std::fs::metadata(&stale)
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    drop(listener);
}

/// Serves the name `mine` from the secret `a`, as Istio's rule serves a bare name from the
/// peer's namespace.
struct Alias;

impl Policy for Alias {
    fn decide<'a>(&'a self, _peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        let decision = match name.as_str() {
            "mine" => Decision::AllowAs(SecretName::new("a").expect("valid")),
            _ => Decision::deny("only `mine`"),
        };
        std::future::ready(decision).boxed()
    }
}

#[tokio::test]
async fn a_name_can_be_served_from_another_secret() {
    let harness = serve(Alias).await;
    let mut client = client(&harness.path).await;
    let fetched = client
        .fetch_secrets(sotw(&["mine"], ""))
        .await
        .expect("allowed")
        .into_inner();
    assert_eq!(names(&fetched), ["mine"], "named as asked for");

    let (tx, rx) = mpsc::channel(4);
    tx.send(sotw(&["mine", "a"], "")).await.expect("sent");
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("a stream")
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!(names(&first), ["mine"], "`a` itself is denied");
    assert_eq!(first.resources[0].value, fetched.resources[0].value);
}
