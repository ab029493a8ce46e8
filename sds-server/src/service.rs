//! The tonic glue: pumps requests and secret changes through a [`session`](crate::session)
//! and turns its answers into proto messages.

use std::{
    collections::BTreeMap,
    fmt,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures_core::Stream;
use futures_util::{FutureExt, future};
use sds_core::{Reader, Secret, SecretName, SecretWatch, Untrusted};
use sds_proto::envoy::service::{
    discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource,
    },
    secret::v3::secret_discovery_service_server::SecretDiscoveryService,
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    Limits,
    encode::Encoder,
    limits::{Budget, Exceeded},
    requests::Inbound,
    session::{
        Ack, Delta, DeltaRequest, DeltaResponse, Refusal, Rejection, SECRET_TYPE_URL, SHOWN_CHARS,
        Sotw, SotwRequest, SotwResponse, StreamLimits, Subscriptions, check_type, parse_names,
    },
    shutdown::{Shutdown, Signal},
    wire::SecretDiscoveryServer,
};

/// A stream of responses, as tonic wants it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The SDS service: add [`SdsService::into_server`] to your own tonic server.
///
/// Cheap to clone; every clone serves the same snapshots. It never binds a socket and never
/// spawns a task: each stream's protocol runs while tonic polls its response body.
#[derive(Clone)]
pub struct SdsService {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    reader: Reader,
    encoder: Encoder,
    counters: Counters,
    pub(crate) limits: Limits,
    /// The subscriptions all streams hold, against `limits`.
    budget: Budget,
    /// Set once by [`SdsService::shutdown`]; every stream watches it.
    shutdown: Arc<Shutdown>,
}

#[derive(Default)]
struct Counters {
    streams_opened: AtomicU64,
    streams_closed: AtomicU64,
    responses: AtomicU64,
    nacks: AtomicU64,
    refused: AtomicU64,
}

/// Counters of a running [`SdsService`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Streams (`StreamSecrets` and `DeltaSecrets`) open now.
    pub streams_active: u64,
    /// Responses sent on streams and to fetches.
    pub responses: u64,
    /// Secret encodes performed: one per (name, version), whatever the number of streams.
    pub encodes: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Subscriptions (a name on a stream) held by all streams now.
    pub subscriptions: u64,
    /// Requests refused: invalid names or types, and clients over a [`Limits`] bound.
    pub refused: u64,
}

// === impl SdsService ===

impl SdsService {
    /// Serves the snapshots published to `reader`, with the default [`Limits`]. Streams wait
    /// for the first snapshot.
    pub fn new(reader: Reader) -> Self {
        Self::with_limits(reader, Limits::default())
    }

    /// Serves the snapshots published to `reader`, holding every client to `limits`.
    pub fn with_limits(reader: Reader, limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                reader,
                encoder: Encoder::default(),
                counters: Counters::default(),
                limits,
                budget: Budget::default(),
                shutdown: Arc::default(),
            }),
        }
    }

    /// The limits this service holds clients to.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Ends every open stream with `UNAVAILABLE` and refuses new ones, so that a graceful
    /// shutdown of the embedding server can complete (SDS streams never end on their own).
    /// Envoy keeps its secrets and reconnects, to another replica or to the next instance.
    ///
    /// Call it from the shutdown future given to tonic:
    /// `serve_with_shutdown(addr, async { signal.await; sds.shutdown() })`.
    pub fn shutdown(&self) {
        self.inner.shutdown.trigger();
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    ///
    /// Its streams hold no codec buffers: requests are decoded from the HTTP/2 frames as they
    /// arrive, and Envoy's `Node` only from the first request of a stream (see
    /// [`SecretDiscoveryServer`]). This is the only way to serve the streaming methods: they
    /// are what enforces the per-stream [`Limits`].
    pub fn into_server(self) -> SecretDiscoveryServer {
        SecretDiscoveryServer::new(self)
    }

    /// A snapshot of the service's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let opened = c.streams_opened.load(Ordering::Relaxed);
        let closed = c.streams_closed.load(Ordering::Relaxed);
        Stats {
            streams_active: opened.saturating_sub(closed),
            responses: c.responses.load(Ordering::Relaxed),
            encodes: self.inner.encoder.encodes(),
            nacks: c.nacks.load(Ordering::Relaxed),
            subscriptions: self.inner.budget.names() as u64,
            refused: c.refused.load(Ordering::Relaxed),
        }
    }
}

