//! Expiry warnings and the source's status, driven by an injected clock that moves with
//! tokio's paused time.

use std::time::{Duration, SystemTime};

use sds_core::{
    CertifiedKey, Clock, Error, Input, Publish, Reader, SecretName, SourceStatus, TrustBundle,
    UnixTime, Update, from_stream,
};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    logs::Captured,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// Wall time that moves with tokio's (paused) clock.
#[derive(Debug)]
struct TestClock {
    wall: SystemTime,
    start: tokio::time::Instant,
}

impl TestClock {
    fn start() -> Self {
        Self {
            wall: SystemTime::now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        self.wall + self.start.elapsed()
    }
}

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

type Feed = mpsc::UnboundedSender<Result<Update, std::io::Error>>;

/// A publisher with a 7-day warning on the test clock, and what it logs.
fn start() -> (Feed, Reader, Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let (tx, rx) = mpsc::unbounded_channel();
    let (reader, driver) = Publish::new(from_stream(UnboundedReceiverStream::new(rx)))
        .expiry_warning(7 * DAY)
        .clock(TestClock::start())
        .start();
    tokio::spawn(driver);
    (tx, reader, captured, guard)
}

/// Lets the driver run what is due.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    settle().await;
}

fn count(logs: &Captured, needle: &str) -> usize {
    logs.text().matches(needle).count()
}

const SOON: &str = "served certificate expires soon";
const EXPIRED: &str = "served certificate has EXPIRED";

