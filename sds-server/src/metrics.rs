//! Prometheus metrics of an [`SdsService`](crate::SdsService), read at each scrape.
//!
//! [`SdsService::register_metrics`](crate::SdsService::register_metrics) registers one
//! collector into the embedder's `prometheus_client` registry, under the prefix `sds`; it
//! serves no HTTP (see [`admin`](crate::admin) for a handler to mount). Everything is read
//! when scraped: the service's counters, the current snapshot, the source's status, and one
//! short lock per open stream for the subscriptions that wait.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `sds_streams` | gauge | `api` | streams open, by API (`sotw`, `delta`) |
//! | `sds_responses_total` | counter | | responses sent on streams and to fetches |
//! | `sds_nacks_total` | counter | | NACKs received |
//! | `sds_secret_pushes_total` | counter | `secret` | versions of a secret sent to a stream |
//! | `sds_secret_nacks_total` | counter | `secret` | NACKs of a version of a secret |
//! | `sds_denied_total` | counter | | names denied by the policy (see [`Stats::denied`](crate::Stats::denied)) |
//! | `sds_refused_total` | counter | | requests refused (invalid, over a limit) |
//! | `sds_encodes_total` | counter | | secret encodes: one per name and version |
//! | `sds_subscriptions` | gauge | | names subscribed on all streams |
//! | `sds_subscriptions_waiting` | gauge | | subscriptions nothing was ever delivered to |
//! | `sds_subscription_waiting_seconds` | gauge | `secret` | the longest such wait per name (at most 100 names, the longest) |
//! | `sds_secrets` | gauge | | secrets served |
//! | `sds_secrets_expired` | gauge | | secrets served past their end |
//! | `sds_secret_info` | info | `secret`, `kind`, `version` | each secret served |
//! | `sds_secret_expiry_seconds` | gauge | `secret` | seconds until the leaf ends (a trust bundle: its first CA to end); negative once it has |
//! | `sds_secret_not_after_timestamp_seconds` | gauge | `secret` | that `notAfter`, in Unix seconds |
//! | `sds_secret_rejected` | gauge | `secret`, `reason` | 1 while the source's input for the secret is rejected |
//! | `sds_secret_rejections_total` | counter | `secret`, `reason` | rejections of the secret's input, each new problem once |
//! | `sds_source_updates_total` | counter | | updates the source yielded |
//! | `sds_source_failures_total` | counter | | errors the source reported |
//! | `sds_source_failing` | gauge | | 1 while the source's last word was an error |
//! | `sds_source_last_update_timestamp_seconds` | gauge | | when the source last yielded an update |
//! | `sds_source_last_update_age_seconds` | gauge | | seconds since then |
//!
//! Labels are secret names, bounded by the source (a secret's counters go when it is no
//! longer served nor held), the reasons of [`sds_core::Error::reason`] and the two APIs;
//! never node ids or peers. The names that wait are names clients asked for: at most 100
//! of them are shown.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use sds_core::SecretName;

use crate::{
    inventory::{Api, system_time},
    service::Inner,
};

/// At most this many waiting names are labelled in `sds_subscription_waiting_seconds`.
pub(crate) const MAX_WAITING_NAMES: usize = 100;

/// Per secret counters, shared by the rollout trackers of the secret.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    by_secret: Mutex<HashMap<SecretName, Arc<SecretTally>>>,
}

/// What happened to one secret on all streams.
#[derive(Debug, Default)]
pub(crate) struct SecretTally {
    pub(crate) pushes: AtomicU64,
    pub(crate) nacks: AtomicU64,
}

impl Tallies {
    /// The counters of `name`, created if needed.
    pub(crate) fn of(&self, name: &SecretName) -> Arc<SecretTally> {
        Arc::clone(self.by_secret.lock().entry(name.clone()).or_default())
    }

    /// Every secret's counts, forgetting those of secrets neither served (`served`) nor
    /// held by a stream: bounded by the source.
    fn read(&self, served: impl Fn(&SecretName) -> bool) -> Vec<(SecretName, u64, u64)> {
        let mut by_secret = self.by_secret.lock();
        by_secret.retain(|name, tally| Arc::strong_count(tally) > 1 || served(name));
        let mut counts: Vec<_> = by_secret
            .iter()
            .map(|(name, t)| {
                let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
                (name.clone(), load(&t.pushes), load(&t.nacks))
            })
            .collect();
        counts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        counts
    }
}

/// The collector registered for a service; holds it weakly, and reports nothing once the
/// service is gone.
pub(crate) struct ServiceCollector {
    pub(crate) inner: Weak<Inner>,
}