impl SdsService {
    pub(crate) fn inner(&self) -> Arc<Inner> {
        Arc::clone(&self.inner)
    }

    pub(crate) fn refuse_when_shutting_down(&self) -> Result<(), Status> {
        if self.inner.shutdown.is_down() {
            Err(shutting_down())
        } else {
            Ok(())
        }
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the SDS server is shutting down; reconnect")
}

impl fmt::Debug for SdsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdsService")
            .field("reader", &self.inner.reader)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Most missing names a `FetchSecrets` error lists; the others are counted.
const MAX_NAMES_SHOWN: usize = 10;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;

    /// Not served through tonic's codec: [`SdsService::into_server`] serves the stream itself,
    /// within the per-stream [`Limits`].
    async fn stream_secrets(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Err(not_through_codec())
    }

    /// Not served through tonic's codec: see [`SdsService::into_server`].
    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(not_through_codec())
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        let limits = StreamLimits {
            names: self.inner.limits.names_per_stream,
            name_bytes: self.inner.limits.name_bytes_per_stream,
        };
        let names = check_type(&req.type_url)
            .and_then(|()| parse_names(&req.resource_names, &limits))
            .map_err(|refusal| self.refuse(refusal))?;
        if names.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one secret in resource_names",
            ));
        }
        let snapshot = self
            .inner
            .reader
            .current()
            .ok_or_else(|| Status::unavailable("no secrets have been loaded yet"))?;
        let mut resources = Vec::new();
        let mut missing = Vec::new();
        let mut versions = Vec::new();
        for name in &names {
            match snapshot.get(name.as_str()) {
                Some(secret) => {
                    resources.extend(self.inner.encoder.any(name, secret));
                    versions.push(secret.version());
                }
                None => missing.push(name),
            }
        }
        if resources.is_empty() {
            return Err(Status::not_found(format!(
                "no such secret: {}",
                names_for_log(missing.into_iter())
            )));
        }
        self.inner
            .counters
            .responses
            .fetch_add(1, Ordering::Relaxed);
        let version_info = match versions.as_slice() {
            [one] => one.to_string(),
            many => sds_core::Version::combine(many).to_string(),
        };
        Ok(Response::new(DiscoveryResponse {
            version_info,
            resources,
            canary: false,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: String::new(),
        }))
    }
}

fn not_through_codec() -> Status {
    Status::unimplemented(
        "serve SdsService with SdsService::into_server(): its streams are not served \
         through tonic's codec",
    )
}

impl SdsService {
    fn refuse(&self, refusal: Refusal) -> Status {
        self.inner.refuse(refusal)
    }
}

impl Inner {
    /// Counts a refused request and maps it to its status.
    fn refuse(&self, refusal: Refusal) -> Status {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        refusal_status(refusal)
    }
}

/// Names for a log line or an error: the first [`MAX_NAMES_SHOWN`], then how many more.
fn names_for_log<'a>(names: impl Iterator<Item = &'a SecretName>) -> String {
    let mut out = String::new();
    let mut more = 0usize;
    for (i, name) in names.enumerate() {
        if i >= MAX_NAMES_SHOWN {
            more += 1;
            continue;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name.as_str());
    }
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// Maps a refused request to the status that ends its stream. Every text in it that came
/// from the client is escaped and cut short already (see [`Refusal`]).
fn refusal_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::WrongType(type_url) => Status::invalid_argument(format!(
            "this server only serves {SECRET_TYPE_URL}, not \"{type_url}\""
        )),
        Refusal::InvalidName { shown, problem } => {
            Status::invalid_argument(format!("invalid secret name \"{shown}\": {problem}"))
        }
        Refusal::TooManyNames { count, max } => Status::resource_exhausted(format!(
            "{count} secret names on one stream; at most {max} are served per stream"
        )),
        Refusal::TooManyNameBytes { bytes, max } => Status::resource_exhausted(format!(
            "the secret names on one stream are {bytes} bytes long together; at most {max} \
             bytes are served per stream"
        )),
        Refusal::ServerFull(Exceeded::Names(max)) => Status::resource_exhausted(format!(
            "the server holds its limit of {max} subscriptions; try again later"
        )),
        Refusal::ServerFull(Exceeded::Bytes(max)) => Status::resource_exhausted(format!(
            "the server holds its limit of {max} bytes of subscribed names; try again later"
        )),
    }
}

