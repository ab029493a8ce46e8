//! A protocol-level SDS server for the tests, written from the xDS protocol description (not
//! `sds-server`): it records every request and answers as a simple control plane does.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use sds_core::{Reader, Secret, Snapshot};
use sds_proto::{
    SECRET_TYPE_URL,
    envoy::{
        config::core::v3::{DataSource, data_source::Specifier},
        extensions::transport_sockets::tls::v3 as tls,
        service::{
            discovery::v3::{
                DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
                Resource,
            },
            secret::v3::secret_discovery_service_server::{
                SecretDiscoveryService, SecretDiscoveryServiceServer,
            },
        },
    },
    google::protobuf::Any,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::{
    Stream,
    wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream},
};
use tonic::{Request, Response, Status, Streaming};

/// A guard against hangs only; no test asserts on time.
pub const WAIT: Duration = Duration::from_secs(20);

/// Changes a state-of-the-world response just before it is sent (a misbehaving server).
pub type SotwTamper = Arc<dyn Fn(&mut DiscoveryResponse) + Send + Sync>;

/// Changes a delta response just before it is sent (a misbehaving server).
pub type DeltaTamper = Arc<dyn Fn(&mut DeltaDiscoveryResponse) + Send + Sync>;

/// Any request the upstream received.
#[derive(Clone, Debug)]
pub enum Received {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

#[derive(Default)]
pub struct State {
    /// name -> (per-resource version, encoded Secret).
    pub secrets: BTreeMap<String, (String, Bytes)>,
    /// Every request, in order.
    pub received: Vec<Received>,
    /// Every state-of-the-world response sent: (version_info, nonce).
    pub sent: Vec<(String, String)>,
    /// Applied to every state-of-the-world response before it is sent.
    sotw_tamper: Option<SotwTamper>,
    /// Applied to every delta response before it is sent.
    delta_tamper: Option<DeltaTamper>,
    generation: u64,
    nonce: u64,
}

struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    kill: watch::Sender<u64>,
}

/// The test server's state, shared by its incarnations (restarts).
#[derive(Clone)]
pub struct Upstream(Arc<Inner>);

impl Upstream {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            kill: watch::channel(0).0,
        }))
    }

    /// Serves `secret` under its name, with per-resource `version`.
    pub fn set(&self, secret: tls::Secret, version: &str) {
        let mut state = self.0.state.lock();
        state.generation += 1;
        state.secrets.insert(
            secret.name.clone(),
            (version.to_owned(), Bytes::from(secret.encode_to_vec())),
        );
        drop(state);
        self.0.changed.send_modify(|g| *g += 1);
    }

    pub fn remove(&self, name: &str) {
        let mut state = self.0.state.lock();
        state.generation += 1;
        state.secrets.remove(name);
        drop(state);
        self.0.changed.send_modify(|g| *g += 1);
    }

    /// Sends every state-of-the-world response through `tamper` first (`None`: as built).
    pub fn tamper_sotw(&self, tamper: Option<SotwTamper>) {
        self.0.state.lock().sotw_tamper = tamper;
    }

    /// Sends every delta response through `tamper` first (`None`: as built).
    pub fn tamper_delta(&self, tamper: Option<DeltaTamper>) {
        self.0.state.lock().delta_tamper = tamper;
    }

    /// Sends the state of the world again, unchanged, on every stream (a new version and
    /// nonce): a server that repeats itself.
    pub fn resend(&self) {
        self.0.state.lock().generation += 1;
        self.0.changed.send_modify(|g| *g += 1);
    }

    pub fn received(&self) -> Vec<Received> {
        self.0.state.lock().received.clone()
    }

    pub fn sent(&self) -> Vec<(String, String)> {
        self.0.state.lock().sent.clone()
    }

    /// Waits until `found` finds something in the requests received.
    pub async fn until<T>(&self, what: &str, found: impl Fn(&[Received]) -> Option<T>) -> T {
        let mut changed = self.0.changed.subscribe();
        let wait = async {
            loop {
                if let Some(t) = found(&self.0.state.lock().received) {
                    return t;
                }
                let _ = changed.changed().await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("never received: {what}; got {:#?}", self.received()))
    }

    fn record(&self, received: Received) {
        self.0.state.lock().received.push(received);
        self.0.changed.send_modify(|g| *g += 1);
    }

    /// Serves on the Unix socket `path` until restarted or dropped.
    pub fn serve_unix(&self, path: &Path) -> Served {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("binds the socket");
        self.serve(
            Incoming::Unix(UnixListenerStream::new(listener)),
            Some(path.to_owned()),
        )
    }

    /// Serves on 127.0.0.1 (port `port`, 0 for any).
    pub async fn serve_tcp(&self, port: u16) -> (std::net::SocketAddr, Served) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        (
            addr,
            self.serve(Incoming::Tcp(TcpListenerStream::new(listener)), None),
        )
    }

    fn serve(&self, incoming: Incoming, path: Option<PathBuf>) -> Served {
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(self.clone()));
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = match incoming {
            Incoming::Unix(incoming) => tokio::spawn(async move {
                let _ = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await;
            }),
            Incoming::Tcp(incoming) => tokio::spawn(async move {
                let _ = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await;
            }),
        };
        Served {
            upstream: self.clone(),
            stop: Some(stop),
            task,
            path,
        }
    }

    fn stream_state(&self) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        let mut kill = self.0.kill.subscribe();
        kill.borrow_and_update();
        (self.0.changed.subscribe(), kill)
    }

    fn next_nonce(state: &mut State) -> String {
        state.nonce += 1;
        format!("nonce-{}", state.nonce)
    }
}

