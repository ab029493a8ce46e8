//! The client side, for a proxy dialing upstreams: `ClientCert` presents a rotated client
//! certificate, `ServerVerifier` trusts a CA secret that rotates.

mod support;

use std::sync::Arc;

use rustls::{AlertDescription, client::ResolvesClientCert};
use sds_rustls::{ClientCert, Error, ServerVerifier};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use support::{
    Feed, bundle, credential, custom_client_config, eventually, handshake, name,
    static_server_config, update,
};

fn leaf(ca: &Ca, dns: &str) -> Leaf {
    ca.issue(&[dns], KeyKind::EcP384Pkcs8, Validity::current())
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_on_the_next_handshake() {
    let (server_ca, client_ca) = (Ca::new("upstream CA"), Ca::new("client CA"));
    let upstream = leaf(&server_ca, "upstream.example.com");
    let (v1, v2) = (leaf(&client_ca, "proxy-1"), leaf(&client_ca, "proxy-2"));
    let mut feed = Feed::start(update(vec![
        ("proxy", credential("proxy", &v1)),
        (
            "upstream-cacert",
            bundle("upstream-cacert", &[&server_ca], None),
        ),
    ]))
    .await;
    let (mine, mine_driver) = ClientCert::follow(feed.reader(), name("proxy"));
    let (upstreams, upstreams_driver) =
        ServerVerifier::follow(feed.reader(), name("upstream-cacert"));
    tokio::spawn(mine_driver);
    tokio::spawn(upstreams_driver);
    assert!(mine.has_certs());
    let client = custom_client_config(Arc::new(upstreams), Arc::new(mine.clone()));
    // The upstream requires a certificate from the client CA.
    let server = static_server_config(&upstream, &client_ca);

    let outcome = handshake(
        Arc::clone(&client),
        Arc::clone(&server),
        "upstream.example.com",
    )
    .await;
    assert_eq!(outcome.server_leaf(), upstream.cert_der);
    assert_eq!(outcome.client_leaf(), v1.cert_der);

    let first = mine.version().expect("prepared at once");
    feed.publish(update(vec![
        ("proxy", credential("proxy", &v2)),
        (
            "upstream-cacert",
            bundle("upstream-cacert", &[&server_ca], None),
        ),
    ]))
    .await;
    eventually("the driver prepares the new client certificate", || {
        mine.version().is_some_and(|v| v != first)
    })
    .await;
    let outcome = handshake(client, server, "upstream.example.com").await;
    assert_eq!(outcome.client_leaf(), v2.cert_der);
}

#[tokio::test]
async fn no_client_certificate_is_offered_until_it_is_published() {
    let (server_ca, client_ca) = (Ca::new("upstream CA"), Ca::new("client CA"));
    let upstream = leaf(&server_ca, "upstream.example.com");
    let feed = Feed::start(update(vec![(
        "upstream-cacert",
        bundle("upstream-cacert", &[&server_ca], None),
    )]))
    .await;
    let (mine, _driver) = ClientCert::follow(feed.reader(), name("proxy"));
    let (upstreams, _driver) = ServerVerifier::follow(feed.reader(), name("upstream-cacert"));
    assert!(!mine.has_certs());
    assert!(matches!(mine.refresh(), Err(Error::NotPublished { .. })));
    let client = custom_client_config(Arc::new(upstreams), Arc::new(mine));
    let outcome = handshake(
        client,
        static_server_config(&upstream, &client_ca),
        "upstream.example.com",
    )
    .await;
    assert!(outcome.server.is_err(), "{outcome:?}");
    assert_eq!(
        outcome.client_error(),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn the_server_verifier_follows_its_ca_and_checks_names() {
    let (old_ca, new_ca, client_ca) = (Ca::new("old CA"), Ca::new("new CA"), Ca::new("client CA"));
    let proxy = leaf(&client_ca, "proxy");
    let (old_upstream, new_upstream) = (
        leaf(&old_ca, "upstream.example.com"),
        leaf(&new_ca, "upstream.example.com"),
    );
    let mut feed = Feed::start(update(vec![("proxy", credential("proxy", &proxy))])).await;
    let (mine, _driver) = ClientCert::follow(feed.reader(), name("proxy"));
    let (upstreams, driver) = ServerVerifier::follow(feed.reader(), name("upstream-cacert"));
    tokio::spawn(driver);
    let client = custom_client_config(Arc::new(upstreams.clone()), Arc::new(mine));
    let dial = |upstream: &Leaf, name: &'static str| {
        let (client, server) = (
            Arc::clone(&client),
            static_server_config(upstream, &client_ca),
        );
        async move { handshake(client, server, name).await }
    };

    // No CA yet: every server is refused, naming the secret.
    let outcome = dial(&old_upstream, "upstream.example.com").await;
    let error = outcome.client_error().to_string();
    assert!(
        error.contains("secret `upstream-cacert` is not published"),
        "{error}"
    );

    feed.publish(update(vec![
        ("proxy", credential("proxy", &proxy)),
        (
            "upstream-cacert",
            bundle("upstream-cacert", &[&old_ca], None),
        ),
    ]))
    .await;
    eventually("the driver prepares the CA", || {
        upstreams.version().is_some()
    })
    .await;
    let first = upstreams.version();
    let outcome = dial(&old_upstream, "upstream.example.com").await;
    assert_eq!(outcome.server_leaf(), old_upstream.cert_der);
    // webpki checks the name dialed.
    let outcome = dial(&old_upstream, "elsewhere.example.com").await;
    assert!(
        matches!(outcome.client_error(), rustls::Error::InvalidCertificate(_)),
        "{outcome:?}"
    );
    let outcome = dial(&new_upstream, "upstream.example.com").await;
    assert!(outcome.client.is_err());

    feed.publish(update(vec![
        ("proxy", credential("proxy", &proxy)),
        (
            "upstream-cacert",
            bundle("upstream-cacert", &[&new_ca], None),
        ),
    ]))
    .await;
    eventually("the driver prepares the new CA", || {
        upstreams.version() != first
    })
    .await;
    let outcome = dial(&old_upstream, "upstream.example.com").await;
    assert!(outcome.client.is_err());
    let outcome = dial(&new_upstream, "upstream.example.com").await;
    assert_eq!(outcome.server_leaf(), new_upstream.cert_der);
}