#[tokio::test(start_paused = true)]
async fn a_certificate_near_its_end_is_warned_about_daily_then_reported_expired_and_kept() {
    let ca = Ca::new("ca");
    let now = SystemTime::now();
    // Ends in 10 days: enters the 7-day window in 3.
    let leaf = ca.issue(
        &["gw.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::between(now - HOUR, now + 10 * DAY),
    );
    let (tx, mut reader, logs, _guard) = start();
    let mut update = Update::new();
    update.insert(name("gw"), parse("gw", &leaf));
    tx.send(Ok(update)).expect("send");
    reader.ready().await.expect("ready");
    settle().await;
    assert_eq!(count(&logs, SOON), 0, "{}", logs.text());

    advance(3 * DAY - MINUTE).await;
    assert_eq!(
        count(&logs, SOON),
        0,
        "not in the window yet: {}",
        logs.text()
    );
    advance(2 * MINUTE).await;
    assert_eq!(count(&logs, SOON), 1, "{}", logs.text());
    let line = logs.text();
    assert!(line.contains("secret=gw"), "{line}");
    assert!(line.contains("expires_in=6d 23h"), "{line}");
    assert!(line.contains("subject="), "{line}");

    // Again once a day, not more.
    advance(DAY - MINUTE).await;
    assert_eq!(count(&logs, SOON), 1, "{}", logs.text());
    advance(2 * MINUTE).await;
    assert_eq!(count(&logs, SOON), 2, "{}", logs.text());

    // The source rejects its next input: the certificate stays served and nothing repeats.
    let mut update = Update::new();
    update.reject(name("gw"), rejection("gw"));
    tx.send(Ok(update)).expect("send");
    settle().await;
    assert_eq!(count(&logs, SOON), 2, "{}", logs.text());

    // It ends: an ERROR, once, then daily; still served.
    advance(6 * DAY).await;
    assert_eq!(count(&logs, EXPIRED), 1, "{}", logs.text());
    assert!(logs.text().contains("ERROR"), "{}", logs.text());
    assert!(reader.current().expect("published").get("gw").is_some());
    advance(HOUR).await;
    assert_eq!(count(&logs, EXPIRED), 1, "{}", logs.text());
    advance(DAY).await;
    assert_eq!(count(&logs, EXPIRED), 2, "{}", logs.text());

    // A fresh certificate ends the alerts.
    let fresh = ca.issue(&["gw.example.com"], KeyKind::EcP256Pkcs8, Validity::wide());
    let mut update = Update::new();
    update.insert(name("gw"), parse("gw", &fresh));
    tx.send(Ok(update)).expect("send");
    settle().await;
    logs.clear();
    advance(3 * DAY).await;
    assert_eq!(logs.text(), "");
}

#[tokio::test(start_paused = true)]
async fn a_new_version_inside_the_window_is_warned_about_when_loaded() {
    let ca = Ca::new("ca");
    let now = SystemTime::now();
    let short = |days: u32| {
        ca.issue(
            &["gw.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::between(now - HOUR, now + days * DAY),
        )
    };
    let (tx, mut reader, logs, _guard) = start();
    let mut update = Update::new();
    update.insert(name("gw"), parse("gw", &short(5)));
    tx.send(Ok(update)).expect("send");
    reader.ready().await.expect("ready");
    settle().await;
    assert_eq!(count(&logs, SOON), 1, "at load: {}", logs.text());
    assert!(logs.text().contains("expires_in=4d 23h"), "{}", logs.text());

    // A rotation to another short-lived certificate is warned about at once.
    advance(HOUR).await;
    let mut update = Update::new();
    update.insert(name("gw"), parse("gw", &short(6)));
    tx.send(Ok(update)).expect("send");
    settle().await;
    assert_eq!(count(&logs, SOON), 2, "{}", logs.text());
}

#[tokio::test(start_paused = true)]
async fn a_ca_bundle_is_warned_about_for_its_first_ending_certificate() {
    let now = SystemTime::now();
    let long = Ca::root("long-lived root", KeyKind::EcP256Pkcs8, Validity::wide());
    let short = Ca::root(
        "short-lived root",
        KeyKind::EcP256Pkcs8,
        Validity::between(now - HOUR, now + 2 * DAY),
    );
    let pem = format!("{}{}", long.cert_pem(), short.cert_pem());
    let bundle = TrustBundle::from_pem(
        &name("gw-cacert"),
        Input::new("ca.crt", pem.as_bytes()),
        None,
        UnixTime::now(),
    )
    .expect("valid bundle");
    let (tx, mut reader, logs, _guard) = start();
    let mut update = Update::new();
    update.insert(name("gw-cacert"), bundle);
    tx.send(Ok(update)).expect("send");
    reader.ready().await.expect("ready");
    settle().await;
    let text = logs.text();
    assert!(
        text.contains("served CA certificate expires soon"),
        "{text}"
    );
    assert!(text.contains("short-lived root"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_status_counts_updates_failures_and_new_rejections() {
    let ca = Ca::new("ca");
    let leaf = ca.issue(&["a"], KeyKind::EcP256Pkcs8, Validity::current());
    let (tx, mut reader, _logs, _guard) = start();
    assert_eq!(reader.source_status(), SourceStatus::default());

    let mut update = Update::new();
    update.insert(name("a"), parse("a", &leaf));
    update.reject(name("bad"), rejection("bad"));
    tx.send(Ok(update)).expect("send");
    reader.ready().await.expect("ready");
    settle().await;
    let first = reader.source_status();
    assert_eq!(
        (first.updates, first.failures, first.failing),
        (1, 0, false)
    );
    let loaded = first.last_update.expect("an update");
    assert_eq!(first.rejections.len(), 1);
    assert_eq!(first.rejections[0].secret, name("bad"));
    assert_eq!(first.rejections[0].reason, "missing_pem_block");
    assert_eq!(first.rejections[0].count, 1);

    // The same problem again is not a new rejection; a failure is counted and marks the
    // source failing until its next update.
    advance(MINUTE).await;
    let mut update = Update::new();
    update.insert(name("a"), parse("a", &leaf));
    update.reject(name("bad"), rejection("bad"));
    tx.send(Ok(update)).expect("send");
    tx.send(Err(std::io::Error::other("API server gone")))
        .expect("send");
    settle().await;
    let failed = reader.source_status();
    assert_eq!(
        (failed.updates, failed.failures, failed.failing),
        (2, 1, true)
    );
    assert_eq!(failed.rejections[0].count, 1);
    assert_eq!(failed.last_update, Some(loaded + MINUTE));
    assert_eq!(failed.last_failure, Some(loaded + MINUTE));

    // The name leaves the source: its count goes with it.
    tx.send(Ok(Update::new())).expect("send");
    settle().await;
    let healed = reader.source_status();
    assert!(!healed.failing);
    assert!(healed.rejections.is_empty(), "{healed:?}");

    drop(tx);
    settle().await;
    assert!(reader.source_status().ended);
}
