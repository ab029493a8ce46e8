//! The per-stream pump: reads a stream's requests and the changes of the secrets it watches,
//! feeds them to its sans-IO [`session`](crate::session), and encodes what the session
//! decides to send. Runs while the transport polls the response body; spawns nothing.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{
    FutureExt,
    future::{self, BoxFuture},
};
use sds_core::{Secret, SecretName, SecretWatch, Untrusted};
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::sync::atomic::Ordering;
use tokio::time::{Instant, Sleep};
use tonic::Status;

use crate::{
    encode::Encoder,
    framing::Frame,
    inventory::Api,
    limits::ConnectionBudget,
    policy::{Decision, Peer, Policy},
    requests::Inbound,
    rollout::{Held, Tracker},
    service::Inner,
    session::{
        Ack, Delta, DeltaRequest, DeltaResponse, NameView, Nonce, Refusal, Rejection, SHOWN_CHARS,
        Sotw, SotwRequest, SotwResponse, StreamLimits, Subscriptions, parse_names, source_name,
    },
    shutdown::Signal,
    status,
    stream::{Stream, Tracked},
};

/// On each stream, at most one INFO line per this interval for subscriptions that add names
/// after the first request; the others are logged at DEBUG and counted in the next one.
const ADDED_NAMES_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A session driven by one gRPC stream: the protocol-specific half of [`Pump`].
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + Sync + 'static;
    type Response: Send + 'static;

    /// The method this protocol serves.
    const API: Api;

    /// A new session held to `limits`.
    fn new(limits: StreamLimits) -> Self;

    /// The node id and cluster sent with a request, if it carries a node.
    fn node(req: &Self::Request) -> Option<(&str, &str)>;
    /// The names a request subscribes to (all of them for state of the world, the new ones
    /// for delta): each is authorized before the session sees the request.
    fn requested(req: &Self::Request) -> &[String];
    /// Handles a request received `at`.
    fn on_request(
        &mut self,
        req: &Self::Request,
        subs: &mut dyn Subscriptions,
        at: SystemTime,
    ) -> Result<(Ack, Option<Self::Response>), Refusal>;
    fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>);
    fn take_response(&mut self) -> Option<Self::Response>;
    /// The names subscribed to: for log context only.
    fn names(&self) -> String;
    /// Whether the session subscribes to `name`.
    fn subscribes(&self, name: &SecretName) -> bool;
    /// Every subscribed name, for [`Client`](crate::inventory::Client).
    fn view(&self) -> impl Iterator<Item = NameView<'_>>;
    /// The secrets a response carries, by name.
    fn carried(response: &Self::Response) -> &[(SecretName, Arc<Secret>)];
    /// A response's nonce.
    fn nonce(response: &Self::Response) -> Nonce;
    /// The frame that carries `response`.
    fn encode(response: &Self::Response, encoder: &Encoder) -> Frame;
}

/// The per-stream pump: reads requests and secret changes, feeds the session, encodes its
/// responses. Runs while tonic polls the response stream; ends when the client goes away.
pub(crate) struct Pump<P: Protocol, I> {
    inner: Arc<Inner>,
    inbound: I,
    /// What the stream shares with the service: peer, claims, session.
    stream: Arc<Stream<P>>,
    /// The stream's key in the service's registry of open streams.
    id: u64,
    watches: Watches,
    /// Resolves when the policy's decisions may have changed.
    policy_changed: BoxFuture<'static, ()>,
    /// NACK logging, at most one WARN line per `Limits::nack_log_interval`.
    nack_log: LogBound,
    /// Subscriptions that add names after the first request: at most one INFO line per
    /// [`ADDED_NAMES_LOG_INTERVAL`].
    added_log: LogBound,
    /// When the stream opened, for the line that says it closed.
    opened: Instant,
    /// Whether the stream's first request was logged at INFO (its end is, then).
    announced: bool,
    /// Whether the client ACKed a response on this stream yet.
    acked: bool,
    /// Why the stream ended, for the line that says so.
    ended: &'static str,
    /// When the first rollout this stream started times out, to log it even if no stream
    /// answers any more (see [`rollout`](crate::rollout)).
    rollout_due: Option<Pin<Box<Sleep>>>,
    /// Resolves on [`SdsService::shutdown`].
    shutdown: Signal,
}

/// When a stream last logged a line of some kind, and how many it has not logged since.
#[derive(Debug, Default)]
struct LogBound {
    last: Option<Instant>,
    unlogged: u64,
}

