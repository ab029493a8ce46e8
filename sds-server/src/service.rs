//! The [`SdsService`] handle: what its streams share (the reader, the encoder, the limits and
//! budget, the counters, the shutdown signal), its counters and its shutdown.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use sds_core::Reader;
use tonic::Status;

use crate::{
    Limits,
    encode::Encoder,
    limits::Budget,
    session::{Refusal, StreamLimits},
    shutdown::Shutdown,
    status,
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
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) streams_opened: AtomicU64,
    pub(crate) streams_closed: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) nacks: AtomicU64,
    pub(crate) refused: AtomicU64,
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
}

// === impl SdsService ===

impl SdsService {
    /// Serves the snapshots published to `reader`, with the default [`Limits`]. Streams wait
    /// for the first snapshot.
    pub fn new(reader: Reader) -> Self {
        Self::with_limits(reader, Limits::default())
    }

    /// Serves the snapshots published to `reader`, holding every client to `limits`.
    pub fn with_limits(reader: Reader, limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                reader,
                encoder: Encoder::default(),
                counters: Counters::default(),
                limits,
                budget: Budget::default(),
                shutdown: Arc::default(),
                warnings: Warnings::default(),
            }),
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
