//! Following secrets of a [`Reader`]: each secret is prepared for rustls once per version,
//! and the prepared values are swapped in atomically, so that handshakes read them without a
//! lock.
//!
//! Every type of this crate is a [`Follow`] of a few named secrets plus the rustls trait it
//! implements. The state behind the swap is immutable: an update builds the next one from
//! the current one (copying only the `Arc`s of unchanged entries) and installs it with a
//! compare-and-swap, which makes [`Follow::refresh`] safe to call from the [`Driver`] and
//! from the embedder at the same time, with no lock either. Whoever loses the race starts
//! again from the winner's state and the snapshot current then, so the state never goes back
//! to an older snapshot; logs are written by the winner only.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use sds_core::{Reader, Secret, SecretName, Snapshot, Version};
use tokio::sync::Notify;

use crate::Error;

/// Turns a secret into what rustls uses, or says why it cannot.
pub(crate) type PrepareFn<T> =
    Box<dyn Fn(&SecretName, &Secret) -> Result<T, Error> + Send + Sync + 'static>;

/// Some secrets of a reader, each prepared once per version. See the [module docs](self).
pub(crate) struct Follow<T> {
    reader: Reader,
    names: Box<[SecretName]>,
    state: ArcSwap<State<T>>,
    prepare: PrepareFn<T>,
    /// What the secrets are used as, for logs: e.g. `server certificate`.
    role: &'static str,
    /// Tells the driver that this is gone.
    dropped: Arc<Notify>,
}

/// What was prepared, per name (in the order of [`Follow::names`]).
struct State<T> {
    slots: Box<[Slot<T>]>,
    /// Whether it was built from a snapshot: a followed name missing from the first one is
    /// logged once (a misspelt name would otherwise only fail handshakes, at DEBUG).
    published: bool,
}

#[derive(Clone)]
struct Slot<T> {
    /// The version of the secret the last update found, prepared or not; `None` while the
    /// snapshot has no secret of this name.
    seen: Option<Version>,
    /// What was prepared from the last version that could be: what handshakes use.
    good: Option<Prepared<T>>,
    /// Why `seen` is not what handshakes use, if it is not.
    problem: Option<Error>,
}

#[derive(Clone)]
struct Prepared<T> {
    version: Version,
    value: T,
}

// === impl Follow ===

