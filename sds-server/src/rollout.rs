//! Server-wide summaries of secret rotations: when a new version of a secret reaches the
//! streams that hold it, one INFO line once every one of them answered (or after [`TIMEOUT`]),
//! instead of a line per stream.
//!
//! Counted per secret (the one a subscription is served from), under a lock per secret:
//! O(1) per push, per answer and per subscription that ends. A subscription joins its secret's
//! [`Tracker`] when it is first sent a version of it, and leaves when it ends: trackers exist
//! for secrets that were served and are still held, none for names only waited for. Each holds
//! at most one rollout (its latest version's), forgotten once logged.
//!
//! A rollout starts when a stream sends a version of a secret other than the one sent last by
//! any stream: a rotation, not a first delivery. It is complete once every subscription that
//! held the secret then was sent the version, and every push of it was answered; a
//! subscription that ends first is counted as gone, and streams that get the version first
//! while it is open count too. The stream whose push started it wakes at its timeout to log
//! it; if that stream is gone, the next event of the secret (a push, an answer, a
//! subscription that ends) does.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use sds_core::{SecretName, Version};
use tokio::time::Instant;

use crate::metrics::{SecretTally, Tallies};

/// How long a rollout waits for every stream to answer before it is logged as it stands.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// Every held secret's tracker.
#[derive(Debug, Default)]
pub(crate) struct Rollouts {
    trackers: Mutex<HashMap<SecretName, Arc<Tracker>>>,
    /// Every secret's push and NACK counts, which outlive its trackers.
    pub(crate) tallies: Tallies,
}

/// The pushes of one secret and the answers to them.
#[derive(Debug)]
pub(crate) struct Tracker {
    name: SecretName,
    state: Mutex<State>,
    tally: Arc<SecretTally>,
}

/// Where one subscription stands in its secret's rollouts: kept by the subscription, 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// The last rollout it was sent a version in (0: none).
    rollout: u32,
    /// Whether it has not answered that push yet.
    awaiting: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Subscriptions that were sent this secret, on every stream.
    holders: usize,
    /// The version some stream sent last.
    last: Option<Version>,
    /// The number of the last rollout started.
    rollouts: u32,
    /// The rollout of `last`, until it is logged (boxed: most trackers have none).
    rollout: Option<Box<Rollout>>,
}

#[derive(Debug)]
struct Rollout {
    number: u32,
    version: Version,
    started: Instant,
    /// Holders when it started, but those that went away before they were sent it.
    expected: usize,
    /// Of those, the ones it was sent to.
    reached: usize,
    /// Pushes of it, to newcomers too.
    sent: usize,
    acked: usize,
    nacked: usize,
    /// Subscriptions it was sent to that ended without an answer.
    gone: usize,
    /// When the last answer came.
    answered_at: Instant,
}

/// How a rollout ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every stream it was sent to answered, or went away.
    Answered,
    /// [`TIMEOUT`] passed first.
    TimedOut,
    /// A newer version was pushed first.
    Superseded(Version),
    /// No stream holds the secret any more.
    Unheld,
}

/// What a rollout came to: logged once, outside the tracker's lock.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    version: Version,
    expected: usize,
    sent: usize,
    acked: usize,
    nacked: usize,
    gone: usize,
    elapsed: Duration,
    end: End,
}

// === impl Rollouts ===

impl Rollouts {
    /// A subscription is sent `name` for the first time: its tracker, to hand back to
    /// [`Rollouts::leave`].
    pub(crate) fn join(&self, name: &SecretName) -> Arc<Tracker> {
        let mut trackers = self.trackers.lock();
        let tracker = trackers.entry(name.clone()).or_insert_with(|| {
            Arc::new(Tracker {
                name: name.clone(),
                state: Mutex::default(),
                tally: self.tallies.of(name),
            })
        });
        tracker.state.lock().holders += 1;
        Arc::clone(tracker)
    }

    /// A subscription that stands at `held` ends: the rollout may be complete, and the
    /// tracker goes with its last holder.
    pub(crate) fn leave(&self, tracker: &Tracker, held: Held, now: Instant) {
        let summary = {
            let mut trackers = self.trackers.lock();
            let mut state = tracker.state.lock();
            state.holders = state.holders.saturating_sub(1);
            if let Some(rollout) = state.rollout.as_mut() {
                if held.rollout != rollout.number {
                    // A holder it was not sent to yet: no longer expected.
                    rollout.expected = rollout.expected.saturating_sub(1);
                } else if held.awaiting {
                    rollout.gone += 1;
                }
            }
            if state.holders == 0 {
                trackers.remove(&tracker.name);
                let end = state.settled(now).unwrap_or(End::Unheld);
                state.rollout.take().map(|r| r.summary(end, now))
            } else {
                state.take_settled(now)
            }
        };
        tracker.log(summary);
    }
}

// === impl Tracker ===