/// A session driven by one gRPC stream: the protocol-specific half of [`Pump`].
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// A new session held to `limits`.
    fn new(limits: StreamLimits) -> Self;

    /// The node id sent with a request, if any.
    fn node_id(req: &Self::Request) -> Option<&str>;
    fn on_request(
        &mut self,
        req: &Self::Request,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<Self::Response>), Refusal>;
    fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>);
    fn take_response(&mut self) -> Option<Self::Response>;
    /// The names subscribed to: for log context only.
    fn names(&self) -> String;
}

/// The per-stream pump: reads requests and secret changes, feeds the session, encodes its
/// responses. Runs while tonic polls the response stream; ends when the client goes away.
pub(crate) struct Pump<P: Protocol, I> {
    inner: Arc<Inner>,
    inbound: I,
    session: P,
    watches: Watches,
    /// The node id the client claims, escaped and cut short for logs.
    node: String,
    /// NACK logging, at most one WARN line per `Limits::nack_log_interval`.
    nack_log: NackLog,
    /// Resolves on [`SdsService::shutdown`].
    shutdown: Signal,
}

/// When this stream last logged a NACK at WARN, and how many it has not logged since.
#[derive(Debug, Default)]
struct NackLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl<P: Protocol, I: Inbound<P::Request>> Pump<P, I> {
    pub(crate) fn new(inner: Arc<Inner>, inbound: I) -> Self {
        let session = P::new(StreamLimits {
            names: inner.limits.names_per_stream,
            name_bytes: inner.limits.name_bytes_per_stream,
        });
        inner
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        let watches = Watches {
            inner: Arc::clone(&inner),
            map: BTreeMap::new(),
        };
        let shutdown = inner.shutdown.signal();
        Self {
            inner,
            inbound,
            session,
            watches,
            node: String::new(),
            nack_log: NackLog::default(),
            shutdown,
        }
    }

