//! The [`SdsService`] handle: what its streams share (the reader, the encoder, the limits and
//! budget, the counters, the shutdown signal), its counters and its shutdown.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use sds_core::{Clock, Reader, SystemClock};

use crate::inventory::{self, Client, SecretInfo};
use tonic::Status;

use crate::{
    Limits,
    encode::Encoder,
    limits::Budget,
    policy::{Policy, UnixPeers},
    rollout::Rollouts,
    session::{Refusal, StreamLimits},
    shutdown::Shutdown,
    status,
    stream::Registry,
    warnings::Warnings,
};

/// The SDS service: add [`SdsService::into_server`] to your own tonic server.
///
/// Cheap to clone; every clone serves the same snapshots. It never binds a socket and never
/// spawns a task: each stream's protocol runs while tonic polls its response body.
#[derive(Clone)]
pub struct SdsService {
    pub(crate) inner: Arc<Inner>,
}

/// What every stream of a service shares.
pub(crate) struct Inner {
    pub(crate) reader: Reader,
    pub(crate) encoder: Encoder,
    pub(crate) counters: Counters,
    pub(crate) limits: Limits,
    /// The subscriptions all streams hold, against `limits`.
    pub(crate) budget: Budget,
    /// Set once by [`SdsService::shutdown`]; every stream watches it.
    pub(crate) shutdown: Arc<Shutdown>,
    /// The WARN lines clients cause, bounded server-wide.
    pub(crate) warnings: Warnings,
    /// Who may have which secret.
    pub(crate) policy: Arc<dyn Policy>,
    /// Every open stream, for [`SdsService::clients`].
    pub(crate) clients: Registry,
    /// The pushes of each watched secret's new versions, summed up in one line each, and
    /// the per-secret counters.
    pub(crate) rollouts: Rollouts,
    /// The wall clock: when streams connect and subscribe, how long certificates have left.
    pub(crate) clock: Arc<dyn Clock>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) streams_opened: AtomicU64,
    pub(crate) streams_closed: AtomicU64,
    /// Streams open now, by [`Api`](crate::inventory::Api) (`api as usize`).
    pub(crate) open: [AtomicU64; 2],
    pub(crate) responses: AtomicU64,
    pub(crate) nacks: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) denied: AtomicU64,
}

/// Counters of a running [`SdsService`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Streams (`StreamSecrets` and `DeltaSecrets`) open now.
    pub streams_active: u64,
    /// Responses sent on streams and to fetches.
    pub responses: u64,
    /// Secret encodes performed: one per (name, version), whatever the number of streams.
    pub encodes: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Subscriptions (a name on a stream) held by all streams now.
    pub subscriptions: u64,
    /// Requests refused: invalid names or types, and clients over a [`Limits`] bound.
    pub refused: u64,
    /// Names denied by the [`Policy`]: once per stream and name (again after the name was
    /// unsubscribed, or allowed in between), and once per name of a denied fetch.
    pub denied: u64,
}

/// Builds an [`SdsService`] with a [`Policy`] and [`Limits`] of your choice; see
/// [`SdsService::builder`].
#[derive(Clone)]
pub struct Builder {
    reader: Reader,
    limits: Limits,
    policy: Arc<dyn Policy>,
    clock: Arc<dyn Clock>,
}

// === impl SdsService ===

impl SdsService {
    /// Serves the snapshots published to `reader`, with the default [`Limits`], to the
    /// server's own user and root on a Unix socket only ([`UnixPeers::same_user`]): choose who
    /// may have which secret with [`SdsService::builder`]. Streams wait for the first snapshot.
    pub fn new(reader: Reader) -> Self {
        Self::builder(reader).build()
    }

    /// Serves the snapshots published to `reader`, holding every client to `limits`, to the
    /// server's own user and root on a Unix socket only (see [`SdsService::new`]).
    pub fn with_limits(reader: Reader, limits: Limits) -> Self {
        Self::builder(reader).limits(limits).build()
    }

    /// A service over `reader` to configure: [`Builder::policy`] (default
    /// [`UnixPeers::same_user`]), [`Builder::limits`] (default [`Limits::default`]).
    pub fn builder(reader: Reader) -> Builder {
        Builder {
            reader,
            limits: Limits::default(),
            policy: Arc::new(UnixPeers::same_user()),
            clock: Arc::new(SystemClock),
        }
    }

