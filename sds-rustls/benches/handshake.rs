//! What following a reader costs a TLS server.
//!
//! `cargo bench -p sds-rustls -- --warm-up-time 1 --measurement-time 5`
//!
//! - `handshake/static`: a full TLS 1.3 handshake (ECDSA P-256, no resumption), rustls
//!   `ServerConnection` and `ClientConnection` pumped through memory, with
//!   `ServerConfig::with_single_cert`.
//! - `handshake/server_certs`: the same, with the same certificate resolved by SNI through
//!   `ServerCerts` following a reader.
//! - `update/publish_to_presented`: from a source yielding a new version of the certificate
//!   (published through `sds_core::publish`) to `ServerCerts::refresh` having prepared it
//!   for the next handshake.
//!
//! Timings on a shared 2-core machine are noisy (single runs of the ratio ranged 0.75-1.24);
//! instructions are not. `SDS_HANDSHAKES=static:N` (or `server_certs:N`) runs N handshakes
//! after the same setup and exits, to be counted by valgrind: the difference between N and 0
//! handshakes, divided by N, is what one handshake costs, exactly:
//!
//! ```text
//! cargo bench -p sds-rustls --no-run   # prints the binary's path
//! SDS_HANDSHAKES=server_certs:100 valgrind --tool=callgrind --callgrind-out-file=/dev/null BINARY
//! ```

use std::{io, sync::Arc};

use criterion::{Criterion, criterion_group};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection,
    client::Resumption,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use sds_core::{CertifiedKey, Input, Secret, SecretName, UnixTime, Update};
use sds_rustls::ServerCerts;
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const HOST: &str = "bench.example.com";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn secret(name: &SecretName, leaf: &Leaf) -> Arc<Secret> {
    let key = CertifiedKey::from_pem(
        name,
        Input::new("tls.crt", leaf.chain_pem.as_bytes()),
        Input::new("tls.key", leaf.key_pem.as_bytes()),
        UnixTime::now(),
    )
    .expect("a valid credential");
    Arc::new(key.into())
}

fn update(name: &SecretName, secret: &Arc<Secret>) -> Update {
    let mut update = Update::new();
    update.insert_shared(name.clone(), Arc::clone(secret));
    update
}

fn server_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
}

fn finish(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

fn client_config(ca: &Ca) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .expect("a valid anchor");
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Moves everything `from` has to send into `to`, and lets `to` process it.
fn pump<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("writes to memory");
    }
    let mut rest: &[u8] = buf;
    while !rest.is_empty() {
        to.read_tls(&mut rest as &mut dyn io::Read)
            .expect("reads from memory");
        to.process_new_packets().expect("a valid handshake");
    }
}

/// One full handshake, in memory; returns the leaf the server presented.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, buf: &mut Vec<u8>) -> usize {
    let name = HOST.try_into().expect("a valid name");
    let mut c = ClientConnection::new(Arc::clone(client), name).expect("a client");
    let mut s = ServerConnection::new(Arc::clone(server)).expect("a server");
    while c.is_handshaking() || s.is_handshaking() {
        pump(&mut c, &mut s, buf);
        pump(&mut s, &mut c, buf);
    }
    c.peer_certificates().map_or(0, |chain| chain[0].len())
}

/// The server configurations to compare, and what they need.
struct Setup {
    client: Arc<ClientConfig>,
    fixed: Arc<ServerConfig>,
    following: Arc<ServerConfig>,
    certs: ServerCerts,
    name: SecretName,
    secrets: [Arc<Secret>; 2],
    rt: tokio::runtime::Runtime,
    tx: mpsc::Sender<Result<Update, io::Error>>,
    reader: sds_core::Reader,
}

fn setup() -> Setup {
    let ca = Ca::new("bench CA");
    let v1 = ca.issue(&[HOST], KeyKind::EcP256Pkcs8, Validity::current());
    let v2 = ca.issue(&[HOST], KeyKind::EcP256Pkcs8, Validity::current());
    let name = SecretName::new("bench").expect("a valid name");
    let (s1, s2) = (secret(&name, &v1), secret(&name, &v2));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (tx, rx) = mpsc::channel::<Result<Update, io::Error>>(1);
    let (mut reader, driver) = sds_core::publish(sds_core::from_stream(ReceiverStream::new(rx)));
    rt.spawn(driver);
    rt.block_on(async {
        tx.send(Ok(update(&name, &s1))).await.expect("sent");
        reader.ready().await.expect("the first snapshot");
    });
    let (certs, follow) = ServerCerts::builder(reader.clone())
        .host(HOST, name.clone())
        .build()
        .expect("a valid host");
    // Only `refresh` updates it here, so that the update bench measures that path alone.
    drop(follow);
    certs.refresh().expect("usable");

    let client = client_config(&ca);
    let chain = CertificateDer::pem_slice_iter(v1.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("a PEM chain");
    let key = PrivateKeyDer::from_pem_slice(v1.key_pem.as_bytes()).expect("a PEM key");
    let fixed = finish(
        server_builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a usable certificate"),
    );
    let following = finish(
        server_builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs.clone())),
    );
    Setup {
        client,
        fixed,
        following,
        certs,
        name,
        secrets: [s1, s2],
        rt,
        tx,
        reader,
    }
}

fn benches(c: &mut Criterion) {
    let Setup {
        client,
        fixed,
        following,
        certs,
        name,
        secrets: [s1, s2],
        rt,
        tx,
        mut reader,
    } = setup();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut group = c.benchmark_group("handshake");
    group.bench_function("static", |b| {
        b.iter(|| handshake(&client, &fixed, &mut buf))
    });
    group.bench_function("server_certs", |b| {
        b.iter(|| handshake(&client, &following, &mut buf))
    });
    group.finish();

    let mut group = c.benchmark_group("update");
    let mut next = [&s2, &s1].into_iter().cycle();
    group.bench_function("publish_to_presented", |b| {
        b.iter(|| {
            let secret = next.next().expect("cycles forever");
            rt.block_on(async {
                tx.send(Ok(update(&name, secret))).await.expect("sent");
                reader.changed().await.expect("published");
            });
            certs.refresh().expect("usable");
            assert_eq!(certs.version(&name), Some(secret.version()));
        })
    });
    group.finish();
}

criterion_group!(handshake_benches, benches);

fn main() {
    if let Ok(spec) = std::env::var("SDS_HANDSHAKES") {
        return count(&spec);
    }
    handshake_benches();
    Criterion::default().configure_from_args().final_summary();
}

/// `SDS_HANDSHAKES=static:N|server_certs:N`: N handshakes after the setup, nothing else.
fn count(spec: &str) {
    let (mode, n) = spec
        .split_once(':')
        .and_then(|(mode, n)| Some((mode, n.parse::<usize>().ok()?)))
        .expect("SDS_HANDSHAKES=static:N or server_certs:N");
    let setup = setup();
    let server = match mode {
        "static" => &setup.fixed,
        "server_certs" => &setup.following,
        other => panic!("no mode {other:?}: static or server_certs"),
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    let presented: usize = (0..n)
        .map(|_| handshake(&setup.client, server, &mut buf))
        .sum();
    assert!(n == 0 || presented > 0, "a certificate was presented");
}