impl<T: Clone + Send + Sync + 'static> Follow<T> {
    /// Follows `names` of `reader`, prepared by `prepare`; prepared from the reader's current
    /// snapshot at once. The driver keeps it up to date.
    pub(crate) fn new(
        reader: Reader,
        names: Vec<SecretName>,
        role: &'static str,
        prepare: PrepareFn<T>,
    ) -> (Arc<Self>, Driver) {
        let slots = names
            .iter()
            .map(|name| Slot {
                seen: None,
                good: None,
                problem: Some(Error::NotPublished { name: name.clone() }),
            })
            .collect();
        let dropped = Arc::new(Notify::new());
        let follow = Arc::new(Follow {
            // The driver keeps `reader` itself: a snapshot published after this first refresh
            // wakes it.
            reader: reader.clone(),
            names: names.into(),
            state: ArcSwap::from_pointee(State {
                slots,
                published: false,
            }),
            prepare,
            role,
            dropped: Arc::clone(&dropped),
        });
        // Problems are logged, and reported by the embedder's own `refresh`.
        let _ = follow.refresh();
        let driver = Driver {
            inner: Box::pin(drive(reader, Arc::downgrade(&follow), dropped)),
        };
        (follow, driver)
    }

    /// Prepares every followed secret whose version in the reader's current snapshot differs
    /// from the last one seen, and swaps the result in. Returns the first followed secret
    /// that handshakes cannot use in its current version (the last good one stays in use).
    pub(crate) fn refresh(&self) -> Result<(), Error> {
        loop {
            let current = self.state.load_full();
            // Read after the state: a state is never built from an older snapshot than the
            // one it replaces was.
            let snapshot = self.reader.current();
            let mut events = Vec::new();
            let Some(next) = self.next(&current, snapshot.as_deref(), &mut events) else {
                return current.first_problem();
            };
            let next = Arc::new(next);
            let previous = self.state.compare_and_swap(&current, Arc::clone(&next));
            if Arc::ptr_eq(&previous, &current) {
                for event in events {
                    event.log(self.role);
                }
                return next.first_problem();
            }
        }
    }

    /// The value prepared for the `slot`-th name, or why there is none.
    pub(crate) fn get(&self, slot: usize) -> Result<T, Error> {
        let state = self.state.load();
        // In range: slot indices come from the names this was built with.
        let entry = &state.slots[slot];
        match (&entry.good, &entry.problem) {
            (Some(good), _) => Ok(good.value.clone()),
            (None, Some(problem)) => Err(problem.clone()),
            (None, None) => Err(Error::NotPublished {
                name: self.names[slot].clone(),
            }),
        }
    }

    /// The value prepared for the `slot`-th name, if any: the handshake path.
    pub(crate) fn value(&self, slot: usize) -> Option<T> {
        let state = self.state.load();
        state
            .slots
            .get(slot)?
            .good
            .as_ref()
            .map(|p| p.value.clone())
    }

    /// The version of the `slot`-th secret that handshakes use.
    pub(crate) fn version(&self, slot: usize) -> Option<Version> {
        let state = self.state.load();
        state.slots.get(slot)?.good.as_ref().map(|p| p.version)
    }

    /// The followed names, in slot order.
    pub(crate) fn names(&self) -> &[SecretName] {
        &self.names
    }

    /// The state after `snapshot`, or `None` if no followed secret changed (and it is not the
    /// first snapshot). Prepares only the secrets whose version changed.
    fn next(
        &self,
        current: &State<T>,
        snapshot: Option<&Snapshot>,
        events: &mut Vec<Event>,
    ) -> Option<State<T>> {
        let first = !current.published && snapshot.is_some();
        let mut slots: Option<Vec<Slot<T>>> = None;
        for (index, (name, slot)) in self.names.iter().zip(current.slots.iter()).enumerate() {
            let secret = snapshot.and_then(|s| s.get(name.as_str()));
            let seen = secret.map(|s| s.version());
            if seen == slot.seen {
                if first && seen.is_none() {
                    events.push(Event::Missing { name: name.clone() });
                }
                continue;
            }
            let kept = slot.good.as_ref().map(|p| p.version);
            let updated = match secret {
                None => {
                    events.push(Event::Removed {
                        name: name.clone(),
                        kept,
                    });
                    Slot {
                        seen,
                        good: slot.good.clone(),
                        problem: Some(Error::NotPublished { name: name.clone() }),
                    }
                }
                // Back to the version in use (it was removed, or a newer one came and went).
                Some(secret) if kept == Some(secret.version()) => Slot {
                    seen,
                    good: slot.good.clone(),
                    problem: None,
                },
                Some(secret) => {
                    let version = secret.version();
                    match (self.prepare)(name, secret) {
                        Ok(value) => {
                            events.push(Event::Prepared {
                                name: name.clone(),
                                version,
                                previous: kept,
                            });
                            Slot {
                                seen,
                                good: Some(Prepared { version, value }),
                                problem: None,
                            }
                        }
                        Err(error) => {
                            events.push(Event::Refused {
                                error: error.clone(),
                                kept,
                            });
                            Slot {
                                seen,
                                good: slot.good.clone(),
                                problem: Some(error),
                            }
                        }
                    }
                }
            };
            slots.get_or_insert_with(|| current.slots.to_vec())[index] = updated;
        }
        if first && slots.is_none() {
            slots = Some(current.slots.to_vec());
        }
        slots.map(|slots| State {
            slots: slots.into(),
            published: current.published || snapshot.is_some(),
        })
    }
}

impl<T> Drop for Follow<T> {
    fn drop(&mut self) {
        // Stored as a permit if the driver is not waiting right now: never lost.
        self.dropped.notify_one();
    }
}

impl<T> fmt::Debug for Follow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load();
        let mut map = f.debug_map();
        for (name, slot) in self.names.iter().zip(state.slots.iter()) {
            map.entry(
                name,
                &SlotDebug {
                    in_use: slot.good.as_ref().map(|p| p.version),
                    problem: slot.problem.as_ref(),
                },
            );
        }
        map.finish()
    }
}