    /// The limits this service holds clients to.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Ends every open stream with `UNAVAILABLE` and refuses new ones, so that a graceful
    /// shutdown of the embedding server can complete (SDS streams never end on their own).
    /// Envoy keeps its secrets and reconnects, to another replica or to the next instance.
    ///
    /// Call it from the shutdown future given to tonic:
    /// `serve_with_shutdown(addr, async { signal.await; sds.shutdown() })`.
    pub fn shutdown(&self) {
        self.inner.shutdown.trigger();
    }

    /// What every open stream's client holds, in the order the streams opened: who it is
    /// (and claims to be), and for each name it subscribes to the version sent, the version
    /// ACKed, the last NACK, whether the policy denies it and since when it waits. See
    /// [`inventory`] for the JSON form.
    ///
    /// Each stream is read under its own lock, briefly, one after the other: the whole is not
    /// one instant, each stream's part is.
    pub fn clients(&self) -> Vec<Client> {
        self.inner.clients.clients()
    }

    /// What every secret being served is (name, version, kind, certificate names and
    /// validity, CAs, OCSP staple), in name order; empty before the first snapshot. Never
    /// key material.
    pub fn secrets(&self) -> Vec<SecretInfo> {
        self.inner
            .reader
            .current()
            .map_or_else(Vec::new, |snapshot| inventory::secrets(&snapshot))
    }

    /// Registers the service's metrics into `registry`, under the prefix `sds`: streams,
    /// responses and NACKs (per secret too), denials, waiting subscriptions, each secret's
    /// expiry, the source's updates and rejections. Read at each scrape; the service serves
    /// no HTTP (see [`admin`](crate::admin)). See [`metrics`](crate::metrics) for the list.
    ///
    /// The registry holds the service weakly: once every clone of the service is dropped,
    /// it reports nothing.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry
            .sub_registry_with_prefix("sds")
            .register_collector(Box::new(crate::metrics::ServiceCollector {
                inner: Arc::downgrade(&self.inner),
            }));
    }

    /// Whether the service has something to serve: its reader has a first snapshot (for
    /// Kubernetes, the source yields it once every namespace was listed). Streams and
    /// fetches wait until then.
    pub fn is_ready(&self) -> bool {
        self.inner.reader.current().is_some()
    }

    /// A snapshot of the service's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let opened = c.streams_opened.load(Ordering::Relaxed);
        let closed = c.streams_closed.load(Ordering::Relaxed);
        Stats {
            streams_active: opened.saturating_sub(closed),
            responses: c.responses.load(Ordering::Relaxed),
            encodes: self.inner.encoder.encodes(),
            nacks: c.nacks.load(Ordering::Relaxed),
            subscriptions: self.inner.budget.names() as u64,
            refused: c.refused.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for SdsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdsService")
            .field("reader", &self.inner.reader)
            .field("stats", &self.stats())
            .finish()
    }
}

// === impl Builder ===

impl Builder {
    /// Who may have which secret (see [`policy`](crate::policy)).
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The bounds every client is held to.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The wall clock (default [`SystemClock`]): when streams connect and subscribe, and
    /// how long served certificates have left in the metrics. Tests inject their own.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The service.
    pub fn build(self) -> SdsService {
        SdsService {
            inner: Arc::new(Inner {
                reader: self.reader,
                encoder: Encoder::default(),
                counters: Counters::default(),
                limits: self.limits,
                budget: Budget::default(),
                shutdown: Arc::default(),
                warnings: Warnings::default(),
                policy: self.policy,
                clients: Registry::default(),
                rollouts: Rollouts::default(),
                clock: self.clock,
            }),
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

// === impl Inner ===

impl Inner {
    /// A stream's share of the limits.
    pub(crate) fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            names: self.limits.names_per_stream,
            name_bytes: self.limits.name_bytes_per_stream,
        }
    }

    /// Counts a refused request and maps it to its status.
    pub(crate) fn refuse(&self, refusal: Refusal) -> Status {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        status::refusal(refusal)
    }

    /// `UNAVAILABLE` once the service is shutting down.
    pub(crate) fn refuse_when_shutting_down(&self) -> Result<(), Status> {
        if self.shutdown.is_down() {
            Err(status::shutting_down())
        } else {
            Ok(())
        }
    }
}
