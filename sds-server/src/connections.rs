//! Accepting connections so that no client can pin the server: a bound on open connections,
//! a deadline for the HTTP/2 handshake, a pause when the process runs out of file
//! descriptors, and each connection's share of the [`Limits`](crate::Limits)
//! ([`Limits::names_per_connection`](crate::Limits::names_per_connection),
//! [`Limits::pending_bytes_per_connection`](crate::Limits::pending_bytes_per_connection)).
//!
//! tonic's accept loop retries a failed `accept` at once, so at the file-descriptor limit
//! (`EMFILE`) it spins at 100 % CPU while the pending connection stays in the backlog; and it
//! keeps a connection that never sends a byte open forever. Wrap the listener's stream with
//! [`guard`] before handing it to tonic (and, for TCP, set `TCP_NODELAY` on each accepted
//! socket as tonic does on the listeners it binds itself, or small responses wait for
//! Nagle's algorithm):
//!
//! ```no_run
//! # async fn demo(sds: sds_server::SdsService) -> Result<(), Box<dyn std::error::Error>> {
//! use sds_server::{Limits, connections};
//! use tokio_stream::wrappers::TcpListenerStream;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15012").await?;
//! let incoming = connections::guard(TcpListenerStream::new(listener), Default::default());
//! tonic::transport::Server::builder()
//!     .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
//!     .add_service(sds.into_server())
//!     .serve_with_incoming(incoming)
//!     .await?;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_core::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixListener,
    sync::{AcquireError, OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::{
    codegen::http,
    transport::server::{Connected, TcpConnectInfo, UdsConnectInfo},
};

use crate::{
    limits::ConnectionBudget,
    peer::{Peer, UnixCredentials},
};

/// What [`guard`] enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// A connection that has not sent the HTTP/2 connection preface and its first frame
    /// (SETTINGS) within this time is closed. Default 10 s.
    pub handshake_timeout: Duration,
    /// Most connections open at once; beyond it, new connections wait in the listen backlog
    /// until one closes. Default 10,000.
    pub max_connections: usize,
    /// The longest pause between accept attempts while the process or system is out of file
    /// descriptors (`EMFILE`, `ENFILE`) or memory for sockets; pauses start at 10 ms and
    /// double. Default 1 s.
    pub max_accept_backoff: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_accept_backoff: Duration::from_secs(1),
        }
    }
}

/// Binds a Unix socket at `path` whose file has the permission bits `mode` (e.g. `0o600`: only
/// the server's user may connect; `0o660` adds its group) from the moment it appears: the
/// socket is bound under a temporary name in the same directory, given `mode`, then renamed
/// into place.
///
/// A socket left by a server that is gone (connecting is refused) is replaced; a socket a
/// running server answers on is never taken over (`AddrInUse`), and a path that is not a
/// socket is never removed (`AlreadyExists`). File permissions are a first fence only: check
/// the peer's credentials too (the default [`Policy`](crate::policy::Policy) of
/// [`SdsService`](crate::SdsService) does).
pub async fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket");
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not removing it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(file_name);
    temporary.push(format!(".{}.binding", std::process::id()));
    let temporary = path.with_file_name(temporary);
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
}

/// The client's connection preface, and the header of the SETTINGS frame that must follow it.
const PREFACE: usize = 24;
const FRAME_HEADER: usize = 9;

