//! A model-based property over real gRPC: whatever sequence of complete source updates the
//! server is fed (secrets added, rotated, rejected, removed; in bursts, or with the server
//! quiet in between), every subscribed stream ends, once the server is quiet, holding what a
//! reference of the snapshot rules says is served:
//!
//! - a valid secret in the update is served;
//! - a rejected one keeps the version the previous snapshot served, if any (never the
//!   rejected input: there is none to send), and a name never valid is not served;
//! - a name absent from the update is not served: a delta stream is told it was removed; a
//!   state-of-the-world stream keeps what it has (it cannot be told).
//!
//! Streams: one state-of-the-world stream per name and one delta stream for every name, each
//! ACKing every response. The sequences come from a seeded generator (`SDS_MODEL_SEED=N`
//! runs one more seed); a failure prints the seed and the steps so far.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use sds_core::{CertifiedKey, Input, Secret, SecretName, UnixTime, Update};
use sds_proto::envoy::{
    config::core::v3::Node,
    service::{
        discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest},
        secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
    },
};
use sds_server::{SdsService, policy::AllowAnyPeer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// Credentials per name to rotate among.
const POOL: usize = 3;
const STEPS: usize = 25;
const SEEDS: [u64; 8] = [1, 2, 3, 5, 8, 13, 21, 34];
/// A guard against hanging, not a timing assertion.
const QUIET: Duration = Duration::from_secs(10);

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("a valid name")
}

