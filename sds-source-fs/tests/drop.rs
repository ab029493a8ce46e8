//! Dropping the stream, or every reader of the publisher, stops the watcher's threads.
//!
//! Alone in its test binary: it counts this process's threads.

mod fixture;

use std::{fs, time::Duration};

use fixture::{CredentialDir, TIMEOUT};
use futures_util::StreamExt as _;
use sds_core::{SecretSource, publish};
use sds_source_fs::DirSource;
use tokio::time::timeout;

/// The threads notify starts: "notify-rs inotify loop" and "notify-rs debouncer loop"
/// (thread names are cut to 15 bytes).
fn watcher_threads() -> usize {
    fs::read_dir("/proc/self/task")
        .expect("list this process's threads")
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("notify-rs"))
        .count()
}

async fn until_threads(expected: usize) {
    let wait = async {
        while watcher_threads() != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("{} watcher threads, expected {expected}", watcher_threads()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_or_the_readers_stops_the_watcher() {
    let dir = CredentialDir::new();
    assert_eq!(watcher_threads(), 0);

    let mut stream = Box::pin(DirSource::new(dir.path()).into_stream());
    let first = timeout(TIMEOUT, stream.next()).await.expect("in time");
    assert!(matches!(first, Some(Ok(_))));
    until_threads(2).await; // a new thread names itself once it runs
    drop(stream);
    until_threads(0).await;

    let (mut reader, driver) = publish(DirSource::new(dir.path()));
    let driver = tokio::spawn(driver);
    timeout(TIMEOUT, reader.ready())
        .await
        .expect("in time")
        .expect("running");
    until_threads(2).await;
    drop(reader);
    timeout(TIMEOUT, driver)
        .await
        .expect("the driver stops when its readers are gone")
        .expect("the driver did not panic");
    until_threads(0).await;
}
