//! TLS for the SDS channel over TCP, with client-certificate authentication: the server's
//! certificate and the client CA are secrets of a [`Reader`]'s snapshots, and follow them.
//!
//! [`ServerTls::follow`] names two secrets of the snapshot: the server's credential (a
//! `tls_certificate`) and the CA that signs client certificates (a `validation_context`, with
//! its CRLs). Every client must present a certificate that CA verifies (no anonymous clients),
//! and its URI and DNS SANs become the identity of the [`Peer`] a
//! [`Policy`](crate::policy::Policy) decides for. When either secret changes, new handshakes
//! use the new one; connections already open keep theirs. A snapshot in which a secret is
//! missing, of the wrong kind or refused by rustls keeps the last good configuration (logged at
//! WARN once per change).
//!
//! ```no_run
//! # async fn demo(
//! #     reader: sds_core::Reader,
//! #     policy: impl sds_server::policy::Policy,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use sds_core::SecretName;
//! use sds_server::{Limits, SdsService, connections, tls::{self, ServerTls}};
//! use tokio_stream::wrappers::TcpListenerStream;
//!
//! // Secrets loaded, like any other, by a source (e.g. sds-source-fs from a directory).
//! let server_tls = ServerTls::follow(
//!     reader.clone(),
//!     SecretName::new("sds-server")?,
//!     SecretName::new("sds-client-ca")?,
//! );
//! server_tls.config()?; // refuse to start without a usable credential
//! let sds = SdsService::builder(reader).policy(policy).build();
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:15012").await?;
//! // `guard` outside: its handshake deadline covers the TLS handshake too.
//! let incoming = connections::guard(
//!     tls::accept(TcpListenerStream::new(listener), server_tls),
//!     Default::default(),
//! );
//! tonic::transport::Server::builder()
//!     .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
//!     .add_service(sds.into_server())
//!     .serve_with_incoming(incoming)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # How the configuration follows the reader
//! Lazily, with no task: each handshake (and [`ServerTls::config`]) compares the version of the
//! reader's current snapshot with the one it last looked at, a cheap check under a read lock.
//! Only when the snapshot changed does it look the two secrets up, and only when one of them
//! changed is the rustls [`ServerConfig`] rebuilt: once per version, never per handshake. So
//! there is no driver to spawn (or to forget), and nothing runs while no client connects.
//!
//! # Handshakes
//! [`accept`] never performs a handshake: each [`TlsConnection`] does its own in its first read
//! or write, in the connection's task, so a slow client delays no one else, and
//! [`connections::guard`](crate::connections::guard)'s handshake deadline covers the TLS
//! handshake. A failed handshake (no client certificate, an unknown CA, a revoked or expired
//! certificate) closes that connection only, is logged at DEBUG and counted in
//! [`ServerTls::failed_handshakes`]. TLS 1.2 and 1.3 (ring), ALPN `h2`. Client certificates are
//! checked against the CRLs of the client CA for the whole chain: with CRLs, every CA of a
//! client's chain needs one (as in Envoy).

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use futures_core::Stream;
use parking_lot::RwLock;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{
        ServerConnection, VerifierBuilderError, WebPkiClientVerifier, danger::ClientCertVerifier,
    },
    sign::SingleCertAndKey,
};
use sds_core::{
    CertifiedKey, Reader, Secret, SecretName, Snapshot, TrustBundle, Untrusted, Version,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::{Connected, TcpConnectInfo};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::{
    Error,
    peer::{CertificateIdentity, Peer},
};

/// The rustls this module builds on, for naming its types (e.g. [`rustls::ServerConfig`]).
pub use rustls;

/// The kinds of secret the two names must be, as [`Secret::kind`] names them.
const TLS_CERTIFICATE: &str = "tls_certificate";
const VALIDATION_CONTEXT: &str = "validation_context";

/// Most characters of a handshake error shown in a log line.
const SHOWN_CHARS: usize = 256;

/// A rustls server configuration for the SDS channel whose certificate and client CA follow a
/// [`Reader`]: see the [module docs](self). Cheap to clone; clones share the configuration
/// and the counter.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Shared>,
}

struct Shared {
    reader: Reader,
    certificate: SecretName,
    client_ca: SecretName,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
    failed_handshakes: AtomicU64,
}