fn credential(cn: &str) -> CertifiedKey {
    let key = rcgen::KeyPair::generate().expect("keygen");
    let cert = rcgen::CertificateParams::new(vec![format!("{cn}.example.com")])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    CertifiedKey::from_pem(
        &name(cn),
        Input::new("tls.crt", cert.pem().as_bytes()),
        Input::new("tls.key", key.serialize_pem().as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid credential")
}

/// What sds-core says of an input that is not a key.
fn rejection(n: &str) -> sds_core::Error {
    let key = rcgen::KeyPair::generate().expect("keygen");
    let cert = rcgen::CertificateParams::new(vec![format!("{n}.example.com")])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", cert.pem().as_bytes()),
        Input::new(
            "tls.key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        UnixTime::now(),
    )
    .expect_err("not a key")
}

/// xorshift64*: a small, seeded generator (no dependency for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `true` with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What an update says of one name.
#[derive(Clone, Copy, Debug)]
enum Given {
    Valid(usize),
    Rejected,
    Absent,
}

/// The reference: what each name is served as (its pool index), by the snapshot rules.
#[derive(Clone, Debug, Default)]
struct Model {
    served: [Option<usize>; NAMES.len()],
}

impl Model {
    fn apply(&mut self, inputs: &[Given; NAMES.len()]) {
        for (served, input) in self.served.iter_mut().zip(inputs) {
            *served = match input {
                Given::Valid(i) => Some(*i),
                Given::Rejected => *served,
                Given::Absent => None,
            };
        }
    }
}

/// The version each stream holds, by name.
type Held = Arc<Mutex<BTreeMap<String, String>>>;

struct Harness {
    updates: mpsc::Sender<Result<Update, std::io::Error>>,
    pool: Vec<Vec<Arc<Secret>>>,
    /// One per name.
    sotw: Vec<Held>,
    delta: Held,
}

impl Harness {
    async fn start() -> Harness {
        let pool: Vec<Vec<Arc<Secret>>> = NAMES
            .iter()
            .map(|n| (0..POOL).map(|_| Arc::new(credential(n).into())).collect())
            .collect();
        let (updates, rx) = mpsc::channel(64);
        let (reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(driver);
        let sds = SdsService::builder(reader).policy(AllowAnyPeer).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(sds.into_server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let client = SecretDiscoveryServiceClient::new(channel);
        let sotw = NAMES
            .iter()
            .map(|n| sotw_stream(client.clone(), n))
            .collect();
        let delta = delta_stream(client);
        Harness {
            updates,
            pool,
            sotw,
            delta,
        }
    }

    fn version(&self, n: usize, i: usize) -> String {
        self.pool[n][i].version().to_string()
    }

    async fn send(&self, inputs: &[Given; NAMES.len()]) {
        let mut update = Update::new();
        for (n, input) in inputs.iter().enumerate() {
            match input {
                Given::Valid(i) => {
                    update.insert_shared(name(NAMES[n]), Arc::clone(&self.pool[n][*i]))
                }
                Given::Rejected => update.reject(name(NAMES[n]), rejection(NAMES[n])),
                Given::Absent => {}
            }
        }
        self.updates
            .send(Ok(update))
            .await
            .expect("the source is read");
    }

    /// What does not hold yet of what `model` says (empty once every stream agrees).
    fn disagreements(&self, model: &Model) -> Vec<String> {
        let mut wrong = Vec::new();
        let delta = self.delta.lock();
        for (n, served) in model.served.iter().enumerate() {
            let sotw = self.sotw[n].lock();
            match served {
                Some(i) => {
                    let want = self.version(n, *i);
                    if sotw.get(NAMES[n]) != Some(&want) {
                        wrong.push(format!(
                            "sotw {} holds {:?}, not {want}",
                            NAMES[n],
                            sotw.get(NAMES[n])
                        ));
                    }
                    if delta.get(NAMES[n]) != Some(&want) {
                        wrong.push(format!(
                            "delta {} holds {:?}, not {want}",
                            NAMES[n],
                            delta.get(NAMES[n])
                        ));
                    }
                }
                None => {
                    if let Some(held) = delta.get(NAMES[n]) {
                        wrong.push(format!("delta still holds removed {} at {held}", NAMES[n]));
                    }
                    // Whatever a sotw stream holds, it was sent as valid once.
                    if let Some(held) = sotw.get(NAMES[n]) {
                        let known = (0..POOL).any(|i| &self.version(n, i) == held);
                        if !known {
                            wrong.push(format!("sotw {} holds unknown {held}", NAMES[n]));
                        }
                    }
                }
            }
        }
        wrong
    }

    /// Waits until every stream agrees with `model`; what still disagrees after [`QUIET`].
    async fn quiet(&self, model: &Model) -> Result<Duration, Vec<String>> {
        let start = Instant::now();
        loop {
            let wrong = self.disagreements(model);
            if wrong.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > QUIET {
                return Err(wrong);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "model".to_owned(),
        cluster: "model".to_owned(),
        ..Node::default()
    })
}

/// A state-of-the-world stream for `n` that ACKs every response and records the version of
/// each one (a response with one secret carries that secret's version).
fn sotw_stream(mut client: SecretDiscoveryServiceClient<Channel>, n: &str) -> Held {
    let held = Held::default();
    let (tx, rx) = mpsc::channel(16);
    let request = |version: String, nonce: String| DiscoveryRequest {
        version_info: version,
        node: node(),
        resource_names: vec![n.to_owned()],
        type_url: TYPE_URL.to_owned(),
        response_nonce: nonce,
        error_detail: None,
    };
    let first = request(String::new(), String::new());
    let recorded = Arc::clone(&held);
    let n = n.to_owned();
    tokio::spawn(async move {
        tx.send(first).await.expect("send");
        let mut responses = client
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .expect("a stream")
            .into_inner();
        while let Ok(Some(response)) = responses.message().await {
            assert!(
                response.resources.len() <= 1,
                "one name, one secret at most"
            );
            if !response.resources.is_empty() {
                recorded
                    .lock()
                    .insert(n.clone(), response.version_info.clone());
            }
            let ack = DiscoveryRequest {
                version_info: response.version_info,
                node: node(),
                resource_names: vec![n.clone()],
                type_url: TYPE_URL.to_owned(),
                response_nonce: response.nonce,
                error_detail: None,
            };
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    });
    held
}

/// A delta stream for every name that ACKs every response and records each resource's
/// version and each removal.
fn delta_stream(mut client: SecretDiscoveryServiceClient<Channel>) -> Held {
    let held = Held::default();
    let (tx, rx) = mpsc::channel(16);
    let recorded = Arc::clone(&held);
    tokio::spawn(async move {
        let first = DeltaDiscoveryRequest {
            node: node(),
            type_url: TYPE_URL.to_owned(),
            resource_names_subscribe: NAMES.iter().map(|n| (*n).to_owned()).collect(),
            ..DeltaDiscoveryRequest::default()
        };
        tx.send(first).await.expect("send");
        let mut responses = client
            .delta_secrets(ReceiverStream::new(rx))
            .await
            .expect("a stream")
            .into_inner();
        while let Ok(Some(response)) = responses.message().await {
            {
                let mut held = recorded.lock();
                for resource in &response.resources {
                    held.insert(resource.name.clone(), resource.version.clone());
                }
                for removed in &response.removed_resources {
                    held.remove(removed);
                }
            }
            let ack = DeltaDiscoveryRequest {
                type_url: TYPE_URL.to_owned(),
                response_nonce: response.nonce,
                ..DeltaDiscoveryRequest::default()
            };
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    });
    held
}

/// One random sequence: `STEPS` updates, each followed by a wait for quiet or not.
async fn sequence(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let harness = Harness::start().await;
    let mut model = Model::default();
    let mut steps: Vec<String> = Vec::new();
    for step in 0..STEPS {
        let inputs: [Given; NAMES.len()] = std::array::from_fn(|_| match rng.next() % 100 {
            0..15 => Given::Absent,
            15..35 => Given::Rejected,
            _ => Given::Valid((rng.next() % POOL as u64) as usize),
        });
        harness.send(&inputs).await;
        model.apply(&inputs);
        steps.push(format!("{step}: {inputs:?} -> {:?}", model.served));
        // Half the time the server is let go quiet (every intermediate state is checked),
        // half the time the next update follows at once (a burst).
        let quiet = rng.chance(50) || step == STEPS - 1;
        if quiet && let Err(wrong) = harness.quiet(&model).await {
            panic!(
                "seed {seed}: after step {step} the streams disagree with the model:\n  {}\nsteps:\n  {}",
                wrong.join("\n  "),
                steps.join("\n  ")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_ends_where_the_snapshot_rules_say() {
    let extra = std::env::var("SDS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    for seed in SEEDS.into_iter().chain(extra) {
        sequence(seed).await;
    }
}
