//! A relay round trip: our `sds-server` upstream, this source downstream.

mod support;

use std::time::Duration;

use futures_util::stream;
use sds_core::{CertifiedKey, Input, SecretName, TrustBundle, UnixTime, Update};
use sds_source_xds::{Backoff, XdsSource};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use support::{leaf_der, until};
use tokio_stream::wrappers::TcpListenerStream;

fn update(leaf: &Leaf, ca: &Ca) -> Update {
    let web = SecretName::new("web").expect("a name");
    let cacert = SecretName::new("web-cacert").expect("a name");
    let mut update = Update::new();
    let cert = CertifiedKey::from_pem(
        &web,
        Input::new("chain", leaf.chain_pem.as_bytes()),
        Input::new("key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid certificate");
    let bundle = TrustBundle::from_pem(
        &cacert,
        Input::new("ca", ca.cert_pem().as_bytes()),
        None,
        UnixTime::now(),
    )
    .expect("a valid bundle");
    update.insert(web, cert);
    update.insert(cacert, bundle);
    update
}

#[tokio::test]
async fn relays_from_sds_server_including_a_rotation() {
    let ca = Ca::new("root");
    let one = ca.issue(&["one.example"], KeyKind::EcP256Pkcs8, Validity::current());
    let two = ca.issue(
        &["two.example"],
        KeyKind::RsaPkcs8(2048),
        Validity::current(),
    );

    let (feed, updates) = tokio::sync::mpsc::unbounded_channel::<Update>();
    let updates = stream::unfold(updates, |mut rx| async move {
        rx.recv().await.map(|u| (Ok::<_, std::io::Error>(u), rx))
    });
    let (upstream_reader, driver) = sds_core::publish(sds_core::from_stream(updates));
    tokio::spawn(driver);
    feed.send(update(&one, &ca)).expect("the publisher runs");

    let sds = sds_server::SdsService::builder(upstream_reader)
        .policy(sds_server::policy::AllowAnyPeer)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(sds.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let source = XdsSource::tcp(format!("http://{addr}"))
        .expect("a valid endpoint")
        .names(["web", "web-cacert"])
        .expect("valid names")
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);

    let snapshot = until(&mut reader, "both secrets", |s| {
        leaf_der(s, "web") == Some(one.cert_der.clone()) && s.get("web-cacert").is_some()
    })
    .await;
    match &**snapshot.get("web-cacert").expect("the CA") {
        sds_core::Secret::ValidationContext(bundle) => {
            assert_eq!(bundle.anchors()[0].as_ref(), ca.cert_der());
        }
        other => panic!("expected a validation context, got {}", other.kind()),
    }

    feed.send(update(&two, &ca)).expect("the publisher runs");
    let snapshot = until(&mut reader, "the rotated certificate", |s| {
        leaf_der(s, "web") == Some(two.cert_der.clone())
    })
    .await;
    assert_eq!(snapshot.rejected().len(), 0);
}
