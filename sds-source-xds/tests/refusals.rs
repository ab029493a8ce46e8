//! What the source refuses from a misbehaving upstream (the protocol-level server of `support`,
//! its responses changed just before they are sent): a wrong type URL, more resources than
//! names, a message over the size limit, a `version_info` or nonce too long to keep; and how
//! it says so: a NACK upstream, one WARN line per kind of problem, errors naming the secret.

mod support;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use sds_core::SecretSource as _;
use sds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sds_source_xds::{Api, Backoff, Error, XdsSource};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    logs::Captured,
};
use support::{Received, Upstream, certificate, leaf_der, until};

/// The bounds the crate documents.
const MAX_VERSION_LEN: usize = 1024;
const MAX_NONCE_LEN: usize = 1024;

/// What the source logs as a refused response.
const REFUSED: &str = "refused a response from the upstream SDS server";

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
}

fn leaf(kind: KeyKind) -> Leaf {
    Ca::new("root").issue(&["web.example"], kind, Validity::current())
}

/// Captures what this test's thread logs at INFO and above (`#[tokio::test]` runs the source,
/// the server and the channel's tasks on it).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// The WARN lines about refused responses.
fn refusals(logs: &Captured) -> Vec<String> {
    logs.text()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(REFUSED))
        .map(str::to_owned)
        .collect()
}

fn sotw(received: &[Received]) -> Vec<DiscoveryRequest> {
    received
        .iter()
        .filter_map(|r| match r {
            Received::Sotw(r) => Some(r.clone()),
            Received::Delta(_) => None,
        })
        .collect()
}

fn delta(received: &[Received]) -> Vec<DeltaDiscoveryRequest> {
    received
        .iter()
        .filter_map(|r| match r {
            Received::Delta(r) => Some(r.clone()),
            Received::Sotw(_) => None,
        })
        .collect()
}

/// Waits until the upstream has received `count` NACKs on state-of-the-world streams.
async fn nacks(upstream: &Upstream, count: usize) -> Vec<DiscoveryRequest> {
    upstream
        .until(&format!("{count} NACKs"), |r| {
            let nacks: Vec<_> = sotw(r)
                .into_iter()
                .filter(|r| r.error_detail.is_some())
                .collect();
            (nacks.len() >= count).then_some(nacks)
        })
        .await
}

/// A source for `web` on the Unix socket `path`.
fn source(path: &std::path::Path) -> XdsSource {
    XdsSource::unix(path)
        .names(["web"])
        .expect("valid names")
        .backoff(backoff())
}