impl fmt::Debug for ServiceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCollector").finish_non_exhaustive()
    }
}

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let now = inner.clock.now();
        let e = &mut encoder;
        let c = &inner.counters;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);

        let mut streams =
            e.encode_descriptor("streams", "Streams open, by API", None, MetricType::Gauge)?;
        for api in [Api::Sotw, Api::Delta] {
            let open = load(&c.open[api as usize]);
            ConstGauge::new(open as i64)
                .encode(streams.encode_family(&[("api", api.as_str())])?)?;
        }
        counter(
            e,
            "responses",
            "Responses sent on streams and to fetches",
            load(&c.responses),
        )?;
        counter(e, "nacks", "NACKs received", load(&c.nacks))?;

        let snapshot = inner.reader.current();
        let served = |name: &SecretName| {
            snapshot
                .as_ref()
                .is_some_and(|s| s.get(name.as_str()).is_some())
        };
        let tallies = inner.rollouts.tallies.read(served);
        let mut pushes = e.encode_descriptor(
            "secret_pushes",
            "Versions of a secret sent to a stream",
            None,
            MetricType::Counter,
        )?;
        for (name, sent, _) in &tallies {
            ConstCounter::new(*sent).encode(pushes.encode_family(&secret(name))?)?;
        }
        let mut nacks = e.encode_descriptor(
            "secret_nacks",
            "NACKs of a version of a secret",
            None,
            MetricType::Counter,
        )?;
        for (name, _, nacked) in &tallies {
            ConstCounter::new(*nacked).encode(nacks.encode_family(&secret(name))?)?;
        }
        counter(e, "denied", "Names denied by the policy", load(&c.denied))?;
        counter(
            e,
            "refused",
            "Requests refused: invalid names or types, clients over a limit",
            load(&c.refused),
        )?;
        counter(
            e,
            "encodes",
            "Secret encodes: one per name and version",
            inner.encoder.encodes(),
        )?;
        gauge(
            e,
            "subscriptions",
            "Names subscribed on all streams",
            inner.budget.names() as i64,
        )?;

        let waiting = inner.clients.waiting(now);
        gauge(
            e,
            "subscriptions_waiting",
            "Subscriptions to names nothing was ever delivered to (the name does not exist, or \
             was never valid)",
            waiting.count as i64,
        )?;
        let mut longest = e.encode_descriptor(
            "subscription_waiting_seconds",
            "The longest wait of a subscription nothing was delivered to, per name (at most \
             100 names: the longest waits)",
            None,
            MetricType::Gauge,
        )?;
        for (name, wait) in &waiting.longest {
            ConstGauge::new(wait.as_secs_f64()).encode(longest.encode_family(&secret(name))?)?;
        }

        let secrets: Vec<_> = snapshot.iter().flat_map(|s| s.iter()).collect();
        gauge(e, "secrets", "Secrets served", secrets.len() as i64)?;
        let expired = secrets
            .iter()
            .filter(|(_, s)| s.not_after().is_some_and(|t| system_time(t) <= now))
            .count();
        gauge(
            e,
            "secrets_expired",
            "Secrets served past their end (kept: the last good version)",
            expired as i64,
        )?;
        let mut info = e.encode_descriptor(
            "secret",
            "A secret served: its kind and version",
            None,
            MetricType::Info,
        )?;
        for (name, s) in &secrets {
            let version = s.version().to_string();
            let labels = [
                ("secret", name.as_str()),
                ("kind", s.kind()),
                ("version", version.as_str()),
            ];
            info.encode_info(&labels)?;
        }
        let mut expiry = e.encode_descriptor(
            "secret_expiry_seconds",
            "Seconds until the secret's leaf certificate ends (a trust bundle: its first CA \
             certificate to end); negative once it has",
            None,
            MetricType::Gauge,
        )?;
        for (name, s) in &secrets {
            if let Some(not_after) = s.not_after() {
                let left = seconds_between(now, system_time(not_after));
                ConstGauge::new(left).encode(expiry.encode_family(&secret(name))?)?;
            }
        }
        let mut not_after = e.encode_descriptor(
            "secret_not_after_timestamp_seconds",
            "When the secret's leaf certificate ends (a trust bundle: its first CA certificate \
             to end), in seconds since the Unix epoch",
            None,
            MetricType::Gauge,
        )?;
        for (name, s) in &secrets {
            if let Some(t) = s.not_after() {
                let at = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
                ConstGauge::new(at).encode(not_after.encode_family(&secret(name))?)?;
            }
        }

        let mut rejected = e.encode_descriptor(
            "secret_rejected",
            "1 while the source's input for the secret is rejected (the last good version, if \
             any, is served)",
            None,
            MetricType::Gauge,
        )?;
        for (name, error) in snapshot.iter().flat_map(|s| s.rejected()) {
            let labels = [("secret", name.as_str()), ("reason", error.reason())];
            ConstGauge::new(1).encode(rejected.encode_family(&labels)?)?;
        }
        let status = inner.reader.source_status();
        let mut rejections = e.encode_descriptor(
            "secret_rejections",
            "Rejections of the source's input for a secret, each new problem once",
            None,
            MetricType::Counter,
        )?;
        for r in &status.rejections {
            let labels = [("secret", r.secret.as_str()), ("reason", r.reason)];
            ConstCounter::new(r.count).encode(rejections.encode_family(&labels)?)?;
        }
        counter(
            e,
            "source_updates",
            "Updates the source yielded",
            status.updates,
        )?;
        counter(
            e,
            "source_failures",
            "Errors the source reported (the last good snapshot stays served)",
            status.failures,
        )?;
        gauge(
            e,
            "source_failing",
            "1 while the last thing the source reported was an error",
            i64::from(status.failing),
        )?;
        if let Some(last) = status.last_update {
            let at = last
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let mut m = e.encode_descriptor(
                "source_last_update_timestamp_seconds",
                "When the source last yielded an update, in seconds since the Unix epoch: \
                 sources yield changes, so a quiet source yields none (see \
                 sds_source_failing for its health)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(at).encode(m.encode_family(&NO_LABELS)?)?;
            let age = now.duration_since(last).unwrap_or_default();
            let mut m = e.encode_descriptor(
                "source_last_update_age_seconds",
                "Seconds since the source last yielded an update",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(age.as_secs_f64()).encode(m.encode_family(&NO_LABELS)?)?;
        }
        Ok(())
    }
}

const NO_LABELS: [(&str, &str); 0] = [];

fn secret(name: &SecretName) -> [(&'static str, &str); 1] {
    [("secret", name.as_str())]
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// `to - from` in seconds, negative when `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

/// The subscriptions nothing was delivered to, over all streams.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    pub(crate) count: usize,
    /// The longest wait per name, longest first, at most [`MAX_WAITING_NAMES`].
    pub(crate) longest: Vec<(SecretName, Duration)>,
}
