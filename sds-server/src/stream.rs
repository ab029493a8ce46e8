//! What one stream shares with its service while it is open: who the client is, what it
//! claims, and its session, behind a lock that [`SdsService::clients`](crate::SdsService::clients)
//! takes to read what the client holds.
//!
//! The session is the one record of what a stream sent and what its client answered; the
//! dump reads it rather than a copy. Its pump takes the lock for each step of the protocol
//! (uncontended but for a dump: a few nanoseconds).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use parking_lot::{Mutex, MutexGuard};
use sds_core::{SecretName, Untrusted};

use crate::{
    inventory::{Client, Nack, Subscription},
    metrics::{MAX_WAITING_NAMES, Waiting},
    policy::Peer,
    pump::Protocol,
    session::SHOWN_CHARS,
};

/// One open stream.
#[derive(Debug)]
pub(crate) struct Stream<P> {
    /// What the transport proves about the client.
    pub(crate) peer: Peer,
    /// When the stream opened.
    connected: SystemTime,
    /// What the client claims to be, from the first request that says.
    node: OnceLock<Node>,
    state: Mutex<State<P>>,
}

/// A stream's protocol state.
#[derive(Debug)]
pub(crate) struct State<P> {
    pub(crate) session: P,
    /// Why the policy denies the names it denies (subscribed ones only).
    pub(crate) denied: BTreeMap<SecretName, Cow<'static, str>>,
}

/// The node id and cluster a client claims, escaped and cut short.
#[derive(Debug)]
struct Node {
    id: String,
    cluster: String,
}

/// Every open stream of a service, in the order they opened.
#[derive(Default)]
pub(crate) struct Registry {
    streams: Mutex<BTreeMap<u64, Arc<dyn Tracked>>>,
    next: AtomicU64,
}

/// A stream the registry can describe, whatever its protocol.
pub(crate) trait Tracked: Send + Sync {
    fn client(&self) -> Client;
    /// Calls `visit` with each allowed name nothing was delivered to, and since when.
    fn waiting(&self, visit: &mut dyn FnMut(&SecretName, SystemTime));
}

// === impl Stream ===

impl<P: Protocol> Stream<P> {
    pub(crate) fn new(peer: Peer, session: P, connected: SystemTime) -> Self {
        Self {
            peer,
            connected,
            node: OnceLock::new(),
            state: Mutex::new(State {
                session,
                denied: BTreeMap::new(),
            }),
        }
    }

    /// The protocol state, for one step.
    pub(crate) fn state(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock()
    }

    /// Records the node id and cluster the client claims, once: client text, escaped and cut
    /// short.
    pub(crate) fn claim(&self, id: &str, cluster: &str) {
        self.node.get_or_init(|| Node {
            id: Untrusted::new(id, SHOWN_CHARS).to_string(),
            cluster: Untrusted::new(cluster, SHOWN_CHARS).to_string(),
        });
    }

    /// Whether the client said who it is.
    pub(crate) fn claimed(&self) -> bool {
        self.node.get().is_some()
    }

    /// The node id it claims, escaped and cut short, or `""`: for logs.
    pub(crate) fn node_id(&self) -> &str {
        self.node.get().map_or("", |n| n.id.as_str())
    }

    /// The cluster it claims, escaped and cut short, or `""`: for logs.
    pub(crate) fn cluster(&self) -> &str {
        self.node.get().map_or("", |n| n.cluster.as_str())
    }
}

impl<P: Protocol> Tracked for Stream<P> {
    fn waiting(&self, visit: &mut dyn FnMut(&SecretName, SystemTime)) {
        let state = self.state.lock();
        for view in state.session.view() {
            if let Some(since) = view.waiting_since
                && !state.denied.contains_key(view.name)
            {
                visit(view.name, since);
            }
        }
    }

    fn client(&self) -> Client {
        let node = self.node.get();
        let present = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let state = self.state.lock();
        let subscriptions = state
            .session
            .view()
            .map(|view| Subscription {
                name: view.name.clone(),
                sent: view.sent,
                acked: view.acked,
                nack: view.nack.map(|nack| Nack {
                    version: nack.version,
                    code: nack.code,
                    message: nack.message.to_string(),
                    at: nack.at,
                }),
                denied: state.denied.get(view.name).map(|r| r.to_string()),
                waiting_since: view.waiting_since,
            })
            .collect();
        drop(state);
        Client {
            peer: self.peer.clone(),
            node_id: node.and_then(|n| present(&n.id)),
            cluster: node.and_then(|n| present(&n.cluster)),
            api: P::API,
            connected: self.connected,
            subscriptions,
        }
    }
}

// === impl Registry ===

impl Registry {
    /// Adds an open stream; returns its key for [`Registry::remove`].
    pub(crate) fn insert(&self, stream: Arc<dyn Tracked>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.streams.lock().insert(id, stream);
        id
    }

    /// Forgets a stream that closed.
    pub(crate) fn remove(&self, id: u64) {
        self.streams.lock().remove(&id);
    }

    /// The subscriptions nothing was delivered to on every open stream, at `now`: how many,
    /// and the longest wait per name (at most [`MAX_WAITING_NAMES`] names, the longest).
    pub(crate) fn waiting(&self, now: SystemTime) -> Waiting {
        let streams: Vec<Arc<dyn Tracked>> = self.streams.lock().values().cloned().collect();
        let mut count = 0;
        let mut longest: HashMap<SecretName, SystemTime> = HashMap::new();
        for stream in &streams {
            stream.waiting(&mut |name, since| {
                count += 1;
                match longest.get_mut(name) {
                    Some(earliest) => *earliest = (*earliest).min(since),
                    // Bounded by the subscriptions of all streams (`Limits`).
                    None => {
                        longest.insert(name.clone(), since);
                    }
                }
            });
        }
        let mut longest: Vec<(SecretName, Duration)> = longest
            .into_iter()
            .map(|(name, since)| (name, now.duration_since(since).unwrap_or_default()))
            .collect();
        longest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        longest.truncate(MAX_WAITING_NAMES);
        Waiting { count, longest }
    }

    /// What every open stream holds, in the order they opened.
    pub(crate) fn clients(&self) -> Vec<Client> {
        // Each stream is read under its own lock only, after the registry's is released.
        let streams: Vec<Arc<dyn Tracked>> = self.streams.lock().values().cloned().collect();
        streams.iter().map(|stream| stream.client()).collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("streams", &self.streams.lock().len())
            .finish()
    }
}
