//! [`ApiServer`]: the listener, its lifecycle (stop, restart, drop), and the test switches.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{ANONYMOUS, Access, User};
use crate::authorizer::{AccessReview, Authorizer, Decision, ReviewFailure};
use crate::error::Error;
use crate::secret::Secret;
use crate::store::{Deleted, Preconditions, Store};

/// An in-process Kubernetes API server for `core/v1` Secrets and access reviews on
/// `127.0.0.1`.
///
/// Dropping it stops the listener, every connection and every watch.
pub struct ApiServer {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
    dir: tempfile::TempDir,
    kubeconfigs: Mutex<u32>,
}

/// Configures and starts an [`ApiServer`].
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
    port: u16,
    users: BTreeMap<String, User>,
    anonymous: Option<User>,
}

/// One request the server answered, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The HTTP method, e.g. `GET`.
    pub method: String,
    /// The path, e.g. `/api/v1/namespaces/istio-system/secrets`.
    pub path: String,
    /// The raw (still percent-encoded) query string, without `?`.
    pub query: String,
    /// The authenticated user's name (the impersonated user's when the request
    /// impersonates; `None` for unauthenticated requests).
    pub user: Option<String>,
    /// The HTTP status code of the response.
    pub status: u16,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// The request's `Accept`.
    pub accept: Option<String>,
    /// The request's `User-Agent` (kubectl puts its version here).
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) version: String,
    pub(crate) bookmark_interval: Duration,
}

/// State shared by the listener, the connections and the watch tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Mutex<Store>,
    /// The current resourceVersion, published after every write (wakes the watches).
    pub(crate) written: watch::Sender<u64>,
    /// Bumped by [`ApiServer::drop_watches`].
    pub(crate) drop_watches: watch::Sender<u64>,
    open_watches: watch::Sender<usize>,
    users: Mutex<BTreeMap<String, User>>,
    anonymous: Mutex<Option<User>>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Answers SubjectAccessReviews and records them.
    pub(crate) authorizer: Authorizer,
    unavailable: AtomicBool,
    port: AtomicU16,
}

/// Counts an open watch while alive.
#[derive(Debug)]
pub(crate) struct OpenWatch(Arc<Shared>);

#[derive(Debug)]
struct Running {
    /// Dropping it stops the accept loop and every connection of this run.
    _stop: watch::Sender<()>,
    accept: JoinHandle<()>,
}

// === impl Builder ===

impl Default for Builder {
    fn default() -> Self {
        Self {
            config: Config {
                version: "v1.33.1".to_owned(),
                bookmark_interval: Duration::from_secs(60),
            },
            port: 0,
            users: BTreeMap::new(),
            anonymous: None,
        }
    }
}

impl Builder {
    /// The `gitVersion` that `/version` reports (default `v1.33.1`); `major` and `minor` are
    /// taken from it.
    #[must_use]
    pub fn version(mut self, git_version: impl Into<String>) -> Self {
        self.config.version = git_version.into();
        self
    }

    /// Accepts the bearer token `token` as the user of the same name.
    #[must_use]
    pub fn token(self, token: impl Into<String>, access: Access) -> Self {
        let token = token.into();
        let user = token.clone();
        self.user(token, user, access)
    }

    /// Accepts the bearer token `token` as the user `user` (e.g.
    /// `system:serviceaccount:istio-system:sds`), which is the name 403 messages use.
    #[must_use]
    pub fn user(
        mut self,
        token: impl Into<String>,
        user: impl Into<String>,
        access: Access,
    ) -> Self {
        self.users.insert(
            token.into(),
            User {
                name: user.into(),
                access,
            },
        );
        self
    }