impl Tracker {
    /// A stream sent `version` to a subscription that stands at `held`, and that just joined
    /// if `new`. Returns when the rollout this push started times out, if it started one.
    pub(crate) fn pushed(
        &self,
        held: &mut Held,
        new: bool,
        version: Version,
        now: Instant,
    ) -> Option<Instant> {
        self.tally.pushes.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock();
        let (summary, started) = match state.last {
            Some(last) if last != version => {
                let superseded = state
                    .rollout
                    .take()
                    .map(|r| r.summary(End::Superseded(version), now));
                state.rollouts = state.rollouts.wrapping_add(1).max(1);
                state.rollout = Some(Box::new(Rollout {
                    number: state.rollouts,
                    version,
                    started: now,
                    expected: state.holders,
                    reached: 0,
                    sent: 0,
                    acked: 0,
                    nacked: 0,
                    gone: 0,
                    answered_at: now,
                }));
                state.last = Some(version);
                (superseded, Some(now + TIMEOUT))
            }
            Some(_) => (state.take_settled(now), None),
            // The first version any stream sent: a first delivery, not a rotation.
            None => {
                state.last = Some(version);
                (None, None)
            }
        };
        held.awaiting = false;
        if let Some(rollout) = state.rollout.as_mut().filter(|r| r.version == version) {
            rollout.sent += 1;
            if held.rollout != rollout.number {
                // A holder when it started (a newcomer is not expected).
                if !new || started.is_some() {
                    rollout.reached += 1;
                }
                held.rollout = rollout.number;
            }
            held.awaiting = true;
        }
        drop(state);
        self.log(summary);
        started
    }

    /// The client of a subscription that stands at `held` ACKed (`accepted`) or NACKed a
    /// response carrying `version`.
    pub(crate) fn answered(&self, held: &mut Held, version: Version, accepted: bool, now: Instant) {
        if !accepted {
            self.tally.nacks.fetch_add(1, Ordering::Relaxed);
        }
        let mut state = self.state.lock();
        if let Some(rollout) = state.rollout.as_mut().filter(|r| r.version == version) {
            if held.rollout == rollout.number {
                held.awaiting = false;
            }
            if accepted {
                rollout.acked += 1;
            } else {
                rollout.nacked += 1;
            }
            rollout.answered_at = now;
        }
        let summary = state.take_settled(now);
        drop(state);
        self.log(summary);
    }

    /// Logs the open rollout if its time is up; returns when it times out if it is still open.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock();
        let summary = state.take_settled(now);
        let pending = state.rollout.as_ref().map(|r| r.started + TIMEOUT);
        drop(state);
        self.log(summary);
        pending
    }

    fn log(&self, summary: Option<Summary>) {
        let Some(s) = summary else { return };
        let (secret, version, ms) = (&self.name, s.version, s.elapsed.as_millis());
        let (n, acked, nacked, gone) = (s.sent, s.acked, s.nacked, s.gone);
        let unanswered = n.saturating_sub(acked + nacked + gone);
        let counts = format!(
            "{acked} ACKed, {nacked} NACKed, {gone} closed first, {unanswered} without an answer"
        );
        match s.end {
            End::Answered if nacked == 0 && gone == 0 => tracing::info!(
                %secret, %version, "pushed to {n} streams, all ACKed in {ms} ms"
            ),
            End::Answered => tracing::info!(
                %secret, %version, "pushed to {n} streams, all answered in {ms} ms: {counts}"
            ),
            End::TimedOut => tracing::info!(
                %secret, %version, expected = s.expected,
                "pushed to {n} streams: {counts} after {} s", TIMEOUT.as_secs()
            ),
            End::Superseded(next) => tracing::info!(
                %secret, %version, %next,
                "pushed to {n} streams: {counts} when a newer version replaced it after {ms} ms"
            ),
            End::Unheld => tracing::info!(
                %secret, %version,
                "pushed to {n} streams: {counts} when the last stream holding it went away \
                 after {ms} ms"
            ),
        }
    }
}

// === impl State ===

impl State {
    /// How the open rollout ends now, if it does: every holder was sent it and every push
    /// was answered (or its subscription went away), or its time is up.
    fn settled(&self, now: Instant) -> Option<End> {
        let rollout = self.rollout.as_ref()?;
        let answered = rollout.reached >= rollout.expected
            && rollout.acked + rollout.nacked + rollout.gone >= rollout.sent;
        if answered {
            Some(End::Answered)
        } else if now.duration_since(rollout.started) >= TIMEOUT {
            Some(End::TimedOut)
        } else {
            None
        }
    }

    /// Takes the open rollout out if it ends now.
    fn take_settled(&mut self, now: Instant) -> Option<Summary> {
        let end = self.settled(now)?;
        self.rollout.take().map(|r| r.summary(end, now))
    }
}