enum Incoming {
    Unix(UnixListenerStream),
    Tcp(TcpListenerStream),
}

/// A running incarnation of the server.
pub struct Served {
    upstream: Upstream,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    path: Option<PathBuf>,
}

impl Served {
    /// Ends every stream with an error and stops the server.
    pub async fn stop(mut self) {
        self.upstream.0.kill.send_modify(|k| *k += 1);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(WAIT, &mut self.task).await.is_err() {
            self.task.abort();
        }
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Upstream {
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let upstream = self.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let (mut changed, mut kill) = upstream.stream_state();
            let mut names: Option<Vec<String>> = None;
            let mut sent_generation = None;
            loop {
                if let Some(names) = &names {
                    let response = {
                        let mut state = upstream.0.state.lock();
                        if sent_generation == Some(state.generation) {
                            None
                        } else {
                            sent_generation = Some(state.generation);
                            let resources: Vec<Any> = names
                                .iter()
                                .filter_map(|n| state.secrets.get(n))
                                .map(|(_, bytes)| Any {
                                    type_url: SECRET_TYPE_URL.to_owned(),
                                    value: bytes.clone(),
                                })
                                .collect();
                            let version = format!("v{}", state.generation);
                            let nonce = Upstream::next_nonce(&mut state);
                            (!resources.is_empty()).then(|| {
                                let mut response = DiscoveryResponse {
                                    version_info: version,
                                    resources,
                                    canary: false,
                                    type_url: SECRET_TYPE_URL.to_owned(),
                                    nonce,
                                };
                                if let Some(tamper) = &state.sotw_tamper {
                                    tamper(&mut response);
                                }
                                state
                                    .sent
                                    .push((response.version_info.clone(), response.nonce.clone()));
                                response
                            })
                        }
                    };
                    if let Some(response) = response
                        && tx.send(Ok(response)).await.is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(request)) => {
                            if names.is_none() {
                                names = Some(request.resource_names.clone());
                            }
                            upstream.record(Received::Sotw(request));
                        }
                        _ => return,
                    },
                    _ = changed.changed() => {}
                    _ = kill.changed() => {
                        let _ = tx.send(Err(Status::unavailable("restarting"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let upstream = self.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let (mut changed, mut kill) = upstream.stream_state();
            let mut names: Option<Vec<String>> = None;
            // What the client holds, by name: its version.
            let mut holds: HashMap<String, String> = HashMap::new();
            loop {
                if let Some(names) = &names {
                    let response = {
                        let mut state = upstream.0.state.lock();
                        let mut resources = Vec::new();
                        let mut removed = Vec::new();
                        for name in names {
                            match state.secrets.get(name) {
                                Some((version, bytes)) if holds.get(name) != Some(version) => {
                                    holds.insert(name.clone(), version.clone());
                                    resources.push(Resource {
                                        name: name.clone(),
                                        aliases: Vec::new(),
                                        version: version.clone(),
                                        resource: Some(Any {
                                            type_url: SECRET_TYPE_URL.to_owned(),
                                            value: bytes.clone(),
                                        }),
                                    });
                                }
                                None if holds.remove(name).is_some() => removed.push(name.clone()),
                                _ => {}
                            }
                        }
                        (!resources.is_empty() || !removed.is_empty()).then(|| {
                            let mut response = DeltaDiscoveryResponse {
                                system_version_info: String::new(),
                                resources,
                                type_url: SECRET_TYPE_URL.to_owned(),
                                removed_resources: removed,
                                nonce: Upstream::next_nonce(&mut state),
                            };
                            if let Some(tamper) = &state.delta_tamper {
                                tamper(&mut response);
                            }
                            response
                        })
                    };
                    if let Some(response) = response
                        && tx.send(Ok(response)).await.is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(request)) => {
                            if names.is_none() {
                                names = Some(request.resource_names_subscribe.clone());
                                holds = request.initial_resource_versions.clone().into_iter().collect();
                            }
                            upstream.record(Received::Delta(request));
                        }
                        _ => return,
                    },
                    _ = changed.changed() => {}
                    _ = kill.changed() => {
                        let _ = tx.send(Err(Status::unavailable("restarting"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("fetch"))
    }
}

// === protos ===

fn inline(bytes: impl Into<Bytes>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.into())),
    })
}

/// A `tls_certificate` secret.
pub fn certificate(name: &str, chain_pem: &str, key_pem: &str) -> tls::Secret {
    tls::Secret {
        name: name.to_owned(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(chain_pem.to_owned()),
            private_key: Some(DataSource {
                specifier: Some(Specifier::InlineString(key_pem.to_owned())),
            }),
            ocsp_staple: None,
        })),
    }
}

/// A `validation_context` secret.
pub fn trust(name: &str, ca_pem: &str) -> tls::Secret {
    tls::Secret {
        name: name.to_owned(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: inline(ca_pem.to_owned()),
                crl: None,
                only_verify_leaf_cert_crl: false,
            },
        )),
    }
}

// === readers ===

/// Waits until the reader's snapshot satisfies `ok`.
pub async fn until(
    reader: &mut Reader,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async {
        loop {
            if let Some(snapshot) = reader.current()
                && ok(&snapshot)
            {
                return snapshot;
            }
            reader.changed().await.expect("the publisher runs");
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("the reader never saw: {what}; has {:?}", reader.current()))
}

/// The leaf DER served under `name`, if it is a certificate.
pub fn leaf_der(snapshot: &Snapshot, name: &str) -> Option<Vec<u8>> {
    match &**snapshot.get(name)? {
        Secret::TlsCertificate(cert) => Some(cert.chain().first()?.to_vec()),
        _ => None,
    }
}
