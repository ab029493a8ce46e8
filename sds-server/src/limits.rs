//! What one client may cost the server: the bounds every stream is held to.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// The bounds an [`SdsService`](crate::SdsService) holds every client to.
///
/// A stream that asks for more than its share is ended with `RESOURCE_EXHAUSTED` and a
/// message saying which limit it hit; the other streams are not affected. Together with the
/// HTTP/2 settings of the embedding server (see [`Limits::MAX_CONCURRENT_STREAMS`] and
/// [`connections`](crate::connections)) they bound what one connection can make the server
/// hold; the crate docs give the figures.
///
/// The defaults fit Envoy, which opens one stream per secret, with room to spare for clients
/// that put many names on one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most names one stream may subscribe to at once. Default 100.
    pub names_per_stream: usize,
    /// Most bytes of names one stream may subscribe to at once (the sum of their lengths).
    /// Default 16 KiB: 100 names of 160 bytes, or 48 of Istio's longest,
    /// `kubernetes://NS/NAME` with a 63-byte namespace and a 253-byte name.
    pub name_bytes_per_stream: usize,
    /// Most subscriptions (a name on a stream) held by the streams of one connection.
    /// Default 10,000. Counted for connections accepted through
    /// [`connections::guard`](crate::connections::guard) (TCP and Unix sockets).
    pub names_per_connection: usize,
    /// Most bytes of names held by the streams of one connection. Default 1 MiB: it takes 32
    /// connections to fill [`Limits::name_bytes_total`]. Counted as
    /// [`Limits::names_per_connection`] is.
    pub name_bytes_per_connection: usize,
    /// Most bytes of partly received requests one connection may make the server hold.
    /// Default 4 MiB: Envoy's requests keep a few hundred bytes each. Counted as
    /// [`Limits::names_per_connection`] is.
    pub pending_bytes_per_connection: usize,
    /// Most subscriptions (a name on a stream) held by all streams together. Default 200,000.
    pub names_total: usize,
    /// Most bytes of names held by all streams together. Default 32 MiB.
    pub name_bytes_total: usize,
    /// On each stream, at most one NACK is logged at WARN per this interval; the others are
    /// counted, logged at DEBUG, and summed up in the next WARN line. Default 60 s.
    pub nack_log_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            names_per_stream: 100,
            name_bytes_per_stream: 16 * 1024,
            names_per_connection: 10_000,
            name_bytes_per_connection: 1024 * 1024,
            pending_bytes_per_connection: 4 * 1024 * 1024,
            names_total: 200_000,
            name_bytes_total: 32 * 1024 * 1024,
            nack_log_interval: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The `SETTINGS_MAX_CONCURRENT_STREAMS` an embedding server should announce:
    /// `tonic::transport::Server::builder().max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)`.
    /// tonic announces no limit unless told to.
    ///
    /// Envoy opens one stream per secret, all on one connection, and attaches them before the
    /// server's SETTINGS arrive: the streams beyond the limit are refused once (Envoy counts an
    /// `update_failure` for each), then retried on a second connection. 1,000 keeps gateways
    /// with up to 1,000 credentials on one connection with nothing refused.
    pub const MAX_CONCURRENT_STREAMS: u32 = 1_000;

    /// Most bytes kept from one request while it is read: the names a stream may hold, their
    /// protobuf framing (the names of a delta request's `initial_resource_versions` come with
    /// a version each), and 8 KiB for the other fields (node id and cluster, nonce, version,
    /// type URL, a NACK's code and message). Everything else (Envoy's `Node` beyond its id
    /// and cluster, unknown fields, NACK details) is skipped as it arrives.
    ///
    /// ```
    /// assert_eq!(sds_server::Limits::default().max_kept_per_request(), 45_760);
    /// ```
    pub fn max_kept_per_request(&self) -> usize {
        self.name_bytes_per_stream
            .saturating_mul(2)
            .saturating_add(self.names_per_stream.saturating_mul(48))
            .saturating_add(8 * 1024)
    }
}

/// Takes `n` from `counter` if it stays within `max`.
fn take(counter: &AtomicUsize, n: usize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            held.checked_add(n).filter(|&after| after <= max)
        })
        .is_ok()
}

/// The subscriptions all streams hold, against [`Limits::names_total`] and
/// [`Limits::name_bytes_total`].
#[derive(Debug, Default)]
pub(crate) struct Budget {
    names: AtomicUsize,
    bytes: AtomicUsize,
}

impl Budget {
    /// Takes one name of `len` bytes from the budget, or says which limit it would exceed.
    pub(crate) fn take(&self, len: usize, limits: &Limits) -> Result<(), Exceeded> {
        if !take(&self.names, 1, limits.names_total) {
            return Err(Exceeded::Names(limits.names_total));
        }
        if !take(&self.bytes, len, limits.name_bytes_total) {
            self.names.fetch_sub(1, Ordering::Relaxed);
            return Err(Exceeded::Bytes(limits.name_bytes_total));
        }
        Ok(())
    }

    /// Gives back one name of `len` bytes.
    pub(crate) fn give_back(&self, len: usize) {
        self.names.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// Subscriptions held now.
    pub(crate) fn names(&self) -> usize {
        self.names.load(Ordering::Relaxed)
    }
}

/// What the streams of one connection hold, against [`Limits::names_per_connection`] and
/// [`Limits::pending_bytes_per_connection`]. Made by [`connections::guard`] for each
/// connection; found by the server in each request's extensions.
///
/// [`connections::guard`]: crate::connections::guard
#[derive(Debug, Default)]
pub(crate) struct ConnectionBudget {
    names: AtomicUsize,
    name_bytes: AtomicUsize,
    pending: AtomicUsize,
}

impl ConnectionBudget {
    /// Takes one subscription of a name of `len` bytes, or says which limit it would exceed.
    pub(crate) fn take_name(&self, len: usize, limits: &Limits) -> Result<(), Exceeded> {
        if !take(&self.names, 1, limits.names_per_connection) {
            return Err(Exceeded::ConnectionNames(limits.names_per_connection));
        }
        if !take(&self.name_bytes, len, limits.name_bytes_per_connection) {
            self.names.fetch_sub(1, Ordering::Relaxed);
            return Err(Exceeded::ConnectionBytes(limits.name_bytes_per_connection));
        }
        Ok(())
    }

    /// Gives back one subscription of a name of `len` bytes.
    pub(crate) fn give_back_name(&self, len: usize) {
        self.names.fetch_sub(1, Ordering::Relaxed);
        self.name_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// Takes `n` bytes of a partly received request, or returns false past `max`.
    pub(crate) fn take_pending(&self, n: usize, max: usize) -> bool {
        take(&self.pending, n, max)
    }

    /// Gives back `n` bytes of partly received requests.
    pub(crate) fn give_back_pending(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes of partly received requests held now (for the fuzz targets, `__bench`).
    #[cfg(feature = "__bench")]
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Which limit a subscription would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Names(usize),
    Bytes(usize),
    ConnectionNames(usize),
    ConnectionBytes(usize),
}
