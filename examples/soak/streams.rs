//! The soak's clients: SDS streams that behave as Envoy's do (one secret per stream, every
//! response ACKed, reconnecting with backoff and jitter and resubscribing with the version
//! held) and judge every secret they are sent against what the soak wrote.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use prost::Message as _;
use sds::proto::envoy::{
    config::core::v3::{DataSource, Node, data_source},
    extensions::transport_sockets::tls::v3::{Secret, secret},
    service::{
        discovery::v3::{DiscoveryRequest, DiscoveryResponse},
        secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
    },
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::credentials::{Credentials, Verdict};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Held by a stream that has not received a good pair yet.
const NONE: u64 = u64::MAX;

/// What every stream shares: counters and each stream's state.
pub(crate) struct Shared {
    pub(crate) credentials: Arc<Credentials>,
    /// Per stream: the generation of the good pair it holds, or [`NONE`].
    held: Vec<AtomicU64>,
    /// Per stream: the server epoch of the last response it received.
    seen_epoch: Vec<AtomicU64>,
    /// The current server's epoch, bumped at each restart.
    pub(crate) epoch: AtomicU64,
    pub(crate) responses: AtomicU64,
    /// Secrets pushed that were never written as a good pair for the name.
    pub(crate) bad: AtomicU64,
    /// Good pairs older than one the stream already held.
    pub(crate) regressions: AtomicU64,
    /// Streams that ended (server gone, reset) and were opened again.
    pub(crate) reconnects: AtomicU64,
    /// The first few bad pushes, described (never their key).
    pub(crate) bad_examples: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    pub(crate) fn new(credentials: Arc<Credentials>, streams: usize) -> Arc<Shared> {
        Arc::new(Shared {
            credentials,
            held: (0..streams).map(|_| AtomicU64::new(NONE)).collect(),
            seen_epoch: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            regressions: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            bad_examples: Mutex::default(),
            stop: AtomicBool::new(false),
        })
    }

    /// The streams that do not hold the latest good pair of their name.
    pub(crate) fn behind(&self, names: &[String]) -> usize {
        self.held
            .iter()
            .enumerate()
            .filter(|(i, held)| {
                let latest = self.credentials.latest(&names[i % names.len()]);
                held.load(Ordering::Relaxed) != latest
            })
            .count()
    }

    /// The streams of `name` that do not hold its latest good pair (stream `i` has the name
    /// `names[i % names.len()]`).
    pub(crate) fn behind_on(&self, name: &str, names: &[String]) -> usize {
        let latest = self.credentials.latest(name);
        self.held
            .iter()
            .enumerate()
            .filter(|(i, held)| {
                names[i % names.len()] == name && held.load(Ordering::Relaxed) != latest
            })
            .count()
    }

    /// The streams that have not heard from the current server yet.
    pub(crate) fn not_back(&self) -> usize {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.seen_epoch
            .iter()
            .filter(|e| e.load(Ordering::Relaxed) != epoch)
            .count()
    }

    fn bad_push(&self, what: String) {
        self.bad.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.bad_examples.lock();
        if examples.len() < 10 {
            examples.push(what);
        }
    }
}

/// The open streams, one task each.
pub(crate) struct Streams {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Streams {
    /// Opens stream `i` for name `i % names.len()`, `per_connection` streams per channel.
    pub(crate) fn open(
        channels: &[Channel],
        per_connection: usize,
        names: &[String],
        shared: &Arc<Shared>,
    ) -> Streams {
        let tasks = (0..shared.held.len())
            .map(|i| {
                let channel = channels[(i / per_connection) % channels.len()].clone();
                let name = names[i % names.len()].clone();
                tokio::spawn(run(channel, i, name, Arc::clone(shared)))
            })
            .collect();
        Streams {
            shared: Arc::clone(shared),
            tasks,
        }
    }

    /// Ends every stream.
    pub(crate) async fn close(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One stream for its whole life: sessions one after another, as Envoy reconnects.
async fn run(channel: Channel, index: usize, name: String, shared: Arc<Shared>) {
    let mut version = String::new();
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.load(Ordering::Relaxed) {
        if session(&channel, index, &name, &mut version, &shared).await {
            backoff = Duration::from_millis(100);
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        // Jitter: between half and all of the backoff, spread by the stream's index.
        let jitter = backoff / 2 + backoff / 2 * ((index as u32 * 7919) % 100) / 100;
        tokio::time::sleep(jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn request(name: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(Node {
            id: "soak".to_owned(),
            cluster: "soak".to_owned(),
            ..Node::default()
        }),
        resource_names: vec![name.to_owned()],
        type_url: SECRET_TYPE.to_owned(),
        response_nonce: nonce.to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// One stream until it ends; whether any response arrived.
async fn session(
    channel: &Channel,
    index: usize,
    name: &str,
    version: &mut String,
    shared: &Shared,
) -> bool {
    let (tx, rx) = mpsc::channel(4);
    if tx.send(request(name, version, "")).await.is_err() {
        return false;
    }
    let mut client = SecretDiscoveryServiceClient::new(channel.clone());
    let Ok(response) = client.stream_secrets(ReceiverStream::new(rx)).await else {
        return false;
    };
    let mut inbound = response.into_inner();
    let mut answered = false;
    while let Ok(Some(response)) = inbound.message().await {
        answered = true;
        shared.responses.fetch_add(1, Ordering::Relaxed);
        shared.seen_epoch[index].store(shared.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        judge(index, name, &response, shared);
        *version = response.version_info.clone();
        if tx
            .send(request(name, version, &response.nonce))
            .await
            .is_err()
        {
            break;
        }
    }
    answered
}

/// Checks a response's one secret against what the soak wrote, and records what the stream
/// now holds.
fn judge(index: usize, name: &str, response: &DiscoveryResponse, shared: &Shared) {
    let [resource] = response.resources.as_slice() else {
        shared.bad_push(format!(
            "{name}: {} resources in one response",
            response.resources.len()
        ));
        return;
    };
    let secret = match Secret::decode(resource.value.clone()) {
        Ok(secret) if secret.name == name => secret,
        Ok(secret) => return shared.bad_push(format!("{name}: sent {:?}", secret.name)),
        Err(e) => return shared.bad_push(format!("{name}: undecodable: {e}")),
    };
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        return shared.bad_push(format!("{name}: not a TlsCertificate"));
    };
    let (Some(chain), Some(key)) = (inline(tls.certificate_chain), inline(tls.private_key)) else {
        return shared.bad_push(format!("{name}: a chain or key not inline"));
    };
    match shared.credentials.judge(name, &chain, &key) {
        Verdict::Good(generation) => {
            let held = shared.held[index].swap(generation, Ordering::Relaxed);
            if held != NONE && held > generation {
                shared.regressions.fetch_add(1, Ordering::Relaxed);
            }
        }
        Verdict::Bad => shared.bad_push(format!(
            "{name}: version {} is no good pair written for it",
            response.version_info
        )),
    }
}

fn inline(source: Option<DataSource>) -> Option<Vec<u8>> {
    match source?.specifier? {
        data_source::Specifier::InlineBytes(bytes) => Some(bytes.to_vec()),
        data_source::Specifier::InlineString(s) => Some(s.into_bytes()),
        _ => None,
    }
}
