//! The well-behaved client: while an abuse scenario holds the server, it connects anew and
//! asks for the real credential, once with `FetchSecrets` and once on a `StreamSecrets`
//! stream, as Envoy would.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sds::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{grpc::subscribe, server::CREDENTIAL};

/// How long each attempt may take.
const LIMIT: Duration = Duration::from_secs(5);

/// What the well-behaved client saw.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    /// Connect + `FetchSecrets`, or why it failed.
    pub(crate) fetch: Result<Duration, String>,
    /// Connect + the first response on a stream, or why it failed.
    pub(crate) stream: Result<Duration, String>,
}

impl Served {
    /// `fetch 2.1 ms, stream 3.0 ms` (or what failed).
    pub(crate) fn label(&self) -> String {
        let show = |what: &str, r: &Result<Duration, String>| match r {
            Ok(d) => format!("{what} {:.1} ms", d.as_secs_f64() * 1e3),
            Err(e) => format!("{what} FAILED ({e})"),
        };
        format!(
            "{}, {}",
            show("fetch", &self.fetch),
            show("stream", &self.stream)
        )
    }
}

/// Fetches the credential, then streams it, each on a new connection.
pub(crate) async fn check(addr: SocketAddr) -> Served {
    Served {
        fetch: timed(fetch(addr)).await,
        stream: timed(stream(addr)).await,
    }
}

async fn timed(
    attempt: impl std::future::Future<Output = Result<(), String>>,
) -> Result<Duration, String> {
    let start = Instant::now();
    match tokio::time::timeout(LIMIT, attempt).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("nothing within {LIMIT:?}")),
    }
}

async fn client(
    addr: SocketAddr,
) -> Result<SecretDiscoveryServiceClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Ok(SecretDiscoveryServiceClient::new(channel))
}

async fn fetch(addr: SocketAddr) -> Result<(), String> {
    let response = client(addr)
        .await?
        .fetch_secrets(subscribe(vec![CREDENTIAL.to_owned()]))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match response.resources.len() {
        1 => Ok(()),
        n => Err(format!("{n} secrets in the response")),
    }
}

async fn stream(addr: SocketAddr) -> Result<(), String> {
    let mut client = client(addr).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(subscribe(vec![CREDENTIAL.to_owned()]))
        .map_err(|_| "request channel closed")?;
    let mut inbound = client
        .stream_secrets(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = inbound
        .message()
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .ok_or("the stream ended without a response")?;
    // `tx` lives until here: the stream stays open, as Envoy's do, until the secret came.
    drop(tx);
    match first.resources.len() {
        1 => Ok(()),
        n => Err(format!("{n} secrets in the response")),
    }
}