    /// Lets requests without a token in as `system:anonymous` with `access` (like
    /// `--anonymous-auth`; off by default, so they get 401). kubectl needs this: it sends no
    /// credentials at all to an `http://` server (client-go only applies a kubeconfig user's
    /// token, certificates or exec plugin when the transport is TLS). An unknown token is
    /// still a 401.
    #[must_use]
    pub fn anonymous(mut self, access: Access) -> Self {
        self.anonymous = Some(User {
            name: ANONYMOUS.to_owned(),
            access,
        });
        self
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 60 s).
    #[must_use]
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.config.bookmark_interval = interval;
        self
    }

    /// The port to listen on (default 0: any free port).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Binds `127.0.0.1` and starts serving. Needs a Tokio runtime.
    pub async fn start(self) -> Result<ApiServer, Error> {
        let dir = tempfile::Builder::new()
            .prefix("sds-test-apiserver")
            .tempdir()
            .map_err(|source| Error::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        let shared = Arc::new(Shared {
            config: self.config,
            store: Mutex::new(Store::new()),
            written: watch::Sender::new(0),
            drop_watches: watch::Sender::new(0),
            open_watches: watch::Sender::new(0),
            users: Mutex::new(self.users),
            anonymous: Mutex::new(self.anonymous),
            requests: Mutex::new(Vec::new()),
            authorizer: Authorizer::new(),
            unavailable: AtomicBool::new(false),
            port: AtomicU16::new(self.port),
        });
        let running = listen(&shared, self.port)?;
        Ok(ApiServer {
            shared,
            running: Mutex::new(Some(running)),
            dir,
            kubeconfigs: Mutex::new(0),
        })
    }
}

fn listen(shared: &Arc<Shared>, port: u16) -> Result<Running, Error> {
    let bind = |port| -> std::io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        socket.listen(1024)
    };
    let listener = bind(port).map_err(|source| Error::Bind { port, source })?;
    let port = listener
        .local_addr()
        .map_err(|source| Error::Bind { port, source })?
        .port();
    shared.port.store(port, Ordering::Relaxed);
    let (stop, stopped) = watch::channel(());
    let accept = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
    Ok(Running {
        _stop: stop,
        accept,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| crate::api::handle(shared.clone(), req));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = stopped.changed() => {}
            }
        });
    }
}

// === impl ApiServer ===