/// What the configuration was last made from.
#[derive(Default)]
struct Current {
    /// The version of the snapshot looked at last (`None`: before the first one).
    seen: Option<Version>,
    /// The versions of the certificate and client CA secrets in it, as last evaluated.
    inputs: Option<(Option<Version>, Option<Version>)>,
    /// The last configuration built, with the versions it was built from.
    good: Option<Built>,
}

struct Built {
    config: Arc<ServerConfig>,
    certificate: Version,
    client_ca: Version,
}

// === impl ServerTls ===

impl ServerTls {
    /// TLS whose server certificate is the secret `certificate` (a `tls_certificate`) and whose
    /// client CA is the secret `client_ca` (a `validation_context`) of `reader`'s snapshots.
    ///
    /// Nothing is built yet: [`ServerTls::config`] reports whether the current snapshot's
    /// secrets are usable.
    pub fn follow(reader: Reader, certificate: SecretName, client_ca: SecretName) -> ServerTls {
        ServerTls {
            shared: Arc::new(Shared {
                reader,
                certificate,
                client_ca,
                provider: Arc::new(rustls::crypto::ring::default_provider()),
                current: RwLock::new(Current::default()),
                failed_handshakes: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration new handshakes use now: built from the reader's current snapshot, or
    /// the last good one if that snapshot's secrets are unusable. Fails only if no usable
    /// configuration was ever built, with the reason the current snapshot gives.
    ///
    /// It requires client certificates, offers ALPN `h2` and uses the ring provider; use it
    /// with any rustls acceptor, or through [`accept`].
    pub fn config(&self) -> Result<Arc<ServerConfig>, Error> {
        if let Some(config) = self.shared.refresh() {
            return Ok(config);
        }
        let snapshot = self.shared.reader.current();
        let Some(snapshot) = snapshot.as_deref() else {
            return Err(Error::TlsSecretMissing {
                name: self.shared.certificate.clone(),
                expected: TLS_CERTIFICATE,
            });
        };
        let (certificate, client_ca) = self.shared.secrets(snapshot)?;
        self.shared.build(certificate, client_ca).map(Arc::new)
    }

    /// Handshakes that failed so far: no or an unverifiable client certificate, no usable
    /// configuration, a client that went away or broke the protocol.
    pub fn failed_handshakes(&self) -> u64 {
        self.shared.failed_handshakes.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.read();
        f.debug_struct("ServerTls")
            .field("certificate", &self.shared.certificate)
            .field("client_ca", &self.shared.client_ca)
            .field(
                "built_from",
                &current.good.as_ref().map(|b| (b.certificate, b.client_ca)),
            )
            .field("failed_handshakes", &self.failed_handshakes())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The configuration for a new handshake: rebuilt first if the snapshot changed one of
    /// the two secrets since the last call. `None` while none could be built.
    fn refresh(&self) -> Option<Arc<ServerConfig>> {
        let version = self.reader.current().map(|s| s.version());
        {
            let current = self.current.read();
            if current.seen == version {
                return current.good.as_ref().map(|b| Arc::clone(&b.config));
            }
        }
        let mut current = self.current.write();
        // Read again under the lock, so that a caller holding an older snapshot never
        // overwrites what a newer one gave.
        let snapshot = self.reader.current();
        current.seen = snapshot.as_ref().map(|s| s.version());
        if let Some(snapshot) = snapshot.as_deref() {
            self.evaluate(&mut current, snapshot);
        }
        current.good.as_ref().map(|b| Arc::clone(&b.config))
    }

    /// Rebuilds the configuration if the two secrets of `snapshot` differ from the last ones
    /// evaluated; logs a failure once per such change.
    fn evaluate(&self, current: &mut Current, snapshot: &Snapshot) {
        let version = |name: &SecretName| snapshot.get(name.as_str()).map(|s| s.version());
        let inputs = (version(&self.certificate), version(&self.client_ca));
        if current.inputs == Some(inputs) {
            return;
        }
        current.inputs = Some(inputs);
        let built = self.secrets(snapshot).and_then(|(certificate, client_ca)| {
            let config = self.build(certificate, client_ca)?;
            Ok(Built {
                config: Arc::new(config),
                certificate: certificate.version(),
                client_ca: client_ca.version(),
            })
        });
        match built {
            Ok(built) => {
                tracing::info!(
                    certificate = %self.certificate, certificate_version = %built.certificate,
                    client_ca = %self.client_ca, client_ca_version = %built.client_ca,
                    "SDS server TLS configured; new handshakes use it"
                );
                current.good = Some(built);
            }
            Err(error) => {
                let error: &dyn std::error::Error = &error;
                match &current.good {
                    Some(good) => tracing::warn!(
                        error, certificate_version = %good.certificate,
                        client_ca_version = %good.client_ca,
                        "cannot use the new SDS server TLS secrets; keeping the last good ones"
                    ),
                    None => tracing::warn!(
                        error,
                        "cannot use the SDS server TLS secrets; TLS handshakes fail until they \
                         are fixed"
                    ),
                }
            }
        }
    }

    /// The two secrets of `snapshot`, if they exist and are of the right kinds.
    fn secrets<'s>(
        &self,
        snapshot: &'s Snapshot,
    ) -> Result<(&'s CertifiedKey, &'s TrustBundle), Error> {
        let get = |name: &SecretName, expected: &'static str| {
            snapshot
                .get(name.as_str())
                .ok_or_else(|| Error::TlsSecretMissing {
                    name: name.clone(),
                    expected,
                })
        };
        let wrong_kind =
            |name: &SecretName, expected: &'static str, found: &Secret| Error::TlsSecretKind {
                name: name.clone(),
                expected,
                found: found.kind(),
            };
        let certificate = match &**get(&self.certificate, TLS_CERTIFICATE)? {
            Secret::TlsCertificate(certificate) => certificate,
            other => return Err(wrong_kind(&self.certificate, TLS_CERTIFICATE, other)),
        };
        let client_ca = match &**get(&self.client_ca, VALIDATION_CONTEXT)? {
            Secret::ValidationContext(bundle) => bundle,
            other => return Err(wrong_kind(&self.client_ca, VALIDATION_CONTEXT, other)),
        };
        Ok((certificate, client_ca))
    }

    /// A server configuration presenting `certificate` and requiring client certificates
    /// that `client_ca` verifies.
    fn build(
        &self,
        certificate: &CertifiedKey,
        client_ca: &TrustBundle,
    ) -> Result<ServerConfig, Error> {
        let rejected = |name: &SecretName| {
            let name = name.clone();
            move |source| Error::TlsSecretRejected { name, source }
        };
        let key = sds_rustls::certified_key(certificate).map_err(rejected(&self.certificate))?;
        let verifier =
            client_verifier(client_ca, &self.provider).map_err(rejected(&self.client_ca))?;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(rejected(&self.certificate))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A verifier that requires a client certificate chaining to one of `bundle`'s anchors, not
/// revoked by its CRLs.
fn client_verifier(
    bundle: &TrustBundle,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(bundle.anchors().iter().cloned());
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "client CA certificates that cannot be trust anchors are ignored"
        );
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .with_crls(bundle.crls().iter().cloned())
        .build()
        .map_err(|error| match error {
            VerifierBuilderError::InvalidCrl(crl) => rustls::Error::InvalidCertRevocationList(crl),
            other => rustls::Error::General(other.to_string()),
        })
}

/// The names of a verified client certificate (DER): its URI and DNS SANs.
fn certificate_identity(der: &[u8]) -> Result<CertificateIdentity, x509_parser::error::X509Error> {
    let (_, certificate) = X509Certificate::from_der(der)?;
    let mut identity = CertificateIdentity::default();
    if let Some(san) = certificate.subject_alternative_name()? {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    Ok(identity)
}

/// The identity of the client certificate rustls verified in `connection`'s handshake.
fn verified_identity(connection: &ServerConnection) -> io::Result<CertificateIdentity> {
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the client presented no certificate",
            )
        })?;
    certificate_identity(leaf).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot read the names of the verified client certificate: {error}"),
        )
    })
}

