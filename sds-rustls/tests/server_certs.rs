//! `ServerCerts`: the certificate presented by SNI, rotations, and what is never presented.

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use rustls::{AlertDescription, version::TLS13};
use sds_core::{CertifiedKey, Input, UnixTime, Update};
use sds_rustls::{ClientCert, ClientVerifier, Error, ServerCerts, ServerVerifier};
use sds_test_util::certs::{Ca, Key, KeyKind, Leaf, Validity};
use support::{
    Feed, client_config, credential, eventually, handshake, name, server_config, update,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn leaf(ca: &Ca, dns: &[&str]) -> Leaf {
    ca.issue(dns, KeyKind::EcP256Pkcs8, Validity::current())
}

#[tokio::test]
async fn sni_picks_exact_wildcard_and_default() {
    let ca = Ca::new("server CA");
    let apex = leaf(&ca, &["example.com"]);
    let wildcard = leaf(&ca, &["*.example.com"]);
    let api = ca.issue(
        &["api.example.com"],
        KeyKind::RsaPkcs1(2048),
        Validity::current(),
    );
    let fallback = leaf(&ca, &["fallback.example.net"]);
    let feed = Feed::start(update(vec![
        ("apex", credential("apex", &apex)),
        ("wildcard", credential("wildcard", &wildcard)),
        ("api", credential("api", &api)),
        ("fallback", credential("fallback", &fallback)),
    ]))
    .await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("apex"))
        .host("*.Example.com", name("wildcard"))
        .host("api.example.com", name("api"))
        .default_secret(name("fallback"))
        .build()
        .expect("valid hosts");
    tokio::spawn(driver);
    certs.refresh().expect("every secret is usable");
    let server = server_config(Arc::new(certs.clone()), None);
    let client = client_config(&[&TLS13], &ca, None);

    for (sni, want) in [
        ("example.com", &apex),
        ("www.example.com", &wildcard),
        ("WWW.EXAMPLE.COM", &wildcard),
        ("api.example.com", &api),
        // Not one label under `example.com`: the default.
        ("fallback.example.net", &fallback),
    ] {
        let outcome = handshake(Arc::clone(&client), Arc::clone(&server), sni).await;
        assert_eq!(outcome.server_leaf(), want.cert_der, "{sni}");
    }

    // No SNI at all: the default.
    let mut no_sni = (*client_config(&[&TLS13], &ca, None)).clone();
    no_sni.enable_sni = false;
    let outcome = handshake(
        Arc::new(no_sni),
        Arc::clone(&server),
        "fallback.example.net",
    )
    .await;
    assert_eq!(outcome.server_leaf(), fallback.cert_der);
    assert_eq!(certs.secret_for(None), Some(&name("fallback")));
    assert_eq!(
        certs.secret_for(Some("a.b.example.com")),
        Some(&name("fallback"))
    );
}

#[tokio::test]
async fn no_match_without_a_default_fails_with_an_alert() {
    let ca = Ca::new("server CA");
    let wildcard = leaf(&ca, &["*.example.com"]);
    let feed = Feed::start(update(vec![(
        "wildcard",
        credential("wildcard", &wildcard),
    )]))
    .await;
    let (certs, _driver) = ServerCerts::builder(feed.reader())
        .host("*.example.com", name("wildcard"))
        .build()
        .expect("valid hosts");
    let server = server_config(Arc::new(certs), None);
    let client = client_config(&[&TLS13], &ca, None);

    for sni in ["example.com", "a.b.example.com", "example.org"] {
        let outcome = handshake(Arc::clone(&client), Arc::clone(&server), sni).await;
        assert_eq!(
            outcome.client_error(),
            rustls::Error::AlertReceived(AlertDescription::AccessDenied),
            "{sni}"
        );
        assert!(outcome.server.is_err(), "{sni}");
    }
    let outcome = handshake(client, server, "www.example.com").await;
    assert_eq!(outcome.server_leaf(), wildcard.cert_der);
}

#[tokio::test]
async fn the_next_handshake_presents_a_rotated_certificate() {
    let ca = Ca::new("server CA");
    let v1 = leaf(&ca, &["example.com"]);
    let v2 = leaf(&ca, &["example.com"]);
    let mut feed = Feed::start(update(vec![("web", credential("web", &v1))])).await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web"))
        .build()
        .expect("valid hosts");
    tokio::spawn(driver);
    let server = server_config(Arc::new(certs.clone()), None);
    let client = client_config(&[&TLS13], &ca, None);
    let first = certs.version(&name("web")).expect("prepared at build");
    let outcome = handshake(Arc::clone(&client), Arc::clone(&server), "example.com").await;
    assert_eq!(outcome.server_leaf(), v1.cert_der);

    feed.publish(update(vec![("web", credential("web", &v2))]))
        .await;
    eventually("the driver prepares the new version", || {
        certs.version(&name("web")).is_some_and(|v| v != first)
    })
    .await;
    let outcome = handshake(client, server, "example.com").await;
    assert_eq!(outcome.server_leaf(), v2.cert_der);
}

