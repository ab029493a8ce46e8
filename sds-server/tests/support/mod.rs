//! What the server tests share: a served credential, a server on loopback as the examples run
//! it, and a raw HTTP/2 client for what tonic's client cannot send.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use sds_core::{CertifiedKey, Input, Reader, SecretName, UnixTime, Update};
use sds_server::{Limits, SdsService, connections};
use sds_test_util::certs::{Ca, KeyKind, Validity};
use tokio_stream::wrappers::TcpListenerStream;

pub(crate) const STREAM_SECRETS: &str =
    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
pub(crate) const DELTA_SECRETS: &str =
    "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";
const WAIT: Duration = Duration::from_secs(10);

/// An update holding a valid credential for each of `names`.
pub(crate) fn credentials(names: &[&str]) -> Update {
    let ca = Ca::new("sds-server test CA");
    let mut update = Update::new();
    for n in names {
        let leaf = ca.issue(&[n], KeyKind::EcP256Pkcs8, Validity::current());
        let name = SecretName::new(n).expect("valid name");
        let credential = CertifiedKey::from_pem(
            &name,
            Input {
                location: "tls.crt",
                bytes: leaf.chain_pem.as_bytes(),
            },
            Input {
                location: "tls.key",
                bytes: leaf.key_pem.as_bytes(),
            },
            UnixTime::now(),
        )
        .expect("valid credential");
        update.insert(name, credential);
    }
    update
}

/// A reader whose source yields `update` and then stays open.
pub(crate) async fn reader(update: Update) -> Reader {
    let source = sds_core::from_stream(futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, std::io::Error>(update)]),
        futures_util::stream::pending(),
    ));
    let (mut reader, driver) = sds_core::publish(source);
    tokio::spawn(driver);
    reader.ready().await.expect("first snapshot");
    reader
}

/// Serves `sds` on a loopback port as the examples do (the stream limit announced,
/// connections guarded by `guard`); returns the address.
pub(crate) async fn serve(sds: &SdsService, guard: connections::ConnectionLimits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = connections::guard(TcpListenerStream::new(listener), guard);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
        .add_service(sds.clone().into_server());
    tokio::spawn(server.serve_with_incoming(incoming));
    addr
}

/// A raw HTTP/2 connection to `addr`.
pub(crate) async fn raw_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    client.ready().await.expect("ready")
}

/// Starts a gRPC call to `path` on `client`, sending `body` (ending the request if `end`).
pub(crate) fn raw_call(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(Bytes::from(body), end).expect("data");
    (response, send)
}

/// The `grpc-status` and `grpc-message` a call ended with, reading and dropping its messages.
pub(crate) async fn grpc_status(response: h2::client::ResponseFuture) -> (String, String) {
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("in time")
        .expect("response");
    let (parts, mut body) = response.into_parts();
    let mut status = parts.headers;
    if !status.contains_key("grpc-status") {
        while let Some(data) = tokio::time::timeout(WAIT, body.data())
            .await
            .expect("in time")
        {
            let data = data.expect("data");
            let _ = body.flow_control().release_capacity(data.len());
        }
        status = tokio::time::timeout(WAIT, body.trailers())
            .await
            .expect("in time")
            .expect("trailers")
            .expect("a status in trailers");
    }
    let get = |k: &str| {
        status
            .get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"))
}

/// One gRPC message: the compression flag, the length the prefix announces, the bytes sent.
pub(crate) fn framed(flag: u8, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}
