//! Where the publisher's time comes from: the [`Clock`] it reads for expiry warnings and
//! for the source's [`status`](crate::Reader::source_status), injected so tests drive time.

use std::{fmt, time::SystemTime};

/// The wall clock the [`Driver`](crate::Driver) reads: to tell how long a served certificate
/// has left, and when the source last yielded. The default is [`SystemClock`].
///
/// The driver still waits with tokio's timers between two readings (at most a day, less when
/// a certificate enters the warning window sooner): a test clock that moves with tokio's
/// paused time (`tokio::time::advance`) drives both.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock ([`SystemTime::now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
