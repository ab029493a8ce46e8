//! The source against a protocol-level SDS server written in `support` (not `sds-server`).

mod support;

use std::time::Duration;

use sds_core::{Secret, SecretSource as _};
use sds_source_xds::{Api, Backoff, Error, Streams, XdsSource};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use support::{Received, Upstream, certificate, leaf_der, trust, until};

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
}

fn leaf(ca: &Ca, dns: &str) -> Leaf {
    ca.issue(&[dns], KeyKind::EcP256Pkcs8, Validity::current())
}

fn sotw_requests(
    received: &[Received],
) -> Vec<&sds_proto::envoy::service::discovery::v3::DiscoveryRequest> {
    received
        .iter()
        .filter_map(|r| match r {
            Received::Sotw(r) => Some(r),
            Received::Delta(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn first_fetch_and_rotation_over_tcp() {
    let ca = Ca::new("root");
    let (one, two) = (leaf(&ca, "one.example"), leaf(&ca, "two.example"));
    let upstream = Upstream::new();
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let (addr, _served) = upstream.serve_tcp(0).await;

    let source = XdsSource::tcp(format!("http://{addr}"))
        .expect("a valid endpoint")
        .names(["web"])
        .expect("valid names")
        .node("proxy-1", "edge")
        .backoff(backoff());
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);

    until(&mut reader, "the first certificate", |s| {
        leaf_der(s, "web") == Some(one.cert_der.clone())
    })
    .await;
    let requests = upstream
        .until("the ACK", |r| {
            (sotw_requests(r).len() >= 2).then(|| r.to_vec())
        })
        .await;
    let requests = sotw_requests(&requests);
    let first = requests[0];
    assert_eq!(first.version_info, "");
    assert_eq!(first.response_nonce, "");
    assert_eq!(first.resource_names, ["web"]);
    assert_eq!(first.type_url, sds_proto::SECRET_TYPE_URL);
    let node = first.node.as_ref().expect("the node on the first request");
    assert_eq!(
        (node.id.as_str(), node.cluster.as_str()),
        ("proxy-1", "edge")
    );
    let (version, nonce) = upstream.sent()[0].clone();
    let ack = requests[1];
    assert_eq!((&ack.version_info, &ack.response_nonce), (&version, &nonce));
    assert!(ack.error_detail.is_none());
    assert!(
        ack.node.is_none(),
        "the node is sent on the first request only"
    );

    upstream.set(certificate("web", &two.chain_pem, &two.key_pem), "2");
    until(&mut reader, "the rotated certificate", |s| {
        leaf_der(s, "web") == Some(two.cert_der.clone())
    })
    .await;
}

#[tokio::test]
async fn a_bad_secret_is_nacked_and_the_last_good_one_stays() {
    let ca = Ca::new("root");
    let (one, two) = (leaf(&ca, "one.example"), leaf(&ca, "two.example"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let _served = upstream.serve_unix(&path);

    let source = XdsSource::unix(&path)
        .names(["web"])
        .expect("valid names")
        .backoff(backoff());
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);
    until(&mut reader, "the first certificate", |s| {
        leaf_der(s, "web") == Some(one.cert_der.clone())
    })
    .await;
    let accepted = upstream.sent()[0].0.clone();

    // The chain of `two` with the key of `one`.
    upstream.set(certificate("web", &two.chain_pem, &one.key_pem), "2");
    let nack = upstream
        .until("a NACK", |r| {
            sotw_requests(r)
                .into_iter()
                .find(|r| r.error_detail.is_some())
                .cloned()
        })
        .await;
    let (_, bad_nonce) = upstream.sent()[1].clone();
    assert_eq!(
        nack.version_info, accepted,
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.response_nonce, bad_nonce);
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(detail.code, 13);
    assert!(
        detail.message.contains("does not match"),
        "{}",
        detail.message
    );
    assert!(
        !detail.message.contains("PRIVATE KEY-----"),
        "no key material in a NACK"
    );

    let snapshot = until(&mut reader, "the rejection", |s| s.rejected().len() == 1).await;
    assert_eq!(
        leaf_der(&snapshot, "web"),
        Some(one.cert_der.clone()),
        "the last good version stays"
    );

    // A good version after the bad one is ACKed.
    upstream.set(certificate("web", &two.chain_pem, &two.key_pem), "3");
    until(&mut reader, "the fixed certificate", |s| {
        leaf_der(s, "web") == Some(two.cert_der.clone()) && s.rejected().len() == 0
    })
    .await;
}

#[tokio::test]
async fn unsupported_and_unrequested_secrets_are_nacked() {
    let ca = Ca::new("root");
    let one = leaf(&ca, "one.example");
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    let mut by_file = certificate("web", &one.chain_pem, &one.key_pem);
    if let Some(
        sds_proto::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(
            cert,
        ),
    ) = &mut by_file.r#type
    {
        cert.private_key = Some(sds_proto::envoy::config::core::v3::DataSource {
            specifier: Some(
                sds_proto::envoy::config::core::v3::data_source::Specifier::Filename(
                    "/etc/key.pem".to_owned(),
                ),
            ),
        });
    }
    upstream.set(by_file, "1");
    let _served = upstream.serve_unix(&path);

    let source = XdsSource::unix(&path)
        .names(["web"])
        .expect("valid names")
        .backoff(backoff());
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);
    let nack = upstream
        .until("a NACK", |r| {
            sotw_requests(r)
                .into_iter()
                .find_map(|r| r.error_detail.clone())
        })
        .await;
    assert!(nack.message.contains("filename"), "{}", nack.message);
    let snapshot = until(&mut reader, "the rejection", |s| s.rejected().len() == 1).await;
    assert!(
        snapshot.get("web").is_none(),
        "a name never valid is not served"
    );
}

#[tokio::test]
async fn reconnects_after_a_restart_with_the_held_version() {
    let ca = Ca::new("root");
    let (one, two) = (leaf(&ca, "one.example"), leaf(&ca, "two.example"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "1");
    let served = upstream.serve_unix(&path);

    let source = XdsSource::unix(&path)
        .names(["web"])
        .expect("valid names")
        .backoff(backoff());
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);
    until(&mut reader, "the first certificate", |s| {
        leaf_der(s, "web") == Some(one.cert_der.clone())
    })
    .await;
    upstream
        .until("the ACK", |r| (sotw_requests(r).len() >= 2).then_some(()))
        .await;
    let accepted = upstream.sent()[0].0.clone();

    served.stop().await;
    let before = upstream.received().len();
    upstream.set(certificate("web", &two.chain_pem, &two.key_pem), "2");
    let _served = upstream.serve_unix(&path);

    let resubscribe = upstream
        .until("a new first request", |r| {
            sotw_requests(&r[before..])
                .into_iter()
                .find(|r| r.response_nonce.is_empty())
                .cloned()
        })
        .await;
    assert_eq!(
        resubscribe.version_info, accepted,
        "resubscribes with the held version"
    );
    assert!(resubscribe.node.is_some());
    assert_eq!(resubscribe.resource_names, ["web"]);
    until(&mut reader, "the certificate after the restart", |s| {
        leaf_der(s, "web") == Some(two.cert_der.clone())
    })
    .await;
}

#[tokio::test]
async fn delta_subscribes_acks_removes_and_resubscribes_with_versions() {
    let ca = Ca::new("root");
    let one = leaf(&ca, "one.example");
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sds.sock");
    let upstream = Upstream::new();
    upstream.set(certificate("web", &one.chain_pem, &one.key_pem), "w1");
    upstream.set(trust("web-cacert", ca.cert_pem()), "c1");
    let served = upstream.serve_unix(&path);

    let source = XdsSource::unix(&path)
        .names(["web", "web-cacert"])
        .expect("valid names")
        .api(Api::Delta)
        .backoff(backoff());
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);
    until(&mut reader, "both secrets", |s| {
        s.get("web").is_some() && s.get("web-cacert").is_some()
    })
    .await;

    let deltas =
        |r: &[Received]| -> Vec<sds_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest> {
            r.iter()
                .filter_map(|r| match r {
                    Received::Delta(d) => Some(d.clone()),
                    Received::Sotw(_) => None,
                })
                .collect()
        };
    let first = upstream
        .until("the subscription", |r| deltas(r).first().cloned())
        .await;
    assert_eq!(first.resource_names_subscribe, ["web", "web-cacert"]);
    assert!(first.initial_resource_versions.is_empty());
    assert!(first.node.is_some());
    let ack = upstream
        .until("the ACK", |r| {
            deltas(r).into_iter().find(|d| !d.response_nonce.is_empty())
        })
        .await;
    assert!(ack.error_detail.is_none());

    upstream.remove("web-cacert");
    until(&mut reader, "the removal", |s| {
        s.get("web").is_some() && s.get("web-cacert").is_none()
    })
    .await;

    served.stop().await;
    let before = upstream.received().len();
    let _served = upstream.serve_unix(&path);
    let resubscribe = upstream
        .until("a new subscription", |r| {
            deltas(&r[before..])
                .into_iter()
                .find(|d| !d.resource_names_subscribe.is_empty())
        })
        .await;
    assert_eq!(
        resubscribe
            .initial_resource_versions
            .into_iter()
            .collect::<Vec<_>>(),
        [("web".to_owned(), "w1".to_owned())],
        "resubscribes with the versions it holds"
    );
}

#[tokio::test]
async fn spire_style_names_on_one_stream() {
    let ca = Ca::new("root");
    let svid = ca.issue_with_uris(
        &["spiffe://example.org/workload"],
        &[],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("agent.sock");
    let upstream = Upstream::new();
    upstream.set(certificate("default", &svid.chain_pem, &svid.key_pem), "1");
    for name in ["ROOTCA", "ALL", "spiffe://example.org"] {
        upstream.set(trust(name, ca.cert_pem()), "1");
    }
    let _served = upstream.serve_unix(&path);

    let names = ["default", "ROOTCA", "ALL", "spiffe://example.org"];
    let source = XdsSource::unix(&path)
        .names(names)
        .expect("SPIRE's names are valid")
        .streams(Streams::One)
        .backoff(backoff());
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);
    let snapshot = until(&mut reader, "every name", |s| s.len() == 4).await;
    assert!(matches!(
        **snapshot.get("default").expect("default"),
        Secret::TlsCertificate(_)
    ));
    for name in &names[1..] {
        assert!(matches!(
            **snapshot.get(name).expect(name),
            Secret::ValidationContext(_)
        ));
    }
    let first = upstream
        .until("the request", |r| {
            sotw_requests(r).first().cloned().cloned()
        })
        .await;
    let mut requested = first.resource_names.clone();
    requested.sort();
    let mut expected = names.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(requested, expected, "one stream for every name");
}

#[tokio::test]
async fn connection_failures_are_ambient_errors() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = XdsSource::unix(dir.path().join("nobody.sock"))
        .names(["web"])
        .expect("valid names")
        .backoff(backoff());
    let mut stream = std::pin::pin!(source.into_stream());
    use futures_util::StreamExt as _;
    for _ in 0..2 {
        let item = tokio::time::timeout(support::WAIT, stream.next())
            .await
            .expect("an item")
            .expect("the stream goes on");
        let error = item.expect_err("nobody listens");
        assert!(error.is_transient());
        assert!(error.to_string().contains("nobody.sock"), "{error}");
        // A stream per name: the error says which secret's stream failed.
        assert!(error.to_string().contains("secret `web`"), "{error}");
    }

    // A stream of several names names none of them.
    let source = XdsSource::unix(dir.path().join("nobody.sock"))
        .names(["web", "api"])
        .expect("valid names")
        .streams(Streams::One)
        .backoff(backoff());
    let mut stream = std::pin::pin!(source.into_stream());
    let error = tokio::time::timeout(support::WAIT, stream.next())
        .await
        .expect("an item")
        .expect("the stream goes on")
        .expect_err("nobody listens");
    assert!(!error.to_string().contains("secret"), "{error}");
}

#[tokio::test]
async fn configuration_errors_end_the_stream() {
    use futures_util::StreamExt as _;
    let no_names = XdsSource::unix("/nonexistent").into_stream();
    let items: Vec<_> = no_names.collect().await;
    assert!(matches!(items.as_slice(), [Err(Error::NoNames { .. })]));

    let https = XdsSource::tcp("https://127.0.0.1:1")
        .expect("a valid URI")
        .names(["web"])
        .expect("valid names")
        .into_stream();
    let items: Vec<_> = https.collect().await;
    assert!(matches!(
        items.as_slice(),
        [Err(Error::InvalidEndpoint { .. })]
    ));
    assert!(XdsSource::tcp("ftp://x").is_err());
    // A password in the URI is refused and never shown.
    let with_password = XdsSource::tcp("https://sds:hunter2@127.0.0.1:8234")
        .expect_err("credentials in the URI are refused");
    assert!(
        !with_password.to_string().contains("hunter2"),
        "{with_password}"
    );
    assert!(!format!("{with_password:?}").contains("hunter2"));
    assert!(XdsSource::unix("/x").names(["has space"]).is_err());
}
