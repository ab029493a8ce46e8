//! Watch streams: replay from a resourceVersion, then live events, bookmarks, timeouts, and
//! the in-stream `410 Expired` error of a compacted resourceVersion.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::body::{Aborted, Body};
use crate::json;
use crate::secret::Secret;
use crate::selector::Selectors;
use crate::server::Shared;
use crate::store::{Event, EventKind};

/// A watch request.
#[derive(Debug)]
pub(crate) struct WatchQuery {
    pub(crate) namespace: Option<String>,
    pub(crate) selectors: Selectors,
    /// `None` for "" and "0": start with `ADDED` for every current object.
    pub(crate) resource_version: Option<u64>,
    pub(crate) send_initial_events: bool,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Option<Duration>,
}

/// Starts a watch task and returns the body it writes to.
pub(crate) fn start(shared: Arc<Shared>, q: WatchQuery) -> Body {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(shared, q, tx));
    Body::Stream(rx)
}

type Tx = mpsc::Sender<Result<Bytes, Aborted>>;

async fn send(tx: &Tx, line: Vec<u8>) -> bool {
    tx.send(Ok(Bytes::from(line))).await.is_ok()
}

async fn run(shared: Arc<Shared>, q: WatchQuery, tx: Tx) {
    let _open = shared.watch_opened();
    let mut dropped = shared.drop_watches.subscribe();
    let mut written = shared.written.subscribe();
    written.borrow_and_update();

    let start = {
        let store = shared.store.lock();
        match q.resource_version {
            Some(rv) if !q.send_initial_events => store
                .check_watch_start(rv)
                .map(|()| (rv, Vec::new()))
                .map_err(|e| json::watch_error(&e)),
            _ => {
                let mut lines: Vec<Vec<u8>> = store
                    .all()
                    .filter(|s| in_scope(&q, s))
                    .map(|s| json::watch_event("ADDED", s))
                    .collect();
                if q.send_initial_events {
                    lines.push(json::bookmark(store.rv(), true));
                }
                Ok((store.rv(), lines))
            }
        }
    };
    let (mut cursor, initial) = match start {
        Ok(start) => start,
        Err(error) => {
            let _ = send(&tx, error).await;
            return;
        }
    };
    for line in initial {
        if !send(&tx, line).await {
            return;
        }
    }

    let deadline = q.timeout.map(|t| Instant::now() + t);
    let period = shared.config.bookmark_interval;
    let mut bookmarks = tokio::time::interval_at(Instant::now() + period, period);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        written.borrow_and_update();
        let lines = {
            let store = shared.store.lock();
            match store.events_after(cursor) {
                Ok(events) => {
                    cursor = cursor.max(store.rv());
                    Ok(events
                        .iter()
                        .filter_map(|ev| line_for(&q, ev))
                        .collect::<Vec<_>>())
                }
                Err(e) => Err(json::watch_error(&e)),
            }
        };
        match lines {
            Ok(lines) => {
                for line in lines {
                    if !send(&tx, line).await {
                        return;
                    }
                }
            }
            Err(error) => {
                let _ = send(&tx, error).await;
                return;
            }
        }
        tokio::select! {
            changed = written.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = bookmarks.tick(), if q.bookmarks => {
                if !send(&tx, json::bookmark(cursor, false)).await {
                    return;
                }
            }
            () = sleep_until(deadline) => return,
            _ = dropped.changed() => {
                let _ = tx.send(Err(Aborted)).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn in_scope(q: &WatchQuery, s: &Secret) -> bool {
    q.namespace.as_deref().is_none_or(|ns| ns == s.namespace) && q.selectors.matches(s)
}

/// The line for an event, translated through the selectors the way the real server does:
/// an object that starts matching is `ADDED`, one that stops matching is `DELETED`.
fn line_for(q: &WatchQuery, ev: &Event) -> Option<Vec<u8>> {
    let now = in_scope(q, &ev.object);
    let before = ev.prev.as_deref().is_some_and(|p| in_scope(q, p));
    let kind = match ev.kind {
        EventKind::Added => now.then_some("ADDED"),
        EventKind::Deleted => (now || before).then_some("DELETED"),
        EventKind::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }?;
    Some(json::watch_event(kind, &ev.object))
}