/// The first pause after an accept failed for lack of resources.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Wraps a stream of accepted connections (`TcpListenerStream`, `UnixListenerStream`, …) with
/// the [`ConnectionLimits`]. Needs a Tokio runtime with the time driver.
pub fn guard<S, IO>(incoming: S, limits: ConnectionLimits) -> Guard<S>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
{
    Guard {
        incoming,
        permits: Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        limits,
        permit: None,
        acquiring: None,
        backoff: None,
        delay: FIRST_BACKOFF,
        at_capacity: false,
        exhausted_log: EpisodeLog::default(),
        capacity_log: EpisodeLog::default(),
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The stream returned by [`guard`]: accepted connections, each a [`Guarded`] connection.
pub struct Guard<S> {
    incoming: S,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    /// A connection slot taken for the next accepted connection.
    permit: Option<OwnedSemaphorePermit>,
    /// Waiting for a slot while at `max_connections`.
    acquiring: Option<Acquire>,
    /// Pausing after an accept failed for lack of resources.
    backoff: Option<Pin<Box<Sleep>>>,
    delay: Duration,
    /// Whether the last wait for a slot is not yet resolved.
    at_capacity: bool,
    /// When running out of descriptors, and reaching `max_connections`, were last logged.
    exhausted_log: EpisodeLog,
    capacity_log: EpisodeLog,
}

/// Logs an episode at most once per [`EPISODE_LOG_INTERVAL`], counting the others.
#[derive(Debug, Default)]
struct EpisodeLog {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

/// How often a kind of accept trouble is logged at most.
const EPISODE_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl EpisodeLog {
    /// `Some(episodes not logged since the last line)` if this one is to be logged.
    fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < EPISODE_LOG_INTERVAL)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl<S> fmt::Debug for Guard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("limits", &self.limits)
            .field(
                "open",
                &(self
                    .limits
                    .max_connections
                    .saturating_sub(self.permits.available_permits())),
            )
            .finish_non_exhaustive()
    }
}

impl<S, IO> Stream for Guard<S>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
{
    type Item = io::Result<Guarded<IO>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.backoff = None;
            }
            if this.permit.is_none() {
                match Arc::clone(&this.permits).try_acquire_owned() {
                    Ok(permit) => this.permit = Some(permit),
                    Err(_) => {
                        if !this.at_capacity {
                            this.at_capacity = true;
                            if let Some(episodes) = this.capacity_log.due() {
                                tracing::warn!(
                                    max = this.limits.max_connections,
                                    episodes_since_last = episodes,
                                    "at the limit of open connections; new ones wait until \
                                     one closes"
                                );
                            }
                        }
                        let acquiring = this.acquiring.get_or_insert_with(|| {
                            Box::pin(Arc::clone(&this.permits).acquire_owned())
                        });
                        let permit = ready!(acquiring.as_mut().poll(cx));
                        this.acquiring = None;
                        match permit {
                            Ok(permit) => this.permit = Some(permit),
                            // The semaphore is never closed.
                            Err(_) => return Poll::Ready(None),
                        }
                    }
                }
            }
            match ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(io)) => {
                    if this.delay > FIRST_BACKOFF {
                        tracing::debug!("accepting connections again");
                        this.delay = FIRST_BACKOFF;
                    }
                    if this.at_capacity && this.permits.available_permits() > 0 {
                        this.at_capacity = false;
                    }
                    let permit = this.permit.take();
                    let deadline = Box::pin(tokio::time::sleep(this.limits.handshake_timeout));
                    return Poll::Ready(Some(Ok(Guarded {
                        io,
                        handshake: Some(Handshake {
                            deadline,
                            read: 0,
                            head: [0; PREFACE + FRAME_HEADER],
                        }),
                        timeout: this.limits.handshake_timeout,
                        budget: Arc::default(),
                        _permit: permit,
                    })));
                }
                Some(Err(error)) if out_of_resources(&error) => {
                    if this.delay == FIRST_BACKOFF
                        && let Some(episodes) = this.exhausted_log.due()
                    {
                        // Once per episode, and at most once a minute: a client that closes
                        // and opens connections at the limit starts episodes at will.
                        tracing::warn!(
                            %error, episodes_since_last = episodes,
                            "cannot accept connections: out of file descriptors or socket \
                             memory; retrying with backoff (raise `ulimit -n`?)"
                        );
                    }
                    this.backoff = Some(Box::pin(tokio::time::sleep(this.delay)));
                    this.delay = (this.delay * 2).min(this.limits.max_accept_backoff);
                }
                Some(Err(error)) => {
                    // ECONNABORTED and the like concern one connection only.
                    tracing::debug!(%error, "accept failed");
                }
            }
        }
    }
}