    /// The stream of responses, each turned into what the transport sends by `wire`.
    pub(crate) fn run<W: Send + 'static>(
        self,
        wire: fn(P::Response, &Encoder) -> W,
    ) -> impl Stream<Item = Result<W, Status>> + Send {
        futures_util::stream::unfold(Some(self), move |pump| async move {
            let mut pump = pump?;
            match pump.next().await {
                Some(Ok(response)) => {
                    let wire = wire(response, &pump.inner.encoder);
                    Some((Ok(wire), Some(pump)))
                }
                // After an error the stream ends: no state is carried on.
                Some(Err(status)) => Some((Err(status), None)),
                None => None,
            }
        })
    }

    /// The next message for the client, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<P::Response, Status>> {
        loop {
            let skip_node = !self.node.is_empty();
            let response = tokio::select! {
                message = self.inbound.message(skip_node) => match message {
                    Ok(Some(req)) => match self.on_request(&req) {
                        Ok(response) => response,
                        Err(status) => return Some(Err(status)),
                    },
                    Ok(None) => {
                        tracing::debug!(node = %self.node, "client closed the stream");
                        return None;
                    }
                    Err(status) => {
                        // A request we cannot read (or the client reset the stream): the
                        // client gets the real status, if it still listens.
                        tracing::debug!(
                            node = %self.node, code = ?status.code(),
                            message = %Untrusted::new(status.message(), 4 * SHOWN_CHARS),
                            "stream ended by a request error"
                        );
                        return Some(Err(status));
                    }
                },
                () = self.shutdown.down() => {
                    tracing::debug!(node = %self.node, "ending the stream: shutting down");
                    return Some(Err(shutting_down()));
                }
                () = self.watches.changed() => {
                    // The session ignores values it already has.
                    for (name, watch) in self.watches.map.iter_mut() {
                        self.session.on_change(name, watch.current());
                    }
                    self.session.take_response()
                }
            };
            if let Some(response) = response {
                self.inner
                    .counters
                    .responses
                    .fetch_add(1, Ordering::Relaxed);
                return Some(Ok(response));
            }
        }
    }

    fn on_request(&mut self, req: &P::Request) -> Result<Option<P::Response>, Status> {
        if self.node.is_empty()
            && let Some(id) = P::node_id(req).filter(|id| !id.is_empty())
        {
            self.node = Untrusted::new(id, SHOWN_CHARS).to_string();
        }
        let (ack, response) = match self.session.on_request(req, &mut self.watches) {
            Ok(answer) => answer,
            Err(refusal) => {
                let status = self.inner.refuse(refusal);
                tracing::warn!(
                    node = %self.node, code = ?status.code(), reason = status.message(),
                    "refusing a request; ending its stream"
                );
                return Err(status);
            }
        };
        match ack {
            Ack::None => {
                tracing::debug!(node = %self.node, names = %self.session.names(), "subscription")
            }
            Ack::Acked { nonce } => {
                tracing::debug!(node = %self.node, nonce = %Untrusted::new(&nonce, SHOWN_CHARS), "ACK")
            }
            Ack::Stale { nonce } => tracing::debug!(
                node = %self.node, nonce = %Untrusted::new(&nonce, SHOWN_CHARS),
                "ignoring stale nonce"
            ),
            Ack::Nacked {
                nonce,
                version,
                rejection,
            } => self.on_nack(&nonce, &version, &rejection),
        }
        Ok(response)
    }

    /// Counts a NACK and logs it: at WARN at most once per `nack_log_interval` on this
    /// stream, with the count of those not logged since; the others at DEBUG.
    fn on_nack(&mut self, nonce: &str, version: &str, rejection: &Rejection) {
        self.inner.counters.nacks.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let due = self
            .nack_log
            .last
            .is_none_or(|last| now.duration_since(last) >= self.inner.limits.nack_log_interval);
        let error = Untrusted::new(&rejection.message, 4 * SHOWN_CHARS);
        let nonce = Untrusted::new(nonce, SHOWN_CHARS);
        if !due {
            self.nack_log.unlogged += 1;
            tracing::debug!(
                node = %self.node, %nonce, version, code = rejection.code, %error, "NACK"
            );
            return;
        }
        let unlogged = std::mem::take(&mut self.nack_log.unlogged);
        self.nack_log.last = Some(now);
        tracing::warn!(
            node = %self.node, names = %self.session.names(), %nonce, version,
            code = rejection.code, %error, unlogged_since_last = unlogged,
            "Envoy rejected (NACK) the secrets sent; it keeps its previous version, \
             and this version will not be resent"
        );
    }
}

impl<P: Protocol, I> Drop for Pump<P, I> {
    fn drop(&mut self) {
        self.inner
            .counters
            .streams_closed
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns a session response into its proto message.
pub(crate) trait IntoWire {
    type Wire: Send + 'static;
    fn into_wire(self, encoder: &Encoder) -> Self::Wire;
}

impl IntoWire for SotwResponse {
    type Wire = DiscoveryResponse;
    fn into_wire(self, encoder: &Encoder) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info,
            resources: self
                .resources
                .iter()
                .filter_map(|(name, secret)| encoder.any(name, secret))
                .collect(),
            canary: false,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: self.nonce,
        }
    }
}