impl ApiServer {
    /// A [`Builder`] with defaults: `v1.33.1`, no tokens, bookmarks every 60 s, any port.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The port the server listens on (kept across [`stop`](Self::stop) and
    /// [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.shared.port()
    }

    /// A kubeconfig (YAML) for this server: one cluster, a user with bearer `token`, and a
    /// context (current) whose default namespace is `namespace`. kube-rs sends the token;
    /// kubectl does not over `http://` (see [`Builder::anonymous`]).
    pub fn kubeconfig_yaml(&self, token: &str, namespace: &str) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n\
             users:\n- name: test\n  user:\n    token: {token}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\n\
             current-context: test\npreferences: {{}}\n",
            server = q(&self.url()),
            token = q(token),
            namespace = q(namespace),
        )
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to a new file in a directory the
    /// server owns (deleted when it is dropped) and returns its path.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> Result<PathBuf, Error> {
        let n = {
            let mut count = self.kubeconfigs.lock();
            *count += 1;
            *count
        };
        let path = self.dir.path().join(format!("kubeconfig-{n}.yaml"));
        std::fs::write(&path, self.kubeconfig_yaml(token, namespace)).map_err(|source| {
            Error::Write {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// Adds (or replaces) a token while the server runs.
    pub fn set_user(&self, token: impl Into<String>, user: impl Into<String>, access: Access) {
        self.shared.users.lock().insert(
            token.into(),
            User {
                name: user.into(),
                access,
            },
        );
    }

    /// Allows (`Some`) or refuses (`None`, 401) requests without a token from now on; see
    /// [`Builder::anonymous`].
    pub fn set_anonymous(&self, access: Option<Access>) {
        *self.shared.anonymous.lock() = access.map(|access| User {
            name: ANONYMOUS.to_owned(),
            access,
        });
    }

    /// Creates a Secret as a POST would (validated; `generate_name` honored); returns it as
    /// stored.
    pub fn create(&self, secret: Secret) -> Result<Secret, Error> {
        self.shared
            .write(|store| store.create(secret, false))
            .map(unwrap_arc)
    }

    /// Replaces a Secret as a PUT would (a non-zero `resource_version` is a precondition).
    pub fn update(&self, secret: Secret) -> Result<Secret, Error> {
        self.shared
            .write(|store| store.update(secret, false))
            .map(unwrap_arc)
    }

    /// Creates the Secret, or replaces it unconditionally if it exists.
    pub fn apply(&self, mut secret: Secret) -> Result<Secret, Error> {
        self.shared
            .write(|store| match store.get(&secret.namespace, &secret.name) {
                Ok(_) => {
                    secret.resource_version = 0;
                    store.update(secret, false)
                }
                Err(_) => store.create(secret, false),
            })
            .map(unwrap_arc)
    }

    /// Deletes a Secret as a DELETE would; returns its last state (with `deletion_timestamp`
    /// set and still stored if finalizers hold it).
    pub fn delete(&self, namespace: &str, name: &str) -> Result<Secret, Error> {
        let deleted = self
            .shared
            .write(|store| store.delete(namespace, name, &Preconditions::default(), false))?;
        Ok(match deleted {
            Deleted::Gone(s) | Deleted::Pending(s) => unwrap_arc(s),
        })
    }

    /// The stored Secret, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.shared
            .store
            .lock()
            .get(namespace, name)
            .ok()
            .map(unwrap_arc)
    }

    /// Every stored Secret, ordered by namespace and name.
    pub fn list(&self) -> Vec<Secret> {
        self.shared
            .store
            .lock()
            .all()
            .map(|s| (**s).clone())
            .collect()
    }

    /// The current resourceVersion (the global counter).
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().rv()
    }

    /// Drops the event history and moves the resourceVersion on, like etcd compaction plus
    /// writes to other resources: every resourceVersion handed out so far becomes too old.
    /// A watch that then starts from one gets the in-stream `410 Expired` ERROR, and a list
    /// `continue` token from before gets a `410`. Open watches that are caught up carry on;
    /// call [`drop_watches`](Self::drop_watches) next to make clients re-watch (and re-list).
    pub fn compact(&self) {
        let mut store = self.shared.store.lock();
        store.compact();
        self.shared.written.send_replace(store.rv());
    }

    /// Ends every open watch stream abruptly (the connection is cut mid-stream, without the
    /// final chunk), like an API server restart or a load balancer's idle timeout.
    pub fn drop_watches(&self) {
        self.shared
            .drop_watches
            .send_modify(|generation| *generation += 1);
    }

    /// The number of watch streams open now.
    pub fn open_watches(&self) -> usize {
        *self.shared.open_watches.borrow()
    }

    /// Waits until at least `n` watch streams are open.
    pub async fn wait_for_watches(&self, n: usize) {
        let mut rx = self.shared.open_watches.subscribe();
        // The sender lives in `self.shared`, so this never fails while `self` is borrowed.
        let _ = rx.wait_for(|open| *open >= n).await;
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.requests.lock().clear();
    }

    /// Answers SubjectAccessReviews (and SelfSubjectAccessReviews) with `callback`, asked
    /// after the rules and callbacks added before, as the API server asks its chain of
    /// authorizers: the first [`Decision`] that allows or denies is the answer, and a
    /// [`Decision::no_opinion`] passes the review on. When nobody has an opinion the answer
    /// is `allowed: false` with the reasons given (`"no rule allows it"` if none), as a real
    /// cluster whose RBAC grants nothing answers.
    ///
    /// These rules answer reviews only; requests to this server are authorized by
    /// [`Access`].
    pub fn authorize<F>(&self, callback: F)
    where
        F: Fn(&AccessReview) -> Decision + Send + Sync + 'static,
    {
        self.shared.authorizer.push(callback);
    }

    /// Allows `verb` on `resource` in `namespace` to `user` (`spec.user`, e.g.
    /// `system:serviceaccount:istio-system:istio-ingressgateway`), like an RBAC binding;
    /// `"*"` matches anything (`namespace` `"*"`: a ClusterRoleBinding). Matches resource
    /// requests only, whatever their API group, subresource and name. A rule added with
    /// [`authorize`](Self::authorize); the reason says which rule allowed.
    pub fn allow(
        &self,
        user: impl Into<String>,
        verb: impl Into<String>,
        resource: impl Into<String>,
        namespace: impl Into<String>,
    ) {
        let (user, verb, resource, namespace) =
            (user.into(), verb.into(), resource.into(), namespace.into());
        let reason = format!(
            "allowed by the test server's rule: {user:?} may {verb} {resource} in namespace {namespace:?}"
        );
        self.shared
            .authorizer
            .push_match(user, verb, resource, namespace, Decision::allow(reason));
    }

    /// Denies (`denied: true`, with `reason`) what [`allow`](Self::allow) would allow, as a
    /// deny-capable authorizer (a webhook) does; rules added later are not asked.
    pub fn deny(
        &self,
        user: impl Into<String>,
        verb: impl Into<String>,
        resource: impl Into<String>,
        namespace: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.shared.authorizer.push_match(
            user.into(),
            verb.into(),
            resource.into(),
            namespace.into(),
            Decision::deny(reason),
        );
    }

    /// Removes every rule and callback: reviews are answered `allowed: false` again.
    pub fn clear_authorization(&self) {
        self.shared.authorizer.clear();
    }

    /// Every valid review received so far, oldest first (also those that
    /// [`fail_access_reviews`](Self::fail_access_reviews) failed or holds).
    pub fn access_reviews(&self) -> Vec<AccessReview> {
        self.shared.authorizer.reviews()
    }

    /// Forgets the recorded reviews.
    pub fn clear_access_reviews(&self) {
        self.shared.authorizer.clear_reviews();
    }

    /// Makes reviews fail (`Some`) or be answered again (`None`); valid reviews are still
    /// recorded. Turning [`ReviewFailure::Hang`] off answers the held reviews.
    pub fn fail_access_reviews(&self, failure: Option<ReviewFailure>) {
        self.shared.authorizer.set_failure(failure);
    }

    /// While `true`, every request (health and version too) gets `503 ServiceUnavailable`;
    /// open watches are not affected (combine with [`drop_watches`](Self::drop_watches)).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared
            .unavailable
            .store(unavailable, Ordering::Relaxed);
    }

    /// Stops listening and closes every connection and watch; the state is kept for
    /// [`restart`](Self::restart). Clients see connection refused meanwhile.
    pub async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some(running) = running {
            let Running { _stop, accept } = running;
            drop(_stop);
            let _ = accept.await;
        }
    }

    /// Listens again on the same port, with the same state (an API server restart).
    pub async fn restart(&self) -> Result<(), Error> {
        self.stop().await;
        let running = listen(&self.shared, self.port())?;
        *self.running.lock() = Some(running);
        Ok(())
    }
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url())
            .field("version", &self.shared.config.version)
            .field("running", &self.running.lock().is_some())
            .finish_non_exhaustive()
    }
}

