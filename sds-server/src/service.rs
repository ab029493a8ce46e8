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
};

use futures_core::Stream;
use futures_util::{FutureExt, future};
use sds_core::{Reader, Secret, SecretName, SecretWatch};
use sds_proto::envoy::service::{
    discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource,
    },
    secret::v3::secret_discovery_service_server::SecretDiscoveryService,
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    encode::Encoder,
    requests::Inbound,
    session::{
        Ack, Delta, DeltaRequest, DeltaResponse, MAX_NAMES_PER_STREAM, Refusal, Rejection,
        SECRET_TYPE_URL, Sotw, SotwRequest, SotwResponse, Subscriptions,
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
    /// Set once by [`SdsService::shutdown`]; every stream watches it.
    shutdown: Arc<Shutdown>,
}

#[derive(Default)]
struct Counters {
    streams_opened: AtomicU64,
    streams_closed: AtomicU64,
    responses: AtomicU64,
    nacks: AtomicU64,
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
}

// === impl SdsService ===

impl SdsService {
    /// Serves the snapshots published to `reader`. Streams wait for the first snapshot.
    pub fn new(reader: Reader) -> Self {
        Self {
            inner: Arc::new(Inner {
                reader,
                encoder: Encoder::default(),
                counters: Counters::default(),
                shutdown: Arc::default(),
            }),
        }
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
    /// [`SecretDiscoveryServer`]). `SecretDiscoveryServiceServer::new(sds)` serves the same
    /// protocol through tonic's own codec.
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

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        self.refuse_when_shutting_down()?;
        let stream = Pump::new(
            Arc::clone(&self.inner),
            request.into_inner(),
            Sotw::default(),
        );
        Ok(Response::new(Box::pin(stream.run(IntoWire::into_wire))))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        self.refuse_when_shutting_down()?;
        let stream = Pump::new(
            Arc::clone(&self.inner),
            request.into_inner(),
            Delta::default(),
        );
        Ok(Response::new(Box::pin(stream.run(IntoWire::into_wire))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL {
            return Err(refusal_status(Refusal::WrongType(req.type_url)));
        }
        let snapshot = self
            .inner
            .reader
            .current()
            .ok_or_else(|| Status::unavailable("no secrets have been loaded yet"))?;
        let mut resources = Vec::new();
        let mut missing = Vec::new();
        let mut versions = Vec::new();
        let names: std::collections::BTreeSet<&String> = req.resource_names.iter().collect();
        if names.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one secret in resource_names",
            ));
        }
        for name in names {
            match snapshot.get(name) {
                Some(secret) => {
                    let name = SecretName::new(name)
                        .map_err(|_| refusal_status(Refusal::InvalidName(name.clone())))?;
                    resources.extend(self.inner.encoder.any(&name, secret));
                    versions.push(secret.version());
                }
                None => missing.push(name.as_str()),
            }
        }
        if resources.is_empty() {
            return Err(Status::not_found(format!(
                "no such secret: {}",
                missing.join(", ")
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

/// Maps a refused request to the status that ends its stream.
fn refusal_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::WrongType(type_url) => Status::invalid_argument(format!(
            "this server only serves {SECRET_TYPE_URL}, not {type_url}"
        )),
        Refusal::InvalidName(name) => {
            let shown: String = name.chars().take(128).collect();
            Status::invalid_argument(format!("invalid secret name \"{shown}\""))
        }
        Refusal::TooManyNames(n) => Status::resource_exhausted(format!(
            "{n} secret names on one stream; at most {MAX_NAMES_PER_STREAM} are served per stream"
        )),
    }
}

/// A session driven by one gRPC stream: the protocol-specific half of [`Pump`].
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The node id sent with a request, if any.
    fn node_id(req: &Self::Request) -> Option<&str>;
    fn on_request(
        &mut self,
        req: &Self::Request,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<Self::Response>), Refusal>;
    fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>);
    fn take_response(&mut self) -> Option<Self::Response>;
    /// Whether the response with this nonce was a NACK target: for log context only.
    fn names(&self) -> String;
}

/// The per-stream pump: reads requests and secret changes, feeds the session, encodes its
/// responses. Runs while tonic polls the response stream; ends when the client goes away.
pub(crate) struct Pump<P: Protocol, I> {
    inner: Arc<Inner>,
    inbound: I,
    session: P,
    watches: Watches,
    node: String,
    /// Resolves on [`SdsService::shutdown`].
    shutdown: Signal,
}

impl<P: Protocol, I: Inbound<P::Request>> Pump<P, I> {
    pub(crate) fn new(inner: Arc<Inner>, inbound: I, session: P) -> Self {
        inner
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        let watches = Watches {
            reader: inner.reader.clone(),
            map: BTreeMap::new(),
        };
        let shutdown = inner.shutdown.signal();
        Self {
            inner,
            inbound,
            session,
            watches,
            node: String::new(),
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
                        tracing::debug!(node = %self.node, %status, "stream ended");
                        return None;
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
        if let Some(id) = P::node_id(req).filter(|id| !id.is_empty() && *id != self.node) {
            self.node = id.to_owned();
        }
        let (ack, response) =
            self.session
                .on_request(req, &mut self.watches)
                .map_err(|refusal| {
                    tracing::warn!(node = %self.node, ?refusal, "refusing request");
                    refusal_status(refusal)
                })?;
        match ack {
            Ack::None => {
                tracing::debug!(node = %self.node, names = %self.session.names(), "subscription")
            }
            Ack::Acked { nonce } => tracing::debug!(node = %self.node, nonce, "ACK"),
            Ack::Stale { nonce } => {
                tracing::debug!(node = %self.node, nonce, "ignoring stale nonce")
            }
            Ack::Nacked {
                nonce,
                version,
                rejection,
            } => {
                self.inner.counters.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node = %self.node, names = %self.session.names(), nonce, version,
                    code = rejection.code, error = %rejection.message,
                    "Envoy rejected (NACK) the secrets sent; it keeps its previous version, \
                     and this version will not be resent"
                );
            }
        }
        Ok(response)
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

fn rejection(status: Option<&sds_proto::google::rpc::Status>) -> Option<Rejection> {
    status.map(|s| Rejection {
        code: s.code,
        message: s.message.clone(),
    })
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;

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
    names.map(SecretName::as_str).collect::<Vec<_>>().join(",")
}

/// The secrets one stream watches.
struct Watches {
    reader: Reader,
    map: BTreeMap<SecretName, SecretWatch>,
}

impl Subscriptions for Watches {
    fn subscribe(&mut self, name: &SecretName) -> Option<Arc<Secret>> {
        self.map
            .entry(name.clone())
            .or_insert_with(|| self.reader.watch(name))
            .current()
    }

    fn unsubscribe(&mut self, name: &SecretName) {
        self.map.remove(name);
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
