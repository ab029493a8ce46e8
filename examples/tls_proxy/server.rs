//! The HTTPS side of `tls-proxy`: accepts TCP connections (at most `max_connections` at a
//! time), completes the TLS handshake within a deadline, and serves HTTP/1.1 or HTTP/2
//! (hyper) on it until the client leaves or the process is told to stop.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use sds::core::Untrusted;
use sds_rustls::ServerCerts;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;

use crate::response::Served;

/// Most characters of a handshake error a log line shows (rustls' messages can quote what
/// the client sent).
const MAX_ERROR_CHARS: usize = 200;

/// How long a connection may take to send its request headers (HTTP/1.1), and how often an
/// HTTP/2 connection is pinged.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long connections get to finish once a shutdown began.
const DRAIN: Duration = Duration::from_secs(5);

/// What every connection needs.
pub(crate) struct Server {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) certs: ServerCerts,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
}

// === impl Server ===

impl Server {
    /// Serves connections from `listener` until `stop` resolves; then lets the open ones
    /// finish their requests (at most [`DRAIN`], or until `stop_now` resolves).
    pub(crate) async fn run(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()>,
        stop_now: impl Future<Output = ()>,
    ) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let (shutdown, stopping) = watch::channel(false);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        http.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL);
        let shared = Arc::new(Shared {
            server: self,
            http,
            stopping,
        });

        let mut stop = std::pin::pin!(stop);
        loop {
            // A free slot first: at the cap, new clients wait in the kernel's backlog.
            let permit = tokio::select! {
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut stop => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut stop => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(connection(Arc::clone(&shared), tcp, peer, permit));
        }

        // Stop accepting, tell every connection to finish, and wait for their slots.
        drop(listener);
        let _ = shutdown.send(true);
        let open = shared.server.max_connections - limit.available_permits();
        tracing::info!(open, "closing connections");
        let all = u32::try_from(shared.server.max_connections).unwrap_or(u32::MAX);
        tokio::select! {
            _ = limit.acquire_many(all) => {}
            () = tokio::time::sleep(DRAIN) => {
                tracing::warn!("connections did not close within {DRAIN:?}; stopping anyway");
            }
            () = stop_now => {}
        }
    }
}

struct Shared {
    server: Server,
    http: auto::Builder<TokioExecutor>,
    /// Becomes `true` when the server stops.
    stopping: watch::Receiver<bool>,
}

/// One client: the handshake (bounded by the handshake timeout), then HTTP until it leaves or
/// the server stops. Holds its slot (`_permit`) to the end.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    // Responses are small: do not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let mut stopping = shared.stopping.clone();
    let server = &shared.server;
    let handshake = tokio::time::timeout(server.handshake_timeout, server.acceptor.accept(tcp));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                let error = error.to_string();
                tracing::debug!(
                    %peer,
                    error = %Untrusted::new(&error, MAX_ERROR_CHARS),
                    "TLS handshake failed"
                );
                return;
            }
            Err(_) => {
                tracing::debug!(
                    %peer,
                    timeout = ?server.handshake_timeout,
                    "TLS handshake timed out; closing"
                );
                return;
            }
        },
        () = stopped(&mut stopping) => return,
    };

    let (_, conn) = tls.get_ref();
    let secret = server
        .certs
        .secret_for(conn.server_name())
        .map(|name| (name.clone(), server.certs.version(name)));
    let served = Arc::new(Served::new(conn, secret));
    tracing::debug!(
        %peer,
        alpn = ?conn.alpn_protocol().map(String::from_utf8_lossy),
        served = ?served,
        "TLS handshake done"
    );
    let service = service_fn(move |request: Request<Incoming>| {
        let body = served.body(request.method(), request.uri().path(), request.version());
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let http = shared.http.serve_connection(TokioIo::new(tls), service);
    let mut http = std::pin::pin!(http);
    let served = tokio::select! {
        served = http.as_mut() => served,
        () = stopped(&mut stopping) => {
            // Finish the requests in flight (HTTP/2: GOAWAY), then close.
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(error) = served {
        let error = error.to_string();
        tracing::debug!(%peer, error = %Untrusted::new(&error, MAX_ERROR_CHARS), "connection ended");
    }
}

/// Resolves once the server stops (or is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard it returns is dropped at once: nothing is held across an await.
    let _ = stopping.wait_for(|stop| *stop).await;
}