#[tokio::test]
async fn refresh_follows_the_reader_without_a_driver() {
    let ca = Ca::new("server CA");
    let v1 = leaf(&ca, &["example.com"]);
    let v2 = leaf(&ca, &["example.com"]);
    let mut feed = Feed::start(update(vec![("web", credential("web", &v1))])).await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web"))
        .build()
        .expect("valid hosts");
    drop(driver);
    let server = server_config(Arc::new(certs.clone()), None);
    let client = client_config(&[&TLS13], &ca, None);

    feed.publish(update(vec![("web", credential("web", &v2))]))
        .await;
    // Nothing follows the reader until `refresh`.
    let outcome = handshake(Arc::clone(&client), Arc::clone(&server), "example.com").await;
    assert_eq!(outcome.server_leaf(), v1.cert_der);
    certs.refresh().expect("usable");
    let outcome = handshake(client, server, "example.com").await;
    assert_eq!(outcome.server_leaf(), v2.cert_der);
}

#[tokio::test]
async fn a_rejected_update_keeps_the_last_good_certificate() {
    let ca = Ca::new("server CA");
    let v1 = leaf(&ca, &["example.com"]);
    let expired = ca.issue(&["example.com"], KeyKind::EcP256Pkcs8, Validity::expired());
    let mut feed = Feed::start(update(vec![("web", credential("web", &v1))])).await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web"))
        .build()
        .expect("valid hosts");
    tokio::spawn(driver);
    let server = server_config(Arc::new(certs.clone()), None);
    let client = client_config(&[&TLS13], &ca, None);
    let good = certs.version(&name("web"));

    // The source now holds an expired certificate: sds-core rejects it.
    let error = CertifiedKey::from_pem(
        &name("web"),
        Input::new("tls.crt", expired.chain_pem.as_bytes()),
        Input::new("tls.key", expired.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect_err("sds-core refuses an expired certificate");
    let mut rejected = Update::new();
    rejected.reject(name("web"), error);
    feed.publish(rejected).await;

    let outcome = handshake(client, server, "example.com").await;
    assert_eq!(outcome.server_leaf(), v1.cert_der);
    certs
        .refresh()
        .expect("the reader still serves the last good version");
    assert_eq!(certs.version(&name("web")), good);
}

#[tokio::test]
async fn a_key_rustls_refuses_keeps_the_previous_certificate() {
    let ca = Ca::new("server CA");
    let v1 = leaf(&ca, &["example.com"]);
    // sds-core accepts RSA keys up to 16384 bits, for Envoy; ring signs with at most 4096.
    let big = ca.issue_for(
        &["example.com"],
        Key::generate(KeyKind::RsaPkcs8(4160)),
        Validity::current(),
    );
    let mut feed = Feed::start(update(vec![("web", credential("web", &v1))])).await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web"))
        .build()
        .expect("valid hosts");
    drop(driver);
    let good = certs.version(&name("web")).expect("prepared");

    feed.publish(update(vec![("web", credential("web", &big))]))
        .await;
    match certs.refresh() {
        Err(Error::KeyRefused { name: n, .. }) if n == name("web") => {}
        other => panic!("expected the key to be refused: {other:?}"),
    }
    assert_eq!(certs.version(&name("web")), Some(good));
    let server = server_config(Arc::new(certs.clone()), None);
    let outcome = handshake(client_config(&[&TLS13], &ca, None), server, "example.com").await;
    assert_eq!(outcome.server_leaf(), v1.cert_der);
}

#[tokio::test]
async fn a_secret_of_the_wrong_kind_or_missing_presents_nothing() {
    let ca = Ca::new("server CA");
    let feed = Feed::start(update(vec![(
        "web-cacert",
        support::bundle("web-cacert", &[&ca], None),
    )]))
    .await;
    let (certs, _driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web-cacert"))
        .host("other.example.com", name("not-there"))
        .build()
        .expect("valid hosts");
    let error = certs.refresh().expect_err("a CA is not a certificate");
    assert_eq!(
        error.to_string(),
        "secret `web-cacert` is a validation_context, where a tls_certificate is expected"
    );
    let server = server_config(Arc::new(certs), None);
    let client = client_config(&[&TLS13], &ca, None);
    for sni in ["example.com", "other.example.com"] {
        let outcome = handshake(Arc::clone(&client), Arc::clone(&server), sni).await;
        assert_eq!(
            outcome.client_error(),
            rustls::Error::AlertReceived(AlertDescription::AccessDenied)
        );
    }
}

#[tokio::test]
async fn invalid_host_patterns_are_refused_at_build() {
    let feed = Feed::start(Update::new()).await;
    for pattern in ["*.*.example.com", "exa mple.com", "192.0.2.1", ""] {
        let built = ServerCerts::builder(feed.reader())
            .host(pattern, name("web"))
            .build();
        assert!(
            matches!(built, Err(Error::InvalidHost { .. })),
            "{pattern:?}"
        );
    }
    let built = ServerCerts::builder(feed.reader())
        .host("example.com", name("a"))
        .host("EXAMPLE.com", name("b"))
        .build();
    assert!(matches!(built, Err(Error::DuplicateHost { host }) if host == "example.com"));
}

/// 4 clients loop handshakes over 127.0.0.1 while the certificate rotates 20 times: every
/// handshake succeeds and presents one of the published certificates, and every published
/// certificate is presented (each rotation waits for a handshake to see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_concurrent_handshakes() {
    const CLIENTS: usize = 4;
    const ROTATIONS: usize = 20;
    let ca = Ca::new("server CA");
    let leaves: Vec<Leaf> = (0..=ROTATIONS)
        .map(|_| leaf(&ca, &["example.com"]))
        .collect();
    let published: Arc<HashMap<Vec<u8>, usize>> = Arc::new(
        leaves
            .iter()
            .enumerate()
            .map(|(i, l)| (l.cert_der.clone(), i))
            .collect(),
    );
    let presented: Arc<Vec<AtomicBool>> =
        Arc::new(leaves.iter().map(|_| AtomicBool::new(false)).collect());
    let mut feed = Feed::start(update(vec![("web", credential("web", &leaves[0]))])).await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web"))
        .build()
        .expect("valid hosts");
    tokio::spawn(driver);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let acceptor = TlsAcceptor::from(server_config(Arc::new(certs.clone()), None));
    let server_failures = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let failures = Arc::clone(&server_failures);
        async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, failures) = (acceptor.clone(), Arc::clone(&failures));
                tokio::spawn(async move {
                    let served = async {
                        let mut tls = acceptor.accept(tcp).await?;
                        tls.write_all(b"!").await?;
                        tls.shutdown().await
                    };
                    if served.await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let connector = TlsConnector::from(client_config(&[&TLS13], &ca, None));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, connector, published, presented) = (
                Arc::clone(&stop),
                connector.clone(),
                Arc::clone(&published),
                Arc::clone(&presented),
            );
            tokio::spawn(async move {
                let mut handshakes = 0usize;
                loop {
                    let tcp = TcpStream::connect(addr).await.expect("connects");
                    let name = "example.com".try_into().expect("a valid name");
                    let mut tls = connector
                        .connect(name, tcp)
                        .await
                        .expect("no handshake fails during rotations");
                    let leaf = tls.get_ref().1.peer_certificates().expect("a chain")[0].to_vec();
                    let index = published.get(&leaf).expect("a published certificate");
                    presented[*index].store(true, Ordering::Relaxed);
                    let mut byte = [0u8; 1];
                    tls.read_exact(&mut byte).await.expect("the server's byte");
                    handshakes += 1;
                    if stop.load(Ordering::Relaxed) {
                        return handshakes;
                    }
                }
            })
        })
        .collect();

    for (i, leaf) in leaves.iter().enumerate().skip(1) {
        feed.publish(update(vec![("web", credential("web", leaf))]))
            .await;
        let published_version = {
            let snapshot = feed.reader().current().expect("a snapshot");
            snapshot.get("web").expect("the secret").version()
        };
        eventually(&format!("rotation {i} is prepared"), || {
            certs.version(&name("web")) == Some(published_version)
        })
        .await;
        eventually(&format!("a client sees rotation {i}"), || {
            presented[i].load(Ordering::Relaxed)
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let handshakes = client.await.expect("no client panicked");
        assert!(handshakes > 0);
    }
    assert_eq!(server_failures.load(Ordering::Relaxed), 0);

    // And the last one is what new handshakes get.
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let tls = connector
        .connect("example.com".try_into().expect("a valid name"), tcp)
        .await
        .expect("handshakes");
    let leaf = tls.get_ref().1.peer_certificates().expect("a chain")[0].to_vec();
    assert_eq!(leaf, leaves[ROTATIONS].cert_der);
    server.abort();
}

#[tokio::test]
async fn debug_shows_names_and_versions_never_keys() {
    let ca = Ca::new("server CA");
    let web = leaf(&ca, &["example.com"]);
    let feed = Feed::start(update(vec![("web", credential("web", &web))])).await;
    let (certs, driver) = ServerCerts::builder(feed.reader())
        .host("example.com", name("web"))
        .default_secret(name("missing"))
        .build()
        .expect("valid hosts");
    let (mine, _d1) = ClientCert::follow(feed.reader(), name("web"));
    let (clients, _d2) = ClientVerifier::follow(feed.reader(), name("web"));
    let (servers, _d3) = ServerVerifier::follow(feed.reader(), name("web"));
    let shown = format!(
        "{certs:?} {driver:?} {:?} {mine:?} {clients:?} {servers:?} {:?}",
        certs.refresh(),
        clients.refresh(),
    );
    assert!(
        shown.contains("\"web\"") && shown.contains("example.com"),
        "{shown}"
    );
    assert!(shown.contains("NotPublished"), "{shown}");
    assert!(shown.contains("WrongKind"), "{shown}");
    let key_body: String = web
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for chunk in key_body.as_bytes().chunks(16) {
        let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
        assert!(!shown.contains(chunk), "key material in {shown}");
    }
}