// === accept ===

/// Wraps a stream of accepted TCP connections (e.g. a `TcpListenerStream`) so that each is a
/// [`TlsConnection`] using `tls`. Handshakes happen later, in each connection's first read or
/// write; wrap the result with [`connections::guard`](crate::connections::guard).
pub fn accept<S, IO>(incoming: S, tls: ServerTls) -> Incoming<S>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
    IO: Connected<ConnectInfo = TcpConnectInfo>,
{
    Incoming { incoming, tls }
}

/// The stream returned by [`accept`].
pub struct Incoming<S> {
    incoming: S,
    tls: ServerTls,
}

impl<S> fmt::Debug for Incoming<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl<S, IO> Stream for Incoming<S>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
    IO: Connected<ConnectInfo = TcpConnectInfo>,
{
    type Item = io::Result<TlsConnection<IO>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let accepted = ready!(Pin::new(&mut this.incoming).poll_next(cx));
        Poll::Ready(accepted.map(|io| io.map(|io| TlsConnection::new(io, this.tls.clone()))))
    }
}

// === impl TlsConnection ===

/// Most plaintext a [`TlsConnection`] takes before its handshake completes.
const EARLY_PLAINTEXT: usize = 4096;

/// An accepted connection whose TLS handshake happens in its first read or write, with the
/// configuration current at that moment. Reads and writes plaintext afterwards.
///
/// What is written during the handshake (an HTTP/2 server's SETTINGS, up to 4 KiB) is kept
/// and sent once it completes: the HTTP/2 server flushes its SETTINGS before it reads the
/// client's preface, and it is that read which drives the handshake, and in which
/// [`connections::guard`](crate::connections::guard)'s deadline runs.
pub struct TlsConnection<IO> {
    state: State<IO>,
    /// Plaintext written before the handshake completed.
    early: Vec<u8>,
    /// The early plaintext was handed to the TLS stream, which has not flushed it yet.
    unflushed: bool,
    tls: ServerTls,
    info: TlsConnectInfo,
}

