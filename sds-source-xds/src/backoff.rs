//! Exponential backoff with jitter between reconnection attempts.

use std::{
    hash::{BuildHasher as _, RandomState},
    time::Duration,
};

/// How long to wait before reconnecting: `initial`, doubled after every failure up to `max`,
/// each delay drawn uniformly from its upper half (jitter), so that many clients restarted
/// together do not reconnect in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

// === impl Backoff ===

impl Backoff {
    /// The default: 500 ms, doubling up to 30 s (Envoy's default for xDS is 500 ms to 30 s).
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    /// Starts at `initial` and doubles up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The delay before attempt `failures + 1`, after `failures` consecutive failures (at
    /// least 1).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let ceiling = self.initial.saturating_mul(1 << exp).min(self.max);
        let half = ceiling / 2;
        let random = RandomState::new().hash_one(failures);
        // Uniform in [half, ceiling].
        let span = ceiling.saturating_sub(half).as_nanos().max(1);
        let extra = u64::try_from(u128::from(random) % span).unwrap_or(0);
        half + Duration::from_nanos(extra)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_within_bounds() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for failures in 1..40 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow((failures - 1).min(20)))
                .min(Duration::from_secs(1));
            let delay = backoff.delay(failures);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
    }
}
