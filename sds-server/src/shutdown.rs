//! The shutdown signal every stream waits on: one flag all streams read, and one waker per
//! stream.
//!
//! A `watch` channel shared by every stream would make each of them lock the channel's list
//! of waiters each time it is polled, a few times per message, with thousands of streams on
//! the same lock. Here a poll touches only the stream's own waker and reads the flag.

use std::{
    collections::HashMap,
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

/// Shared by the service and its streams.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    down: AtomicBool,
    streams: Mutex<Streams>,
}

#[derive(Debug, Default)]
struct Streams {
    next: u64,
    wakers: HashMap<u64, Arc<AtomicWaker>>,
}

impl Shutdown {
    /// Ends every stream waiting on a [`Signal`], now and later.
    pub(crate) fn trigger(&self) {
        self.down.store(true, Ordering::SeqCst);
        for waker in self.streams.lock().wakers.values() {
            waker.wake();
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// A stream's handle on the signal.
    pub(crate) fn signal(self: &Arc<Self>) -> Signal {
        let waker = Arc::new(AtomicWaker::new());
        let mut streams = self.streams.lock();
        streams.next += 1;
        let id = streams.next;
        streams.wakers.insert(id, Arc::clone(&waker));
        Signal {
            shutdown: Arc::clone(self),
            id,
            waker,
        }
    }
}

/// One stream's wait for [`Shutdown::trigger`].
#[derive(Debug)]
pub(crate) struct Signal {
    shutdown: Arc<Shutdown>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl Signal {
    /// Resolves once the service shuts down. Cancel-safe.
    pub(crate) async fn down(&self) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.shutdown.is_down() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.shutdown.streams.lock().wakers.remove(&self.id);
    }
}