enum State<IO> {
    /// Accepted; the handshake starts at the first read or write.
    Accepted(IO),
    Handshaking(Box<tokio_rustls::Accept<IO>>),
    Established(Box<TlsStream<IO>>),
    Failed,
}

impl<IO: Connected<ConnectInfo = TcpConnectInfo>> TlsConnection<IO> {
    fn new(io: IO, tls: ServerTls) -> Self {
        let info = TlsConnectInfo {
            tcp: io.connect_info(),
            certificate: Arc::default(),
        };
        Self {
            state: State::Accepted(io),
            early: Vec::new(),
            unflushed: false,
            tls,
            info,
        }
    }
}

impl<IO> TlsConnection<IO> {
    /// Whether the handshake completed: the client's certificate is verified.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsConnection<IO> {
    /// Drives the handshake; ready with the TLS stream once it completed.
    fn poll_established(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut TlsStream<IO>>> {
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Established(stream) => {
                    self.state = State::Established(stream);
                    break;
                }
                State::Accepted(io) => match self.tls.shared.refresh() {
                    Some(config) => {
                        self.state =
                            State::Handshaking(Box::new(TlsAcceptor::from(config).accept(io)));
                    }
                    None => {
                        let error = io::Error::new(
                            io::ErrorKind::NotConnected,
                            "the SDS server has no usable TLS credential (see its WARN log)",
                        );
                        return Poll::Ready(Err(self.failed(error)));
                    }
                },
                State::Handshaking(mut accept) => match Pin::new(&mut *accept).poll(cx) {
                    Poll::Pending => {
                        self.state = State::Handshaking(accept);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(self.failed(error))),
                    Poll::Ready(Ok(mut stream)) => {
                        match verified_identity(stream.get_ref().1) {
                            Ok(identity) => {
                                let _ = self.info.certificate.set(identity);
                            }
                            Err(error) => return Poll::Ready(Err(self.failed(error))),
                        }
                        if !self.early.is_empty() {
                            // Encrypted into the connection's buffer at once (it holds 64 KiB).
                            io::Write::write_all(&mut stream.get_mut().1.writer(), &self.early)?;
                            self.early = Vec::new();
                            self.unflushed = true;
                        }
                        self.state = State::Established(Box::new(stream));
                    }
                },
                State::Failed => return Poll::Ready(Err(handshake_failed())),
            }
        }
        let State::Established(stream) = &mut self.state else {
            return Poll::Ready(Err(handshake_failed()));
        };
        if self.unflushed {
            // Sent along with whatever comes next, but without waiting for it.
            match Pin::new(&mut **stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(stream))
    }

    /// Keeps `buf` until the handshake completes, if there is room.
    fn write_early(&mut self, buf: &[u8]) -> Poll<io::Result<usize>> {
        let room = EARLY_PLAINTEXT.saturating_sub(self.early.len());
        if room == 0 && !buf.is_empty() {
            // The handshake's progress wakes the task.
            return Poll::Pending;
        }
        let taken = room.min(buf.len());
        self.early.extend_from_slice(&buf[..taken]);
        Poll::Ready(Ok(taken))
    }