#[tokio::test]
async fn a_wrong_type_url_is_nacked_and_logged_once_per_run_of_refusals() {
    let (logs, _guard) = capture();
    let one = leaf(KeyKind::EcP256Pkcs8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    // A type URL with a forged log line in it.
    let wrong = "type.googleapis.com/envoy.config.cluster.v3.Cluster\nWARN forged line";
    upstream.tamper_sotw(Some(Arc::new(move |r| r.type_url = wrong.to_owned())));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let (mut reader, driver) = sds_core::publish(source(&path));
    tokio::spawn(driver);

    // The same bad response, again and again.
    nacks(&upstream, 1).await;
    for n in 2..=4 {
        upstream.resend();
        nacks(&upstream, n).await;
    }
    let all = nacks(&upstream, 4).await;
    for nack in &all {
        assert_eq!(nack.version_info, "", "nothing was ever accepted");
        let detail = nack.error_detail.as_ref().expect("a NACK");
        assert_eq!(detail.code, 13);
        assert!(
            detail
                .message
                .contains(&format!("is not `{}`", sds_proto::SECRET_TYPE_URL)),
            "{}",
            detail.message
        );
        assert!(!detail.message.contains('\n'), "{}", detail.message);
    }
    let sent: Vec<String> = upstream.sent().into_iter().map(|(_, n)| n).collect();
    let echoed: Vec<String> = all.iter().map(|n| n.response_nonce.clone()).collect();
    assert_eq!(echoed, sent, "every NACK echoes its response's nonce");
    let snapshot = until(&mut reader, "a snapshot", |_| true).await;
    assert!(
        snapshot.get("web").is_none(),
        "nothing of a refused response is served"
    );

    let lines = refusals(&logs);
    assert_eq!(
        lines.len(),
        1,
        "one line for four refusals:\n{}",
        logs.text()
    );
    assert!(
        lines[0].contains("Cluster\\nWARN forged line"),
        "escaped: {}",
        lines[0]
    );
    assert!(
        lines[0].contains("secret=\"web\"") || lines[0].contains("secret=web"),
        "{}",
        lines[0]
    );
    assert!(
        !logs
            .text()
            .lines()
            .any(|l| l.starts_with("WARN forged line")),
        "no forged line:\n{}",
        logs.text()
    );

    // Accepted once: the next refusal is logged again.
    upstream.tamper_sotw(None);
    upstream.resend();
    until(&mut reader, "the certificate", |s| {
        leaf_der(s, "web") == Some(one.cert_der.clone())
    })
    .await;
    upstream.tamper_sotw(Some(Arc::new(move |r| r.type_url = wrong.to_owned())));
    upstream.resend();
    nacks(&upstream, 5).await;
    // Logged on the task that answered, before the NACK was sent.
    assert_eq!(refusals(&logs).len(), 2, "{}", logs.text());
    let snapshot = reader.current().expect("a snapshot");
    assert_eq!(
        leaf_der(&snapshot, "web"),
        Some(one.cert_der.clone()),
        "a refused response changes nothing held"
    );
}

#[tokio::test]
async fn a_wrong_type_url_is_nacked_in_delta_too() {
    let (logs, _guard) = capture();
    let one = leaf(KeyKind::EcP256Pkcs8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.tamper_delta(Some(Arc::new(|r| {
        r.type_url = "type.googleapis.com/envoy.config.listener.v3.Listener".to_owned();
    })));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let (_reader, driver) = sds_core::publish(source(&path).api(Api::Delta));
    tokio::spawn(driver);
    let nack = upstream
        .until("a delta NACK", |r| {
            delta(r).into_iter().find_map(|d| d.error_detail)
        })
        .await;
    assert!(nack.message.contains("Listener"), "{}", nack.message);
    let lines = refusals(&logs);
    assert_eq!(lines.len(), 1, "{}", logs.text());
    assert!(lines[0].contains("Listener"), "{}", lines[0]);
}

#[tokio::test]
async fn more_resources_than_names_are_refused_unread() {
    let (logs, _guard) = capture();
    let one = leaf(KeyKind::EcP256Pkcs8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.tamper_sotw(Some(Arc::new(|r| {
        let copies = r.resources.iter().cycle().take(3).cloned().collect();
        r.resources = copies;
    })));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let (mut reader, driver) = sds_core::publish(source(&path));
    tokio::spawn(driver);
    let nack = nacks(&upstream, 1).await.remove(0);
    let message = nack.error_detail.expect("a NACK").message;
    assert_eq!(
        message,
        "the response holds 3 resources, more than the 1 names requested"
    );
    let snapshot = until(&mut reader, "a snapshot", |_| true).await;
    assert!(snapshot.get("web").is_none(), "nothing of it is held");
    assert_eq!(refusals(&logs).len(), 1, "{}", logs.text());

    // Delta: more removals than names.
    let upstream = Upstream::new();
    let path = dir.path().join("delta.sock");
    upstream.tamper_delta(Some(Arc::new(|r| {
        r.removed_resources = vec!["web".to_owned(); 2];
    })));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);
    let (_reader, driver) = sds_core::publish(source(&path).api(Api::Delta));
    tokio::spawn(driver);
    let nack = upstream
        .until("a delta NACK", |r| {
            delta(r).into_iter().find_map(|d| d.error_detail)
        })
        .await;
    assert_eq!(
        nack.message,
        "the response removes 2 resources, more than the 1 names requested"
    );
}

#[tokio::test]
async fn a_response_over_the_message_size_fails_the_stream_naming_the_secret() {
    // An RSA-2048 credential is about 3 KB on the wire: over a 1 KiB limit.
    let big = leaf(KeyKind::RsaPkcs8(2048));
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.set(certificate("web", &big.chain_pem, &big.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let stream = source(&path).max_message_size(1024).into_stream();
    let mut stream = std::pin::pin!(stream);
    for _ in 0..2 {
        let item = tokio::time::timeout(support::WAIT, stream.next())
            .await
            .expect("an item")
            .expect("the stream goes on");
        let error = item.expect_err("the response is too large");
        assert!(matches!(error, Error::Stream { .. }), "{error:?}");
        assert!(error.is_transient());
        assert_eq!(
            error.to_string(),
            format!(
                "the SDS stream of secret `web` to `unix:{}` failed",
                path.display()
            )
        );
        let cause = std::error::Error::source(&error)
            .expect("a cause")
            .to_string();
        assert!(cause.contains("too large"), "{cause}");
        assert!(cause.contains("1024"), "{cause}");
    }
    let firsts = sotw(&upstream.received())
        .into_iter()
        .filter(|r| r.response_nonce.is_empty())
        .count();
    assert!(
        firsts >= 2,
        "the stream is reopened: {firsts} first requests"
    );
    assert!(
        sotw(&upstream.received())
            .iter()
            .all(|r| r.response_nonce.is_empty()),
        "nothing too large is answered"
    );
}

#[tokio::test]
async fn a_version_info_over_1_kib_is_nacked_and_never_echoed() {
    let (logs, _guard) = capture();
    let one = leaf(KeyKind::EcP256Pkcs8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.tamper_sotw(Some(Arc::new(|r| {
        r.version_info = "v".repeat(MAX_VERSION_LEN + 1);
    })));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let (mut reader, driver) = sds_core::publish(source(&path));
    tokio::spawn(driver);
    let nack = nacks(&upstream, 1).await.remove(0);
    assert_eq!(
        nack.version_info, "",
        "the last accepted version, not the long one"
    );
    assert_eq!(
        nack.response_nonce,
        upstream.sent()[0].1,
        "the nonce is echoed"
    );
    let message = nack.error_detail.expect("a NACK").message;
    assert_eq!(
        message,
        "the response's version_info is 1025 bytes long, more than the 1024 accepted"
    );
    assert_eq!(refusals(&logs).len(), 1, "{}", logs.text());

    // At the limit: accepted, kept and echoed.
    let at_limit = "v".repeat(MAX_VERSION_LEN);
    upstream.tamper_sotw(Some(Arc::new({
        let at_limit = at_limit.clone();
        move |r| r.version_info = at_limit.clone()
    })));
    upstream.resend();
    until(&mut reader, "the certificate", |s| {
        leaf_der(s, "web") == Some(one.cert_der.clone())
    })
    .await;
    let ack = upstream
        .until("the ACK", |r| {
            sotw(r)
                .into_iter()
                .find(|r| !r.response_nonce.is_empty() && r.error_detail.is_none())
        })
        .await;
    assert_eq!(ack.version_info, at_limit);
    assert!(
        sotw(&upstream.received())
            .iter()
            .all(|r| r.version_info.len() <= MAX_VERSION_LEN),
        "nothing longer is ever echoed"
    );
}

#[tokio::test]
async fn a_delta_resource_version_over_1_kib_is_nacked_and_never_kept() {
    let one = leaf(KeyKind::EcP256Pkcs8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.tamper_delta(Some(Arc::new(|r| {
        for resource in &mut r.resources {
            resource.version = "v".repeat(MAX_VERSION_LEN + 1);
        }
    })));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let served = upstream.serve_unix(&path);

    let (mut reader, driver) = sds_core::publish(source(&path).api(Api::Delta));
    tokio::spawn(driver);
    let nack = upstream
        .until("a delta NACK", |r| {
            delta(r).into_iter().find_map(|d| d.error_detail)
        })
        .await;
    assert_eq!(
        nack.message,
        "the version of resource `web` is 1025 bytes long, more than the 1024 accepted"
    );
    let snapshot = until(&mut reader, "a snapshot", |_| true).await;
    assert!(snapshot.get("web").is_none());

    // Reconnected: it holds no version to tell.
    served.stop().await;
    let before = upstream.received().len();
    let _served = upstream.serve_unix(&path);
    let again = upstream
        .until("a new subscription", |r| {
            delta(&r[before..])
                .into_iter()
                .find(|d| !d.resource_names_subscribe.is_empty())
        })
        .await;
    assert!(again.initial_resource_versions.is_empty());
}

#[tokio::test]
async fn a_nonce_over_1_kib_closes_the_stream_unanswered() {
    let one = leaf(KeyKind::EcP256Pkcs8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.tamper_sotw(Some(Arc::new(|r| {
        r.nonce = "n".repeat(MAX_NONCE_LEN + 1);
    })));
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let mut stream = source(&path).into_stream().boxed();
    for _ in 0..2 {
        let item = tokio::time::timeout(support::WAIT, stream.next())
            .await
            .expect("an item")
            .expect("the stream goes on");
        let error = item.expect_err("the nonce is too long");
        assert!(
            matches!(
                error,
                Error::NonceTooLong {
                    len: 1025,
                    max: 1024,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert!(error.to_string().contains("secret `web`"), "{error}");
    }
    let received = sotw(&upstream.received());
    assert!(
        received
            .iter()
            .filter(|r| r.response_nonce.is_empty())
            .count()
            >= 2,
        "the stream is reopened"
    );
    assert!(
        received.iter().all(|r| r.response_nonce.is_empty()),
        "the long nonce is never echoed"
    );

    // At the limit: answered (the source's stream polled meanwhile).
    upstream.tamper_sotw(Some(Arc::new(|r| r.nonce = "n".repeat(MAX_NONCE_LEN))));
    upstream.resend();
    let polled = tokio::spawn(async move { while stream.next().await.is_some() {} });
    let ack = upstream
        .until("the ACK", |r| {
            sotw(r).into_iter().find(|r| !r.response_nonce.is_empty())
        })
        .await;
    polled.abort();
    assert_eq!(ack.response_nonce.len(), MAX_NONCE_LEN);
    assert!(ack.error_detail.is_none());
}
