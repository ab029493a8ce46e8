//! Warnings about served certificates near their end: run by the [`Driver`](crate::Driver)
//! against each new snapshot and again as time passes.
//!
//! The policy: a certificate whose `notAfter` is within the warning window (7 days by
//! default) is logged at WARN when its version is first served and again every day while it
//! is; one that has expired and is still served (the last good version: its replacement was
//! rejected, or never came) is logged at ERROR, when it expires and every day after. It keeps
//! being served: Envoy keeps a secret it holds whatever happens, so withdrawing it would help
//! no one, and a proxy that reconnects still gets what its peers have. For a trust bundle the
//! CA certificate that expires first counts.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls_pki_types::UnixTime;

use crate::{SecretName, Snapshot, Version, error::Utc};

/// How long before its end a certificate is warned about, by default.
pub(crate) const DEFAULT_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often a certificate in the window (or expired) is logged again.
pub(crate) const REPEAT: Duration = Duration::from_secs(24 * 3600);

/// What was said about which served certificate, and when.
#[derive(Debug)]
pub(crate) struct Expiry {
    window: Duration,
    /// Names in the window or expired, as last logged; only names of the last snapshot.
    alerted: HashMap<SecretName, Alerted>,
}

#[derive(Debug)]
struct Alerted {
    version: Version,
    expired: bool,
    at: SystemTime,
}

impl Expiry {
    /// Warns `window` before a certificate's end (zero: only once it has ended).
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            alerted: HashMap::new(),
        }
    }

    /// Logs what is due about `snapshot` at `now`; returns when something will be due next.
    pub(crate) fn check(&mut self, snapshot: &Snapshot, now: SystemTime) -> Option<SystemTime> {
        self.alerted
            .retain(|name, _| snapshot.get(name.as_str()).is_some());
        let mut next: Option<SystemTime> = None;
        let mut soonest = |at: SystemTime| {
            next = Some(next.map_or(at, |n| n.min(at)));
        };
        for (name, secret) in snapshot.iter() {
            let Some(certificate) = secret.expiring_certificate() else {
                continue;
            };
            let not_after = system_time(certificate.not_after());
            let left = not_after.duration_since(now).ok();
            let expired = left.is_none_or(|left| left.is_zero());
            if let Some(left) = left.filter(|left| *left > self.window) {
                self.alerted.remove(name);
                soonest(now + (left - self.window));
                continue;
            }
            let due = self.alerted.get(name).is_none_or(|a| {
                a.version != secret.version()
                    || a.expired != expired
                    || now.duration_since(a.at).is_ok_and(|since| since >= REPEAT)
            });
            if due {
                let ca = matches!(**secret, crate::Secret::ValidationContext(_));
                let what = if ca { "CA certificate" } else { "certificate" };
                let shown = Utc(certificate.not_after());
                if expired {
                    let ago = Left(now.duration_since(not_after).unwrap_or_default());
                    tracing::error!(
                        secret = %name, version = %secret.version(), subject = certificate.subject(),
                        not_after = %shown, expired_ago = %ago,
                        "served {what} has EXPIRED; still serving it (the last good version): \
                         replace it"
                    );
                } else {
                    let left = Left(left.unwrap_or_default());
                    tracing::warn!(
                        secret = %name, version = %secret.version(), subject = certificate.subject(),
                        not_after = %shown, expires_in = %left,
                        "served {what} expires soon: renew it"
                    );
                }
                self.alerted.insert(
                    name.clone(),
                    Alerted {
                        version: secret.version(),
                        expired,
                        at: now,
                    },
                );
            }
            if let Some(alerted) = self.alerted.get(name) {
                soonest(alerted.at + REPEAT);
            }
            if !expired {
                soonest(not_after);
            }
        }
        next
    }
}

fn system_time(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

/// A duration for people: `6d 23h 59m`, `3h 5m`, `42s`.
struct Left(Duration);

impl fmt::Display for Left {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
        match (days, hours, minutes) {
            (0, 0, 0) => write!(f, "{secs}s"),
            (0, 0, m) => write!(f, "{m}m"),
            (0, h, m) => write!(f, "{h}h {m}m"),
            (d, h, m) => write!(f, "{d}d {h}h {m}m"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let left = |secs| Left(Duration::from_secs(secs)).to_string();
        assert_eq!(left(42), "42s");
        assert_eq!(left(3 * 60 + 5), "3m");
        assert_eq!(left(3 * 3600 + 5 * 60), "3h 5m");
        assert_eq!(left(7 * 86_400 - 60), "6d 23h 59m");
    }
}