/// What `Debug` shows of a slot: versions and problems, never what was prepared.
struct SlotDebug<'a> {
    in_use: Option<Version>,
    problem: Option<&'a Error>,
}

impl fmt::Debug for SlotDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("in_use", &self.in_use)
            .field("problem", &self.problem)
            .finish()
    }
}

// === impl State ===

impl<T> State<T> {
    fn first_problem(&self) -> Result<(), Error> {
        match self.slots.iter().find_map(|s| s.problem.as_ref()) {
            Some(problem) => Err(problem.clone()),
            None => Ok(()),
        }
    }
}

/// What an update changed, logged once it is installed.
enum Event {
    Prepared {
        name: SecretName,
        version: Version,
        previous: Option<Version>,
    },
    Refused {
        error: Error,
        kept: Option<Version>,
    },
    Removed {
        name: SecretName,
        kept: Option<Version>,
    },
    /// Not in the first snapshot.
    Missing {
        name: SecretName,
    },
}

impl Event {
    fn log(self, role: &'static str) {
        match self {
            Event::Prepared {
                name,
                version,
                previous: None,
            } => tracing::info!(
                secret = %name, %version, role,
                "secret prepared for rustls; new handshakes use it"
            ),
            Event::Prepared {
                name,
                version,
                previous: Some(previous),
            } => tracing::info!(
                secret = %name, %version, %previous, role,
                "secret rotated; new handshakes use the new version"
            ),
            Event::Refused { error, kept } => {
                let secret = error.secret().cloned();
                let error: &dyn std::error::Error = &error;
                match kept {
                    Some(kept) => tracing::warn!(
                        secret = secret.as_ref().map(tracing::field::display),
                        error, %kept, role,
                        "rustls cannot use the new version of the secret; new handshakes keep \
                         using the last good one"
                    ),
                    None => tracing::warn!(
                        secret = secret.as_ref().map(tracing::field::display),
                        error,
                        role,
                        "rustls cannot use the secret; handshakes that need it fail"
                    ),
                }
            }
            Event::Removed {
                name,
                kept: Some(kept),
            } => tracing::warn!(
                secret = %name, %kept, role,
                "secret no longer published; new handshakes keep using its last version, as \
                 Envoy does"
            ),
            Event::Removed { name, kept: None } => tracing::debug!(
                secret = %name, role,
                "secret no longer published"
            ),
            Event::Missing { name } => tracing::warn!(
                secret = %name, role,
                "secret not published by the source (yet); handshakes that need it fail until \
                 it is"
            ),
        }
    }
}

// === Driver ===

