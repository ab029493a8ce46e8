//! The per-stream pump: reads a stream's requests and the changes of the secrets it watches,
//! feeds them to its sans-IO [`session`](crate::session), and encodes what the session
//! decides to send. Runs while the transport polls the response body; spawns nothing.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Instant};

use futures_core::Stream;
use futures_util::{
    FutureExt,
    future::{self, BoxFuture},
};
use sds_core::{Secret, SecretName, SecretWatch, Untrusted};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::sync::atomic::Ordering;
use tonic::Status;

use crate::{
    encode::Encoder,
    framing::Frame,
    limits::ConnectionBudget,
    policy::{Decision, Peer, Policy},
    requests::Inbound,
    service::Inner,
    session::{
        Ack, Delta, DeltaRequest, DeltaResponse, Refusal, Rejection, SHOWN_CHARS, Sotw,
        SotwRequest, SotwResponse, StreamLimits, Subscriptions, parse_names, source_name,
    },
    shutdown::Signal,
    status,
};

/// A session driven by one gRPC stream: the protocol-specific half of [`Pump`].
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + Sync + 'static;
    type Response: Send + 'static;

    /// A new session held to `limits`.
    fn new(limits: StreamLimits) -> Self;

    /// The node id sent with a request, if any.
    fn node_id(req: &Self::Request) -> Option<&str>;
    /// The names a request subscribes to (all of them for state of the world, the new ones
    /// for delta): each is authorized before the session sees the request.
    fn requested(req: &Self::Request) -> &[String];
    fn on_request(
        &mut self,
        req: &Self::Request,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<Self::Response>), Refusal>;
    fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>);
    fn take_response(&mut self) -> Option<Self::Response>;
    /// The names subscribed to: for log context only.
    fn names(&self) -> String;
    /// The frame that carries `response`.
    fn encode(response: &Self::Response, encoder: &Encoder) -> Frame;
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
    /// What the transport proves about the client: what the policy decides for.
    peer: Peer,
    /// Resolves when the policy's decisions may have changed.
    policy_changed: BoxFuture<'static, ()>,
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
    /// A pump for one stream from `peer`; its subscriptions also count against `connection`,
    /// the budget of the connection it came on, if known.
    pub(crate) fn new(
        inner: Arc<Inner>,
        inbound: I,
        connection: Option<Arc<ConnectionBudget>>,
        peer: Peer,
    ) -> Self {
        let session = P::new(inner.stream_limits());
        inner
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        let watches = Watches {
            inner: Arc::clone(&inner),
            connection,
            map: BTreeMap::new(),
            decided: BTreeMap::new(),
        };
        let shutdown = inner.shutdown.signal();
        // Armed before the first decision: a change from then on is seen.
        let policy_changed = inner.policy.changed();
        Self {
            inner,
            inbound,
            session,
            watches,
            node: String::new(),
            peer,
            policy_changed,
            nack_log: NackLog::default(),
            shutdown,
        }
    }

    /// The stream of response frames; ends after an error status.
    pub(crate) fn run(self) -> impl Stream<Item = Result<Frame, Status>> + Send {
        futures_util::stream::unfold(Some(self), |pump| async move {
            let mut pump = pump?;
            match pump.next().await {
                Some(Ok(response)) => {
                    let frame = P::encode(&response, &pump.inner.encoder);
                    Some((Ok(frame), Some(pump)))
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
                    Ok(Some(req)) => match self.on_request(&req).await {
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
                    return Some(Err(status::shutting_down()));
                }
                () = self.watches.changed() => {
                    // The session ignores values it already has.
                    for (name, watched) in self.watches.map.iter_mut() {
                        if let Watched::Granted { watch, .. } = watched {
                            self.session.on_change(name, watch.current());
                        }
                    }
                    self.session.take_response()
                }
                () = &mut self.policy_changed => {
                    self.policy_changed = self.inner.policy.changed();
                    self.decide_again().await;
                    self.session.take_response()
                }
            };
            if let Some(response) = response {
                self.inner
                    .counters
                    .responses
                    .fetch_add(1, Ordering::Relaxed);
                tracing::trace!(node = %self.node, names = %self.session.names(), "response");
                return Some(Ok(response));
            }
        }
    }

    async fn on_request(&mut self, req: &P::Request) -> Result<Option<P::Response>, Status> {
        if self.node.is_empty()
            && let Some(id) = P::node_id(req).filter(|id| !id.is_empty())
        {
            self.node = Untrusted::new(id, SHOWN_CHARS).to_string();
        }
        self.decide_new(P::requested(req)).await;
        let (ack, response) = match self.session.on_request(req, &mut self.watches) {
            Ok(answer) => answer,
            Err(refusal) => {
                let status = self.inner.refuse(refusal);
                match self.inner.warnings.allow() {
                    Some(suppressed) => tracing::warn!(
                        node = %self.node, code = ?status.code(), reason = status.message(),
                        suppressed_since_last = suppressed,
                        "refusing a request; ending its stream"
                    ),
                    None => tracing::debug!(
                        node = %self.node, code = ?status.code(), reason = status.message(),
                        "refusing a request; ending its stream"
                    ),
                }
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

    /// Asks the policy about each name of `requested` this stream does not hold yet, for the
    /// session's subscriptions to use. Names that the session will refuse anyway (over the
    /// stream's limits, invalid) are not asked about.
    async fn decide_new(&mut self, requested: &[String]) {
        self.watches.decided.clear();
        let Ok(names) = parse_names(requested, &self.inner.stream_limits()) else {
            return;
        };
        for name in names {
            if self.watches.map.contains_key(&name) {
                continue;
            }
            let grant = decide(&*self.inner.policy, &self.peer, &name).await;
            if let Err(reason) = &grant {
                self.on_denied(&name, reason, "denied by the policy; not sending it");
            }
            self.watches.decided.insert(name, grant);
        }
    }

    /// Asks the policy again about every name this stream holds, after it changed: a name no
    /// longer allowed is no longer watched (nothing more is pushed), a name now allowed (or
    /// served from another secret) is watched and sent.
    async fn decide_again(&mut self) {
        let names: Vec<SecretName> = self.watches.map.keys().cloned().collect();
        for name in names {
            let grant = decide(&*self.inner.policy, &self.peer, &name).await;
            let Some(watched) = self.watches.map.get_mut(&name) else {
                continue;
            };
            match (&*watched, grant) {
                (Watched::Granted { .. }, Err(reason)) => {
                    *watched = Watched::Denied;
                    self.on_denied(
                        &name,
                        &reason,
                        "no longer allowed by the policy; not sending it any more",
                    );
                }
                (Watched::Granted { from: was, .. }, Ok(from)) if *was == from => {}
                (_, Ok(from)) => {
                    let mut watch = self.inner.reader.watch(&from);
                    let current = watch.current();
                    tracing::info!(
                        node = %self.node, peer = %self.peer, secret = %name, from = %from,
                        "now allowed by the policy; sending it"
                    );
                    *watched = Watched::Granted { from, watch };
                    self.session.on_change(&name, current);
                }
                (Watched::Denied, Err(_)) => {}
            }
        }
    }

    /// Counts and logs a denial: at WARN within the server-wide bound, else at DEBUG.
    fn on_denied(&self, name: &SecretName, reason: &str, what: &'static str) {
        self.inner.counters.denied.fetch_add(1, Ordering::Relaxed);
        let reason = Untrusted::new(reason, 4 * SHOWN_CHARS);
        match self.inner.warnings.allow() {
            Some(suppressed) => tracing::warn!(
                node = %self.node, peer = %self.peer, secret = %name, %reason,
                suppressed_since_last = suppressed, "{what}"
            ),
            None => tracing::debug!(
                node = %self.node, peer = %self.peer, secret = %name, %reason, "{what}"
            ),
        }
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
        // Once per stream and interval, and a few lines a second server-wide.
        let Some(suppressed) = due.then(|| self.inner.warnings.allow()).flatten() else {
            self.nack_log.unlogged += 1;
            tracing::debug!(
                node = %self.node, %nonce, version, code = rejection.code, %error, "NACK"
            );
            return;
        };
        let unlogged = std::mem::take(&mut self.nack_log.unlogged);
        self.nack_log.last = Some(now);
        tracing::warn!(
            node = %self.node, names = %self.session.names(), %nonce, version,
            code = rejection.code, %error, unlogged_on_stream = unlogged,
            suppressed_since_last = suppressed,
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

    fn requested(req: &DiscoveryRequest) -> &[String] {
        &req.resource_names
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
        status::shown_names(Sotw::names(self))
    }

    fn encode(response: &SotwResponse, encoder: &Encoder) -> Frame {
        encoder.sotw(&response.resources, response.version, response.nonce)
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

    fn requested(req: &DeltaDiscoveryRequest) -> &[String] {
        &req.resource_names_subscribe
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
        status::shown_names(Delta::names(self))
    }

    fn encode(response: &DeltaResponse, encoder: &Encoder) -> Frame {
        encoder.delta(&response.resources, &response.removed, response.nonce)
    }
}

/// What a peer may have of a requested name: the secret it is served from, or why not.
pub(crate) type Grant = Result<SecretName, Cow<'static, str>>;

/// Whether `peer` may have the secret a stream asks for as `requested`, and which secret it is
/// served from: the policy decides for the credential (`NAME` for `sds://NAME`); a name
/// `<name>-cacert` is also allowed when `<name>` is (served from the CA of what `<name>` is
/// served from).
pub(crate) async fn decide(policy: &dyn Policy, peer: &Peer, requested: &SecretName) -> Grant {
    let name = source_name(requested);
    let reason = match policy.decide(peer, &name).await {
        Decision::Allow => return Ok(name),
        Decision::AllowAs(served) => return Ok(served),
        Decision::Deny(reason) => reason,
    };
    let Some(credential) = name.strip_cacert() else {
        return Err(reason);
    };
    match policy.decide(peer, &credential).await {
        Decision::Allow => Ok(name),
        Decision::AllowAs(served) => Ok(served.cacert()),
        Decision::Deny(_) => Err(reason),
    }
}

/// The secrets one stream subscribes to, counted against the server's [`Budget`]: watched
/// when the policy allows them, held without a watch when it denies them.
struct Watches {
    inner: Arc<Inner>,
    /// The budget of the stream's connection, if known.
    connection: Option<Arc<ConnectionBudget>>,
    map: BTreeMap<SecretName, Watched>,
    /// The policy's decisions about the names of the request being handled that are not
    /// subscribed yet.
    decided: BTreeMap<SecretName, Grant>,
}

/// One subscribed name.
enum Watched {
    /// Allowed: the secret it is served from is watched, its changes are pushed.
    Granted {
        from: SecretName,
        watch: SecretWatch,
    },
    /// Denied: never sent.
    Denied,
}

impl Subscriptions for Watches {
    fn subscribe(&mut self, name: &SecretName) -> Result<Option<Arc<Secret>>, Refusal> {
        let watched = match self.map.entry(name.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let len = name.as_str().len();
                let limits = &self.inner.limits;
                if let Some(connection) = &self.connection {
                    connection
                        .take_name(len, limits)
                        .map_err(Refusal::ServerFull)?;
                }
                if let Err(exceeded) = self.inner.budget.take(len, limits) {
                    if let Some(connection) = &self.connection {
                        connection.give_back_name(len);
                    }
                    return Err(Refusal::ServerFull(exceeded));
                }
                // Every name of a request was decided before the session saw it; a name that
                // was not (none) is denied.
                let watched = match self.decided.remove(name) {
                    Some(Ok(from)) => Watched::Granted {
                        watch: self.inner.reader.watch(&from),
                        from,
                    },
                    Some(Err(_)) | None => Watched::Denied,
                };
                entry.insert(watched)
            }
        };
        Ok(match watched {
            Watched::Granted { watch, .. } => watch.current(),
            Watched::Denied => None,
        })
    }

    fn unsubscribe(&mut self, name: &SecretName) {
        if self.map.remove(name).is_some() {
            self.give_back(name);
        }
    }
}

impl Watches {
    fn give_back(&self, name: &SecretName) {
        self.inner.budget.give_back(name.as_str().len());
        if let Some(connection) = &self.connection {
            connection.give_back_name(name.as_str().len());
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for name in self.map.keys() {
            self.give_back(name);
        }
    }
}

impl Watches {
    /// Waits until at least one watched secret changed; read them with
    /// [`SecretWatch::current`].
    async fn changed(&mut self) {
        let mut granted = self.map.values_mut().filter_map(|watched| match watched {
            Watched::Granted { watch, .. } => Some(watch),
            Watched::Denied => None,
        });
        match (granted.next(), granted.next()) {
            (None, _) => future::pending().await,
            // The common case (Envoy opens one stream per secret): no allocation.
            (Some(watch), None) => {
                if watch.changed().await.is_err() {
                    future::pending::<()>().await;
                }
            }
            (Some(first), Some(second)) => {
                let waits = [first, second].into_iter().chain(granted).map(wait);
                future::select_all(waits).await;
            }
        }
    }
}

/// Resolves when `watch` changed; never when its publisher is gone (nothing will ever change
/// again).
fn wait(watch: &mut SecretWatch) -> BoxFuture<'_, ()> {
    async move {
        if watch.changed().await.is_err() {
            future::pending::<()>().await;
        }
    }
    .boxed()
}