fn unwrap_arc(s: Arc<Secret>) -> Secret {
    Arc::unwrap_or_clone(s)
}

// === impl Shared ===

impl Shared {
    pub(crate) fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    pub(crate) fn user(&self, token: &str) -> Option<User> {
        self.users.lock().get(token).cloned()
    }

    pub(crate) fn anonymous(&self) -> Option<User> {
        self.anonymous.lock().clone()
    }

    /// The access of the user named `name` (a token's user, or the anonymous user), for
    /// impersonation; none for a user the server does not know.
    pub(crate) fn access_of(&self, name: &str) -> Access {
        let known = self
            .users
            .lock()
            .values()
            .find(|u| u.name == name)
            .map(|u| u.access.clone());
        known
            .or_else(|| {
                self.anonymous
                    .lock()
                    .as_ref()
                    .filter(|u| u.name == name)
                    .map(|u| u.access.clone())
            })
            .unwrap_or_else(Access::none)
    }

    pub(crate) fn is_unavailable(&self) -> bool {
        self.unavailable.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        self.requests.lock().push(record);
    }

    /// Runs a write under the lock and wakes the watches.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut store = self.store.lock();
        let result = f(&mut store);
        self.written.send_if_modified(|rv| {
            let changed = *rv != store.rv();
            *rv = store.rv();
            changed
        });
        result
    }

    pub(crate) fn watch_opened(self: &Arc<Self>) -> OpenWatch {
        self.open_watches.send_modify(|n| *n += 1);
        OpenWatch(self.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0
            .open_watches
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}