/// Keeps a resolver or verifier of this crate up to date with its reader: waits for each new
/// snapshot and prepares the followed secrets that changed. Spawn it (e.g. with
/// `tokio::spawn`): this crate spawns nothing.
///
/// It finishes when the resolver or verifier it serves (with all its clones) is dropped, or
/// when the reader's publisher is gone (the last prepared credentials stay in use). Without
/// it, call `refresh` yourself.
#[must_use = "rotations are followed only while the driver is polled"]
pub struct Driver {
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl Future for Driver {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

async fn drive<T: Clone + Send + Sync + 'static>(
    mut reader: Reader,
    follow: Weak<Follow<T>>,
    dropped: Arc<Notify>,
) {
    loop {
        tokio::select! {
            changed = reader.changed() => {
                if changed.is_err() {
                    tracing::debug!(
                        "the secret publisher is gone; the last prepared credentials stay in use"
                    );
                    return;
                }
            }
            () = dropped.notified() => return,
        }
        let Some(follow) = follow.upgrade() else {
            return;
        };
        // Logged once per version; the embedder asks `refresh` for the problem if it wants.
        let _ = follow.refresh();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use futures_util::stream;
    use sds_core::{CertifiedKey, Input, UnixTime, Update};
    use sds_test_util::certs::{Ca, KeyKind, Validity};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    /// A guard against hanging, not a timing assertion.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn name(n: &str) -> SecretName {
        SecretName::new(n).expect("a valid name")
    }

    fn secret(ca: &Ca, n: &str) -> Arc<Secret> {
        let leaf = ca.issue(&["a.example"], KeyKind::EcP256Pkcs8, Validity::current());
        let key = CertifiedKey::from_pem(
            &name(n),
            Input::new("tls.crt", leaf.chain_pem.as_bytes()),
            Input::new("tls.key", leaf.key_pem.as_bytes()),
            UnixTime::now(),
        )
        .expect("a valid credential");
        Arc::new(key.into())
    }

    fn update(secrets: &[(&str, &Arc<Secret>)]) -> Update {
        let mut update = Update::new();
        for (n, secret) in secrets {
            update.insert_shared(name(n), Arc::clone(secret));
        }
        update
    }

    /// A follow of `names` whose values are the versions, counting preparations per name
    /// (in the order of `names`).
    fn counting(
        reader: Reader,
        names: &[&str],
    ) -> (Arc<Follow<Version>>, Driver, Arc<Vec<AtomicUsize>>) {
        let names: Vec<SecretName> = names.iter().map(|n| name(n)).collect();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(names.iter().map(|_| AtomicUsize::new(0)).collect());
        let prepare = {
            let (names, counts) = (names.clone(), Arc::clone(&counts));
            Box::new(move |name: &SecretName, secret: &Secret| {
                let index = names
                    .iter()
                    .position(|n| n == name)
                    .expect("a followed name");
                counts[index].fetch_add(1, Ordering::Relaxed);
                Ok(secret.version())
            })
        };
        let (follow, driver) = Follow::new(reader, names, "test", prepare);
        (follow, driver, counts)
    }

    fn count(counts: &[AtomicUsize]) -> Vec<usize> {
        counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    #[tokio::test]
    async fn each_version_is_prepared_once() {
        let ca = Ca::new("CA");
        let (a1, a2, b1, c1) = (
            secret(&ca, "a"),
            secret(&ca, "a"),
            secret(&ca, "b"),
            secret(&ca, "c"),
        );
        let (tx, rx) = mpsc::channel::<Result<Update, io::Error>>(1);
        let (mut reader, publisher) =
            sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(publisher);
        let (follow, _driver, counts) = counting(reader.clone(), &["a", "b"]);
        let mut publish = async |update: Update| {
            tx.send(Ok(update)).await.expect("sent");
            tokio::time::timeout(PATIENCE, reader.changed())
                .await
                .expect("published")
                .expect("published");
        };
        assert!(matches!(follow.refresh(), Err(Error::NotPublished { .. })));
        assert_eq!(follow.value(0), None);

        publish(update(&[("a", &a1), ("b", &b1)])).await;
        follow.refresh().expect("both prepared");
        assert_eq!(follow.value(0), Some(a1.version()));
        assert_eq!(follow.value(1), Some(b1.version()));
        let state = follow.state.load_full();

        // Another secret changes: nothing is prepared, nothing swapped.
        publish(update(&[("a", &a1), ("b", &b1), ("c", &c1)])).await;
        follow.refresh().expect("unchanged");
        assert!(Arc::ptr_eq(&state, &follow.state.load_full()));

        // `a` rotates: only `a` is prepared again.
        publish(update(&[("a", &a2), ("b", &b1)])).await;
        follow.refresh().expect("a rotated");
        follow.refresh().expect("nothing new");
        assert_eq!(follow.value(0), Some(a2.version()));
        assert_eq!(count(&counts), [2, 1]);

        // `b` is removed: its last version stays in use, and is reported.
        publish(update(&[("a", &a2)])).await;
        assert!(matches!(
            follow.refresh(),
            Err(Error::NotPublished { name: n }) if n == name("b")
        ));
        assert_eq!(follow.value(1), Some(b1.version()));
        // And back in the same version: not prepared again.
        publish(update(&[("a", &a2), ("b", &b1)])).await;
        follow.refresh().expect("b is back");
        assert_eq!(count(&counts), [2, 1]);
    }

    #[tokio::test]
    async fn a_refused_version_keeps_the_previous_value() {
        let ca = Ca::new("CA");
        let (v1, v2, v3) = (secret(&ca, "a"), secret(&ca, "a"), secret(&ca, "a"));
        let (tx, rx) = mpsc::channel::<Result<Update, io::Error>>(1);
        tx.send(Ok(update(&[("a", &v1)]))).await.expect("sent");
        let (mut reader, publisher) =
            sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(publisher);
        reader.ready().await.expect("the first snapshot");
        let refused = v2.version();
        let prepare =
            Box::new(
                move |name: &SecretName, secret: &Secret| match secret.version() == refused {
                    true => Err(Error::WrongKind {
                        name: name.clone(),
                        expected: "anything else",
                        found: secret.kind(),
                    }),
                    false => Ok(secret.version()),
                },
            );
        let (follow, _driver) = Follow::new(reader.clone(), vec![name("a")], "test", prepare);
        assert_eq!(follow.get(0).expect("prepared"), v1.version());

        tx.send(Ok(update(&[("a", &v2)]))).await.expect("sent");
        reader.changed().await.expect("published");
        assert!(matches!(follow.refresh(), Err(Error::WrongKind { .. })));
        assert_eq!(follow.get(0).expect("the previous value"), v1.version());
        assert_eq!(follow.version(0), Some(v1.version()));

        tx.send(Ok(update(&[("a", &v3)]))).await.expect("sent");
        reader.changed().await.expect("published");
        follow.refresh().expect("usable again");
        assert_eq!(follow.get(0).expect("the new value"), v3.version());
    }

    #[tokio::test]
    async fn the_driver_ends_when_its_follow_is_dropped_or_the_publisher_is_gone() {
        let ca = Ca::new("CA");
        let a = secret(&ca, "a");
        let (tx, rx) = mpsc::channel::<Result<Update, io::Error>>(1);
        tx.send(Ok(update(&[("a", &a)]))).await.expect("sent");
        let (mut reader, publisher) =
            sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(publisher);
        reader.ready().await.expect("the first snapshot");

        let (follow, driver, _) = counting(reader.clone(), &["a"]);
        let driver = tokio::spawn(driver);
        drop(follow);
        tokio::time::timeout(PATIENCE, driver)
            .await
            .expect("the driver ends")
            .expect("without panicking");

        let (_follow, driver, _) = counting(reader, &["a"]);
        let driver = tokio::spawn(driver);
        drop(tx);
        tokio::time::timeout(PATIENCE, driver)
            .await
            .expect("the driver ends")
            .expect("without panicking");
    }

    #[tokio::test]
    async fn a_name_missing_from_the_first_snapshot_is_logged_once() {
        let ca = Ca::new("CA");
        let a = secret(&ca, "a");
        let (tx, rx) = mpsc::channel::<Result<Update, io::Error>>(1);
        let (mut reader, publisher) =
            sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
        tokio::spawn(publisher);
        let captured = sds_test_util::logs::Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let missing = |text: &str| text.matches("secret not published by the source").count();

        let (follow, _driver, _) = counting(reader.clone(), &["a", "misspelt"]);
        assert_eq!(
            missing(&captured.text()),
            0,
            "no snapshot yet: nothing to say"
        );
        tx.send(Ok(update(&[("a", &a)]))).await.expect("sent");
        reader.changed().await.expect("published");
        assert!(matches!(
            follow.refresh(),
            Err(Error::NotPublished { name: n }) if n == name("misspelt")
        ));
        let text = captured.text();
        assert_eq!(missing(&text), 1, "{text}");
        assert!(text.contains("secret=misspelt"), "{text}");
        assert_eq!(follow.value(0), Some(a.version()));

        // Later snapshots without it do not repeat the warning.
        tx.send(Ok(update(&[("a", &secret(&ca, "a"))])))
            .await
            .expect("sent");
        reader.changed().await.expect("published");
        let _ = follow.refresh();
        assert_eq!(missing(&captured.text()), 1);
    }

    #[tokio::test]
    async fn before_the_first_snapshot_nothing_is_prepared() {
        let (reader, _publisher) = sds_core::publish(sds_core::from_stream(stream::pending::<
            Result<Update, io::Error>,
        >()));
        let (follow, _driver, counts) = counting(reader, &["a"]);
        assert!(matches!(follow.refresh(), Err(Error::NotPublished { .. })));
        assert_eq!(count(&counts), [0]);
        assert!(format!("{follow:?}").contains("NotPublished"));
    }
}