impl LogBound {
    /// Whether a line may be logged at `now`: none was in the last `interval`.
    fn is_due(&self, now: Instant, interval: Duration) -> bool {
        self.last
            .is_none_or(|last| now.duration_since(last) >= interval)
    }

    /// A line is logged: returns how many were not since the last one.
    fn logged(&mut self, now: Instant) -> u64 {
        self.last = Some(now);
        std::mem::take(&mut self.unlogged)
    }
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
        let stream = Arc::new(Stream::new(peer, session, inner.clock.now()));
        let id = inner
            .clients
            .insert(Arc::clone(&stream) as Arc<dyn Tracked>);
        inner
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        inner.counters.open[P::API as usize].fetch_add(1, Ordering::Relaxed);
        let watches = Watches {
            inner: Arc::clone(&inner),
            connection,
            map: BTreeMap::new(),
            decided: BTreeMap::new(),
            added: Vec::new(),
        };
        let shutdown = inner.shutdown.signal();
        // Armed before the first decision: a change from then on is seen.
        let policy_changed = inner.policy.changed();
        Self {
            inner,
            inbound,
            stream,
            id,
            watches,
            policy_changed,
            nack_log: LogBound::default(),
            added_log: LogBound::default(),
            opened: Instant::now(),
            announced: false,
            acked: false,
            ended: "reset, or its connection closed",
            rollout_due: None,
            shutdown,
        }
    }

    /// The stream of response frames; ends after an error status.
    pub(crate) fn run(self) -> impl futures_core::Stream<Item = Result<Frame, Status>> + Send {
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

    /// The node id the client claims, escaped, for logs.
    fn node(&self) -> &str {
        self.stream.node_id()
    }

    /// The subscribed names, shown for logs.
    fn names(&self) -> String {
        self.stream.state().session.names()
    }

    /// The next message for the client, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<P::Response, Status>> {
        loop {
            let skip_node = self.stream.claimed();
            let response = tokio::select! {
                message = self.inbound.message(skip_node) => match message {
                    Ok(Some(req)) => match self.authorize_new(&req).await.on_request(&req) {
                        Ok(response) => response,
                        Err(status) => {
                            self.ended = "a refused request";
                            return Some(Err(status));
                        }
                    },
                    Ok(None) => {
                        tracing::debug!(node = %self.node(), "client closed the stream");
                        self.ended = "the client closed it";
                        return None;
                    }
                    Err(status) => {
                        // A request we cannot read (or the client reset the stream): the
                        // client gets the real status, if it still listens.
                        tracing::debug!(
                            node = %self.node(), code = ?status.code(),
                            message = %Untrusted::new(status.message(), 4 * SHOWN_CHARS),
                            "stream ended by a request error"
                        );
                        self.ended = "a request error or reset";
                        return Some(Err(status));
                    }
                },
                () = self.shutdown.down() => {
                    tracing::debug!(node = %self.node(), "ending the stream: shutting down");
                    self.ended = "the server shutting down";
                    return Some(Err(status::shutting_down()));
                }
                () = self.watches.changed() => {
                    // The session ignores values it already has.
                    let mut state = self.stream.state();
                    for (name, watched) in self.watches.map.iter_mut() {
                        if let Watched::Granted { watch, .. } = watched {
                            state.session.on_change(name, watch.current());
                        }
                    }
                    state.session.take_response()
                }
                () = &mut self.policy_changed => {
                    self.policy_changed = self.inner.policy.changed();
                    // Boxed, as `authorize_new`: rare, and kept out of every stream's state.
                    Box::pin(self.decide_again()).await;
                    self.stream.state().session.take_response()
                }
                () = due(&mut self.rollout_due) => {
                    self.expire_rollouts();
                    None
                }
            };
            if let Some(response) = response {
                self.on_sent(&response);
                return Some(Ok(response));
            }
        }
    }

    /// Counts and logs a response about to be sent, and tells the secrets' rollouts.
    fn on_sent(&mut self, response: &P::Response) {
        self.inner
            .counters
            .responses
            .fetch_add(1, Ordering::Relaxed);
        let carried = P::carried(response);
        tracing::debug!(
            node = %self.node(), nonce = %P::nonce(response),
            secrets = %status::ShownVersions(carried), "sent"
        );
        let now = Instant::now();
        let rollouts = &self.inner.rollouts;
        for (name, secret) in carried {
            let Some(Watched::Granted {
                from,
                tracker,
                held,
                ..
            }) = self.watches.map.get_mut(name)
            else {
                continue;
            };
            let new = tracker.is_none();
            let tracker = tracker.get_or_insert_with(|| rollouts.join(from));
            if let Some(timeout) = tracker.pushed(held, new, secret.version(), now) {
                match &mut self.rollout_due {
                    Some(due) if due.deadline() <= timeout => {}
                    Some(due) => due.as_mut().reset(timeout),
                    None => self.rollout_due = Some(Box::pin(tokio::time::sleep_until(timeout))),
                }
            }
        }
    }

    /// Logs the rollouts of this stream's secrets whose time is up; waits for the next one.
    fn expire_rollouts(&mut self) {
        let now = Instant::now();
        let next = self
            .watches
            .map
            .values()
            .filter_map(|watched| match watched {
                Watched::Granted {
                    tracker: Some(tracker),
                    ..
                } => tracker.expire(now),
                _ => None,
            })
            .min();
        self.rollout_due = next.map(|at| Box::pin(tokio::time::sleep_until(at)));
    }

    /// Asks the policy about the names of `req` this stream does not hold yet, if any: most
    /// requests (ACKs, NACKs) name none, and cost one map lookup per name. The wait for the
    /// policy is boxed, so that what every idle stream keeps (its pump's future) does not
    /// hold room for it.
    async fn authorize_new(&mut self, req: &P::Request) -> &mut Self {
        let requested = P::requested(req);
        if requested
            .iter()
            .any(|name| !self.watches.map.contains_key(name.as_str()))
        {
            Box::pin(self.decide_new(requested)).await;
        }
        self
    }

    fn on_request(&mut self, req: &P::Request) -> Result<Option<P::Response>, Status> {
        if !self.stream.claimed()
            && let Some((id, cluster)) =
                P::node(req).filter(|(id, cluster)| !id.is_empty() || !cluster.is_empty())
        {
            self.stream.claim(id, cluster);
        }
        let answer = {
            let mut state = self.stream.state();
            let answer = state
                .session
                .on_request(req, &mut self.watches, self.inner.clock.now());
            // Denials are kept for subscribed names only.
            let state = &mut *state;
            if !state.denied.is_empty() {
                state
                    .denied
                    .retain(|name, _| state.session.subscribes(name));
            }
            answer
        };
        // Decisions for names the session did not subscribe to (a refused request) go.
        self.watches.decided.clear();
        let (ack, response) = match answer {
            Ok(answer) => answer,
            Err(refusal) => {
                let status = self.inner.refuse(refusal);
                match self.inner.warnings.allow() {
                    Some(suppressed) => tracing::warn!(
                        node = %self.node(), code = ?status.code(), reason = status.message(),
                        suppressed_since_last = suppressed,
                        "refusing a request; ending its stream"
                    ),
                    None => tracing::debug!(
                        node = %self.node(), code = ?status.code(), reason = status.message(),
                        "refusing a request; ending its stream"
                    ),
                }
                return Err(status);
            }
        };
        self.log_subscription(&ack);
        match ack {
            Ack::None => {}
            Ack::Acked { nonce } => self.on_ack(&nonce),
            Ack::Stale { nonce } => tracing::debug!(
                node = %self.node(), nonce = %Untrusted::new(&nonce, SHOWN_CHARS),
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

    /// Logs what a request did to the stream's subscriptions: the first request at INFO;
    /// later ones that add names at INFO at most once per [`ADDED_NAMES_LOG_INTERVAL`], the
    /// others at DEBUG.
    fn log_subscription(&mut self, ack: &Ack) {
        let added = std::mem::take(&mut self.watches.added);
        if !self.announced {
            self.announced = true;
            tracing::info!(
                peer = %self.stream.peer, node = %self.node(), cluster = %self.stream.cluster(),
                api = %P::API, names = %self.names(), "client subscribed"
            );
            return;
        }
        if added.is_empty() {
            if *ack == Ack::None {
                tracing::debug!(node = %self.node(), names = %self.names(), "subscription");
            }
            return;
        }
        let now = Instant::now();
        let added = status::shown_names(added.iter());
        if self.added_log.is_due(now, ADDED_NAMES_LOG_INTERVAL) {
            let unlogged = self.added_log.logged(now);
            tracing::info!(
                peer = %self.stream.peer, node = %self.node(), %added, names = %self.names(),
                unlogged_on_stream = unlogged, "client subscribed to more names"
            );
        } else {
            self.added_log.unlogged += 1;
            tracing::debug!(
                node = %self.node(), %added, names = %self.names(),
                "client subscribed to more names"
            );
        }
    }

    /// Logs an ACK: the stream's first at INFO (its client holds what it asked for), the
    /// others (rotations: see [`rollout`](crate::rollout) for their summary) at DEBUG.
    fn on_ack(&mut self, nonce: &str) {
        if self.acked {
            tracing::debug!(node = %self.node(), nonce = %Untrusted::new(nonce, SHOWN_CHARS), "ACK");
            return;
        }
        self.acked = true;
        let acked = status::shown_acked(self.stream.state().session.view());
        tracing::info!(
            peer = %self.stream.peer, node = %self.node(), secrets = %acked,
            "client ACKed its first response on this stream"
        );
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
            let grant = decide(&*self.inner.policy, &self.stream.peer, &name).await;
            if let Err(reason) = &grant {
                self.stream
                    .state()
                    .denied
                    .insert(name.clone(), reason.clone());
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
            let grant = decide(&*self.inner.policy, &self.stream.peer, &name).await;
            match self.watches.apply(&name, grant) {
                Change::None => {}
                Change::Denied { reason, newly } => {
                    self.stream
                        .state()
                        .denied
                        .insert(name.clone(), reason.clone());
                    if newly {
                        self.on_denied(
                            &name,
                            &reason,
                            "no longer allowed by the policy; not sending it any more",
                        );
                    }
                }
                Change::Allowed { from, current } => {
                    tracing::info!(
                        node = %self.node(), peer = %self.stream.peer, secret = %name,
                        from = %from, "now allowed by the policy; sending it"
                    );
                    let mut state = self.stream.state();
                    state.denied.remove(&name);
                    state.session.on_change(&name, current);
                }
            }
        }
    }

    /// Counts and logs a denial: at WARN within the server-wide bound, else at DEBUG.
    fn on_denied(&self, name: &SecretName, reason: &str, what: &'static str) {
        self.inner.counters.denied.fetch_add(1, Ordering::Relaxed);
        let reason = Untrusted::new(reason, 4 * SHOWN_CHARS);
        match self.inner.warnings.allow() {
            Some(suppressed) => tracing::warn!(
                node = %self.node(), peer = %self.stream.peer, secret = %name, %reason,
                suppressed_since_last = suppressed, "{what}"
            ),
            None => tracing::debug!(
                node = %self.node(), peer = %self.stream.peer, secret = %name, %reason, "{what}"
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
            .is_due(now, self.inner.limits.nack_log_interval);
        let error = Untrusted::new(&rejection.message, 4 * SHOWN_CHARS);
        let nonce = Untrusted::new(nonce, SHOWN_CHARS);
        // Once per stream and interval, and a few lines a second server-wide.
        let Some(suppressed) = due.then(|| self.inner.warnings.allow()).flatten() else {
            self.nack_log.unlogged += 1;
            tracing::debug!(
                node = %self.node(), %nonce, version, code = rejection.code, %error, "NACK"
            );
            return;
        };
        let unlogged = self.nack_log.logged(now);
        tracing::warn!(
            node = %self.node(), names = %self.names(), %nonce, version,
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
        self.inner.counters.open[P::API as usize].fetch_sub(1, Ordering::Relaxed);
        self.inner.clients.remove(self.id);
        // Whole milliseconds: `12.345s`.
        let lived = self.opened.elapsed();
        let lived = Duration::from_millis(u64::try_from(lived.as_millis()).unwrap_or(u64::MAX));
        let node = self.stream.node_id();
        if self.announced {
            tracing::info!(
                peer = %self.stream.peer, %node, api = %P::API, ?lived, reason = self.ended,
                "stream closed"
            );
        } else {
            tracing::debug!(
                peer = %self.stream.peer, %node, api = %P::API, ?lived, reason = self.ended,
                "stream closed before its first request"
            );
        }
    }
}

/// Resolves when `sleep` does; never without one.
async fn due(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.as_mut().await,
        None => future::pending().await,
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
    const API: Api = Api::Sotw;

    fn new(limits: StreamLimits) -> Self {
        Sotw::new(limits)
    }

    fn node(req: &DiscoveryRequest) -> Option<(&str, &str)> {
        req.node
            .as_ref()
            .map(|n| (n.id.as_str(), n.cluster.as_str()))
    }

    fn requested(req: &DiscoveryRequest) -> &[String] {
        &req.resource_names
    }

    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        subs: &mut dyn Subscriptions,
        at: SystemTime,
    ) -> Result<(Ack, Option<SotwResponse>), Refusal> {
        let view = SotwRequest {
            version_info: &req.version_info,
            resource_names: &req.resource_names,
            type_url: &req.type_url,
            response_nonce: &req.response_nonce,
            error_detail: rejection(req.error_detail.as_ref()),
            at,
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

    fn subscribes(&self, name: &SecretName) -> bool {
        Sotw::subscribes(self, name)
    }

    fn view(&self) -> impl Iterator<Item = NameView<'_>> {
        Sotw::view(self)
    }

    fn carried(response: &SotwResponse) -> &[(SecretName, Arc<Secret>)] {
        &response.resources
    }

    fn nonce(response: &SotwResponse) -> Nonce {
        response.nonce
    }

    fn encode(response: &SotwResponse, encoder: &Encoder) -> Frame {
        encoder.sotw(&response.resources, response.version, response.nonce)
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const API: Api = Api::Delta;

    fn new(limits: StreamLimits) -> Self {
        Delta::new(limits)
    }

    fn node(req: &DeltaDiscoveryRequest) -> Option<(&str, &str)> {
        req.node
            .as_ref()
            .map(|n| (n.id.as_str(), n.cluster.as_str()))
    }

    fn requested(req: &DeltaDiscoveryRequest) -> &[String] {
        &req.resource_names_subscribe
    }

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        subs: &mut dyn Subscriptions,
        at: SystemTime,
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
            at,
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

    fn subscribes(&self, name: &SecretName) -> bool {
        Delta::subscribes(self, name)
    }

    fn view(&self) -> impl Iterator<Item = NameView<'_>> {
        Delta::view(self)
    }

    fn carried(response: &DeltaResponse) -> &[(SecretName, Arc<Secret>)] {
        &response.resources
    }

    fn nonce(response: &DeltaResponse) -> Nonce {
        response.nonce
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
    /// The names the request being handled subscribed to that the stream did not hold.
    added: Vec<SecretName>,
}

/// One subscribed name.
enum Watched {
    /// Allowed: the secret it is served from is watched and its changes are pushed; once it
    /// was sent, its rollouts count this subscription.
    Granted {
        from: SecretName,
        watch: SecretWatch,
        tracker: Option<Arc<Tracker>>,
        /// Where it stands in the rollouts of its secret.
        held: Held,
    },
    /// Denied: never sent.
    Denied,
}

/// What a new decision of the policy changed for a subscribed name.
enum Change {
    None,
    /// Denied: newly (it was allowed) or again.
    Denied {
        reason: Cow<'static, str>,
        newly: bool,
    },
    /// Allowed now, or served from another secret: its current value.
    Allowed {
        from: SecretName,
        current: Option<Arc<Secret>>,
    },
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
                        tracker: None,
                        held: Held::default(),
                        from,
                    },
                    Some(Err(_)) | None => Watched::Denied,
                };
                self.added.push(name.clone());
                entry.insert(watched)
            }
        };
        Ok(match watched {
            Watched::Granted { watch, .. } => watch.current(),
            Watched::Denied => None,
        })
    }

    fn unsubscribe(&mut self, name: &SecretName) {
        if let Some(watched) = self.map.remove(name) {
            self.release(watched);
            self.give_back(name);
        }
    }

    fn answered(&mut self, name: &SecretName, version: sds_core::Version, accepted: bool) {
        if let Some(Watched::Granted {
            tracker: Some(tracker),
            held,
            ..
        }) = self.map.get_mut(name)
        {
            tracker.answered(held, version, accepted, Instant::now());
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

    /// Ends what a subscription held: its place in its secret's rollouts.
    fn release(&self, watched: Watched) {
        if let Watched::Granted {
            tracker: Some(tracker),
            held,
            ..
        } = watched
        {
            self.inner.rollouts.leave(&tracker, held, Instant::now());
        }
    }

    /// Applies a new decision of the policy about the subscribed `name`.
    fn apply(&mut self, name: &SecretName, grant: Grant) -> Change {
        let Some(watched) = self.map.get_mut(name) else {
            return Change::None;
        };
        let (old, change) = match (&*watched, grant) {
            (Watched::Denied, Err(reason)) => {
                return Change::Denied {
                    reason,
                    newly: false,
                };
            }
            (Watched::Granted { from: was, .. }, Ok(from)) if *was == from => return Change::None,
            (Watched::Granted { .. }, Err(reason)) => (
                std::mem::replace(watched, Watched::Denied),
                Change::Denied {
                    reason,
                    newly: true,
                },
            ),
            (_, Ok(from)) => {
                let mut watch = self.inner.reader.watch(&from);
                let current = watch.current();
                let granted = Watched::Granted {
                    from: from.clone(),
                    watch,
                    tracker: None,
                    held: Held::default(),
                };
                (
                    std::mem::replace(watched, granted),
                    Change::Allowed { from, current },
                )
            }
        };
        self.release(old);
        change
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for (name, watched) in std::mem::take(&mut self.map) {
            self.release(watched);
            self.give_back(&name);
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
