//! The running source: one worker per gRPC stream, each reconnecting with backoff, merged into
//! complete updates.

use std::{future::Future, sync::Arc};

use futures_util::{
    StreamExt as _,
    stream::{self, BoxStream, SelectAll},
};
use sds_core::{SecretName, UnixTime, Update};
use sds_proto::envoy::service::{
    discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    },
    secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, transport::Channel};

use crate::{
    Backoff, Error,
    session::{Delta, Held, HeldMap, MAX_NONCE_LEN, Session, Sotw},
};

/// The generated client over our channel.
pub(crate) type Client = SecretDiscoveryServiceClient<Channel>;

/// What a worker reports.
pub(crate) enum Event {
    /// Worker `.0` now holds `.1`.
    Held(usize, HeldMap),
    /// A connection failure (ambient).
    Failed(Error),
}

/// How a session's stream is opened.
pub(crate) trait Call: Session {
    /// Whether `request` NACKs the response it answers.
    fn is_nack(request: &Self::Request) -> bool;

    /// Opens the stream with `requests` as the request side.
    fn call(
        client: &Client,
        requests: ReceiverStream<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<Self::Response>>, Status>> + Send + 'static;
}

impl Call for Sotw {
    fn is_nack(request: &DiscoveryRequest) -> bool {
        request.error_detail.is_some()
    }

    fn call(
        client: &Client,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<DiscoveryResponse>>, Status>>
    + Send
    + 'static {
        let mut client = client.clone();
        async move { client.stream_secrets(requests).await }
    }
}

impl Call for Delta {
    fn is_nack(request: &DeltaDiscoveryRequest) -> bool {
        request.error_detail.is_some()
    }

    fn call(
        client: &Client,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<DeltaDiscoveryResponse>>, Status>>
    + Send
    + 'static {
        let mut client = client.clone();
        async move { client.delta_secrets(requests).await }
    }
}

/// One gRPC stream and its reconnections.
pub(crate) struct Worker<S: Session> {
    index: usize,
    session: S,
    client: Client,
    endpoint: Arc<str>,
    /// The stream's one secret, if it has one: named in its errors and logs.
    secret: Option<SecretName>,
    backoff: Backoff,
    /// Consecutive failures since the last accepted response.
    failures: u32,
    open: Option<Open<S>>,
}

struct Open<S: Session> {
    requests: mpsc::Sender<S::Request>,
    responses: Streaming<S::Response>,
}

// === impl Worker ===

impl<S: Call> Worker<S> {
    /// Worker `index`, speaking `session` (whose stream has the one name `secret`, if one).
    pub(crate) fn new(
        index: usize,
        session: S,
        client: Client,
        endpoint: Arc<str>,
        secret: Option<SecretName>,
        backoff: Backoff,
    ) -> Self {
        Self {
            index,
            session,
            client,
            endpoint,
            secret,
            backoff,
            failures: 0,
            open: None,
        }
    }

    /// The worker as a stream of events; it never ends.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Event> {
        stream::unfold(self, |mut worker| async move {
            let event = worker.next().await;
            Some((event, worker))
        })
        .boxed()
    }

    /// Waits for the next event: a processed response, or a failure.
    async fn next(&mut self) -> Event {
        loop {
            let Some(open) = self.open.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(self.backoff.delay(self.failures)).await;
                }
                match self.connect().await {
                    Ok(open) => self.open = Some(open),
                    Err(error) => {
                        self.failures = self.failures.saturating_add(1);
                        return Event::Failed(error);
                    }
                }
                continue;
            };
            let error = match open.responses.message().await {
                Ok(Some(response)) => match self.session.on_response(response, UnixTime::now()) {
                    Ok(reply) => {
                        // Only an accepted response ends a run of failures: a server that sends
                        // something bad and hangs up is reconnected to ever more slowly.
                        if !S::is_nack(&reply) {
                            self.failures = 0;
                        }
                        // One request in flight: the next response is not read until the
                        // server took this answer (HTTP/2 flow control), so answers never pile
                        // up. A closed request side shows up as the end of the responses next.
                        let _ = open.requests.send(reply).await;
                        return Event::Held(self.index, self.session.held().clone());
                    }
                    Err(too_long) => Error::NonceTooLong {
                        endpoint: self.endpoint.to_string(),
                        secret: self.secret.clone(),
                        len: too_long.len,
                        max: MAX_NONCE_LEN,
                    },
                },
                Ok(None) => Error::Closed {
                    endpoint: self.endpoint.to_string(),
                    secret: self.secret.clone(),
                },
                Err(status) => Error::Stream {
                    endpoint: self.endpoint.to_string(),
                    secret: self.secret.clone(),
                    source: Box::new(status),
                },
            };
            self.open = None;
            self.failures = self.failures.saturating_add(1);
            return Event::Failed(error);
        }
    }

    /// Opens a stream and queues its first request.
    async fn connect(&mut self) -> Result<Open<S>, Error> {
        let (requests, rx) = mpsc::channel(1);
        // Cannot fail: `rx` is alive and the channel empty.
        let _ = requests.try_send(self.session.first());
        let responses = S::call(&self.client, ReceiverStream::new(rx))
            .await
            .map_err(|status| Error::Connect {
                endpoint: self.endpoint.to_string(),
                secret: self.secret.clone(),
                source: Box::new(status),
            })?
            .into_inner();
        tracing::debug!(
            endpoint = %self.endpoint,
            secret = self.secret.as_ref().map(SecretName::as_str),
            "opened an SDS stream"
        );
        Ok(Open {
            requests,
            responses,
        })
    }
}

/// All the workers of a source, and what each holds.
pub(crate) struct Run {
    workers: SelectAll<BoxStream<'static, Event>>,
    held: Vec<HeldMap>,
}

// === impl Run ===

impl Run {
    pub(crate) fn new(workers: Vec<BoxStream<'static, Event>>) -> Self {
        Self {
            held: vec![HeldMap::new(); workers.len()],
            workers: stream::select_all(workers),
        }
    }

    /// The next item: a complete update after every response, or a failure.
    pub(crate) async fn next(&mut self) -> Option<Result<Update, Error>> {
        match self.workers.next().await? {
            Event::Held(index, held) => {
                if let Some(slot) = self.held.get_mut(index) {
                    *slot = held;
                }
                Some(Ok(self.update()))
            }
            Event::Failed(error) => Some(Err(error)),
        }
    }

    /// Everything every stream holds.
    fn update(&self) -> Update {
        let mut update = Update::new();
        for (name, held) in self.held.iter().flatten() {
            match held {
                Held::Valid(secret) => update.insert_shared(name.clone(), Arc::clone(secret)),
                Held::Rejected(error) => update.reject(name.clone(), error.clone()),
            }
        }
        update
    }
}