impl IntoWire for DeltaResponse {
    type Wire = DeltaDiscoveryResponse;
    fn into_wire(self, encoder: &Encoder) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: String::new(),
            resources: self
                .resources
                .iter()
                .filter_map(|(name, secret)| {
                    Some(Resource {
                        name: name.as_str().to_owned(),
                        version: secret.version().to_string(),
                        resource: Some(encoder.any(name, secret)?),
                        aliases: Vec::new(),
                    })
                })
                .collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            removed_resources: self.removed.iter().map(|n| n.as_str().to_owned()).collect(),
            nonce: self.nonce,
        }
    }
}

/// The NACK of a request, if it is one. Its message was cut to `MAX_NACK_MESSAGE` bytes
/// while the request was read.
fn rejection(status: Option<&sds_proto::google::rpc::Status>) -> Option<Rejection> {
    status.map(|s| Rejection {
        code: s.code,
        message: s.message.clone(),
    })
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;

    fn new(limits: StreamLimits) -> Self {
        Sotw::new(limits)
    }

    fn node_id(req: &DiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<SotwResponse>), Refusal> {
        let view = SotwRequest {
            version_info: &req.version_info,
            resource_names: &req.resource_names,
            type_url: &req.type_url,
            response_nonce: &req.response_nonce,
            error_detail: rejection(req.error_detail.as_ref()),
        };
        Sotw::on_request(self, &view, subs)
    }

    fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>) {
        Sotw::on_change(self, name, secret)
    }

    fn take_response(&mut self) -> Option<SotwResponse> {
        Sotw::take_response(self)
    }

    fn names(&self) -> String {
        join(Sotw::names(self))
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;

    fn new(limits: StreamLimits) -> Self {
        Delta::new(limits)
    }

    fn node_id(req: &DeltaDiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<DeltaResponse>), Refusal> {
        let view = DeltaRequest {
            type_url: &req.type_url,
            subscribe: &req.resource_names_subscribe,
            unsubscribe: &req.resource_names_unsubscribe,
            initial_resource_versions: req
                .initial_resource_versions
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            response_nonce: &req.response_nonce,
            error_detail: rejection(req.error_detail.as_ref()),
        };
        Delta::on_request(self, &view, subs)
    }

    fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>) {
        Delta::on_change(self, name, secret)
    }

    fn take_response(&mut self) -> Option<DeltaResponse> {
        Delta::take_response(self)
    }

    fn names(&self) -> String {
        join(Delta::names(self))
    }
}

fn join<'a>(names: impl Iterator<Item = &'a SecretName>) -> String {
    names_for_log(names)
}

/// The secrets one stream watches, counted against the server's [`Budget`].
struct Watches {
    inner: Arc<Inner>,
    map: BTreeMap<SecretName, SecretWatch>,
}

impl Subscriptions for Watches {
    fn subscribe(&mut self, name: &SecretName) -> Result<Option<Arc<Secret>>, Refusal> {
        let watch = match self.map.entry(name.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                self.inner
                    .budget
                    .take(name.as_str().len(), &self.inner.limits)
                    .map_err(Refusal::ServerFull)?;
                entry.insert(self.inner.reader.watch(name))
            }
        };
        Ok(watch.current())
    }

    fn unsubscribe(&mut self, name: &SecretName) {
        if self.map.remove(name).is_some() {
            self.inner.budget.give_back(name.as_str().len());
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for name in self.map.keys() {
            self.inner.budget.give_back(name.as_str().len());
        }
    }
}

impl Watches {
    /// Waits until at least one watched secret changed; read them with
    /// [`SecretWatch::current`].
    async fn changed(&mut self) {
        match self.map.len() {
            0 => future::pending().await,
            1 => {
                let Some(watch) = self.map.values_mut().next() else {
                    return;
                };
                if watch.changed().await.is_err() {
                    // The publisher is gone: nothing will ever change again.
                    future::pending::<()>().await;
                }
            }
            _ => {
                let waits = self.map.values_mut().map(|w| {
                    async move {
                        if w.changed().await.is_err() {
                            future::pending::<()>().await;
                        }
                    }
                    .boxed()
                });
                future::select_all(waits).await;
            }
        }
    }
}