    /// Counts and logs a failed handshake, which ends this connection.
    fn failed(&mut self, error: io::Error) -> io::Error {
        self.state = State::Failed;
        self.early = Vec::new();
        self.tls
            .shared
            .failed_handshakes
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            peer = ?self.info.remote_addr(),
            error = %Untrusted::new(&error.to_string(), SHOWN_CHARS),
            "TLS handshake failed; closing the connection"
        );
        error
    }
}

fn handshake_failed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<IO> fmt::Debug for TlsConnection<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Accepted(_) => "accepted",
            State::Handshaking(_) => "handshaking",
            State::Established(_) => "established",
            State::Failed => "failed",
        };
        f.debug_struct("TlsConnection")
            .field("state", &state)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<IO> Connected for TlsConnection<IO> {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = ready!(self.get_mut().poll_established(cx))?;
        Pin::new(stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_established(cx) {
            Poll::Ready(stream) => Pin::new(stream?).poll_write(cx, buf),
            Poll::Pending => this.write_early(buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_established(cx) {
            Poll::Ready(stream) => Pin::new(stream?).poll_write_vectored(cx, bufs),
            Poll::Pending => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                this.write_early(first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        // What tokio-rustls' stream answers.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_established(cx) {
            Poll::Ready(stream) => Pin::new(stream?).poll_flush(cx),
            // Kept for after the handshake: nothing can be sent before it.
            Poll::Pending => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Established(stream) => Pin::new(&mut **stream).poll_shutdown(cx),
            // Nothing was sent to close: dropping the connection closes the socket.
            _ => Poll::Ready(Ok(())),
        }
    }
}

// === impl TlsConnectInfo ===

/// The connection information tonic puts in the extensions of each request of a
/// [`TlsConnection`] (inside [`connections::ConnectInfo`](crate::connections::ConnectInfo)
/// when accepted through [`connections::guard`](crate::connections::guard)): the TCP addresses
/// and the names of the verified client certificate.
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    tcp: TcpConnectInfo,
    /// Filled by the handshake. tonic takes the information before the handshake, and
    /// requests arrive only after it.
    certificate: Arc<OnceLock<CertificateIdentity>>,
}

impl TlsConnectInfo {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }

    /// The server's address the client connected to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The names of the client's verified certificate; `None` until the handshake completed.
    pub fn certificate(&self) -> Option<&CertificateIdentity> {
        self.certificate.get()
    }

    /// The peer a policy decides for: the client's address and, after the handshake, its
    /// certificate's names.
    pub(crate) fn peer(&self) -> Peer {
        let peer = self.remote_addr().map_or_else(Peer::unknown, Peer::tcp);
        match self.certificate() {
            Some(identity) => peer.with_certificate(identity.clone()),
            None => peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sds_core::{Input, UnixTime, Update};
    use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    fn name(n: &str) -> SecretName {
        SecretName::new(n).expect("a valid name")
    }

    fn credential(n: &str, leaf: &Leaf) -> CertifiedKey {
        CertifiedKey::from_pem(
            &name(n),
            Input::new("tls.crt", leaf.chain_pem.as_bytes()),
            Input::new("tls.key", leaf.key_pem.as_bytes()),
            UnixTime::now(),
        )
        .expect("a valid credential")
    }

    fn bundle(n: &str, ca: &Ca, crl: Option<&str>) -> TrustBundle {
        TrustBundle::from_pem(
            &name(n),
            Input::new("ca.crt", ca.cert_pem().as_bytes()),
            crl.map(|crl| Input::new("ca.crl", crl.as_bytes())),
            UnixTime::now(),
        )
        .expect("a valid bundle")
    }

    /// A reader fed by the returned sender, and the first snapshot published.
    async fn reader(first: Update) -> (Reader, mpsc::Sender<Result<Update, io::Error>>) {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(first)).await.expect("send");
        let (mut reader, driver) =
            sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(driver);
        reader.ready().await.expect("first snapshot");
        (reader, tx)
    }

    async fn publish(
        reader: &mut Reader,
        tx: &mpsc::Sender<Result<Update, io::Error>>,
        update: Update,
    ) {
        tx.send(Ok(update)).await.expect("send");
        tokio::time::timeout(Duration::from_secs(10), reader.changed())
            .await
            .expect("published in time")
            .expect("published");
    }

    fn update(secrets: Vec<(&str, Secret)>) -> Update {
        let mut update = Update::new();
        for (n, secret) in secrets {
            update.insert(name(n), secret);
        }
        update
    }

    #[test]
    fn every_servable_key_converts() {
        let ca = Ca::new("server CA");
        for kind in KeyKind::SERVABLE {
            let leaf = ca.issue(&["sds.example"], kind, Validity::current());
            let key = sds_rustls::certified_key(&credential("server", &leaf))
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(key.cert.len(), 1);
            assert_eq!(
                key.end_entity_cert().expect("a leaf").as_ref(),
                leaf.cert_der
            );
        }
    }

    #[test]
    fn identity_holds_uri_and_dns_sans() {
        let ca = Ca::new("client CA");
        let leaf = ca.issue_with_uris(
            &["spiffe://cluster.local/ns/a/sa/gw"],
            &["gw.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        );
        let identity = certificate_identity(&leaf.cert_der).expect("parses");
        assert_eq!(identity.uris, ["spiffe://cluster.local/ns/a/sa/gw"]);
        assert_eq!(identity.dns_names, ["gw.example.com"]);
        assert!(certificate_identity(b"not a certificate").is_err());
    }

    #[tokio::test]
    async fn follows_the_reader_once_per_version_and_keeps_the_last_good() {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let v1 = server_ca.issue(&["sds.example"], KeyKind::EcP256Pkcs8, Validity::current());
        let crl = client_ca.crl().pem();
        let (mut reader, tx) = reader(update(vec![
            ("server", credential("server", &v1).into()),
            (
                "client-ca",
                bundle("client-ca", &client_ca, Some(&crl)).into(),
            ),
        ]))
        .await;
        let tls = ServerTls::follow(reader.clone(), name("server"), name("client-ca"));
        let first = tls.config().expect("usable");
        assert_eq!(first.alpn_protocols, [b"h2".to_vec()]);
        assert!(
            Arc::ptr_eq(&first, &tls.config().expect("usable")),
            "built once"
        );

        // Another secret changes: not rebuilt.
        let other = server_ca.issue(&["other"], KeyKind::EcP256Pkcs8, Validity::current());
        publish(
            &mut reader,
            &tx,
            update(vec![
                ("server", credential("server", &v1).into()),
                (
                    "client-ca",
                    bundle("client-ca", &client_ca, Some(&crl)).into(),
                ),
                ("other", credential("other", &other).into()),
            ]),
        )
        .await;
        assert!(Arc::ptr_eq(&first, &tls.config().expect("usable")));

        // The certificate rotates: rebuilt.
        let v2 = server_ca.issue(&["sds.example"], KeyKind::EcP384Sec1, Validity::current());
        publish(
            &mut reader,
            &tx,
            update(vec![
                ("server", credential("server", &v2).into()),
                ("client-ca", bundle("client-ca", &client_ca, None).into()),
            ]),
        )
        .await;
        let second = tls.config().expect("usable");
        assert!(!Arc::ptr_eq(&first, &second));

        // Missing, then of the wrong kind: the last good configuration stays.
        publish(
            &mut reader,
            &tx,
            update(vec![("server", credential("server", &v2).into())]),
        )
        .await;
        assert!(Arc::ptr_eq(&second, &tls.config().expect("the last good")));
        publish(
            &mut reader,
            &tx,
            update(vec![
                ("server", bundle("server", &server_ca, None).into()),
                ("client-ca", bundle("client-ca", &client_ca, None).into()),
            ]),
        )
        .await;
        assert!(Arc::ptr_eq(&second, &tls.config().expect("the last good")));
    }

    #[tokio::test]
    async fn unusable_secrets_are_reported() {
        let ca = Ca::new("CA");
        let leaf = ca.issue(&["sds.example"], KeyKind::EcP256Pkcs8, Validity::current());
        let (reader, _tx) = reader(update(vec![
            ("server", credential("server", &leaf).into()),
            ("client-ca", bundle("client-ca", &ca, None).into()),
        ]))
        .await;
        let missing = ServerTls::follow(reader.clone(), name("server"), name("nope"));
        assert!(matches!(
            missing.config(),
            Err(Error::TlsSecretMissing { name, expected: VALIDATION_CONTEXT }) if name.as_str() == "nope"
        ));
        let swapped = ServerTls::follow(reader, name("client-ca"), name("server"));
        let error = swapped.config().expect_err("wrong kinds");
        assert_eq!(
            error.to_string(),
            "the SDS server's TLS secret `client-ca` is a validation_context, not a \
             tls_certificate"
        );
    }
}