/// Errors after which `accept` fails again at once until something is released.
fn out_of_resources(error: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// An accepted connection: closed with an error if the client does not start HTTP/2 in time;
/// holds its slot among the open connections until dropped.
pub struct Guarded<IO> {
    io: IO,
    handshake: Option<Handshake>,
    timeout: Duration,
    budget: Arc<ConnectionBudget>,
    _permit: Option<OwnedSemaphorePermit>,
}

struct Handshake {
    deadline: Pin<Box<Sleep>>,
    /// Bytes read so far.
    read: usize,
    /// The preface and the first frame's header, as read.
    head: [u8; PREFACE + FRAME_HEADER],
}

impl Handshake {
    /// Records bytes read; true once the preface and the whole first frame have arrived.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let into_head = (self.head.len() - self.read.min(self.head.len())).min(bytes.len());
        let at = self.read.min(self.head.len());
        self.head[at..at + into_head].copy_from_slice(&bytes[..into_head]);
        self.read += bytes.len();
        if self.read < self.head.len() {
            return false;
        }
        // The first frame's length: 24 bits, big-endian, at the start of its header.
        let len = usize::from(self.head[PREFACE]) << 16
            | usize::from(self.head[PREFACE + 1]) << 8
            | usize::from(self.head[PREFACE + 2]);
        self.read >= PREFACE + FRAME_HEADER + len
    }
}

/// The connection information tonic puts in the extensions of each request of a [`Guarded`]
/// connection: the inner connection's (for a TCP connection, a [`TcpConnectInfo`] with the
/// peer's address; for a Unix socket, a [`UdsConnectInfo`] with its credentials) and the
/// connection's share of the limits.
///
/// tonic's `Request::remote_addr` looks for a bare `TcpConnectInfo`; with a guarded
/// connection, read `request.extensions().get::<ConnectInfo<TcpConnectInfo>>()` instead.
#[derive(Clone, Debug)]
pub struct ConnectInfo<T> {
    inner: T,
    budget: Arc<ConnectionBudget>,
}

impl<T> ConnectInfo<T> {
    /// The inner connection's information.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// The budget of the connection a request came on, if it was accepted through [`guard`]
/// (as a TCP, TLS or Unix-socket connection).
pub(crate) fn budget(extensions: &http::Extensions) -> Option<Arc<ConnectionBudget>> {
    extensions
        .get::<ConnectInfo<TcpConnectInfo>>()
        .map(|c| Arc::clone(&c.budget))
        .or_else(|| {
            extensions
                .get::<ConnectInfo<UdsConnectInfo>>()
                .map(|c| Arc::clone(&c.budget))
        })
        .or_else(|| {
            extensions
                .get::<ConnectInfo<crate::tls::TlsConnectInfo>>()
                .map(|c| Arc::clone(&c.budget))
        })
}

/// What the transport proves about the client of a request: Unix-socket credentials, a TCP
/// address, or a TCP address and the verified client certificate of a
/// [`tls`](crate::tls) connection, accepted through [`guard`] or not. The service decides with
/// it; an embedder can read it too (in an interceptor, for its own logs) from the request's
/// extensions: `connections::peer(request.extensions())`.
pub fn peer(extensions: &http::Extensions) -> Peer {
    let tcp = |info: &TcpConnectInfo| info.remote_addr().map_or_else(Peer::unknown, Peer::tcp);
    let uds = |info: &UdsConnectInfo| {
        info.peer_cred.map_or_else(Peer::unknown, |cred| {
            Peer::unix(UnixCredentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            })
        })
    };
    if let Some(info) = extensions.get::<ConnectInfo<crate::tls::TlsConnectInfo>>() {
        return info.inner.peer();
    }
    if let Some(info) = extensions.get::<crate::tls::TlsConnectInfo>() {
        return info.peer();
    }
    if let Some(info) = extensions.get::<ConnectInfo<UdsConnectInfo>>() {
        return uds(&info.inner);
    }
    if let Some(info) = extensions.get::<UdsConnectInfo>() {
        return uds(info);
    }
    if let Some(info) = extensions.get::<ConnectInfo<TcpConnectInfo>>() {
        return tcp(&info.inner);
    }
    extensions
        .get::<TcpConnectInfo>()
        .map_or_else(Peer::unknown, tcp)
}

impl<IO> Guarded<IO> {
    /// The connection inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO> fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("handshaking", &self.handshake.is_some())
            .finish_non_exhaustive()
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = ConnectInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectInfo {
            inner: self.io.connect_info(),
            budget: Arc::clone(&self.budget),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(handshake) = this.handshake.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if handshake.read(&buf.filled()[before..]) {
                    this.handshake = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match handshake.deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    tracing::debug!(
                        read = handshake.read,
                        "closing a connection that did not start HTTP/2 in time"
                    );
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no HTTP/2 connection preface within {:?}", this.timeout),
                    )))
                }
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
