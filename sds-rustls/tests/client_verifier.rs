//! `ClientVerifier`: mutual TLS with a CA secret that rotates, CRLs, and no CA yet.

mod support;

use std::sync::Arc;

use rustls::{
    ServerConfig, SupportedProtocolVersion,
    version::{TLS12, TLS13},
};
use sds_rustls::{ClientVerifier, ServerCerts};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use support::{
    Feed, bundle, client_config, credential, eventually, handshake, name, server_config, update,
};

const VERSIONS: [&[&SupportedProtocolVersion]; 2] = [&[&TLS13], &[&TLS12]];

struct Fixture {
    server_ca: Ca,
    server: Leaf,
}

impl Fixture {
    fn new() -> Fixture {
        let server_ca = Ca::new("server CA");
        let server = server_ca.issue(
            &["gw.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        );
        Fixture { server_ca, server }
    }

    /// A server presenting its certificate (secret `gw`) and verifying clients with
    /// `verifier`.
    fn server(&self, feed: &Feed, verifier: ClientVerifier) -> Arc<ServerConfig> {
        let (certs, _driver) = ServerCerts::builder(feed.reader())
            .host("gw.example.com", name("gw"))
            .build()
            .expect("valid hosts");
        certs.refresh().expect("the server certificate is usable");
        server_config(Arc::new(certs), Some(Arc::new(verifier)))
    }

    /// Whether the server accepts `client`'s certificate, for every TLS version.
    async fn accepts(&self, server: &Arc<ServerConfig>, client: &Leaf) -> bool {
        let mut accepted = Vec::new();
        for versions in VERSIONS {
            let config = client_config(versions, &self.server_ca, Some(client));
            let outcome = handshake(config, Arc::clone(server), "gw.example.com").await;
            if outcome.server.is_ok() {
                assert_eq!(outcome.client_leaf(), client.cert_der);
            }
            accepted.push(outcome.server.is_ok() && outcome.client.is_ok());
        }
        assert!(
            accepted.iter().all(|&a| a == accepted[0]),
            "TLS 1.2 and 1.3 agree"
        );
        accepted[0]
    }
}

fn client(ca: &Ca) -> Leaf {
    ca.issue(
        &["client.example.com"],
        KeyKind::EcP256Sec1,
        Validity::current(),
    )
}

#[tokio::test]
async fn a_ca_rotation_refuses_old_clients_and_accepts_new_ones() {
    let fixture = Fixture::new();
    let (old_ca, new_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let (old_client, new_client) = (client(&old_ca), client(&new_ca));
    let mut feed = Feed::start(update(vec![
        ("gw", credential("gw", &fixture.server)),
        ("gw-cacert", bundle("gw-cacert", &[&old_ca], None)),
    ]))
    .await;
    let (verifier, driver) = ClientVerifier::follow(feed.reader(), name("gw-cacert"));
    tokio::spawn(driver);
    let server = fixture.server(&feed, verifier.clone());
    let first = verifier.version().expect("prepared at once");

    assert!(fixture.accepts(&server, &old_client).await);
    assert!(!fixture.accepts(&server, &new_client).await);

    feed.publish(update(vec![
        ("gw", credential("gw", &fixture.server)),
        ("gw-cacert", bundle("gw-cacert", &[&new_ca], None)),
    ]))
    .await;
    eventually("the driver prepares the new CA", || {
        verifier.version().is_some_and(|v| v != first)
    })
    .await;
    assert!(!fixture.accepts(&server, &old_client).await);
    assert!(fixture.accepts(&server, &new_client).await);
}

#[tokio::test]
async fn a_crl_revokes_a_client() {
    let fixture = Fixture::new();
    let ca = Ca::new("client CA");
    let (revoked, kept) = (client(&ca), client(&ca));
    let crl = ca.crl().revoke(&revoked).pem();
    let feed = Feed::start(update(vec![
        ("gw", credential("gw", &fixture.server)),
        ("gw-cacert", bundle("gw-cacert", &[&ca], Some(&crl))),
    ]))
    .await;
    let (verifier, _driver) = ClientVerifier::follow(feed.reader(), name("gw-cacert"));
    verifier.refresh().expect("a usable bundle");
    let server = fixture.server(&feed, verifier);

    assert!(fixture.accepts(&server, &kept).await);
    assert!(!fixture.accepts(&server, &revoked).await);
    let outcome = handshake(
        client_config(&[&TLS13], &fixture.server_ca, Some(&revoked)),
        server,
        "gw.example.com",
    )
    .await;
    let error = outcome.server_error();
    assert!(error.to_lowercase().contains("revoked"), "{error}");
}

#[tokio::test]
async fn every_client_is_refused_until_the_ca_exists() {
    let fixture = Fixture::new();
    let ca = Ca::new("client CA");
    let member = client(&ca);
    let mut feed = Feed::start(update(vec![("gw", credential("gw", &fixture.server))])).await;
    let (verifier, driver) = ClientVerifier::follow(feed.reader(), name("gw-cacert"));
    tokio::spawn(driver);
    let server = fixture.server(&feed, verifier.clone());

    assert_eq!(
        verifier.refresh().expect_err("no CA yet").to_string(),
        "secret `gw-cacert` is not published"
    );
    assert!(!fixture.accepts(&server, &member).await);
    let outcome = handshake(
        client_config(&[&TLS13], &fixture.server_ca, Some(&member)),
        Arc::clone(&server),
        "gw.example.com",
    )
    .await;
    let error = outcome.server_error();
    assert!(
        error.contains("secret `gw-cacert` is not published"),
        "{error}"
    );
    // A client without a certificate is refused too: certificates are mandatory.
    let outcome = handshake(
        client_config(&[&TLS13], &fixture.server_ca, None),
        Arc::clone(&server),
        "gw.example.com",
    )
    .await;
    assert!(outcome.server.is_err());

    feed.publish(update(vec![
        ("gw", credential("gw", &fixture.server)),
        ("gw-cacert", bundle("gw-cacert", &[&ca], None)),
    ]))
    .await;
    eventually("the driver prepares the CA", || {
        verifier.version().is_some()
    })
    .await;
    assert!(fixture.accepts(&server, &member).await);
    verifier.refresh().expect("usable now");
}

#[tokio::test]
async fn a_certificate_given_as_ca_is_refused_and_the_last_ca_kept() {
    let fixture = Fixture::new();
    let ca = Ca::new("client CA");
    let member = client(&ca);
    let mut feed = Feed::start(update(vec![
        ("gw", credential("gw", &fixture.server)),
        ("gw-cacert", bundle("gw-cacert", &[&ca], None)),
    ]))
    .await;
    let (verifier, _driver) = ClientVerifier::follow(feed.reader(), name("gw-cacert"));
    let server = fixture.server(&feed, verifier.clone());
    let good = verifier.version();

    feed.publish(update(vec![
        ("gw", credential("gw", &fixture.server)),
        ("gw-cacert", credential("gw-cacert", &member)),
    ]))
    .await;
    let error = verifier.refresh().expect_err("not a CA");
    assert_eq!(
        error.to_string(),
        "secret `gw-cacert` is a tls_certificate, where a validation_context is expected"
    );
    assert_eq!(verifier.version(), good);
    assert!(fixture.accepts(&server, &member).await);
}
