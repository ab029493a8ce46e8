//! The transport: a lazily connecting tonic channel over a Unix socket, TCP, or TLS over TCP
//! (tokio-rustls), through our own connector, so tonic's TLS features are not needed.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

/// Anything the channel can run HTTP/2 over.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Where the upstream server listens.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(PathBuf),
    /// `http://host:port` or `https://host:port`.
    Tcp {
        uri: Uri,
        /// For `https`: the TLS client configuration (ALPN `h2` added if absent).
        tls: Option<Arc<ClientConfig>>,
    },
}

impl Target {
    /// A channel that connects on first use and reconnects after a failure. Must be called
    /// inside a tokio runtime (tonic starts the channel's worker task there).
    pub(crate) fn channel(&self) -> Channel {
        match self {
            #[cfg(unix)]
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is not used by the connector; tonic only needs a well-formed one.
                live(Endpoint::from_static("http://localhost")).connect_with_connector_lazy(
                    tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, io::Error>(TokioIo::new(Box::new(stream) as Box<dyn Io>))
                        }
                    }),
                )
            }
            Target::Tcp { uri, tls } => {
                let tls = tls.clone();
                live(Endpoint::from(uri.clone())).connect_with_connector_lazy(tower::service_fn(
                    move |uri: Uri| {
                        let tls = tls.clone();
                        async move { Ok::<_, io::Error>(TokioIo::new(tcp(uri, tls).await?)) }
                    },
                ))
            }
        }
    }
}

/// Connects to `uri`'s host and port, with TLS when `tls` is given.
async fn tcp(uri: Uri, tls: Option<Arc<ClientConfig>>) -> io::Result<Box<dyn Io>> {
    let invalid = |problem| io::Error::new(io::ErrorKind::InvalidInput, problem);
    let host = uri
        .host()
        .ok_or_else(|| invalid("the endpoint has no host"))?;
    // `[::1]` in a URI is `::1` to a resolver and to rustls.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    let Some(config) = tls else {
        return Ok(Box::new(stream));
    };
    let name = ServerName::try_from(host)
        .map_err(|_| invalid("the endpoint's host is not a valid TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?;
    Ok(Box::new(stream))
}

/// `endpoint` with deadlines, so that an upstream that stalls or vanishes without closing
/// the connection is noticed (and reconnected to) rather than waited for forever: a connect
/// timeout, and HTTP/2 keep-alive pings while idle (SDS streams are idle between rotations).
fn live(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}
