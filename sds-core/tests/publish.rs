//! The publisher: last-good merging, per-name wakeups, ambient errors, shutdown.

use std::time::Duration;

use sds_core::{
    CertifiedKey, Closed, Error, Input, Reader, SecretName, UnixTime, Update, from_stream, publish,
};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("valid")
}

fn parse(n: &str, leaf: &Leaf) -> CertifiedKey {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("valid")
}

fn rejection(n: &str) -> Error {
    CertifiedKey::from_pem(
        &name(n),
        Input::new("tls.crt", b"garbage"),
        Input::new("tls.key", b"garbage"),
        UnixTime::now(),
    )
    .expect_err("garbage")
}

/// An update with the given valid leaves and rejected names.
fn update(valid: &[(&str, &Leaf)], rejected: &[&str]) -> Update {
    let mut u = Update::new();
    for (n, leaf) in valid {
        u.insert(name(n), parse(n, leaf));
    }
    for n in rejected {
        u.reject(name(n), rejection(n));
    }
    u
}

type Feed = mpsc::UnboundedSender<Result<Update, std::io::Error>>;

fn start() -> (Feed, Reader) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (reader, driver) = publish(from_stream(UnboundedReceiverStream::new(rx)));
    tokio::spawn(driver);
    (tx, reader)
}

fn leaf(ca: &Ca, host: &str) -> Leaf {
    ca.issue(&[host], KeyKind::EcP256Pkcs8, Validity::current())
}

const QUIET: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn rejected_input_keeps_the_last_good_version() {
    let ca = Ca::new("ca");
    let (a1, b1) = (leaf(&ca, "a"), leaf(&ca, "b"));
    let (tx, mut reader) = start();
    tx.send(Ok(update(&[("a", &a1), ("b", &b1)], &["never-valid"])))
        .expect("send");
    let first = reader.ready().await.expect("ready");
    assert_eq!(first.len(), 2);
    assert!(
        first.get("never-valid").is_none(),
        "a name never valid is not served"
    );
    assert_eq!(first.rejected().count(), 1);
    let a_version = first.get("a").expect("a").version();

    // `a` turns bad: its last good version stays; `b` disappears.
    tx.send(Ok(update(&[], &["a"]))).expect("send");
    let second = reader.changed().await.expect("changed");
    assert_eq!(second.get("a").expect("kept").version(), a_version);
    assert!(second.get("b").is_none(), "removed names are dropped");
    let (rejected, why) = second.rejected().next().expect("reason");
    assert_eq!(rejected.as_str(), "a");
    assert!(why.to_string().contains("credential `a`"), "{why}");

    // An ambient error changes nothing.
    tx.send(Err(std::io::Error::other("directory unreadable")))
        .expect("send");
    assert!(
        tokio::time::timeout(QUIET, reader.changed()).await.is_err(),
        "no new snapshot"
    );
    assert_eq!(
        reader.current().expect("current").version(),
        second.version()
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_wakes_only_for_its_own_secret() {
    let ca = Ca::new("ca");
    let (a1, b1, b2) = (leaf(&ca, "a"), leaf(&ca, "b"), leaf(&ca, "b"));
    let (tx, mut reader) = start();
    tx.send(Ok(update(&[("a", &a1), ("b", &b1)], &[])))
        .expect("send");
    reader.ready().await.expect("ready");
    let mut a = reader.watch(&name("a"));
    let mut b = reader.watch(&name("b"));
    let mut late = reader.watch(&name("late"));
    let a_version = a.current().expect("a exists").version();
    assert!(late.current().is_none());

    // Same content re-read (new parse, same bytes): nobody wakes.
    tx.send(Ok(update(&[("a", &a1), ("b", &b1)], &[])))
        .expect("send");
    assert!(tokio::time::timeout(QUIET, b.changed()).await.is_err());

    // `b` rotates: only `b` wakes.
    tx.send(Ok(update(&[("a", &a1), ("b", &b2)], &[])))
        .expect("send");
    b.changed().await.expect("b changed");
    assert_ne!(b.current().expect("b").version(), b1_version(&b1));
    assert!(tokio::time::timeout(QUIET, a.changed()).await.is_err());
    assert_eq!(a.current().expect("a").version(), a_version);

    // `late` appears, then disappears.
    let l = leaf(&ca, "late");
    tx.send(Ok(update(&[("a", &a1), ("b", &b2), ("late", &l)], &[])))
        .expect("send");
    late.changed().await.expect("appeared");
    assert!(late.current().is_some());
    tx.send(Ok(update(&[("a", &a1), ("b", &b2)], &[])))
        .expect("send");
    late.changed().await.expect("removed");
    assert!(late.current().is_none());

    assert_eq!(reader.watched_names(), 3);
    drop((a, late));
    assert_eq!(
        reader.watched_names(),
        1,
        "the last watch of a name takes its channel"
    );
}

fn b1_version(leaf: &Leaf) -> sds_core::Version {
    parse("b", leaf).version()
}

#[tokio::test(start_paused = true)]
async fn the_end_of_the_source_is_reported() {
    // Ends before any snapshot: `ready` fails instead of waiting forever.
    let (tx, mut reader) = start();
    drop(tx);
    assert_eq!(reader.ready().await.err(), Some(Closed));

    // Ends after one: the snapshot stays readable, waits end with `Closed`.
    let ca = Ca::new("ca");
    let a1 = leaf(&ca, "a");
    let (tx, mut reader) = start();
    tx.send(Ok(update(&[("a", &a1)], &[]))).expect("send");
    reader.ready().await.expect("ready");
    let mut a = reader.watch(&name("a"));
    drop(tx);
    assert_eq!(reader.changed().await.err(), Some(Closed));
    assert_eq!(a.changed().await, Err(Closed));
    assert!(a.current().is_some());
    assert!(reader.current().expect("kept").get("a").is_some());
    let mut after = reader.watch(&name("a"));
    assert!(after.current().is_some());
    assert_eq!(after.changed().await, Err(Closed));
}

#[tokio::test(start_paused = true)]
async fn the_driver_stops_when_every_reader_is_gone() {
    let (tx, reader) = start();
    drop(reader);
    tokio::time::timeout(QUIET, tx.closed())
        .await
        .expect("the driver dropped the source stream");
}