impl Rollout {
    fn summary(&self, end: End, now: Instant) -> Summary {
        let until = if end == End::Answered {
            self.answered_at
        } else {
            now
        };
        Summary {
            version: self.version,
            expected: self.expected,
            sent: self.sent,
            acked: self.acked,
            nacked: self.nacked,
            gone: self.gone,
            elapsed: until.duration_since(self.started),
            end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u8) -> Version {
        // Distinct versions without a secret: digests of different numbers of inputs.
        Version::combine(&vec![Version::combine([]); usize::from(n)])
    }

    /// `(expected, reached, sent, acked, nacked, gone)` of the open rollout.
    fn rollout(tracker: &Tracker) -> Option<(usize, usize, usize, usize, usize, usize)> {
        let state = tracker.state.lock();
        let r = state.rollout.as_ref()?;
        Some((r.expected, r.reached, r.sent, r.acked, r.nacked, r.gone))
    }

    /// A subscription: its tracker and where it stands.
    struct Sub(Arc<Tracker>, Held);

    impl Sub {
        fn join(rollouts: &Rollouts, now: Instant) -> Self {
            let mut sub = Sub(
                rollouts.join(&SecretName::new("a").expect("a name")),
                Held::default(),
            );
            sub.push(version(1), true, now);
            sub
        }
        fn push(&mut self, v: Version, new: bool, now: Instant) -> Option<Instant> {
            self.0.pushed(&mut self.1, new, v, now)
        }
        fn answer(&mut self, v: Version, accepted: bool, now: Instant) {
            self.0.answered(&mut self.1, v, accepted, now)
        }
        fn leave(self, rollouts: &Rollouts, now: Instant) {
            rollouts.leave(&self.0, self.1, now)
        }
    }

    #[test]
    fn a_rotation_is_summed_up_once_every_holder_answered() {
        let rollouts = Rollouts::default();
        let now = Instant::now();
        // First deliveries start nothing.
        let mut subs: Vec<Sub> = (0..3).map(|_| Sub::join(&rollouts, now)).collect();
        assert_eq!(rollout(&subs[0].0), None);

        // The rotation: one rollout, expecting the three holders.
        let v2 = version(2);
        assert_eq!(subs[0].push(v2, false, now), Some(now + TIMEOUT));
        assert_eq!(subs[1].push(v2, false, now), None);
        subs[0].answer(v2, true, now);
        subs[1].answer(version(1), true, now); // an old version: not counted
        subs[1].answer(v2, false, now);
        assert_eq!(rollout(&subs[0].0), Some((3, 2, 2, 1, 1, 0)));
        // A newcomer gets it too: counted, but the third holder is still expected.
        let mut newcomer = Sub(
            rollouts.join(&SecretName::new("a").expect("a name")),
            Held::default(),
        );
        newcomer.push(v2, true, now);
        newcomer.answer(v2, true, now);
        assert_eq!(rollout(&subs[0].0), Some((3, 2, 3, 2, 1, 0)));
        subs[2].push(v2, false, now);
        subs[2].answer(v2, true, now);
        assert_eq!(rollout(&subs[0].0), None, "complete");
    }

    #[test]
    fn holders_that_go_away_are_counted_not_awaited() {
        let rollouts = Rollouts::default();
        let now = Instant::now();
        let mut subs: Vec<Sub> = (0..3).map(|_| Sub::join(&rollouts, now)).collect();
        let v2 = version(2);
        subs[0].push(v2, false, now);
        subs[1].push(v2, false, now);
        subs[0].answer(v2, true, now);
        let (never_sent, unanswered) = (subs.pop().expect("3"), subs.pop().expect("2"));
        // One goes before it answers, the other before it was sent anything.
        unanswered.leave(&rollouts, now);
        assert_eq!(rollout(&subs[0].0), Some((3, 2, 2, 1, 0, 1)));
        never_sent.leave(&rollouts, now);
        assert_eq!(rollout(&subs[0].0), None, "everyone still there answered");
    }

    #[test]
    fn a_rollout_ends_on_timeout_newer_version_or_last_holder() {
        let rollouts = Rollouts::default();
        let now = Instant::now();
        let (mut t, other) = (Sub::join(&rollouts, now), Sub::join(&rollouts, now));
        t.push(version(2), false, now);
        assert_eq!(
            t.0.expire(now + Duration::from_secs(1)),
            Some(now + TIMEOUT)
        );
        assert_eq!(t.0.expire(now + TIMEOUT), None, "timed out and logged");

        t.push(version(3), false, now);
        t.push(version(4), false, now);
        let open = t.0.state.lock().rollout.as_ref().map(|r| r.version);
        assert_eq!(open, Some(version(4)), "the newer version replaced it");

        // The last holders go: the tracker with them.
        other.leave(&rollouts, now);
        t.leave(&rollouts, now);
        assert!(rollouts.trackers.lock().is_empty());
    }
}
